"""``emoctl report mixtures``: mixed emotions from soft labels for every method that can mix, scored as CoCoEmo
scores them.

Each mixture is a soft label, emotion -> proportion (normalized to sum 1), and every method builds it from its
pure emotions:

* ``emoshift``: the EmoSteer layer's weighted shift, Σ_e w_e ε_e (its own compound emotions);
* ``sae_emotion`` / ``global``: each emotion's feature set (or norm-matched mean difference) at α·w_e, summed;
* ``cocoemo``: at each of its layers the soft-label weighted sum of the emotions' directions, Σ_e w_e t_e
  (CoCoEmo's ``create_sample_specific_mixed_vectors``), at α.

Per clip, against the same prompt unsteered (same voice, sentence and seed), as CoCoEmo's ``scripts/evaluate.py``
and ``cocoemo/evaluation/mixed_metrics.py`` define them:

* **TEP**: the mean over the mixture's emotions of the recognizer's P(emotion);
* **E-SIM**: the cosine of the clip's recognizer embedding with the mixture's reference, the proportion-weighted
  mean of the emotions' prototypes (CoCoEmo compares with a recording of the mixed emotion; the corpus has none);
* **S-SIM**: speaker similarity with the voice's reference recordings; **WER**;
* **ρ**: Spearman's correlation between the asked proportions and each emotion's *increase* of P(emotion) over
  the unsteered clip, per clip with at least two emotions, then averaged over clips (CoCoEmo's
  ``compute_rank_correlation``); beside it, over the whole grid, the correlation between the asked share of the
  first emotion of each pair and its measured share of the pair's increases, over the clips in which neither
  emotion fell (how well a *grid* of proportions orders);
* **H-Rate**: the share of clips whose dominant asked emotion has the largest increase (ties by ``np.isclose``
  count as hits; CoCoEmo's ``compute_dominant_hit_rate``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch.nn.functional as F
from scipy import stats
from tqdm.auto import tqdm

from emoctl.backbones.base import Backbone, Prompt
from emoctl.backbones.loading import BackboneSpec
from emoctl.emosteer import EmoSteer, steer as emosteer_steer
from emoctl.emotions import ESD_EMOTIONS, NEUTRAL
from emoctl.errors import ConfigError
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.evaluation.scoring import MeasuredClips, References, Scorers, measure_clips, score_clips
from emoctl.evaluation.steered import synthesize_steered
from emoctl.evaluation.summary import csv_bytes
from emoctl.io.fsio import atomic_write_bytes, check_output_dir, save_figure_atomically
from emoctl.io.provenance import collect, stamp, write_report_info
from emoctl.metrics.loading import recognizer_folder
from emoctl.reports.table1_methods import MethodInputs, load_directions, method_label
from emoctl.sae.export import load_pretrained
from emoctl.selection.feature_set import load_feature_sets
from emoctl.steering import MultiLayerSteering, SAEFeatureSteering, global_steering, steer, store_mean_differences

MIXING_METHODS = ("emoshift", "sae_emotion", "global", "cocoemo")
DEFAULT_ALPHAS = {"emoshift": 2.0, "sae_emotion": 8.0, "global": 4.0, "cocoemo": 2.0}
"""SAE-Emotion, Global and CoCoEmo at the α Table 1 chooses on the mini TTS; EmoShift at its compound emotions'
α (``emoctl steer compound``)."""
DEFAULT_MIXTURES: list[dict[str, float]] = [
    {"Angry": 0.75, "Sad": 0.25}, {"Angry": 0.5, "Sad": 0.5}, {"Angry": 0.25, "Sad": 0.75},
    {"Happy": 0.75, "Surprise": 0.25}, {"Happy": 0.5, "Surprise": 0.5}, {"Happy": 0.25, "Surprise": 0.75},
    {"Angry": 0.75, "Happy": 0.25}, {"Angry": 0.25, "Happy": 0.75},
]


@dataclass(frozen=True)
class MixturesSettings(MethodInputs):
    """Everything ``emoctl report mixtures`` runs with; bad values are refused here, before any work."""

    methods: list[str] = field(default_factory=lambda: list(MIXING_METHODS))
    """Methods that mix, of emoshift, sae_emotion, global and cocoemo."""
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    """The backbone (kind, checkpoint folder, device)."""
    corpus_root: str = "runs/corpus/esd_espeak"
    """ESD-shaped corpus: test sentences, the emotions' prototypes and the voices' reference recordings."""
    out_dir: str = "reports/mixtures"
    """Where mixtures.md / .csv / .png and mixtures_clips.csv go."""
    mixtures: list[dict[str, float]] = field(default_factory=lambda: [dict(m) for m in DEFAULT_MIXTURES])
    """Soft labels, emotion -> proportion (each normalized to sum 1); at least two emotions each for ρ and H-Rate."""
    alphas: dict[str, float] | None = None
    """Strength per method; None: EmoShift 2, SAE-Emotion 8, Global 4, CoCoEmo 2."""
    protocol: EvaluationProtocol = field(default_factory=lambda: EvaluationProtocol(n_texts=3))
    """Held-out voices, test sentences, seed (shared by every method and the unsteered clips) and sampling."""
    recognizer: str = "mini"
    """"mini" (embedded) or "emotion2vec" (needs recognizer_dir): the probabilities TEP, ρ and H-Rate read."""
    recognizer_dir: str | None = None
    """Recognizer folder; None for the embedded default."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        self.check_inputs(self.methods, MIXING_METHODS)
        if not self.mixtures:
            raise ConfigError("mixtures: give at least one soft label, e.g. {Angry: 0.75, Sad: 0.25}.")
        for mix in self.mixtures:
            check_mixture(mix)
        unknown_alpha = sorted(set(self.alphas or {}) - set(MIXING_METHODS))
        bad = {m: a for m, a in self.chosen_alphas.items() if not (math.isfinite(a) and a > 0)}
        if unknown_alpha or bad:
            raise ConfigError(f"alphas: {f'no method {unknown_alpha}; ' if unknown_alpha else ''}"
                              f"{f'{bad} must be finite and > 0' if bad else ''}".rstrip("; ") + ".")
        if self.protocol.split != "test":
            raise ConfigError(f"the mixtures report speaks test sentences; protocol.split={self.protocol.split!r} "
                              "must be 'test'.")

    @property
    def chosen_alphas(self) -> dict[str, float]:
        return {**DEFAULT_ALPHAS, **(self.alphas or {})}


def check_mixture(mix: Mapping[str, float]) -> dict[str, float]:
    """The soft label normalized to sum 1; refused when an emotion is unknown or Neutral, or a weight is not > 0."""
    emotions = [e for e in ESD_EMOTIONS if e != NEUTRAL]
    bad = [e for e in mix if e not in emotions]
    weights = list(mix.values())
    if (not mix or bad or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0
                              for w in weights)):
        raise ConfigError(f"mixture {dict(mix)!r}: name emotions of {', '.join(emotions)} with proportions > 0 "
                          f"(they are normalized to sum 1){f'; {bad} are not among them' if bad else ''}.")
    total = float(sum(weights))
    return {e: float(w) / total for e, w in mix.items()}


def mixture_label(mix: Mapping[str, float]) -> str:
    return " + ".join(f"{w:.2f} {e}" for e, w in mix.items())


class Mixers:
    """Each method's steering context for a soft label at its α."""

    def __init__(self, backbone: Backbone, settings: MixturesSettings, emotions: Sequence[str]) -> None:
        self.backbone, self.alphas = backbone, settings.chosen_alphas
        methods = settings.methods
        self.layer = EmoSteer.load(settings.layer) if "emoshift" in methods else None
        self.sae = self.feature_sets = self.means = self.directions = None
        if "sae_emotion" in methods or "global" in methods:
            self.sae = load_pretrained(settings.sae)
            self.feature_sets = load_feature_sets(settings.selection, emotions, settings.sae, self.sae.cfg.d_sae)
        if "cocoemo" in methods:
            self.directions = load_directions(settings.directions, backbone, emotions)
        if "global" in methods:
            self.means = store_mean_differences(settings.store, emotions, NEUTRAL, progress=settings.progress)

    def context(self, method: str, mix: dict[str, float]):
        alpha = self.alphas[method]
        if method == "emoshift":
            return lambda batch, start: emosteer_steer(self.backbone, self.layer, [mix] * len(batch), alpha=alpha)
        if method == "cocoemo":
            points = self.directions.hookpoints
            mixed = {h: sum(w * self.directions.for_emotion(e)[h] for e, w in mix.items()) for h in points}
            interventions = [MultiLayerSteering(mixed, alpha, name=f"cocoemo[{mixture_label(mix)}]")]
        elif method == "sae_emotion":
            interventions = [SAEFeatureSteering(self.sae, self.feature_sets[e].feature_ids, alpha * w)
                             for e, w in mix.items()]
        else:
            interventions = [global_steering(self.means[e], self.sae, self.feature_sets[e].feature_ids, alpha * w)
                             for e, w in mix.items()]
        return lambda batch, start: steer(self.backbone, *interventions)


def mixture_metrics(steered: MeasuredClips, unsteered: MeasuredClips, mix: dict[str, float], refs: References,
                    scorers: Scorers) -> list[dict]:
    """Per clip: TEP, E-SIM, S-SIM, WER, each emotion's increase over its unsteered twin, ρ and the dominant hit."""
    ser, base = steered.measured.ser, unsteered.measured.ser
    emotions, weights = list(mix), np.array(list(mix.values()))
    rows = score_clips(steered, [max(mix, key=mix.get)] * len(steered.clips), scorers, refs)
    reference = sum(w * refs.prototype[e] for e, w in mix.items())
    for i, row in enumerate(rows):
        p = np.array([float(ser.prob_of(e)[i]) for e in emotions])
        increase = p - np.array([float(base.prob_of(e)[i]) for e in emotions])
        row.update({"mixture": mixture_label(mix), "tep": float(p.mean()),
                    "e_sim": float(F.cosine_similarity(ser.embeddings[i], reference, dim=0)),
                    **{f"p_{e}": float(v) for e, v in zip(emotions, p)},
                    **{f"increase_{e}": float(v) for e, v in zip(emotions, increase)}})
        row["rho"] = spearman(weights, increase) if len(emotions) >= 2 else math.nan
        dominant = np.isclose(weights, weights.max(), atol=1e-8, rtol=1e-6)
        largest = np.isclose(increase, increase.max(), atol=1e-8, rtol=1e-6)
        row["dominant_hit"] = float(bool((dominant & largest).any())) if len(emotions) >= 2 else math.nan
        pair = increase[:2]
        row["first_share"] = (float(pair[0] / pair.sum()) if len(emotions) == 2 and pair.sum() > 0 and (pair >= 0).all()
                              else math.nan)
    return rows


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ with average ranks; NaN when either side is constant (CoCoEmo then leaves the clip out)."""
    if np.allclose(x, x[0]) or np.allclose(y, y[0], atol=1e-8, rtol=1e-6):
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def run_mixtures(settings: MixturesSettings) -> list[dict]:
    s = settings
    out = check_output_dir(s.out_dir, "out_dir")
    mixtures = [check_mixture(m) for m in s.mixtures]
    emotions = sorted({e for m in mixtures for e in m}, key=ESD_EMOTIONS.index)
    root, protocol = Path(s.corpus_root), s.protocol
    texts, record = protocol.texts(root)
    backbone = s.backbone.load()
    mixers = Mixers(backbone, s, emotions)
    speakers, voice = protocol.voices(backbone, root), protocol.voice_for(backbone, root)
    scorers = Scorers.load(s.recognizer, s.recognizer_dir, dnsmos=False)
    refs = References(root, record["sentences"], speakers, scorers, used=texts, reference_clips=protocol.reference_clips)
    neutral = backbone.condition_for(NEUTRAL)
    prompts = [Prompt(t, voice(spk, t), neutral, utt_id=f"{spk}|{k}") for spk in speakers for k, t in enumerate(texts)]
    seed, sampling = protocol.seed, protocol.sampling
    unsteered = measure_clips(synthesize_steered(backbone, prompts, None, seed, sampling), scorers)
    rows: list[dict] = []
    jobs = [(m, mix) for m in s.methods for mix in mixtures]
    for method, mix in tqdm(jobs, desc="mixtures", unit="setting", disable=not s.progress):
        steered = measure_clips(synthesize_steered(backbone, prompts, mixers.context(method, mix), seed, sampling),
                                scorers)
        rows += [{"method": method, "alpha": s.chosen_alphas[method], **r}
                 for r in mixture_metrics(steered, unsteered, mix, refs, scorers)]
    summary = summarize_mixtures(rows, s.methods, mixtures)
    record = collect(backbone=backbone, corpus=root, paths={"layer": s.layer if "emoshift" in s.methods else None,
                                                              "sae": s.sae if mixers.sae is not None else None,
                                                              "directions": s.directions if "cocoemo" in s.methods
                                                              else None},
                     recognizer=(s.recognizer, recognizer_folder(s.recognizer, s.recognizer_dir)),
                     protocol={**protocol.describe(), "mixtures": mixtures, "alphas": s.chosen_alphas},
                     seeds={"sampling": seed})
    write_mixtures(out, summary, rows, record, s.methods)
    return summary


def summarize_mixtures(rows: list[dict], methods: Sequence[str], mixtures: Sequence[dict[str, float]]) -> list[dict]:
    """Per method: mean TEP, E-SIM, S-SIM, WER with 95% t intervals; CoCoEmo's mean ρ and H-Rate; the grid's ρ."""
    out = []
    for method in methods:
        own = [r for r in rows if r["method"] == method]
        entry: dict[str, Any] = {"method": method, "alpha": own[0]["alpha"] if own else math.nan, "clips": len(own)}
        for key in ("tep", "e_sim", "spk_sim", "wer", "rho", "dominant_hit", "finished"):
            values = np.array([float(r[key]) for r in own if key in r and not math.isnan(float(r[key]))])
            entry[key] = float(values.mean()) if values.size else math.nan
            entry[f"{key}_n"] = int(values.size)
            entry[f"{key}_ci"] = (float(stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
                                  if values.size > 1 else math.nan)
        pairs = [(mix_first(r["mixture"]), r["first_share"]) for r in own if not math.isnan(r["first_share"])]
        entry["grid_rho"] = (float(stats.spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)
                             if len({a for a, _ in pairs}) > 1 else math.nan)
        entry["grid_n"] = len(pairs)
        out.append(entry)
    return out


def mix_first(label: str) -> float:
    """The first emotion's asked share of a mixture label ("0.75 Angry + 0.25 Sad" -> 0.75)."""
    return float(label.split(" ")[0])


def mixtures_markdown(summary: list[dict], methods: Sequence[str], record: dict) -> str:
    seed = record["seeds"].get("sampling")
    alphas = record["protocol"]["alphas"]
    mixtures = record["protocol"]["mixtures"]
    lines = ["# Mixed emotions scored as CoCoEmo scores them", "",
             f"{len(mixtures)} soft labels ({'; '.join(mixture_label(m) for m in mixtures)}), each spoken on the "
             f"held-out voices' test sentences told Neutral, seed {seed} shared with the unsteered clips they are "
             "measured against. α: " + ", ".join(f"{method_label(m)} {alphas[m]:g}" for m in methods) + ".",
             "TEP: mean P(emotion) over the mixture's emotions. E-SIM: cosine with the proportion-weighted emotion "
             "prototypes. ρ: per clip, Spearman between the asked proportions and the increases of P(emotion) over "
             "the unsteered clip, averaged (CoCoEmo's); grid ρ: over all two-emotion clips, the asked share of the "
             "first emotion against its share of the increases. H-Rate: the dominant asked emotion rose most.", "",
             "| method | α | TEP | E-SIM | S-SIM | WER | ρ (clips) | grid ρ (clips) | H-Rate | finished |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        def est(key: str, digits: int = 3) -> str:
            if math.isnan(r[key]):
                return "–"
            return f"{r[key]:.{digits}f} ± {r[key + '_ci']:.{digits}f}" if not math.isnan(r[key + "_ci"]) else \
                f"{r[key]:.{digits}f}"
        grid = "–" if math.isnan(r["grid_rho"]) else f"{r['grid_rho']:+.3f} ({r['grid_n']})"
        lines.append(f"| {method_label(r['method'])} | {r['alpha']:g} | {est('tep')} | {est('e_sim')} | "
                     f"{est('spk_sim')} | {est('wer')} | {est('rho')} ({r['rho_n']}) | {grid} | "
                     f"{est('dominant_hit', 2)} | {r['finished']:.2f} |")
    return "\n".join(lines) + "\n"


def mixtures_figure(rows: list[dict], methods: Sequence[str]):
    """Per method: the measured share of the first emotion's increase against its asked share, one dot per clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.2), dpi=120, squeeze=False)
    for ax, method in zip(axes[0], methods):
        own = [r for r in rows if r["method"] == method and not math.isnan(r["first_share"])]
        x = np.array([mix_first(r["mixture"]) for r in own])
        y = np.array([r["first_share"] for r in own])
        jitter = np.random.default_rng(0).uniform(-0.02, 0.02, size=x.size)
        ax.scatter(x + jitter, y, s=8, alpha=0.6)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(method_label(method), fontsize=9)
        ax.set_xlabel("asked share of the first emotion", fontsize=8)
    axes[0][0].set_ylabel("its share of the P increases", fontsize=8)
    fig.tight_layout()
    return fig


def write_mixtures(out: Path, summary: list[dict], rows: list[dict], record: dict, methods: Sequence[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary_csv, clips_csv = out / "mixtures.csv", out / "mixtures_clips.csv"
    atomic_write_bytes(clips_csv, csv_bytes(rows))
    atomic_write_bytes(summary_csv, csv_bytes(summary))
    save_figure_atomically(mixtures_figure(rows, methods), out / "mixtures.png")
    markdown = stamp(mixtures_markdown(summary, methods, record), record, "mixtures_info.json")
    atomic_write_bytes(out / "mixtures.md", markdown.encode())
    write_report_info(out / "mixtures_info.json", {"methods": list(methods)}, record, [summary_csv, clips_csv])
    print(markdown)
    print(f"written to {out}/ (mixtures.md, .csv, .png, mixtures_clips.csv, _info.json)")
