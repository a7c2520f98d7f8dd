"""Table 1 of the SAE seed: inducing and suppressing emotions by steering, per method, with 95% intervals.

Protocol (the paper's, on whatever backbone is configured):

* **Induction**: prompts under the Neutral condition, steered toward emotion e
  (α > 0); the target is e.
* **Suppression**: prompts under emotion e, steered away from e (α < 0); the
  target is Neutral.
* **Methods**: the unsteered backbone, Random SAE features, Global
  (mean-difference) steering and SAE-Emotion features, all norm-matched so one
  α is one step length (see :mod:`emoctl.steering.directions`).
* **Metrics** per clip: SER accuracy and Emo-SIM (the recognizer is named in
  the report; Emo-SIM against the matched corpus recording of the same text,
  speaker and target emotion, and against the target emotion's prototype),
  WER of the bundled ASR, speaker similarity to the speaker's corpus
  recordings, DNSMOS OVRL.  Means with 95% intervals over utterances.
* **α**: a sweep on the corpus's *evaluation* sentences picks, per method, the
  α with the highest induction accuracy whose WER stays within
  ``max_wer_increase`` of the unsteered WER; the table then runs on the
  *test* sentences, which neither the sweep nor the backbone's training saw.

Every clip of a (direction, emotion) cell uses the same prompts, batches and
sampling seed across methods, so method differences are paired.
Outputs: ``table1.md``, ``table1.csv``, ``table1_clips.csv``, ``alpha_sweep.csv``
and ``alpha_sweep.png`` in ``out_dir``; the same numbers and figure in
TensorBoard under ``<out_dir>/tensorboard``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from emoctl.backbones.base import Backbone, Prompt
from emoctl.errors import ConfigError
from emoctl.synthesis import Clip, SamplingConfig, synthesize

NEUTRAL = "Neutral"
METHODS = ("unsteered", "random_sae", "global", "sae_emotion")
DEFAULT_SWEEP: dict[str, list[float]] = {"random_sae": [4.0, 8.0], "global": [4.0, 8.0], "sae_emotion": [4.0, 8.0],
                                      "emoshift": [1.0, 2.0, 3.0]}
METHOD_LABELS = {"unsteered": "Unsteered", "random_sae": "Random SAE", "global": "Global steering",
                 "sae_emotion": "SAE-Emotion", "emoshift": "EmoShift"}


@dataclass(frozen=True)
class Cell:
    """One block of prompts: a direction and an emotion."""

    direction: str  # "induction" or "suppression"
    emotion: str

    @property
    def condition(self) -> str:
        return NEUTRAL if self.direction == "induction" else self.emotion

    @property
    def target(self) -> str:
        return self.emotion if self.direction == "induction" else NEUTRAL

    @property
    def sign(self) -> float:
        return 1.0 if self.direction == "induction" else -1.0


class SteeringMethods:
    """Builds each method's interventions for an emotion from one SAE, its feature sets and the store's means."""

    def __init__(self, sae, feature_sets: dict, mean_differences: dict, seed: int = 0) -> None:
        self.sae, self.feature_sets, self.mean_differences, self.seed = sae, feature_sets, mean_differences, seed

    def interventions(self, method: str, emotion: str, alpha: float) -> list:
        from emoctl.steering import SAEFeatureSteering, global_steering, random_feature_steering

        if method == "unsteered" or alpha == 0:
            return []
        features = self.feature_sets[emotion].feature_ids
        if method == "sae_emotion":
            return [SAEFeatureSteering(self.sae, features, alpha)]
        if method == "global":
            return [global_steering(self.mean_differences[emotion], self.sae, features, alpha)]
        if method == "random_sae":
            return [random_feature_steering(self.sae, features, alpha, seed=self.seed)]
        raise ConfigError(f"unknown steering method {method!r}; choose from {', '.join(METHODS)}.")


def _synthesize_steered(backbone: Backbone, prompts: list[Prompt], steering: Callable[[int], Any], seed: int,
                        sampling: SamplingConfig) -> list[Clip]:
    """Synthesize batch by batch, each inside the method's steering context for that batch's size.

    Batch b uses seed ``seed + b``, as :func:`emoctl.synthesis.synthesize` does, so every method of a cell
    sees the same sampling noise; per-batch contexts let per-row hooks (EmoShift) match the batch.
    """
    clips: list[Clip] = []
    for b, start in enumerate(range(0, len(prompts), sampling.batch_size)):
        batch = prompts[start:start + sampling.batch_size]
        with steering(len(batch)):
            clips += synthesize(backbone, batch, seed=seed + b, sampling=sampling)
    return clips


@dataclass
class Scorers:
    """The evaluation models, loaded once."""

    recognizer: object
    asr: object | None
    speaker: object | None
    dnsmos: object | None

    @classmethod
    def load(cls, recognizer: str, recognizer_dir: str | None, wer: bool, speaker: bool, dnsmos: bool) -> Scorers:
        from emoctl.metrics.loading import load_recognizer

        asr = spk = mos = None
        if wer:
            from emoctl.metrics.wer import load_asr

            asr = load_asr("whisper")
        if speaker:
            from emoctl.metrics.speaker import load_speaker_encoder

            spk = load_speaker_encoder("resemblyzer")
        if dnsmos:
            from emoctl.metrics.dnsmos import load_dnsmos

            mos = load_dnsmos(threads=min(2, os.cpu_count() or 1))  # one process here: let ONNX use two cores
        return cls(load_recognizer(recognizer, recognizer_dir), asr, spk, mos)


class References:
    """Corpus recordings that generated clips are compared with (Emo-SIM and speaker similarity)."""

    def __init__(self, corpus_root: Path, sentences: list[str], speakers: list[str], scorers: Scorers,
                 used: Sequence[str] | None = None, split: str | None = None) -> None:
        from emoctl.backbones.mini_tts.tokenize_corpus import list_corpus_clips, read_wave

        self.index = {text: i for i, text in enumerate(sentences)}
        wanted = None if used is None else {self.index[t] for t in used if t in self.index}  # only what is spoken
        clips = [c for c in list_corpus_clips(corpus_root, split=split) if c.speaker in speakers
                 and (wanted is None or (int(c.utt_id.split("_")[1]) - 1) % 350 in wanted)]
        self.keys = [(c.speaker, c.emotion, (int(c.utt_id.split("_")[1]) - 1) % 350) for c in clips]
        waves = [read_wave(c.path) for c in clips]
        self.waves = waves
        ser = scorers.recognizer([w for w, _ in waves], [r for _, r in waves])
        self.ser_embedding = {k: ser.embeddings[i] for i, k in enumerate(self.keys)}
        by_emotion: dict[str, list[torch.Tensor]] = {}
        for (speaker, emotion, _), emb in self.ser_embedding.items():
            by_emotion.setdefault(emotion, []).append(emb)
        self.prototype = {e: torch.stack(v).mean(0) for e, v in by_emotion.items()}
        self.speaker_embedding: dict[str, torch.Tensor] = {}
        if scorers.speaker is not None:
            for speaker in speakers:
                own = [i for i, k in enumerate(self.keys) if k[0] == speaker and k[1] == NEUTRAL][:8]
                emb = scorers.speaker.embed([waves[i][0] for i in own], [waves[i][1] for i in own])
                self.speaker_embedding[speaker] = emb.mean(0)

    def matched(self, speaker: str, emotion: str, text: str) -> torch.Tensor | None:
        return self.ser_embedding.get((speaker, emotion, self.index.get(text, -1)))


@dataclass
class Measured:
    """What the evaluation models say about a list of clips, before any target emotion is chosen."""

    clips: list[Clip]
    ser: Any                         # SERResult: probabilities and embeddings per clip
    hypotheses: list[str] | None     # ASR transcripts
    wers: list[float] | None
    speaker_embeddings: torch.Tensor | None
    dnsmos: list[Any] | None


def measure_clips(clips: list[Clip], scorers: Scorers) -> Measured:
    """Run every configured evaluation model once over ``clips``."""
    waves, rates = [c.wave for c in clips], [c.sample_rate for c in clips]
    hyps = scorers.asr.transcribe(waves, rates) if scorers.asr is not None else None
    wers = None
    if hyps is not None:
        from emoctl.metrics.wer import word_error_rate

        wers = word_error_rate(hyps, [c.prompt.text for c in clips])
    return Measured(clips, scorers.recognizer(waves, rates), hyps, wers,
                    scorers.speaker.embed(waves, rates) if scorers.speaker is not None else None,
                    scorers.dnsmos(waves, rates) if scorers.dnsmos is not None else None)


def score_clips(clips: list[Clip] | Measured, targets: list[str], scorers: Scorers, refs: References) -> list[dict]:
    """Per-clip metrics: SER hit and P(target), Emo-SIM (matched, prototype), WER, SpkSIM, DNSMOS OVRL.

    ``clips`` may be a :class:`Measured` from an earlier call, so that one set of clips is scored against
    several targets without running the evaluation models again.
    """
    import torch.nn.functional as F

    measured = clips if isinstance(clips, Measured) else measure_clips(clips, scorers)
    ser = measured.ser
    predicted = ser.predicted()
    rows = []
    for i, (clip, target) in enumerate(zip(measured.clips, targets)):
        emb = ser.embeddings[i]
        ref = refs.matched(clip.prompt.speaker, target, clip.prompt.text)
        row = {"utt_id": clip.prompt.utt_id, "text": clip.prompt.text, "speaker": clip.prompt.speaker,
               "condition": clip.prompt.emotion_key, "target": target, "predicted": predicted[i],
               "ser_hit": float(predicted[i] == target), "p_target": float(ser.prob_of(target)[i]),
               "emo_sim_matched": float(F.cosine_similarity(emb, ref, dim=0)) if ref is not None else math.nan,
               "emo_sim_prototype": float(F.cosine_similarity(emb, refs.prototype[target], dim=0)),
               "duration_s": len(clip.wave) / clip.sample_rate, "finished": clip.finished}
        if measured.wers is not None:
            row["hypothesis"], row["wer"] = measured.hypotheses[i], measured.wers[i]
        if measured.speaker_embeddings is not None:
            row["spk_sim"] = float(F.cosine_similarity(measured.speaker_embeddings[i],
                                                       refs.speaker_embedding[clip.prompt.speaker], dim=0))
        if measured.dnsmos is not None:
            row["dnsmos_ovrl"] = float(measured.dnsmos[i].ovrl)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------- running

def _cell_prompts(cell: Cell, texts: list[str], speakers: list[str], tag: str) -> list[Prompt]:
    return [Prompt(text, s, cell.condition, f"{tag}-{cell.direction[:3]}-{cell.emotion}-t{i:02d}-{s}")
            for i, text in enumerate(texts) for s in speakers]


def run_cells(backbone: Backbone, methods: SteeringMethods, method_names: Sequence[str], cells: Sequence[Cell],
              texts: list[str], speakers: list[str], alphas: dict[str, float], scorers: Scorers, refs: References,
              seed: int, sampling: SamplingConfig, tag: str, extra_method: Callable | None = None,
              progress: bool = True) -> list[dict]:
    """Synthesize and score every (cell, method); one row per clip with its method, cell and α.

    Cells with no intervention are synthesized and measured once per distinct prompt list: induction
    cells of different emotions share the Neutral prompts, seed and batches, so their unsteered clips
    are the same clips, scored against each cell's target.
    """
    rows: list[dict] = []
    unsteered: dict[tuple, Measured] = {}
    jobs = [(cell, method) for cell in cells for method in method_names]
    for cell, method in tqdm(jobs, desc=f"{tag}: steer + score", unit="cell", disable=not progress):
        prompts = _cell_prompts(cell, texts, speakers, tag)
        alpha = cell.sign * alphas.get(method, 0.0)
        key = None
        if method in METHODS:
            interventions = methods.interventions(method, cell.emotion, alpha)
            steering = partial(_steer_all, backbone, interventions)
            key = None if interventions else tuple((p.text, p.speaker, p.emotion_key) for p in prompts)
        else:
            steering = partial(extra_method, cell, alpha)
        measured = unsteered.get(key) if key is not None else None
        if measured is None:
            measured = measure_clips(_synthesize_steered(backbone, prompts, steering, seed, sampling), scorers)
            if key is not None:
                unsteered[key] = measured
        else:  # the same clips under this cell's prompt ids
            measured = replace(measured, clips=[replace(c, prompt=p) for p, c in zip(prompts, measured.clips)])
        for row in score_clips(measured, [cell.target] * len(prompts), scorers, refs):
            rows.append({"direction": cell.direction, "emotion": cell.emotion, "method": method, "alpha": alpha,
                         **row})
    return rows


def summarize(rows: list[dict], metrics: Sequence[str]) -> list[dict]:
    """Mean and 95% interval of each metric per (direction, emotion, method)."""
    from emoctl.metrics.stats import mean_ci, proportion_ci

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["direction"], row["emotion"], row["method"]), []).append(row)
    out = []
    for (direction, emotion, method), members in groups.items():
        record = {"direction": direction, "emotion": emotion, "method": method, "alpha": members[0]["alpha"],
                  "n": len(members)}
        for metric in metrics:
            values = [m[metric] for m in members if metric in m]
            if not values:
                continue
            if metric == "ser_hit":
                estimate = proportion_ci(int(sum(values)), len(values))
            else:
                estimate = mean_ci(values)
            record[metric], record[f"{metric}_low"], record[f"{metric}_high"] = \
                estimate.value, estimate.low, estimate.high
        out.append(record)
    return out


def choose_alphas(sweep: list[dict], method_names: Sequence[str], max_wer_increase: float) -> dict[str, float]:
    """Per method, the swept α with the best induction SER accuracy whose mean WER is within bound of unsteered."""
    summary = summarize([r for r in sweep if r["direction"] == "induction"], ["ser_hit", "wer"])
    base = [r for r in summary if r["method"] == "unsteered"]
    base_wer = float(np.mean([r["wer"] for r in base])) if base and "wer" in base[0] else math.inf
    chosen: dict[str, float] = {}
    for method in method_names:
        if method == "unsteered":
            continue
        by_alpha: dict[float, list[dict]] = {}
        for r in summary:
            if r["method"].startswith(method + "@"):
                by_alpha.setdefault(float(r["method"].split("@")[1]), []).append(r)
        best, best_acc = None, -1.0
        for alpha, members in sorted(by_alpha.items()):
            acc = float(np.mean([m["ser_hit"] for m in members]))
            wer = float(np.mean([m["wer"] for m in members])) if "wer" in members[0] else 0.0
            if wer <= base_wer + max_wer_increase and acc > best_acc:
                best, best_acc = alpha, acc
        chosen[method] = best if best is not None else min(by_alpha)
    return chosen


def table1(sae: str, store: str, selection: str, backbone_dir: str | None = None,
           corpus_root: str = "runs/corpus/esd_espeak", out_dir: str = "reports",
           emotions: list[str] | None = None, speakers: list[str] | None = None, n_texts: int = 2,
           sweep_alphas: dict[str, list[float]] | None = None, sweep_texts: int = 2, max_wer_increase: float = 0.15,
           emoshift: str | None = None, recognizer: str = "mini", recognizer_dir: str | None = None,
           seed: int = 0, sampling: SamplingConfig = SamplingConfig(), progress: bool = True) -> list[dict]:
    """Run the SAE seed's Table 1 protocol and write table1.md / .csv, the α sweep CSV and figure.

    Args:
        sae: Exported SAE folder (cfg.json + sae_weights.safetensors).
        store: The activation store the SAE was trained on (for the global mean-difference direction).
        selection: Folder of ``emoctl select`` feature sets (features_<emotion>.json).
        backbone_dir: MiniTTS checkpoint folder; None for the committed default.
        corpus_root: ESD-shaped corpus: held-out sentences and reference recordings.
        out_dir: Where the report files go.
        emotions: Emotions to induce and suppress; None: every emotion with a feature set.
        speakers: Speakers to synthesize; None: the backbone's last four.
        n_texts: Test-split sentences per cell.
        sweep_alphas: α values of the sweep per method (on evaluation-split sentences); None: SAE-side methods
            4, 8 (latent units, norm-matched) and EmoShift 1, 2, 3 (the CPU default; widen it on a GPU).
        sweep_texts: Evaluation-split sentences per sweep cell.
        max_wer_increase: Largest mean WER increase over unsteered that the α choice accepts.
        emoshift: Optional folder of a trained EmoShift layer, added as a method (induction only).
        recognizer: "mini" (embedded) or "emotion2vec" (needs recognizer_dir).
        recognizer_dir: Recognizer folder; None for the embedded default.
        seed: Sampling seed (the same for every method of a cell).
        sampling: Temperature, top-k, token cap and batch size of generation.
        progress: Show progress bars.
    """
    from emoctl.backbones.loading import load_backbone
    from emoctl.reports.emotionality import corpus_test_sentences
    from emoctl.sae.export import load_pretrained
    from emoctl.selection.feature_set import FeatureSet
    from emoctl.selection.select import feature_set_path
    from emoctl.steering import mean_difference_directions
    from emoctl.store import ActivationStore

    root = Path(corpus_root)
    test_sentences, record = corpus_test_sentences(root)
    evaluation_sentences = record["sentences"][:record["splits"]["evaluation"]]
    backbone = load_backbone("mini_tts", backbone_dir)
    sae_model = load_pretrained(sae)
    emotions = list(emotions or [e for e in backbone.emotions if e != NEUTRAL
                                 and feature_set_path(selection, e).is_file()])
    if not emotions:
        raise ConfigError(f"no feature sets in {selection} (features_<emotion>.json); run `emoctl select` first.")
    feature_sets = {e: FeatureSet.load(feature_set_path(selection, e)) for e in emotions}
    means = mean_difference_directions(ActivationStore(store), NEUTRAL, emotions, progress=progress)
    methods = SteeringMethods(sae_model, feature_sets, means, seed=seed)
    speakers = list(speakers or backbone.speakers[-4:])
    scorers = Scorers.load(recognizer, recognizer_dir, wer=True, speaker=True, dnsmos=True)
    refs = References(root, record["sentences"], speakers, scorers,
                      used=test_sentences[:n_texts] + evaluation_sentences[:sweep_texts])
    sweep_alphas = {**DEFAULT_SWEEP, **(sweep_alphas or {})}
    extra = None
    method_names = list(METHODS)
    if emoshift is not None:
        extra = _emoshift_method(backbone, emoshift)
        method_names.append("emoshift")

    # 1. α sweep on evaluation sentences (SER + WER only).
    sweep_scorers = Scorers(scorers.recognizer, scorers.asr, None, None)
    sweep_rows: list[dict] = []
    sweep_cells = [Cell("induction", e) for e in emotions]
    sweep_rows += run_cells(backbone, methods, ["unsteered"], sweep_cells, evaluation_sentences[:sweep_texts],
                            speakers, {}, sweep_scorers, refs, seed, sampling, "sweep", progress=progress)
    for method in method_names[1:]:
        for alpha in sweep_alphas[method]:
            rows = run_cells(backbone, methods, [method], sweep_cells, evaluation_sentences[:sweep_texts], speakers,
                             {method: alpha}, sweep_scorers, refs, seed, sampling, "sweep", extra, progress=progress)
            for r in rows:
                r["method"] = f"{method}@{alpha:g}"
            sweep_rows += rows
    alphas = choose_alphas(sweep_rows, method_names, max_wer_increase)

    # 2. The table on test sentences, both directions.
    cells = [Cell(d, e) for d in ("induction", "suppression") for e in emotions]
    rows = run_cells(backbone, methods, [m for m in method_names if m != "emoshift"], cells,
                     test_sentences[:n_texts], speakers, alphas, scorers, refs, seed, sampling, "table",
                     progress=progress)
    if emoshift is not None:
        rows += run_cells(backbone, methods, ["emoshift"], [c for c in cells if c.direction == "induction"],
                          test_sentences[:n_texts], speakers, alphas, scorers, refs, seed, sampling, "table", extra,
                          progress=progress)
    metrics = ["emo_sim_matched", "emo_sim_prototype", "ser_hit", "p_target", "wer", "spk_sim", "dnsmos_ovrl"]
    summary = summarize(rows, metrics)
    info = {"backbone": backbone.backbone_id, "sae": sae, "hookpoint": sae_model.cfg.hook_name,
            "recognizer": getattr(scorers.recognizer, "name", recognizer), "speakers": speakers,
            "n_texts": min(n_texts, len(test_sentences)), "alphas": alphas, "seed": seed,
            "sweep_alphas": sweep_alphas, "max_wer_increase": max_wer_increase,
            "features": {e: fs.feature_ids for e, fs in feature_sets.items()}}
    _write_table1(Path(out_dir), summary, rows, sweep_rows, info, method_names)
    return summary


def _steer_all(backbone: Backbone, interventions: list, n_prompts: int):
    """The SAE-seed methods' context: every intervention attached (none for unsteered); any batch size."""
    from emoctl.steering import steer

    return steer(backbone, *interventions) if interventions else nullcontext()


def _emoshift_method(backbone: Backbone, folder: str) -> Callable:
    """EmoShift as a Table 1 method: its trained layer for the cell's emotion at intensity |α| (induction only)."""
    from emoctl.emosteer import EmoSteer, steer

    layer = EmoSteer.load(folder)

    def steering(cell: Cell, alpha: float, n_prompts: int):
        if alpha == 0:
            return nullcontext()
        return steer(backbone, layer, [cell.emotion] * n_prompts, alpha=abs(alpha))

    return steering


# ----------------------------------------------------------------------------------------------- writing

def _fmt(record: dict, metric: str, digits: int = 3) -> str:
    value = record.get(metric, math.nan)
    if not isinstance(value, float) or not math.isfinite(value):
        return "–"
    low, high = record.get(f"{metric}_low", math.nan), record.get(f"{metric}_high", math.nan)
    if math.isfinite(low) and math.isfinite(high):
        if metric == "ser_hit":  # Wilson intervals are asymmetric near 0 and 1
            return f"{value:.2f} [{low:.2f}, {high:.2f}]"
        return f"{value:.{digits}f} ± {(high - low) / 2:.{digits}f}"
    return f"{value:.{digits}f}"


def table1_markdown(summary: list[dict], info: dict, method_names: Sequence[str]) -> str:
    """The paper's layout: a row per (direction, emotion), a column group per method."""
    shown = [("emo_sim_matched", "Emo-SIM"), ("ser_hit", "SER acc"), ("wer", "WER"), ("spk_sim", "SpkSIM"),
             ("dnsmos_ovrl", "DNSMOS")]
    index = {(r["direction"], r["emotion"], r["method"]): r for r in summary}
    lines = [
        "# Table 1: emotion steering on the configured backbone", "",
        f"Backbone `{info['backbone']}`, SAE at `{info['hookpoint']}`, recognizer `{info['recognizer']}`; "
        f"{info['n_texts']} held-out test sentences x speakers {', '.join(info['speakers'])} per cell, sampling "
        f"seed {info['seed']} shared by all methods of a cell. α per method (chosen on evaluation sentences, "
        f"WER increase ≤ {info['max_wer_increase']}): "
        + ", ".join(f"{METHOD_LABELS.get(m, m)} {a:g}" for m, a in info["alphas"].items()) + ".",
        "Induction: Neutral condition steered toward the emotion (target = emotion). Suppression: emotion "
        "condition steered away (target = Neutral). Emo-SIM: cosine of recognizer embeddings to the matched corpus "
        "recording (same text, speaker, target emotion). Values are means ± half the 95% t interval; SER accuracy "
        "shows its 95% Wilson interval.", ""]
    for metric, label in shown:
        lines += [f"## {label}", "", "| direction | emotion | " + " | ".join(METHOD_LABELS.get(m, m)
                                                                          for m in method_names) + " |",
                  "|---|---|" + "---|" * len(method_names)]
        for direction in ("induction", "suppression"):
            for emotion in dict.fromkeys(r["emotion"] for r in summary):
                cells = [_fmt(index[(direction, emotion, m)], metric) if (direction, emotion, m) in index else "–"
                         for m in method_names]
                lines.append(f"| {direction} | {emotion} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _csv(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def sweep_figure(sweep_rows: list[dict]):
    """Induction strength (SER accuracy) and WER against α, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize([r for r in sweep_rows if r["direction"] == "induction"], ["ser_hit", "wer"])
    base = [r for r in summary if r["method"] == "unsteered"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    methods = sorted({r["method"].split("@")[0] for r in summary if "@" in r["method"]})
    for method in methods:
        points: dict[float, list[dict]] = {}
        for r in summary:
            if r["method"].startswith(method + "@"):
                points.setdefault(float(r["method"].split("@")[1]), []).append(r)
        xs = sorted(points)
        for ax, metric in zip(axes, ("ser_hit", "wer")):
            ax.plot(xs, [np.mean([m.get(metric, np.nan) for m in points[x]]) for x in xs], marker="o",
                    label=METHOD_LABELS.get(method, method))
    for ax, metric, label in zip(axes, ("ser_hit", "wer"), ("induction SER accuracy", "WER")):
        if base and metric in base[0]:
            ax.axhline(np.mean([b[metric] for b in base]), color="grey", ls="--", label="unsteered")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("α")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("α sweep (evaluation sentences, averaged over emotions)")
    fig.tight_layout()
    return fig


def _write_table1(out: Path, summary: list[dict], rows: list[dict], sweep_rows: list[dict], info: dict,
                  method_names: Sequence[str]) -> None:
    from emoctl.store.fsio import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    markdown = table1_markdown(summary, info, method_names)
    atomic_write_bytes(out / "table1.md", markdown.encode())
    atomic_write_bytes(out / "table1.csv", _csv(summary))
    atomic_write_bytes(out / "table1_clips.csv", _csv(rows))
    atomic_write_bytes(out / "alpha_sweep.csv", _csv(sweep_rows))
    atomic_write_bytes(out / "table1_info.json", (json.dumps(info, indent=1) + "\n").encode())
    figure = sweep_figure(sweep_rows)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(out / "alpha_sweep.png", buffer.getvalue())
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_figure("table1/alpha_sweep", figure, 0)
        writer.add_text("table1/markdown", markdown, 0)
        for record in summary:
            for metric in ("emo_sim_matched", "ser_hit", "wer", "spk_sim", "dnsmos_ovrl"):
                if metric in record and math.isfinite(record[metric]):
                    writer.add_scalar(f"table1/{record['direction']}/{record['emotion']}/{record['method']}/{metric}",
                                      record[metric], 0)
    print(markdown)
    print(f"written to {out}/ (table1.md, table1.csv, table1_clips.csv, alpha_sweep.csv, alpha_sweep.png, "
          f"tensorboard/)")
