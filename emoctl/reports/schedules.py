"""Emotion over time: a switch from Neutral to an emotion inside one utterance, cut at the switch and scored.

For each steering method (EmoShift's layer, SAE-Emotion features, Global mean-difference steering) and target
emotion, the same Neutral prompts are spoken three ways with the same seeds and batches:

* **unsteered**: no hook at all;
* **switched**: the method at α times the user's switch schedule (0 before the switch, 1 from it on);
* **whole**: the method at α on every decode step (whole-utterance steering to the emotion).

α is given per method, or as a calibrated intensity (``intensity`` with ``calibration``), which gives each method
and emotion its own α (:mod:`emoctl.evaluation.calibration`).

The step-to-time map cuts every clip at the switch: decode step k feeds speech token k, which starts k /
token_rate seconds into the clip, so the cut is sample ``k × sample_rate / token_rate``
(:func:`cut_sample`). Steering from step k first changes the token step k predicts, k + 1, so everything
before the cut is unsteered audio, but for its last fft_size / 2 samples (32 ms on the mini TTS) where the WORLD
vocoder overlap-adds token k + 1 (:func:`tokens_kept` counts the clips whose tokens 0 .. k equal the
unsteered clip's, a check the report states). Each segment is scored against its own emotion (Neutral before,
the target after) by the recognizer, and measured by the acoustic probes (F0, RMS, spectral centroid); the
switched clip's segments are compared, pair by pair, with the same stretch of the unsteered and of the whole
clips (exact McNemar on SER hits, paired t on the probes). How sharp the change is: F0 and RMS in windows
just before and after the switch, the jump (after − before) per clip, against the unsteered clip's jump.

:class:`SchedulesSettings` holds every setting and refuses bad ones before any work; :func:`run_schedules`
runs them; ``emoctl report schedules`` (:mod:`emoctl.commands.schedules`) takes the settings as flags.
Outputs in ``out_dir``: ``schedules.md``, ``schedules.csv`` (per cell), ``schedules_clips.csv`` (per segment
and window of each clip), ``schedules_paired_ser.csv``, ``schedules_paired_probes.csv``,
``schedules_over_time.csv`` and ``schedules.png`` (F0 and the hookpoint's norm over time), ``schedules_info.json``.
"""
from __future__ import annotations

import io
import math
from collections import defaultdict
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from emoctl.backbones.base import Backbone, Prompt
from emoctl.backbones.hooks import HookContext, Phase
from emoctl.backbones.loading import BackboneSpec
from emoctl.emosteer import steer as emosteer_steer
from emoctl.emotions import NEUTRAL
from emoctl.errors import ConfigError
from emoctl.evaluation.calibration import alphas_for_intensity, check_alpha_or_intensity
from emoctl.evaluation.emoshift_setup import SteeringSetup
from emoctl.evaluation.paired import paired_comparisons, paired_markdown
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.evaluation.scoring import ReferenceSet, Scorers, Utterance, measure, score
from emoctl.evaluation.steered import synthesize_steered
from emoctl.evaluation.summary import csv_bytes, format_estimate, summarize
from emoctl.io.fsio import check_output_dir
from emoctl.io.provenance import collect
from emoctl.metrics.loading import recognizer_folder
from emoctl.probes import compare_paired, measure as measure_probes
from emoctl.probes.paired import format_p
from emoctl.reports.report_folder import write_report_folder
from emoctl.reports.table1_methods import check_method_inputs, method_label
from emoctl.sae.export import load_pretrained
from emoctl.selection.feature_set import feature_set_path, load_feature_sets
from emoctl.steering import SAEFeatureSteering, global_steering, steer, store_mean_differences
from emoctl.steering.sae_features import LATENT_ALPHA_RULE, latent_alpha_ok
from emoctl.steering.schedules import StepSchedule, Switch, parse_schedule
from emoctl.synthesis import Clip

METHODS = ("emoshift", "sae_emotion", "global")
SETTINGS = ("unsteered", "switched", "whole")
SETTING_LABELS = {"unsteered": "unsteered", "switched": "switched", "whole": "whole-utterance"}
SEGMENTS = ("before", "after")
PROBES = ("f0_mean_hz", "rms", "spectral_centroid_hz")
SEGMENT_METRICS = ["ser_hit", "p_target", *PROBES, "duration_s"]
WINDOW_METRICS = ["f0_before", "f0_after", "f0_jump", "rms_before", "rms_after", "rms_jump"]
DEFAULT_ALPHAS = {"emoshift": 2.0, "sae_emotion": 8.0, "global": 8.0}
DEFAULT_METHODS = ("emoshift", "sae_emotion")


@dataclass(frozen=True)
class SchedulesSettings:
    """Everything ``emoctl report schedules`` runs with; bad values are refused here, before any work."""

    layer: str | None = "emoctl/assets/emoshift_mini"
    """EmoShift layer folder (emosteer.json + safetensors), trained with the backbone told Neutral; needed for
    the method ``emoshift``."""
    sae: str | None = "emoctl/assets/sae_mini"
    """Exported SAE folder; needed for the methods ``sae_emotion`` and ``global``."""
    selection: str | None = "emoctl/assets/select_mini"
    """Folder of the SAE's feature sets (features_<emotion>.json); needed for ``sae_emotion`` and ``global``."""
    store: str | None = None
    """The activation store the SAE was trained on; needed for ``global`` (its mean differences are the direction,
    norm-matched to the feature sets as in Table 1)."""
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    """The backbone (the layer's own when a layer is given and this is the default)."""
    corpus_root: str = "runs/corpus/esd_espeak"
    """ESD-shaped corpus: the held-out sentences spoken."""
    out_dir: str = "reports/schedules"
    """Where the report files go."""
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Steering methods, of emoshift, sae_emotion and global."""
    emotions: list[str] = field(default_factory=lambda: ["Angry"])
    """Target emotions: each is switched on from Neutral."""
    alphas: dict[str, float] | None = None
    """α per method once the switch is on (EmoShift's strength; SAE-Emotion's and Global's latent units); None:
    EmoShift 2, SAE-Emotion 8, Global 8 (unless an intensity is given)."""
    intensity: float | None = None
    """In place of alphas: the target P(emotion) by the recognizer once the switch is on, turned into an α per
    method and emotion by ``calibration`` (printed and recorded). The recognizer's reading, biased on synthetic
    speech."""
    calibration: str | None = None
    """calibration.json (or its folder) from ``emoctl calibrate`` on this backbone; needed with intensity."""
    schedule: dict[str, Any] = field(default_factory=lambda: {"switch": {"at_s": 1.2}})
    """The switch (docs/commands.md, Schedules): ``{"switch": {"at_s": 1.2}}`` is Neutral until 1.2 s, the
    emotion from then on; ``before: 1, after: 0`` the reverse. Ramps and segments have no single cut point."""
    window_s: float = 0.2
    """Width of the windows just before and after the switch in which F0 and RMS say how sharp it is."""
    min_segment_s: float = 0.25
    """A segment shorter than this (a clip that ended near or before the switch) is not scored, and counted."""
    protocol: EvaluationProtocol = field(default_factory=EvaluationProtocol)
    """Speakers, sentences, seed (shared by the three settings, so they are paired) and sampling."""
    recognizer: str = "mini"
    """"mini" (embedded) or "emotion2vec" (needs recognizer_dir)."""
    recognizer_dir: str | None = None
    """Recognizer folder; None for the embedded default."""
    n_bootstrap: int = 2000
    """Bootstrap resamples of the paired tests' intervals."""
    allow_unverified_features: bool = False
    """Apply feature sets that record no SAE digest (cannot be checked against ``sae``)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        check_method_inputs(self.methods, METHODS, layer=self.layer, sae=self.sae, selection=self.selection,
                            store=self.store)
        if not self.emotions or NEUTRAL in self.emotions:
            raise ConfigError(f"emotions={self.emotions!r}: name at least one target emotion other than "
                              f"{NEUTRAL} (the switch goes from {NEUTRAL} to it).")
        check_alpha_or_intensity(self.alphas is not None, self.intensity, self.calibration, "emoctl report schedules")
        alphas = self.method_alphas
        missing = [m for m in self.methods if m not in alphas] if self.intensity is None else []
        bad = {m: a for m, a in alphas.items() if isinstance(a, bool) or not isinstance(a, (int, float))
               or not math.isfinite(a) or a <= 0}
        if missing or bad:
            raise ConfigError(f"alphas={alphas!r}: every method needs a finite α > 0 (missing: {missing or 'none'}"
                              f", bad: {bad or 'none'}).")
        too_strong = {m: a for m, a in alphas.items() if m != "emoshift" and not latent_alpha_ok(a)}
        if too_strong:
            raise ConfigError(f"alphas {too_strong} steer latents too hard: α must be {LATENT_ALPHA_RULE}.")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ConfigError(f"window_s={self.window_s} must be a positive number of seconds.")
        if not (math.isfinite(self.min_segment_s) and self.min_segment_s > 0):
            raise ConfigError(f"min_segment_s={self.min_segment_s} must be a positive number of seconds.")
        if self.n_bootstrap < 1:
            raise ConfigError(f"n_bootstrap={self.n_bootstrap} must be >= 1.")
        switch = parse_switch(self.schedule)
        at_s = switch.at.value if switch.at.unit == "s" else None
        if at_s is not None and at_s < self.window_s:
            raise ConfigError(f"schedule switch: {switch.at.describe()} is less than window_s={self.window_s:g} s "
                              "from the start, so there is no full window before the switch; move the switch later "
                              "or narrow the window.")


    @property
    def method_alphas(self) -> dict[str, float]:
        """``alphas`` over the defaults (empty with an intensity: the calibration gives α per emotion)."""
        if self.intensity is not None:
            return {}
        return {m: DEFAULT_ALPHAS[m] for m in self.methods} if self.alphas is None else dict(self.alphas)


def parse_switch(value: dict[str, Any] | str) -> Switch:
    """The report's schedule: a switch whose two values are 0 and 1 (Neutral then the emotion, or back)."""
    spec = parse_schedule(value)
    if not isinstance(spec.body, Switch):
        raise ConfigError(f"the schedules report cuts each clip at one change, so schedule {spec.spec!r} must be a "
                          "switch, e.g. {\"switch\": {\"at_s\": 1.2}}; a ramp or segments have no single cut point.")
    if {spec.body.before, spec.body.after} != {0.0, 1.0}:
        raise ConfigError(f"schedule switch: before={spec.body.before:g}, after={spec.body.after:g}; the report "
                          "compares Neutral (0) with the emotion at full α (1), so give before and after as 0 and 1 "
                          "(either order); scale α with alphas.")
    return spec.body


# ------------------------------------------------------------------------------------------------- time map
def cut_sample(step: int, sample_rate: int, token_rate: float) -> int:
    """The sample where decode step ``step``'s token starts: ``step × sample_rate / token_rate``."""
    exact = step * sample_rate / token_rate
    cut = int(round(exact))
    if abs(cut - exact) > 1e-6:
        raise ConfigError(f"a speech token lasts {sample_rate / token_rate:g} samples ({sample_rate} Hz / "
                          f"{token_rate:g} tokens/s), not a whole number, so step {step} starts between samples; "
                          "this report needs a backbone whose vocoder makes whole samples per token.")
    return cut


def switch_step(steps: StepSchedule) -> int:
    """The first decode step whose multiplier differs from step 0's (the switch as resolved), or 0 if none does."""
    first = steps.multipliers[0]
    return next((t for t, m in enumerate(steps.multipliers) if m != first), 0)  # 0: switched at step 0


def tokens_kept(switched: Sequence[Clip], reference: Sequence[Clip], step: int) -> int:
    """Clips whose tokens 0 .. ``step`` (the prefill's and one per decode step before the switch) equal those of
    the reference clip of the same prompt and seed (unsteered for Neutral first, whole-utterance steering for
    the emotion first); a clip that ended sooner must equal it whole."""
    return sum(int(torch.equal(a.tokens[:step + 1], r.tokens[:step + 1])) for a, r in zip(switched, reference))


def segment_target(segment: str, emotion: str, neutral_first: bool) -> str:
    """The emotion a segment should be heard as: Neutral on the unsteered side of the switch, else ``emotion``."""
    return emotion if (segment == "after") == neutral_first else NEUTRAL


# -------------------------------------------------------------------------------------------- the methods
@dataclass
class ScheduledMethod:
    """One steering method as the report attaches it: ``attach(emotion, schedule, batch_size)`` is the context
    a batch is spoken in, steering toward ``emotion`` at the method's α for it times ``schedule`` (None:
    constant)."""

    name: str
    hookpoint: str
    alphas: dict[str, float]
    """α per target emotion (one value for all, or each emotion's from a calibrated intensity)."""
    attach: Callable[[str, StepSchedule | None, int], AbstractContextManager]


def emoshift_method(setup: SteeringSetup, alphas: dict[str, float]) -> ScheduledMethod:
    """EmoShift's layer toward one emotion for every prompt of a batch (the backbone is told Neutral)."""
    if setup.condition != "neutral":
        raise ConfigError("the EmoShift layer was trained under condition 'emotion', so the backbone would be told "
                          "the target emotion from the first step and there is no Neutral part before the switch; "
                          "use a layer trained with model.condition=neutral.")

    def attach(emotion: str, schedule: StepSchedule | None, n: int) -> AbstractContextManager:
        return emosteer_steer(setup.backbone, setup.layer, [emotion] * n, alpha=alphas[emotion],
                              hookpoint=setup.hookpoint, schedule=schedule)

    return ScheduledMethod("emoshift", setup.hookpoint, alphas, attach)


def sae_emotion_method(backbone: Backbone, sae_dir: str, selection: str, emotions: Sequence[str],
                       alphas: dict[str, float], allow_unverified: bool) -> ScheduledMethod:
    """SAE-Emotion: +α on each emotion's selected latents (decode steps), as in Table 1."""
    sae = load_pretrained(sae_dir)
    sets = load_feature_sets(selection, emotions, sae_dir, sae.cfg.d_sae, allow_unverified=allow_unverified)

    def attach(emotion: str, schedule: StepSchedule | None, n: int) -> AbstractContextManager:
        per_step = schedule.schedule if schedule is not None else None
        return steer(backbone, SAEFeatureSteering(sae, sets[emotion].feature_ids, alphas[emotion], schedule=per_step))

    return ScheduledMethod("sae_emotion", sae.cfg.hook_name, alphas, attach)


def global_method(backbone: Backbone, sae_dir: str, selection: str, store_dir: str, emotions: Sequence[str],
                  alphas: dict[str, float], allow_unverified: bool, progress: bool) -> ScheduledMethod:
    """Global steering: the store's mean difference (emotion − Neutral) at the SAE's hookpoint, norm-matched to
    the emotion's feature set, as in Table 1."""
    sae = load_pretrained(sae_dir)
    sets = load_feature_sets(selection, emotions, sae_dir, sae.cfg.d_sae, allow_unverified=allow_unverified)
    means = store_mean_differences(store_dir, emotions, NEUTRAL, progress=progress)

    def attach(emotion: str, schedule: StepSchedule | None, n: int) -> AbstractContextManager:
        per_step = schedule.schedule if schedule is not None else None
        return steer(backbone, global_steering(means[emotion], sae, sets[emotion].feature_ids, alphas[emotion],
                                               schedule=per_step))

    return ScheduledMethod("global", sae.cfg.hook_name, alphas, attach)


# ------------------------------------------------------------------------------------- hookpoint norms
class StepNorms:
    """Mean L2 norm of a hookpoint's last position at each decode step, over the rows still generating."""

    def __init__(self) -> None:
        self.sums: dict[int, float] = defaultdict(float)
        self.counts: dict[int, int] = defaultdict(int)

    def read(self, x: torch.Tensor, ctx: HookContext) -> None:
        last = x[:, -1] if x.ndim == 3 else x  # (B, d)
        norms = last.detach().float().norm(dim=-1)  # (B,)
        if ctx.active is not None and ctx.active.shape[0] == norms.shape[0]:
            norms = norms[ctx.active.to(norms.device)]
        self.sums[ctx.step] += float(norms.sum())
        self.counts[ctx.step] += int(norms.numel())

    def means(self) -> list[float]:
        """Mean norm per decode step 0 .. last step any row reached."""
        last = max(self.counts, default=-1)
        return [self.sums[t] / self.counts[t] if self.counts.get(t) else math.nan for t in range(last + 1)]


@contextmanager
def _recorded(backbone: Backbone, steering: AbstractContextManager, norms: dict[str, StepNorms]) -> Iterator[None]:
    """``steering`` attached first, then a reader per hookpoint, so each reader sees the steered tensor."""
    with steering:
        handles = [backbone.hooks.add_reader(point, recorder.read, phases=(Phase.DECODE,))
                   for point, recorder in norms.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


# -------------------------------------------------------------------------------------------- the report
@dataclass
class _Spoken:
    """The clips of one (method, emotion, setting) and its hookpoint norms per decode step."""

    clips: list[Clip]
    norms: list[float]


def run_schedules(settings: SchedulesSettings) -> list[dict]:
    """Speak, cut, score and compare (see the module docstring); write the report; return the summary rows."""
    s = settings
    check_output_dir(s.out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    spec = parse_schedule(s.schedule)
    protocol = s.protocol
    setup = SteeringSetup.load(s.layer, s.backbone if s.backbone != BackboneSpec() else None) \
        if "emoshift" in s.methods else None
    backbone = setup.backbone if setup is not None else s.backbone.load()
    steps = spec.resolve_for(backbone, protocol.sampling.max_new_tokens)  # a switch past the cap stops here
    assert isinstance(steps, StepSchedule)  # parse_switch (in the settings) refused ramps and segments
    k = switch_step(steps)
    if k == 0:
        raise ConfigError(f"schedule {spec.spec!r} switches at decode step 0, so there is no part before the switch "
                          "to compare; switch later.")
    switch_s = k / backbone.token_rate
    if switch_s < s.window_s:
        raise ConfigError(f"the switch falls on decode step {k} ({switch_s:g} s), less than window_s={s.window_s:g} s "
                          "from the start; move it later or narrow the window.")
    cut = cut_sample(k, backbone.sample_rate, backbone.token_rate)
    neutral_first = steps.multipliers[0] == 0  # the usual Neutral -> emotion; else emotion -> Neutral

    if s.intensity is not None:  # every method's α for every emotion resolved (or refused) before any work
        alphas = {name: {e: c.alpha for e, c in alphas_for_intensity(str(s.calibration), name, s.emotions,
                                                                     float(s.intensity), backbone.backbone_id).items()}
                  for name in s.methods}
    else:
        alphas = {name: dict.fromkeys(s.emotions, float(a)) for name, a in s.method_alphas.items()}
    methods: list[ScheduledMethod] = []
    for name in s.methods:
        if name == "emoshift":
            assert setup is not None
            setup.targets(list(s.emotions))
            methods.append(emoshift_method(setup, alphas[name]))
        elif name == "sae_emotion":
            methods.append(sae_emotion_method(backbone, str(s.sae), str(s.selection), s.emotions, alphas[name],
                                              s.allow_unverified_features))
        else:
            methods.append(global_method(backbone, str(s.sae), str(s.selection), str(s.store), s.emotions,
                                         alphas[name], s.allow_unverified_features, s.progress))
    root = Path(s.corpus_root)
    texts, _ = protocol.texts(root)
    speakers, voice = protocol.voices(backbone, root), protocol.voice_for(backbone, root)
    neutral = backbone.condition_for(NEUTRAL)
    prompts = [Prompt(t, voice(sp, t), neutral, f"sched-t{i:02d}-{sp}") for i, t in enumerate(texts) for sp in speakers]
    scorers = Scorers.load(s.recognizer, s.recognizer_dir, asr=None, speaker=None, dnsmos=False)
    seed, sampling = protocol.seed, protocol.sampling

    def speak(attach: Callable[[int], AbstractContextManager], hookpoints: Sequence[str]
              ) -> tuple[list[Clip], dict[str, list[float]]]:
        """Every prompt under ``attach(batch_size)``, with each hookpoint's norm per decode step."""
        norms = {point: StepNorms() for point in hookpoints}
        clips = synthesize_steered(backbone, prompts,
                                   lambda batch, start: _recorded(backbone, attach(len(batch)), norms), seed, sampling)
        return clips, {point: recorder.means() for point, recorder in norms.items()}

    jobs = [(m, e, setting) for m in methods for e in s.emotions for setting in SETTINGS[1:]]
    bar = tqdm(total=1 + len(jobs), desc="schedules: speak", unit="setting", disable=not s.progress)
    plain, plain_norms = speak(lambda n: nullcontext(), list(dict.fromkeys(m.hookpoint for m in methods)))
    bar.update()
    spoken = {(m.name, e, "unsteered"): _Spoken(plain, plain_norms[m.hookpoint]) for m in methods for e in s.emotions}
    for m, e, setting in jobs:
        schedule = steps if setting == "switched" else None
        clips, norms = speak(lambda n, m=m, e=e, schedule=schedule: m.attach(e, schedule, n), [m.hookpoint])
        spoken[(m.name, e, setting)] = _Spoken(clips, norms[m.hookpoint])
        bar.update()
    bar.close()

    kept = {f"{m.name}/{e}": tokens_kept(spoken[(m.name, e, "switched")].clips,
                                        spoken[(m.name, e, "unsteered" if neutral_first else "whole")].clips, k)
            for m in methods for e in s.emotions}
    rows = _segment_rows(spoken, methods, s.emotions, cut, neutral_first, s.min_segment_s, scorers, s.progress)
    window_rows = _window_rows(spoken, methods, s.emotions, switch_s, s.window_s)
    summary = summarize(rows, SEGMENT_METRICS) + summarize(window_rows, WINDOW_METRICS)
    paired_ser = paired_comparisons(rows, [("switched", "unsteered"), ("switched", "whole")],
                                    n_bootstrap=s.n_bootstrap, seed=seed)
    paired_probes = _paired_probes(rows, window_rows, s.n_bootstrap, seed)
    over_time = _over_time(spoken, methods, s.emotions, backbone.token_rate)
    short = {key: n for key, n in _short_counts(spoken, cut, s.min_segment_s, backbone.sample_rate).items() if n}

    info = {"backbone": backbone.backbone_id, "methods": {m.name: {"hookpoint": m.hookpoint, "alphas": m.alphas}
                                                           for m in methods},
            "intensity": s.intensity, "calibration": s.calibration,
            "emotions": list(s.emotions), "schedule": steps.record(), "switch_step": k, "switch_s": switch_s,
            "neutral_first": neutral_first, "cut_sample": cut, "sample_rate": backbone.sample_rate,
            "token_rate": backbone.token_rate,
            "window_s": s.window_s, "min_segment_s": s.min_segment_s, "tokens_kept_before_switch": kept,
            "clips": len(prompts), "segments_too_short": short, "speakers": speakers, "n_texts": len(texts),
            "split": protocol.split, "seed": seed, "max_new_tokens": sampling.max_new_tokens,
            "recognizer": getattr(scorers.recognizer, "name", s.recognizer), "protocol": protocol.describe()}
    sae_side = any(m in s.methods for m in ("sae_emotion", "global"))
    paths = {"layer": s.layer if "emoshift" in s.methods else None, "sae": s.sae if sae_side else None,
             "feature_sets": [feature_set_path(str(s.selection), e) for e in s.emotions] if sae_side else None,
             "store": s.store if "global" in s.methods else None,
             "calibration": s.calibration if s.intensity is not None else None}
    record = collect(backbone=backbone, paths=paths, corpus=root,
                     recognizer=(s.recognizer, recognizer_folder(s.recognizer, s.recognizer_dir)),
                     seeds={"sampling": seed},
                     protocol={**protocol.describe(), "schedule": spec.spec, "methods": list(s.methods),
                               "alphas": alphas, "intensity": s.intensity, "emotions": list(s.emotions),
                               "window_s": s.window_s, "min_segment_s": s.min_segment_s,
                               "n_bootstrap": s.n_bootstrap})
    buffer = io.BytesIO()
    schedules_figure(over_time, info).savefig(buffer, format="png")
    extra = {"schedules_paired_ser.csv": csv_bytes(paired_ser), "schedules_paired_probes.csv": csv_bytes(paired_probes),
             "schedules_over_time.csv": csv_bytes(over_time), "schedules.png": buffer.getvalue()}
    markdown = schedules_markdown(summary, paired_ser, paired_probes, info)
    write_report_folder(Path(s.out_dir), "schedules", markdown, summary, rows + window_rows, info, record, extra)
    return summary


def _segments(clip: Clip, cut: int) -> dict[str, tuple[int, int]]:
    """Sample ranges of the part before the cut and the part after it (empty when the clip ended first)."""
    n = len(clip.wave)
    return {"before": (0, min(cut, n)), "after": (min(cut, n), n)}


def _segment_rows(spoken: dict[tuple[str, str, str], _Spoken], methods: Sequence[ScheduledMethod],
                  emotions: Sequence[str], cut: int, neutral_first: bool, min_segment_s: float,
                  scorers: Scorers, progress: bool) -> list[dict]:
    """One row per (method, emotion, setting, clip, segment) long enough to score: SER against the segment's
    own emotion and the probes. Rows of one clip share its prompt id across settings, so they pair."""
    pieces: list[tuple[dict, Utterance, str]] = []
    for m in methods:
        for e in emotions:
            targets = {segment: segment_target(segment, e, neutral_first) for segment in SEGMENTS}
            for setting in SETTINGS:
                for clip in spoken[(m.name, e, setting)].clips:
                    for segment, (start, end) in _segments(clip, cut).items():
                        if (end - start) / clip.sample_rate < min_segment_s:
                            continue
                        base = {"direction": f"{m.name}/{segment}", "emotion": e, "method": setting,
                                "alpha": 0.0 if setting == "unsteered" else m.alphas[e], "utt_id": clip.prompt.utt_id,
                                "speaker": clip.prompt.speaker, "segment": segment, "start_s": start / clip.sample_rate,
                                "end_s": end / clip.sample_rate, "clip_duration_s": len(clip.wave) / clip.sample_rate,
                                "finished": float(clip.finished)}
                        utterance = Utterance(f"{clip.prompt.utt_id}-{segment}", clip.prompt.text, clip.prompt.speaker,
                                              clip.wave[start:end], clip.sample_rate)
                        pieces.append((base, utterance, targets[segment]))
    if not pieces:
        raise ConfigError("no clip lasted past the switch by min_segment_s, so no segment can be scored; move the "
                          "switch earlier or raise max_new_tokens.")
    utterances = [u for _, u, _ in pieces]
    measured = measure(utterances, scorers, chunk=64, progress=progress)
    scored = score(measured, [t for _, _, t in pieces], ReferenceSet())
    profiles = measure_probes([u.wave for u in utterances], [u.sample_rate for u in utterances])
    rows = []
    for (base, _, target), row, profile in zip(pieces, scored, profiles):
        rows.append({**base, "target": target, "predicted": row["predicted"], "ser_hit": row["ser_hit"],
                     "p_target": row["p_target"], **{p: float(getattr(profile, p)) for p in PROBES},
                     "duration_s": row["duration_s"]})
    return rows


def _window_rows(spoken: dict[tuple[str, str, str], _Spoken], methods: Sequence[ScheduledMethod],
                 emotions: Sequence[str], switch_s: float, window_s: float) -> list[dict]:
    """F0 and RMS in the windows [switch − w, switch) and [switch, switch + w) of every clip long enough, and the
    jump (after − before) per clip."""
    rows, waves, rates = [], [], []
    for m in methods:
        for e in emotions:
            for setting in SETTINGS:
                for clip in spoken[(m.name, e, setting)].clips:
                    rate = clip.sample_rate
                    start, mid, end = (round((switch_s + d) * rate) for d in (-window_s, 0.0, window_s))
                    if len(clip.wave) < end:
                        continue
                    rows.append({"direction": f"{m.name}/switch±{window_s:g}s", "emotion": e, "method": setting,
                                 "alpha": 0.0 if setting == "unsteered" else m.alphas[e], "utt_id": clip.prompt.utt_id,
                                 "speaker": clip.prompt.speaker, "segment": f"±{window_s:g}s",
                                 "start_s": start / rate, "end_s": end / rate})
                    waves += [clip.wave[start:mid], clip.wave[mid:end]]
                    rates += [rate, rate]
    profiles = measure_probes(waves, rates) if waves else []
    for i, row in enumerate(rows):
        first, second = profiles[2 * i], profiles[2 * i + 1]
        row.update({"f0_before": first.f0_mean_hz, "f0_after": second.f0_mean_hz,
                    "f0_jump": second.f0_mean_hz - first.f0_mean_hz, "rms_before": first.rms,
                    "rms_after": second.rms, "rms_jump": second.rms - first.rms})
    return rows


def _paired_probes(rows: list[dict], window_rows: list[dict], n_bootstrap: int, seed: int) -> list[dict]:
    """Paired t comparisons of the switched clips with the unsteered and the whole ones: each segment's probes,
    and the windows' F0 and RMS jump and after-window level."""
    out = []
    for source, probes in ((rows, PROBES), (window_rows, ("f0_jump", "rms_jump", "f0_after", "rms_after"))):
        cells: dict[tuple[str, str, str], dict[str, dict]] = defaultdict(dict)
        for r in source:
            cells[(r["direction"], r["emotion"], r["method"])][r["utt_id"]] = r
        for direction, emotion in dict.fromkeys((r["direction"], r["emotion"]) for r in source):
            switched = cells[(direction, emotion, "switched")]
            for other in ("unsteered", "whole"):
                reference = cells[(direction, emotion, other)]
                shared = [u for u in switched if u in reference]
                for probe in probes:
                    test = compare_paired([reference[u][probe] for u in shared], [switched[u][probe] for u in shared],
                                          probe=probe, n_bootstrap=n_bootstrap, seed=seed)
                    out.append({"direction": direction, "emotion": emotion, "method_a": "switched",
                                "method_b": other, **test.to_row()})
    return out


def _short_counts(spoken: dict[tuple[str, str, str], _Spoken], cut: int, min_segment_s: float,
                  sample_rate: int) -> dict[str, int]:
    """Per (method, emotion, setting): clips whose part after the switch is too short to score."""
    limit = cut + min_segment_s * sample_rate
    return {"/".join(key): sum(len(c.wave) < limit for c in value.clips) for key, value in spoken.items()}


def _over_time(spoken: dict[tuple[str, str, str], _Spoken], methods: Sequence[ScheduledMethod],
               emotions: Sequence[str], token_rate: float) -> list[dict]:
    """The figure's data: mean F0 over the clips every 10 ms frame (voiced frames of at least a quarter of the
    clips), and the hookpoint's mean norm per decode step at time step / token_rate."""
    out = []
    for m in methods:
        for e in emotions:
            for setting in SETTINGS:
                run = spoken[(m.name, e, setting)]
                profiles = measure_probes([c.wave for c in run.clips if len(c.wave)],
                                          [c.sample_rate for c in run.clips if len(c.wave)])
                frames = max((len(p.f0_hz) for p in profiles), default=0)
                grid = np.full((len(profiles), frames), np.nan)  # (clips, frames)
                for i, p in enumerate(profiles):
                    grid[i, :len(p.f0_hz)] = p.f0_hz
                voiced = np.isfinite(grid).sum(0)  # (frames,)
                totals = np.where(np.isfinite(grid), grid, 0.0).sum(0)
                mean_f0 = np.where(voiced >= max(2, len(profiles) / 4), totals / np.maximum(voiced, 1), np.nan)
                hop = float(profiles[0].frame_times_s[1]) if profiles and len(profiles[0].frame_times_s) > 1 else 0.01
                for j in range(frames):
                    out.append({"method": m.name, "emotion": e, "setting": setting, "series": "f0_hz",
                                "time_s": j * hop, "value": float(mean_f0[j]), "n": int(voiced[j])})
                for t, norm in enumerate(run.norms):
                    out.append({"method": m.name, "emotion": e, "setting": setting,
                                "series": f"norm:{m.hookpoint}", "time_s": t / token_rate, "value": norm})
    return out


# --------------------------------------------------------------------------------------------- rendering
def _alphas_text(alphas: dict[str, float]) -> str:
    """One α for every emotion as one number, else each emotion's."""
    values = set(alphas.values())
    if len(values) == 1:
        return f"{values.pop():g}"
    return "(" + ", ".join(f"{e} {a:.3g}" for e, a in alphas.items()) + ")"


def schedules_markdown(summary: list[dict], paired_ser: list[dict], paired_probes: list[dict], info: dict) -> str:
    """The report: SER per segment, the probes per segment, and the sharpness of the switch."""
    index = {(r["direction"], r["emotion"], r["method"]): r for r in summary}
    methods, emotions, w = list(info["methods"]), info["emotions"], info["window_s"]
    ser_p = {(r["direction"], r["emotion"], r["method_b"]): r for r in paired_ser}
    probe_p = {(r["direction"], r["emotion"], r["method_b"], r["probe"]): r for r in paired_probes}
    alphas = ", ".join(f"{method_label(m)} α = {_alphas_text(v['alphas'])} at `{v['hookpoint']}`"
                       for m, v in info["methods"].items())
    if info.get("intensity") is not None:
        alphas = (f"Steered to the calibrated intensity P(target) = {info['intensity']:g} (`{info['calibration']}`; "
                  f"the recognizer's reading, biased on synthetic speech): {alphas}")
    kept = ", ".join(f"{key} {n}/{info['clips']}" for key, n in info["tokens_kept_before_switch"].items())
    short = ", ".join(f"{key} {n}" for key, n in info["segments_too_short"].items()) or "none"
    lines = [
        "# Emotion over time: a switch inside one utterance", "",
        f"Backbone `{info['backbone']}` told Neutral; {info['n_texts']} {info['split']}-split sentences × speakers "
        f"{', '.join(info['speakers'])} ({info['clips']} clips per setting), sampling seed {info['seed']} for every "
        f"setting, token cap {info['max_new_tokens']}; recognizer `{info['recognizer']}`. {alphas}. Schedule "
        f"`{info['schedule']['spec']}`: decode step {info['switch_step']} at {info['token_rate']:g} tokens/s, so "
        f"every clip is cut at {info['switch_s']:g} s (sample {info['cut_sample']} at {info['sample_rate']} Hz). "
        "*unsteered*: no hook; *switched*: the schedule; *whole-utterance*: α from the first step. The same prompts, "
        "batches and seeds in all three, so segments pair clip by clip.",
        f"Tokens before the switch equal the unsteered clip's (prefill's and each decode step's up to the switch): "
        f"{kept}. Segments shorter than {info['min_segment_s']:g} s are not scored (clips per setting whose part "
        f"after the switch is that short: {short}).", "",
        "## SER per segment", "",
        "Accuracy against each segment's own emotion (Neutral before the switch, the target after), 95% Wilson "
        "intervals; p: exact McNemar of the switched clips against the same segment of the unsteered and of the "
        "whole-utterance clips.", "",
        "| method | emotion | segment | target | n | unsteered | switched | whole-utterance | p vs unsteered "
        "| p vs whole |", "|---|---|---|---|---:|---|---|---|---:|---:|"]
    for m in methods:
        for e in emotions:
            for segment in SEGMENTS:
                key = (f"{m}/{segment}", e)
                cells = [index.get((*key, setting)) for setting in SETTINGS]
                if cells[1] is None:
                    continue
                target = segment_target(segment, e, info["schedule"]["multipliers"][0] == 0)
                values = [format_estimate(c, "ser_hit") if c is not None else "–" for c in cells]
                p = [_p(ser_p.get((*key, other)), "ser_p") for other in ("unsteered", "whole")]
                lines.append(f"| {method_label(m)} | {e} | {segment} | {target} | {cells[1]['n']} | "
                             + " | ".join(values) + f" | {p[0]} | {p[1]} |")
    lines += ["", "## Acoustic probes per segment", "",
              "Means ± half the 95% t interval of each segment's F0 (voiced frames), RMS and spectral centroid.", "",
              "| method | emotion | segment | F0 unsteered (Hz) | F0 switched | F0 whole | RMS unsteered | RMS switched "
              "| RMS whole | centroid unsteered (Hz) | centroid switched | centroid whole |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    digits = {"f0_mean_hz": 1, "rms": 4, "spectral_centroid_hz": 0}
    for m in methods:
        for e in emotions:
            for segment in SEGMENTS:
                key = (f"{m}/{segment}", e)
                if (*key, "switched") not in index:
                    continue
                values = [format_estimate(index[(*key, st)], p, digits[p]) if (*key, st) in index else "–"
                          for p in PROBES for st in SETTINGS]
                lines.append(f"| {method_label(m)} | {e} | {segment} | " + " | ".join(values) + " |")
    lines += ["", "## Paired differences per segment", "",
              "Switched minus unsteered, and switched minus whole-utterance, on the same clips: mean [95% t interval], "
              "paired t p.", "",
              "| method | emotion | segment | ΔF0 vs unsteered (Hz) | ΔRMS vs unsteered | Δcentroid vs unsteered (Hz) "
              "| ΔF0 vs whole (Hz) | ΔRMS vs whole | Δcentroid vs whole (Hz) |", "|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        for e in emotions:
            for segment in SEGMENTS:
                key = (f"{m}/{segment}", e)
                if (*key, "unsteered", PROBES[0]) not in probe_p:
                    continue
                values = [_diff(probe_p.get((*key, other, p))) for other in ("unsteered", "whole") for p in PROBES]
                lines.append(f"| {method_label(m)} | {e} | {segment} | " + " | ".join(values) + " |")
    lines += ["", f"## How sharp the switch is: ±{w:g} s around it", "",
              f"F0 and RMS in the {w:g} s before the switch and the {w:g} s after it, per clip long enough; the jump is "
              "after − before, clip by clip (means ± half the 95% t interval).", "",
              "| method | emotion | setting | n | F0 before (Hz) | F0 after | F0 jump | RMS before | RMS after "
              "| RMS jump |", "|---|---|---|---:|---|---|---|---|---|---|"]
    for m in methods:
        for e in emotions:
            for setting in SETTINGS:
                r = index.get((f"{m}/switch±{w:g}s", e, setting))
                if r is None:
                    continue
                values = [format_estimate(r, metric, 1 if metric.startswith("f0") else 4) for metric in WINDOW_METRICS]
                lines.append(f"| {method_label(m)} | {e} | {SETTING_LABELS[setting]} | {r['n']} | "
                             + " | ".join(values) + " |")
    lines += ["", "Switched against unsteered (the jump the switch adds to the sentence's own) and against "
              f"whole-utterance steering (how far the {w:g} s after the switch still are from steering all along):",
              "", "| method | emotion | F0 jump − unsteered's (Hz) | RMS jump − unsteered's | F0 after − whole's (Hz) "
              "| RMS after − whole's |", "|---|---|---|---|---|---|"]
    for m in methods:
        for e in emotions:
            key = (f"{m}/switch±{w:g}s", e)
            if (*key, "unsteered", "f0_jump") not in probe_p:
                continue
            values = [_diff(probe_p.get((*key, "unsteered", "f0_jump"))), _diff(probe_p.get((*key, "unsteered", "rms_jump"))),
                      _diff(probe_p.get((*key, "whole", "f0_after"))), _diff(probe_p.get((*key, "whole", "rms_after")))]
            lines.append(f"| {method_label(m)} | {e} | " + " | ".join(values) + " |")
    lines += ["", *paired_markdown(paired_ser, {s: SETTING_LABELS[s] for s in SETTINGS}),
              "Figure: `schedules.png` (mean F0 and the steered hookpoint's norm over time, the switch marked; data in "
              "`schedules_over_time.csv`).", ""]
    return "\n".join(lines)


def _p(record: dict | None, key: str) -> str:
    if record is None or not math.isfinite(record[key]):
        return "–"
    return format_p(record[key])


def _diff(record: dict | None) -> str:
    """``+12.3 [4.1, 20.5], p=0.004`` of a paired comparison (digits by the probe's scale)."""
    if record is None or not math.isfinite(record["mean_diff"]):
        return "–"
    digits = 4 if "rms" in record["probe"] else 1
    if not (math.isfinite(record["ci_low"]) and math.isfinite(record["ci_high"])):
        return f"{record['mean_diff']:+.{digits}f} (n={record['n']})"
    return (f"{record['mean_diff']:+.{digits}f} [{record['ci_low']:+.{digits}f}, {record['ci_high']:+.{digits}f}], "
            f"p={format_p(record['p_t'])}")


def schedules_figure(over_time: list[dict], info: dict):
    """Per (method, emotion): mean F0 over time and the hookpoint's mean norm per decode step, switch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, e) for m in info["methods"] for e in info["emotions"]]
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 2.8 * len(panels)), dpi=110, squeeze=False)
    colors = {"unsteered": "grey", "switched": "tab:red", "whole": "tab:blue"}
    for row, (m, e) in enumerate(panels):
        for setting in SETTINGS:
            for col, series in enumerate(("f0_hz", f"norm:{info['methods'][m]['hookpoint']}")):
                points = [r for r in over_time if r["method"] == m and r["emotion"] == e
                          and r["setting"] == setting and r["series"] == series]
                axes[row, col].plot([r["time_s"] for r in points], [r["value"] for r in points],
                                    color=colors[setting], lw=1.2, label=SETTING_LABELS[setting])
        for col in range(2):
            axes[row, col].axvline(info["switch_s"], color="black", ls="--", lw=1)
            axes[row, col].set_xlabel("time (s); decode step / token rate")
        axes[row, 0].set_ylabel("mean F0 (Hz)")
        axes[row, 0].set_title(f"{method_label(m)}: Neutral → {e}, F0", fontsize=9)
        axes[row, 1].set_ylabel(f"‖h‖ at {info['methods'][m]['hookpoint']}")
        axes[row, 1].set_title(f"{method_label(m)}: steered hookpoint's norm per decode step", fontsize=9)
        axes[row, 0].legend(fontsize=7)
    fig.suptitle(f"Switch at {info['switch_s']:g} s (dashed): F0 and activation over time")
    fig.tight_layout()
    return fig
