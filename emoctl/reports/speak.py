"""``emoctl steer speak``: speak sentences under any schedule a user writes, for any method, and score each part.

The schedule is a switch, a ramp or a list of segments (:mod:`emoctl.steering.schedules`); the method is EmoShift's
layer (segments become its per-step emotion mix), SAE-Emotion features or Global mean-difference steering
(segments become one intervention per segment, their schedules complementary). The same prompts are spoken
unsteered and scheduled with the same seeds and batches, and both are written as WAV files to listen to side by
side.

Every clip is cut into its **parts** by the step-to-time map (decode step k starts ``k / token_rate`` s in): for a
switch, before and after it; for a ramp, before, during and after it; for segments, each segment and every
unsteered gap between them. Each part long enough is scored against its own emotion (the segment's, or Neutral
where nothing steers) by the recognizer, and measured by the probes (F0, RMS, spectral centroid), beside the same
stretch of the unsteered clip.

Outputs in ``out_dir``: ``audio/<utt_id>.unsteered.wav`` and ``.scheduled.wav``, ``speak.md``, ``speak.csv`` (per
part and setting), ``speak_clips.csv`` (per clip and part) and ``speak_info.json`` (the schedule as resolved).
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from emoctl.backbones.base import Backbone, Prompt
from emoctl.backbones.loading import BackboneSpec
from emoctl.emosteer import EmoSteer, steer as emosteer_steer
from emoctl.emotions import NEUTRAL
from emoctl.errors import ConfigError
from emoctl.evaluation.calibration import alphas_for_intensity, check_alpha_or_intensity
from emoctl.evaluation.emoshift_setup import SteeringSetup
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.evaluation.scoring import ReferenceSet, Scorers, Utterance, measure, score
from emoctl.evaluation.steered import synthesize_steered
from emoctl.evaluation.summary import format_estimate, summarize
from emoctl.io.formats import wav_bytes
from emoctl.io.fsio import atomic_folder, check_output_dir
from emoctl.io.provenance import collect
from emoctl.metrics.loading import recognizer_folder
from emoctl.probes import measure as measure_probes
from emoctl.reports.report_folder import write_report_folder
from emoctl.reports.table1_methods import load_directions, method_label
from emoctl.sae.export import load_pretrained
from emoctl.selection.feature_set import load_feature_sets
from emoctl.steering import SAEFeatureSteering, global_steering, steer, store_mean_differences, vector_steering
from emoctl.steering.sae_features import LATENT_ALPHA_RULE, latent_alpha_ok
from emoctl.steering.schedules import Ramp, SegmentPlan, Segments, StepSchedule, Switch, parse_schedule
from emoctl.synthesis import Clip

METHODS = ("emoshift", "sae_emotion", "global", "cocoemo")
SETTINGS = ("unsteered", "scheduled")
PROBES = ("f0_mean_hz", "rms", "spectral_centroid_hz")
METRICS = ["ser_hit", "p_target", *PROBES, "duration_s"]


@dataclass(frozen=True)
class SpeakSettings:
    """Everything ``emoctl steer speak`` runs with; bad values are refused here, before any work."""

    schedule: dict[str, Any]
    """The schedule (docs/commands.md, Schedules): ``{"switch": {"at_s": 1.0}}``, ``{"ramp": {...}}`` or
    ``{"segments": [{"emotion": "Angry", "alpha": 2, "end_s": 1.0}, {"emotion": "Sad", "alpha": 2}]}``."""
    method: str = "emoshift"
    """emoshift (the layer), sae_emotion (the SAE's feature sets), global (the store's mean difference) or cocoemo
    (mean-difference directions at several layers, from ``emoctl extract``)."""
    emotion: str | None = None
    """The emotion a switch or ramp steers toward (segments name their own)."""
    alpha: float | None = None
    """α of a switch or ramp (its multiplier scales it per step); segments give their own α."""
    intensity: float | None = None
    """In place of alpha for a switch or ramp: a target P(emotion) turned into α by ``calibration``."""
    calibration: str | None = None
    """calibration.json (or its folder) from ``emoctl calibrate`` on this backbone; needed with intensity."""
    texts: list[str] | None = None
    """Sentences to speak; None: the protocol's corpus sentences."""
    layer: str | None = "emoctl/assets/emoshift_mini"
    """EmoShift layer folder (trained with the backbone told Neutral); for the method emoshift."""
    sae: str | None = "emoctl/assets/sae_mini"
    """Exported SAE folder; for sae_emotion and global."""
    selection: str | None = "emoctl/assets/select_mini"
    """The SAE's feature sets (features_<emotion>.json); for sae_emotion and global."""
    store: str | None = None
    """The activation store the SAE was trained on; for global."""
    directions: str | None = "emoctl/assets/directions_mini"
    """Steering-vector folder from ``emoctl extract``; for cocoemo."""
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    """The backbone (kind, checkpoint folder, device)."""
    corpus_root: str = "runs/corpus/esd_espeak"
    """ESD-shaped corpus: the sentences (when texts is None) and, for a backbone that clones voices, the speakers'
    reference clips."""
    out_dir: str = "runs/speak"
    """Where the audio and the tables go."""
    protocol: EvaluationProtocol = field(default_factory=lambda: EvaluationProtocol(n_texts=2))
    """Speakers, sentences, seed (shared by both settings, so parts pair clip by clip) and sampling."""
    min_part_s: float = 0.25
    """A part shorter than this (or cut off by the clip's end) is not scored."""
    recognizer: str = "mini"
    """"mini" (embedded) or "emotion2vec" (needs recognizer_dir)."""
    recognizer_dir: str | None = None
    """Recognizer folder; None for the embedded default."""
    allow_unverified_features: bool = False
    """Apply feature sets that record no SAE digest (cannot be checked against ``sae``)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: choose one of {', '.join(METHODS)}.")
        spec = parse_schedule(self.schedule)
        if isinstance(spec.body, Segments):
            given = {k: v for k, v in (("emotion", self.emotion), ("alpha", self.alpha), ("intensity", self.intensity))
                     if v is not None}
            if given:
                raise ConfigError(f"schedule segments name their own emotion and alpha, so {given} would be ignored; "
                                  "leave emotion, alpha and intensity out, or give a switch or a ramp.")
            bad = [f"segments[{i}]" for i, s in enumerate(spec.body.segments)
                   if s.emotion == NEUTRAL and s.alpha != 0 and self.method != "emoshift"]
            if bad:
                raise ConfigError(f"{', '.join(bad)}: a {NEUTRAL} segment with alpha != 0 has no features to steer "
                                  f"for {self.method}; give it alpha 0 (unsteered), or leave the gap out.")
            alphas = [s.alpha for s in spec.body.segments]
        else:
            if not self.emotion or self.emotion == NEUTRAL:
                raise ConfigError(f"a {spec.kind} steers toward one emotion: give emotion (not {NEUTRAL}), got "
                                  f"{self.emotion!r}.")
            check_alpha_or_intensity(self.alpha is not None, self.intensity, self.calibration, "emoctl steer speak")
            if self.alpha is None and self.intensity is None:
                raise ConfigError(f"a {spec.kind} needs alpha (or intensity with calibration), its strength once on.")
            alphas = [self.alpha] if self.alpha is not None else []
        if any(isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) for a in alphas):
            raise ConfigError(f"alpha {alphas} must be finite.")
        if self.method not in ("emoshift", "cocoemo") and not all(latent_alpha_ok(a) for a in alphas):
            raise ConfigError(f"alpha {alphas} steers latents too hard: α must be {LATENT_ALPHA_RULE}.")
        if self.method == "emoshift" and not self.layer:
            raise ConfigError("method emoshift needs layer, the folder of a trained EmoSteer layer.")
        if self.method == "cocoemo" and not self.directions:
            raise ConfigError("method cocoemo needs directions, a steering-vector folder from `emoctl extract`.")
        if self.method in ("sae_emotion", "global") and not (self.sae and self.selection):
            raise ConfigError(f"method {self.method} needs sae and selection (the SAE folder and its feature sets).")
        if self.method == "global" and not self.store:
            raise ConfigError("method global needs store, the activation store the SAE was trained on.")
        if self.texts is not None and (not self.texts or not all(isinstance(t, str) and t.strip() for t in self.texts)):
            raise ConfigError(f"texts={self.texts!r}: give non-empty sentences, or null for the corpus's.")
        if not (math.isfinite(self.min_part_s) and self.min_part_s > 0):
            raise ConfigError(f"min_part_s={self.min_part_s} must be a positive number of seconds.")


@dataclass(frozen=True)
class Part:
    """A stretch of every clip between two decode steps, and the emotion it should be heard as."""

    label: str
    start: int
    end: int
    """Decode steps start .. end - 1 (end: the token cap for the last part)."""
    target: str
    alpha: float = 0.0
    """The largest α steering reaches in the part (0: unsteered there)."""


def parts_of(resolved: StepSchedule | SegmentPlan, body: Any, emotion: str | None, alpha: float | None = None
             ) -> list[Part]:
    """The parts a schedule cuts a clip into, in time order (see the module docstring); ``alpha`` is a switch's or
    ramp's strength (segments carry their own)."""
    cap, rate = resolved.cap, resolved.token_rate
    if isinstance(resolved, SegmentPlan):
        parts, previous = [], 0
        for i, s in enumerate(resolved.segments):
            if s.start > previous:
                parts.append(Part(f"gap before segments[{i}]", previous, s.start, NEUTRAL))
            target = s.emotion if s.alpha != 0 else NEUTRAL
            parts.append(Part(f"segments[{i}] {s.emotion} α={s.alpha:g}", s.start, s.end, target, s.alpha))
            previous = s.end
        if previous < cap:
            parts.append(Part("after the last segment", previous, cap, NEUTRAL))
        return parts
    assert emotion is not None and alpha is not None
    if isinstance(body, Switch):
        at = body.at.step(rate)
        return [Part(f"before the switch (×{body.before:g})", 0, at, emotion if body.before else NEUTRAL,
                     alpha * body.before),
                Part(f"after the switch (×{body.after:g})", at, cap, emotion if body.after else NEUTRAL,
                     alpha * body.after)]
    assert isinstance(body, Ramp)
    start, end = body.start.step(rate), body.end.step(rate)
    low, high = body.start_value, body.end_value
    parts = [Part(f"before the ramp (×{low:g})", 0, start, emotion if low else NEUTRAL, alpha * low),
             Part(f"the ramp ({body.shape})", start, end, emotion, alpha * max(low, high, key=abs)),
             Part(f"after the ramp (×{high:g})", end, cap, emotion if high else NEUTRAL, alpha * high)]
    return [p for p in parts if p.end > p.start]


def _attach(s: SpeakSettings, backbone: Backbone, resolved: StepSchedule | SegmentPlan, alpha: float | None,
            layer: EmoSteer | None) -> tuple[str, Any]:
    """The hookpoint and the ``attach(batch_size)`` context of the method under the schedule (``layer``: the
    EmoShift layer, loaded with its backbone)."""
    emotions = ([seg.emotion for seg in resolved.segments if seg.alpha != 0] if isinstance(resolved, SegmentPlan)
                else [str(s.emotion)])
    if s.method == "emoshift":
        assert layer is not None
        if layer.metadata.get("condition") != "neutral":
            raise ConfigError(f"the EmoShift layer in {s.layer} was trained under condition "
                              f"{layer.metadata.get('condition')!r}; speak tells the backbone Neutral, so use a layer "
                              "trained with model.condition=neutral.")
        missing = sorted(set(emotions) - set(layer.layer_emotions))
        if missing:
            raise ConfigError(f"the EmoShift layer in {s.layer} steers {layer.layer_emotions}, not {missing}.")
        hookpoint = layer.metadata.get("hookpoint", "lm_out")

        def attach(n: int) -> AbstractContextManager:
            if isinstance(resolved, SegmentPlan):
                return emosteer_steer(backbone, layer, None, alpha=1.0, hookpoint=hookpoint, schedule=resolved)
            return emosteer_steer(backbone, layer, [str(s.emotion)] * n, alpha=alpha, hookpoint=hookpoint,
                                  schedule=resolved)

        return hookpoint, attach
    if s.method == "cocoemo":
        vectors = load_directions(str(s.directions), backbone, emotions)
        hookpoint = ",".join(vectors.hookpoints)

        def build(e: str, a: float, schedule: list[float] | None):
            return vector_steering(vectors, e, a, schedule=schedule)
    else:
        sae = load_pretrained(str(s.sae))
        hookpoint = sae.cfg.hook_name
        sets = load_feature_sets(str(s.selection), emotions, str(s.sae), sae.cfg.d_sae,
                                 allow_unverified=s.allow_unverified_features)
        if s.method == "global":
            means = store_mean_differences(str(s.store), list(sets), NEUTRAL, progress=s.progress)

            def build(e: str, a: float, schedule: list[float] | None):
                return global_steering(means[e], sae, sets[e].feature_ids, a, schedule=schedule)
        else:
            def build(e: str, a: float, schedule: list[float] | None):
                return SAEFeatureSteering(sae, sets[e].feature_ids, a, schedule=schedule)

    if isinstance(resolved, SegmentPlan):
        interventions = resolved.interventions(build)
    else:
        interventions = [build(str(s.emotion), float(alpha), resolved.schedule)]  # type: ignore[arg-type]
    return hookpoint, lambda n: steer(backbone, *interventions)


def run_speak(settings: SpeakSettings) -> list[dict]:
    """Speak unsteered and scheduled, write the audio, score every part; the per-part summary rows."""
    s = settings
    check_output_dir(s.out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    protocol, root = s.protocol, Path(s.corpus_root)
    # EmoShift speaks on the layer's backbone (its kind, checkpoint and the options it was trained with).
    setup = (SteeringSetup.load(str(s.layer), s.backbone if s.backbone != BackboneSpec() else None)
             if s.method == "emoshift" else None)
    backbone = setup.backbone if setup is not None else s.backbone.load()
    spec = parse_schedule(s.schedule)
    resolved = spec.resolve_for(backbone, protocol.sampling.max_new_tokens)  # a time past the cap stops here
    alpha = s.alpha
    if s.intensity is not None:
        choice = alphas_for_intensity(str(s.calibration), s.method, [str(s.emotion)], float(s.intensity),
                                      backbone.backbone_id)
        alpha = choice[str(s.emotion)].alpha
    hookpoint, attach = _attach(s, backbone, resolved, alpha, setup.layer if setup is not None else None)
    parts = parts_of(resolved, spec.body, s.emotion, alpha)
    texts = list(s.texts) if s.texts is not None else protocol.texts(root)[0]
    speakers, voice = protocol.voices(backbone, root), protocol.voice_for(backbone, root)
    neutral = backbone.condition_for(NEUTRAL)
    prompts = [Prompt(t, voice(sp, t), neutral, f"speak-t{i:02d}-{sp}") for i, t in enumerate(texts) for sp in speakers]
    seed, sampling = protocol.seed, protocol.sampling
    spoken = {"unsteered": synthesize_steered(backbone, prompts, None, seed, sampling),
              "scheduled": synthesize_steered(backbone, prompts, lambda batch, start: attach(len(batch)), seed,
                                              sampling)}
    first = min((p.start for p in parts if p.target != NEUTRAL), default=resolved.cap)
    kept = sum(int(torch.equal(a.tokens[:first + 1], u.tokens[:first + 1]))  # a shorter clip: equal whole
               for a, u in zip(spoken["scheduled"], spoken["unsteered"]))
    rows, short = _part_rows(spoken, parts, backbone, s.min_part_s, Scorers.load(s.recognizer, s.recognizer_dir,
                                                                                 asr=None, speaker=None, dnsmos=False),
                             s.progress)
    summary = summarize(rows, METRICS)
    info = {"backbone": backbone.backbone_id, "method": s.method, "hookpoint": hookpoint, "emotion": s.emotion,
            "alpha": alpha, "intensity": s.intensity, "calibration": s.calibration, "schedule": resolved.record(),
            "parts": [vars(p) | {"start_s": p.start / backbone.token_rate, "end_s": p.end / backbone.token_rate}
                      for p in parts],
            "tokens_kept_before_steering": kept, "first_steered_step": first, "clips": len(prompts),
            "parts_too_short": short, "speakers": speakers, "texts": texts, "seed": seed,
            "max_new_tokens": sampling.max_new_tokens, "protocol": protocol.describe()}
    paths = {"layer": s.layer if s.method == "emoshift" else None,
             "sae": s.sae if s.method in ("sae_emotion", "global") else None,
             "directions": s.directions if s.method == "cocoemo" else None,
             "store": s.store if s.method == "global" else None,
             "calibration": s.calibration if s.intensity is not None else None}
    record = collect(backbone=backbone, paths=paths, corpus=root if s.texts is None else None,
                     recognizer=(s.recognizer, recognizer_folder(s.recognizer, s.recognizer_dir)),
                     seeds={"sampling": seed},
                     protocol={**protocol.describe(), "schedule": spec.spec, "method": s.method, "emotion": s.emotion,
                               "alpha": alpha, "intensity": s.intensity, "texts": s.texts})
    out = Path(s.out_dir)
    with atomic_folder(out / "audio") as audio:  # the clips appear together or not at all
        for setting, clips in spoken.items():
            for clip in clips:
                (audio / f"{clip.prompt.utt_id}.{setting}.wav").write_bytes(wav_bytes(clip.wave, clip.sample_rate))
    write_report_folder(out, "speak", speak_markdown(summary, info, parts), summary, rows, info, record)
    return summary


def _part_rows(spoken: dict[str, list[Clip]], parts: Sequence[Part], backbone: Backbone, min_part_s: float,
               scorers: Scorers, progress: bool) -> tuple[list[dict], dict[str, int]]:
    """One row per (setting, clip, part) long enough: SER against the part's emotion and the probes."""
    pieces: list[tuple[dict, Utterance, str]] = []
    short: dict[str, int] = {}
    for setting, clips in spoken.items():
        for clip in clips:
            for part in parts:
                start = round(part.start * clip.sample_rate / backbone.token_rate)
                end = min(len(clip.wave), round(part.end * clip.sample_rate / backbone.token_rate))
                if (end - start) / clip.sample_rate < min_part_s:
                    short[part.label] = short.get(part.label, 0) + int(setting == "scheduled")
                    continue
                base = {"direction": part.label, "emotion": part.target, "method": setting,
                        "alpha": part.alpha if setting == "scheduled" else 0.0, "utt_id": clip.prompt.utt_id,
                        "speaker": clip.prompt.speaker,
                        "start_s": start / clip.sample_rate, "end_s": end / clip.sample_rate,
                        "finished": float(clip.finished)}
                pieces.append((base, Utterance(f"{clip.prompt.utt_id}-{part.start}", clip.prompt.text,
                                               clip.prompt.speaker, clip.wave[start:end], clip.sample_rate),
                               part.target))
    if not pieces:
        raise ConfigError("no part of any clip lasted min_part_s, so nothing can be scored; move the schedule's "
                          "times earlier, raise max_new_tokens or lower min_part_s.")
    utterances = [u for _, u, _ in pieces]
    scored = score(measure(utterances, scorers, chunk=64, progress=progress), [t for _, _, t in pieces],
                   ReferenceSet())
    profiles = measure_probes([u.wave for u in utterances], [u.sample_rate for u in utterances])
    rows = [{**base, "target": target, "predicted": row["predicted"], "ser_hit": row["ser_hit"],
             "p_target": row["p_target"], **{p: float(getattr(profile, p)) for p in PROBES},
             "duration_s": row["duration_s"]}
            for (base, _, target), row, profile in zip(pieces, scored, profiles)]
    return rows, {k: v for k, v in short.items() if v}


def speak_markdown(summary: list[dict], info: dict, parts: Sequence[Part]) -> str:
    index = {(r["direction"], r["method"]): r for r in summary}
    strength = (f"α = {info['alpha']:g}" if info["alpha"] is not None else "each segment's α")
    if info["intensity"] is not None:
        strength += f" (the calibrated intensity {info['intensity']:g}, `{info['calibration']}`)"
    lines = ["# Speaking under a schedule", "",
             f"{method_label(info['method'])} at `{info['hookpoint']}` on `{info['backbone']}`, backbone told Neutral, "
             f"{strength}; schedule `{info['schedule']['spec']}`. {info['clips']} clips "
             f"({len(info['texts'])} sentences × speakers {', '.join(info['speakers'])}), spoken unsteered and "
             f"scheduled with seed {info['seed']}; audio in `audio/`. Each part is cut at its decode steps / "
             f"token rate and scored against its own emotion. Tokens before the first steered step equal the "
             f"unsteered clip's in {info['tokens_kept_before_steering']}/{info['clips']} clips. Means ± half the 95% "
             "interval (Wilson for accuracy).", "",
             "| part | steps | seconds | heard as | n | acc unsteered | acc scheduled | P(target) unsteered | "
             "P(target) scheduled | F0 unsteered (Hz) | F0 scheduled | RMS unsteered | RMS scheduled |",
             "|---|---|---|---|---:|---|---|---|---|---|---|---|---|"]
    for part, shown in zip(parts, info["parts"]):
        u, sch = index.get((part.label, "unsteered")), index.get((part.label, "scheduled"))
        if u is None or sch is None:
            continue
        cells = [format_estimate(r, m, d) for m, d in (("ser_hit", 2), ("p_target", 3), ("f0_mean_hz", 1),
                                                        ("rms", 4)) for r in (u, sch)]
        lines.append(f"| {part.label} | {part.start}-{part.end - 1} | {shown['start_s']:g}-{shown['end_s']:g} | "
                     f"{part.target} | {sch['n']} | " + " | ".join(cells) + " |")
    short = info["parts_too_short"]
    lines += ["", "Parts shorter than the minimum in some clips (not scored there): "
              + (", ".join(f"{k} {v}" for k, v in short.items()) if short else "none") + ".", ""]
    return "\n".join(lines)
