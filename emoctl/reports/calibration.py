"""``emoctl calibrate``: the curve from steering strength α to P(target emotion), per method and emotion.

For each method (EmoShift's layer, SAE-Emotion features, Global mean-difference steering, optionally Random SAE
features) and target emotion, the same Neutral prompts on the corpus's *evaluation* sentences are spoken
unsteered (α = 0) and at each α of the method's grid, with the same seeds and batches (so the points of a curve
are paired clip by clip). Every clip is scored by the recognizer (P(target), SER hit), the ASR (WER) and the
speaker encoder (SpkSIM), and whether it finished is kept. :mod:`emoctl.evaluation.calibration` turns the rows
into curves: bootstrap intervals, a monotone (isotonic) fit of P(target) over α and its inverse.

Outputs in ``out_dir``: ``calibration.json`` (the file ``--intensity`` reads), ``calibration.md``,
``calibration.csv`` (one row per method, emotion and α), ``calibration_clips.csv``, ``calibration.png`` (P(target)
and accuracy over α with the fit, WER and the finished rate below) and ``calibration_info.json``.

The intensity is the recognizer's P(target), not a listener's: recognizers are biased on synthetic speech, so a
calibration holds for one recognizer on one backbone, and both are recorded.

:class:`CalibrationSettings` holds every setting and refuses bad ones before any work; :func:`run_calibration`
runs them.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from emoctl.backbones.loading import BackboneSpec
from emoctl.emosteer import EmoSteer
from emoctl.emotions import NEUTRAL
from emoctl.errors import ConfigError
from emoctl.evaluation.calibration import BIAS_WARNING, FILE_NAME, Calibration, Curve, build_curve
from emoctl.evaluation.emoshift_setup import SteeringSetup
from emoctl.evaluation.cell_cache import CellCache, check_kept_blocks
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.evaluation.scoring import References, Scorers
from emoctl.io.fsio import check_output_dir
from emoctl.io.provenance import collect
from emoctl.metrics.loading import recognizer_folder
from emoctl.reports.report_folder import write_report_folder
from emoctl.reports.table1_cells import sweep_cells
from emoctl.reports.table1_methods import (LATENT_METHODS, MethodInputs, SteeringMethods, emoshift_method,
                                           load_directions, method_label)
from emoctl.sae.export import load_pretrained
from emoctl.selection.feature_set import feature_set_path, load_feature_sets
from emoctl.steering import store_mean_differences
from emoctl.steering.sae_features import LATENT_ALPHA_RULE, latent_alpha_ok
from emoctl.store import ActivationStore

METHODS = ("emoshift", "sae_emotion", "global", "random_sae", "cocoemo")
DEFAULT_METHODS = ["emoshift", "sae_emotion", "global"]
DEFAULT_ALPHAS: dict[str, list[float]] = {"emoshift": [0.5, 1.0, 2.0, 3.0, 4.0],
                                          "sae_emotion": [2.0, 4.0, 8.0, 12.0, 16.0],
                                          "global": [2.0, 4.0, 8.0, 12.0, 16.0],
                                          "random_sae": [2.0, 4.0, 8.0, 12.0, 16.0],
                                          "cocoemo": [1.0, 2.0, 3.0, 4.0, 6.0]}


@dataclass(frozen=True)
class CalibrationSettings(MethodInputs):
    """Everything ``emoctl calibrate`` runs with; bad values are refused here, before any work."""

    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    """The backbone (kind, checkpoint folder, device); the calibration holds for it alone."""
    corpus_root: str = "runs/corpus/esd_espeak"
    """ESD-shaped corpus: the evaluation sentences spoken and the speakers' reference recordings."""
    out_dir: str = "reports/calibration"
    """Where calibration.json and the report go."""
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    """Steering methods, of emoshift, sae_emotion, global, random_sae and cocoemo."""
    emotions: list[str] = field(default_factory=lambda: ["Angry", "Happy", "Sad"])
    """Target emotions, each induced from Neutral prompts."""
    alphas: dict[str, list[float]] | None = None
    """The α grid per method (> 0; α = 0 is the unsteered clips); None: EmoShift 0.5 .. 4, latent methods 2 .. 16."""
    protocol: EvaluationProtocol = field(default_factory=lambda: EvaluationProtocol(split="evaluation"))
    """Speakers, sentences (the evaluation split: never Table 1's test sentences), seed and sampling."""
    recognizer: str = "mini"
    """"mini" (embedded) or "emotion2vec" (needs recognizer_dir): the recognizer whose P(target) is calibrated."""
    recognizer_dir: str | None = None
    """Recognizer folder; None for the embedded default."""
    n_bootstrap: int = 2000
    """Bootstrap resamples of each point's intervals."""
    resume: bool = True
    """Keep each finished (method, emotion, α) block under ``out_dir/.partial`` and take the blocks an interrupted
    run of the same inputs and settings finished."""
    allow_unverified_features: bool = False
    """Apply feature sets that record no SAE digest (cannot be checked against ``sae``)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        self.check_inputs(self.methods, METHODS)
        if not self.emotions or NEUTRAL in self.emotions or len(set(self.emotions)) != len(self.emotions):
            raise ConfigError(f"emotions={self.emotions!r}: name each target emotion once, not {NEUTRAL} (each is "
                              f"induced from {NEUTRAL} prompts).")
        unknown_grids = sorted(set(self.alphas or {}) - set(METHODS))
        if unknown_grids:
            raise ConfigError(f"alphas has no method {unknown_grids}; its keys are {', '.join(METHODS)}.")
        for method, grid in self.grids.items():
            if (not grid or len(set(grid)) != len(grid)
                    or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0
                           for a in grid)):
                raise ConfigError(f"alphas.{method}={grid!r}: give distinct finite α > 0 (α = 0 is the unsteered "
                                  "clips, always included).")
            if method in LATENT_METHODS and not all(latent_alpha_ok(a) for a in grid):
                raise ConfigError(f"alphas.{method}={grid!r} steers latents too hard: α must be {LATENT_ALPHA_RULE}.")
        if self.protocol.split == "test":
            raise ConfigError("protocol.split='test': a calibration chooses α, so it runs on the evaluation "
                              "sentences and leaves the test sentences to the reports that use its α; set "
                              "protocol.split to 'evaluation'.")
        if self.n_bootstrap < 1:
            raise ConfigError(f"n_bootstrap={self.n_bootstrap} must be >= 1.")

    @property
    def grids(self) -> dict[str, list[float]]:
        """The α grid of each chosen method, ascending."""
        given = self.alphas or {}
        return {m: sorted(given.get(m, DEFAULT_ALPHAS[m])) for m in self.methods}


def run_calibration(settings: CalibrationSettings) -> list[dict]:
    """Speak every method and emotion at every α, score, fit and write calibration.json and the report; the
    per-point summary rows."""
    s = settings
    check_output_dir(s.out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    if s.resume:
        check_kept_blocks(s.out_dir)
    root, protocol = Path(s.corpus_root), s.protocol
    layer = EmoSteer.load(s.layer) if "emoshift" in s.methods else None
    if layer is not None:
        if layer.metadata.get("condition") != "neutral":
            raise ConfigError(f"the EmoShift layer in {s.layer} was trained under condition "
                              f"{layer.metadata.get('condition')!r}; a calibration induces emotions from Neutral "
                              "prompts, so use a layer trained with model.condition=neutral.")
        missing = [e for e in s.emotions if e not in layer.layer_emotions]
        if missing:
            raise ConfigError(f"the EmoShift layer in {s.layer} steers {layer.layer_emotions}, not {missing}; leave "
                              "them out of emotions or of methods.")
    # With a layer, the backbone is the layer's (its kind, checkpoint and the options it was trained with).
    backbone = (SteeringSetup.load(str(s.layer), s.backbone if s.backbone != BackboneSpec() else None).backbone
                if layer is not None else s.backbone.load())
    sae = feature_sets = None
    means: dict = {}
    store = None
    if any(m in LATENT_METHODS for m in s.methods):
        sae = load_pretrained(str(s.sae))
        feature_sets = load_feature_sets(str(s.selection), s.emotions, str(s.sae), sae.cfg.d_sae,
                                         allow_unverified=s.allow_unverified_features)
    if "global" in s.methods:
        store = ActivationStore(str(s.store))  # opened for its content digest in the record
        means = store_mean_differences(str(s.store), s.emotions, NEUTRAL, progress=s.progress)
    texts, record = protocol.texts(root)
    speakers, voice = protocol.voices(backbone, root), protocol.voice_for(backbone, root)
    scorers = Scorers.load(s.recognizer, s.recognizer_dir, dnsmos=False)
    refs = References(root, record["sentences"], speakers, scorers, used=texts,
                      reference_clips=protocol.reference_clips)
    directions = load_directions(str(s.directions), backbone, s.emotions) if "cocoemo" in s.methods else None
    methods = SteeringMethods(sae, feature_sets or {}, means, seed=protocol.seed, directions=directions)
    made_with = collect(backbone=backbone,
                        paths={"layer": s.layer if layer is not None else None,
                               "sae": s.sae if sae is not None else None,
                               "directions": s.directions if directions is not None else None,
                               "feature_sets": [feature_set_path(str(s.selection), e) for e in s.emotions]
                               if sae is not None else None},
                        stores={"store": store} if store is not None else None, corpus=root,
                        recognizer=(s.recognizer, recognizer_folder(s.recognizer, s.recognizer_dir)),
                        seeds={"sampling": protocol.seed, "random_features": protocol.seed},
                        protocol={**protocol.describe(), "methods": list(s.methods), "alphas": s.grids,
                                  "emotions": list(s.emotions), "n_bootstrap": s.n_bootstrap})
    cache = CellCache(s.out_dir, made_with, enabled=s.resume)
    extra = emoshift_method(backbone, layer) if layer is not None else None
    rows = sweep_cells(backbone, methods, ["unsteered", *s.methods], s.emotions, texts, speakers, s.grids, scorers,
                       refs, protocol.seed, protocol.sampling, extra, progress=s.progress, voice=voice, cache=cache)
    curves = curves_from_rows(rows, s.methods, s.emotions, s.n_bootstrap, protocol.seed)
    recognizer_name = getattr(scorers.recognizer, "name", s.recognizer)
    calibration = Calibration(backbone.backbone_id, recognizer_name, tuple(curves), made_with)
    summary = point_rows(curves)
    info = {"backbone": backbone.backbone_id, "recognizer": recognizer_name, "methods": list(s.methods),
            "emotions": list(s.emotions), "alphas": s.grids, "speakers": speakers, "n_texts": len(texts),
            "split": protocol.split, "seed": protocol.seed, "max_new_tokens": protocol.sampling.max_new_tokens,
            "protocol": protocol.describe(), "warning": BIAS_WARNING}
    calibration_bytes = io.BytesIO()
    figure = calibration_figure(curves, s.methods, s.emotions)
    figure.savefig(calibration_bytes, format="png")
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    calibration.save(out / FILE_NAME)
    write_report_folder(out, "calibration", calibration_markdown(curves, info), summary, rows, info, made_with,
                        {"calibration.png": calibration_bytes.getvalue()})
    cache.clear()
    return summary


def curves_from_rows(rows: Sequence[dict], methods: Sequence[str], emotions: Sequence[str], n_bootstrap: int,
                     seed: int) -> list[Curve]:
    """One curve per (method, emotion) from :func:`sweep_cells` rows: ``unsteered`` is α = 0, ``method@α`` each α."""
    curves = []
    for method in methods:
        for emotion in emotions:
            by_alpha: dict[float, list[dict]] = {}
            for r in rows:
                if r["emotion"] != emotion:
                    continue
                if r["method"] == "unsteered":
                    by_alpha.setdefault(0.0, []).append(r)
                elif r["method"].partition("@")[0] == method:
                    by_alpha.setdefault(float(r["alpha"]), []).append(r)
            curves.append(build_curve(method, emotion, by_alpha, n_bootstrap, seed))
    return curves


def point_rows(curves: Sequence[Curve]) -> list[dict]:
    """calibration.csv: one row per (method, emotion, α)."""
    return [{"method": c.method, "emotion": c.emotion, **vars(p)} for c in curves for p in c.points]


def _f(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def calibration_markdown(curves: Sequence[Curve], info: dict) -> str:
    lines = ["# Calibration: steering strength α → P(target emotion)", "",
             f"Backbone `{info['backbone']}`, recognizer `{info['recognizer']}`. Neutral prompts: "
             f"{info['n_texts']} {info['split']}-split sentences × speakers {', '.join(info['speakers'])}, seed "
             f"{info['seed']} for every α (α = 0: unsteered, the same clips for every method). P(target) is the "
             "recognizer's mean probability of the target emotion, with a 95% percentile-bootstrap interval over "
             "clips; *fit* is its monotone (isotonic) fit over α, which `--intensity` inverts. Accuracy is the "
             "share of clips the recognizer labels with the target.", "",
             f"**Caution:** {info['warning']}; this calibration holds for this recognizer on this backbone.", "",
             "## How smoothly each method calibrates", "",
             "*Reached*: the fit's P(target) unsteered and at its top. *Roughness*: root mean square of the measured "
             "P(target) around the fit (0: the measured curve is already monotone). *Reversals*: steps up the α grid "
             "where the measured P(target) falls. WER and finished: at the α of the fit's top.", "",
             "| method | emotion | reached P(target) | at α | roughness | reversals | WER there | finished there |",
             "|---|---|---|---|---|---|---|---|"]
    for c in curves:
        low, high = c.reached
        top = next(p for p in c.points if p.fit == high)
        lines.append(f"| {method_label(c.method)} | {c.emotion} | {low:.2f} → {high:.2f} | {top.alpha:g} | "
                     f"{c.roughness:.3f} | {c.reversals} | {_f(top.wer)} | {_f(top.finished)} |")
    lines += ["", "## The curves", "",
              "| method | emotion | α | n | P(target) [95% CI] | fit | accuracy [95% CI] | WER | SpkSIM | finished |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for c in curves:
        for p in c.points:
            lines.append(f"| {method_label(c.method)} | {c.emotion} | {p.alpha:g} | {p.n} | {p.p_target:.3f} "
                         f"[{p.p_target_low:.3f}, {p.p_target_high:.3f}] | {p.fit:.3f} | {p.accuracy:.2f} "
                         f"[{p.accuracy_low:.2f}, {p.accuracy_high:.2f}] | {_f(p.wer)} | {_f(p.spk_sim)} | "
                         f"{_f(p.finished)} |")
    lines += ["", "`emoctl steer emoshift --intensity P --calibration <this folder>` (and `emoctl report schedules "
              "--intensity P`) take the smallest α whose fit reaches P, and print it.", ""]
    return "\n".join(lines)


def calibration_figure(curves: Sequence[Curve], methods: Sequence[str], emotions: Sequence[str]):
    """Per method: P(target) with intervals and the monotone fit (top), WER and finished rate (bottom)."""
    import matplotlib  # lazy: plotting only when a report is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(methods), figsize=(4.2 * len(methods), 6.4), dpi=110, squeeze=False,
                             sharey="row")
    colors = dict(zip(emotions, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for col, method in enumerate(methods):
        top, bottom = axes[0, col], axes[1, col]
        for c in (c for c in curves if c.method == method):
            a = [p.alpha for p in c.points]
            color = colors[c.emotion]
            top.errorbar(a, [p.p_target for p in c.points],
                         yerr=[[p.p_target - p.p_target_low for p in c.points],
                               [p.p_target_high - p.p_target for p in c.points]],
                         fmt="o", ms=4, capsize=2, color=color, label=f"{c.emotion} P(target)")
            top.plot(a, [p.fit for p in c.points], "-", color=color, lw=1.5)
            top.plot(a, [p.accuracy for p in c.points], ":", color=color, lw=1)
            bottom.plot(a, [p.wer for p in c.points], "-o", ms=3, color=color, label=f"{c.emotion} WER")
            bottom.plot(a, [p.finished for p in c.points], "--", color=color, lw=1)
        top.set_title(f"{method_label(method)}", fontsize=10)
        top.set_ylim(0, 1)
        top.set_ylabel("P(target)" if col == 0 else "")
        bottom.set_ylabel("WER / finished rate" if col == 0 else "")
        bottom.set_xlabel("α (EmoShift's strength)" if method == "emoshift" else "α (latent units, norm-matched)")
        top.legend(fontsize=7)
    fig.suptitle("Calibration: α → P(target emotion) by the recognizer (biased on synthetic speech)\n"
                 "top: P(target) ± 95% CI (dots), monotone fit (line), accuracy (dotted); "
                 "bottom: WER (line), finished rate (dashed)", fontsize=10)
    fig.tight_layout()
    return fig
