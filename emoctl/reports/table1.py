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

import io
import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from emoctl.backbones.base import Backbone, Prompt
from emoctl.backbones.conditions import Voice, VoiceName
from emoctl.backbones.loading import BackboneSpec
from emoctl.errors import ConfigError
from emoctl.evaluation.alpha import choose_alpha
from emoctl.evaluation.cell_cache import CellCache, check_kept_blocks
from emoctl.evaluation.paired import paired_comparisons, paired_markdown
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.evaluation.scoring import NEUTRAL, MeasuredClips, References, Scorers, measure_clips, score_clips
from emoctl.evaluation.steered import synthesize_steered
from emoctl.evaluation.summary import csv_bytes, format_estimate, summarize
from emoctl.io.provenance import collect, stamp, write_report_info
from emoctl.metrics.loading import recognizer_folder
from emoctl.steering.sae_features import LATENT_ALPHA_RULE, latent_alpha_ok
from emoctl.synthesis import SamplingConfig
from emoctl.io.fsio import check_output_dir

METHODS = ("unsteered", "random_sae", "global", "sae_emotion")
LATENT_METHODS = ("random_sae", "global", "sae_emotion")
"""The methods whose α is in latent units (norm-matched to the SAE's decoder directions)."""
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


def variant_method(score: str) -> str:
    """Method name of SAE-Emotion steering with the features another selection score chose."""
    return f"sae_emotion:{score}"


def method_label(method: str) -> str:
    """A method's column title: ``sae_emotion:rate`` is "SAE-Emotion (rate)"."""
    base, _, score = method.partition(":")
    return f"{METHOD_LABELS.get(base, base)} ({score})" if score else METHOD_LABELS.get(method, method)


class SteeringMethods:
    """Builds each method's interventions for an emotion from one SAE, its feature sets and the store's means.

    ``variants`` holds further feature sets of the same SAE (selected by another score, keyed by it); each is the
    method ``sae_emotion:<score>``, steered exactly like SAE-Emotion. Global and Random steering stay matched to
    the main feature sets.
    """

    def __init__(self, sae, feature_sets: dict, mean_differences: dict, seed: int = 0,
                 variants: dict[str, dict] | None = None) -> None:
        self.sae, self.feature_sets, self.mean_differences, self.seed = sae, feature_sets, mean_differences, seed
        self.variants = dict(variants or {})

    def interventions(self, method: str, emotion: str, alpha: float) -> list:
        from emoctl.steering import SAEFeatureSteering, global_steering, random_feature_steering

        if method == "unsteered" or alpha == 0:
            return []
        base, _, score = method.partition(":")
        if base == "sae_emotion" and score:
            if score not in self.variants:
                raise ConfigError(f"method {method!r} has no feature sets; selections are "
                                  f"{', '.join(self.variants) or 'none'}.")
            return [SAEFeatureSteering(self.sae, self.variants[score][emotion].feature_ids, alpha)]
        features = self.feature_sets[emotion].feature_ids
        if method == "sae_emotion":
            return [SAEFeatureSteering(self.sae, features, alpha)]
        if method == "global":
            return [global_steering(self.mean_differences[emotion], self.sae, features, alpha)]
        if method == "random_sae":
            return [random_feature_steering(self.sae, features, alpha, seed=self.seed)]
        raise ConfigError(f"unknown steering method {method!r}; choose from {', '.join(METHODS)}.")


# ----------------------------------------------------------------------------------------------- running

def _cell_prompts(backbone: Backbone, cell: Cell, texts: list[str], speakers: list[str], tag: str,
                  voice: Callable[[str, str], Voice] | None = None) -> list[Prompt]:
    condition = backbone.condition_for(cell.condition)
    voice = voice or (lambda speaker, text: VoiceName(speaker))
    return [Prompt(text, voice(s, text), condition, f"{tag}-{cell.direction[:3]}-{cell.emotion}-t{i:02d}-{s}")
            for i, text in enumerate(texts) for s in speakers]


def run_cells(backbone: Backbone, methods: SteeringMethods, method_names: Sequence[str], cells: Sequence[Cell],
              texts: list[str], speakers: list[str], alphas: dict[str, float], scorers: Scorers, refs: References,
              seed: int, sampling: SamplingConfig, tag: str, extra_method: Callable | None = None,
              progress: bool = True, voice: Callable[[str, str], Voice] | None = None,
              cache: CellCache | None = None) -> list[dict]:
    """Synthesize and score every (cell, method); one row per clip with its method, cell and α.

    Cells with no intervention are synthesized and measured once per distinct prompt list: induction
    cells of different emotions share the Neutral prompts, seed and batches, so their unsteered clips
    are the same clips, scored against each cell's target. With a ``cache``, each finished (cell, method)
    block is kept, and blocks an interrupted run finished are taken from it.
    """
    rows: list[dict] = []
    unsteered: dict[tuple, MeasuredClips] = {}
    jobs = [(cell, method) for cell in cells for method in method_names]
    for cell, method in tqdm(jobs, desc=f"{tag}: steer + score", unit="cell", disable=not progress):
        prompts = _cell_prompts(backbone, cell, texts, speakers, tag, voice)
        alpha = cell.sign * alphas.get(method, 0.0)
        block = {"tag": tag, "direction": cell.direction, "emotion": cell.emotion, "method": method, "alpha": alpha,
                 "prompts": [(p.text, p.speaker, p.emotion_key, p.utt_id) for p in prompts], "seed": seed,
                 "sampling": sampling, "scorers": scorers.names()}
        kept = cache.get(block) if cache is not None else None
        if kept is not None:
            rows += kept
            continue
        key = None
        if method in METHODS or method.startswith("sae_emotion:"):
            interventions = methods.interventions(method, cell.emotion, alpha)
            steering = partial(_steer_all, backbone, interventions)
            key = None if interventions else tuple((p.text, p.speaker, p.emotion_key) for p in prompts)
        else:
            steering = partial(extra_method, cell, alpha)
        measured = unsteered.get(key) if key is not None else None
        if measured is None:
            measured = measure_clips(synthesize_steered(backbone, prompts, steering, seed, sampling), scorers)
            if key is not None:
                unsteered[key] = measured
        else:  # the same clips under this cell's prompt ids
            measured = replace(measured, clips=[replace(c, prompt=p) for p, c in zip(prompts, measured.clips)])
        block_rows = [{"direction": cell.direction, "emotion": cell.emotion, "method": method, "alpha": alpha, **row}
                      for row in score_clips(measured, [cell.target] * len(prompts), scorers, refs)]
        if cache is not None:
            cache.put(block, block_rows)
        rows += block_rows
    return rows


def choose_alphas(sweep: list[dict], method_names: Sequence[str], max_wer_increase: float) -> dict[str, float]:
    """Per method, :func:`emoctl.evaluation.alpha.choose_alpha` over its swept α's induction rows."""
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
        accuracy = {a: float(np.mean([m["ser_hit"] for m in members])) for a, members in by_alpha.items()}
        wer = {a: float(np.mean([m["wer"] for m in members])) if "wer" in members[0] else 0.0
               for a, members in by_alpha.items()}
        chosen[method] = choose_alpha(accuracy, wer, base_wer, max_wer_increase).alpha
    return chosen


def table1(sae: str, store: str, selection: str, backbone: BackboneSpec = BackboneSpec(),
           corpus_root: str = "runs/corpus/esd_espeak", out_dir: str = "reports", emotions: list[str] | None = None,
           protocol: EvaluationProtocol = EvaluationProtocol(), sweep_alphas: dict[str, list[float]] | None = None,
           sweep_texts: int = 2, max_wer_increase: float = 0.15, emoshift: str | None = None,
           recognizer: str = "mini", recognizer_dir: str | None = None, selections: dict[str, str] | None = None,
           n_bootstrap: int = 2000, resume: bool = True, allow_unverified_features: bool = False,
           progress: bool = True) -> list[dict]:
    """Run the SAE seed's Table 1 protocol and write table1.md / .csv, the α sweep CSV and figure.

    Args:
        sae: Exported SAE folder (cfg.json + sae_weights.safetensors).
        store: The activation store the SAE was trained on (for the global mean-difference direction).
        selection: Folder of ``emoctl select`` feature sets (features_<emotion>.json).
        backbone: The backbone the SAE was trained on (kind, checkpoint folder, device).
        corpus_root: ESD-shaped corpus: held-out sentences and reference recordings.
        out_dir: Where the report files go.
        emotions: Emotions to induce and suppress; None: every emotion with a feature set.
        protocol: Speakers, the table's sentences (test split), reference clips, seed (shared by every method of
            a cell) and sampling.
        sweep_alphas: α values of the sweep per method (on evaluation-split sentences); None: SAE-side methods
            4, 8 (latent units, norm-matched) and EmoShift 1, 2, 3 (the CPU default; widen it on a GPU).
        sweep_texts: Evaluation-split sentences per sweep cell.
        max_wer_increase: Largest mean WER increase over unsteered that the α choice accepts.
        emoshift: Optional folder of a trained EmoShift layer, added as a method (induction only).
        recognizer: "mini" (embedded) or "emotion2vec" (needs recognizer_dir).
        recognizer_dir: Recognizer folder; None for the embedded default.
        selections: Further feature-set folders of the same SAE, keyed by the score that selected them
            (``{"rate": ..., "mass": ...}`` from ``emoctl select --score``): each becomes the method
            ``sae_emotion:<score>``, swept and run like SAE-Emotion, and the report compares the scores.
        n_bootstrap: Resamples of the paired bootstrap behind the Emo-SIM comparisons between methods.
        resume: Keep each finished (cell, method) block under ``out_dir/.partial`` and take the blocks an
            interrupted run of the same inputs and settings finished (removed once the report is written).
        allow_unverified_features: Apply feature sets that record no SAE digest (written by other code), which
            cannot be checked against ``sae``; by default they are refused.
        progress: Show progress bars.
    """
    check_output_dir(out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    if resume:
        check_kept_blocks(out_dir)  # an altered kept block is refused now, not after the blocks before it
    from emoctl.evaluation.texts import split_sentences
    from emoctl.metrics.ser import ESD_EMOTIONS
    from emoctl.sae.export import load_pretrained
    from emoctl.selection.feature_set import FeatureSet, check_selected_with
    from emoctl.selection.select import feature_set_path
    from emoctl.steering import mean_difference_directions
    from emoctl.store import ActivationStore

    root = Path(corpus_root)
    if protocol.split != "test":
        raise ConfigError(f"Table 1 reports on test sentences and sweeps α on evaluation sentences; "
                          f"protocol.split={protocol.split!r} must be 'test'.")
    selections = dict(selections or {})
    if not math.isfinite(max_wer_increase) or max_wer_increase < 0:
        raise ConfigError(f"max_wer_increase={max_wer_increase} must be a finite number >= 0 (the largest mean WER "
                          f"increase over unsteered that the α choice accepts; a negative bound rejects every α).")
    if n_bootstrap < 1:
        raise ConfigError(f"n_bootstrap={n_bootstrap} must be >= 1 (resamples of the paired Emo-SIM bootstrap).")
    bad = {score: folder for score, folder in selections.items() if not score or ":" in score or "@" in score}
    if bad:
        raise ConfigError(f"selections keys name the score that selected a feature-set folder (e.g. rate, mass); "
                          f"{sorted(bad)} cannot be a method suffix (empty, ':' or '@').")
    if sweep_texts < 1:
        raise ConfigError(f"sweep_texts={sweep_texts} must be >= 1 (evaluation sentences per α-sweep cell).")
    unknown = sorted(set(sweep_alphas or {}) - set(DEFAULT_SWEEP))
    if unknown:
        raise ConfigError(f"sweep_alphas has no method {unknown}; its keys are {', '.join(DEFAULT_SWEEP)}.")
    sweep_alphas = {**DEFAULT_SWEEP, **(sweep_alphas or {})}
    if any(not values or any(not math.isfinite(a) or a <= 0 for a in values) for values in sweep_alphas.values()):
        raise ConfigError(f"every sweep_alphas list needs finite α > 0 (the sign is the cell's direction), got "
                          f"{sweep_alphas}.")
    too_strong = {m: [a for a in sweep_alphas[m] if not latent_alpha_ok(a)] for m in LATENT_METHODS}
    too_strong = {m: values for m, values in too_strong.items() if values}
    if too_strong:
        raise ConfigError(f"sweep_alphas {too_strong} steer latents too hard: α must be {LATENT_ALPHA_RULE}.")
    test_sentences, record = protocol.texts(root)
    evaluation_sentences, _ = split_sentences(root, "evaluation", sweep_texts)
    tts = backbone.load()
    sae_model = load_pretrained(sae)
    emotions = list(emotions or [e for e in (tts.emotions or ESD_EMOTIONS) if e != NEUTRAL
                                 and feature_set_path(selection, e).is_file()])
    if not emotions:
        raise ConfigError(f"no feature sets in {selection} (features_<emotion>.json); run `emoctl select` first.")
    feature_sets = {e: FeatureSet.load(feature_set_path(selection, e)) for e in emotions}
    unverified = {"allow_unverified": allow_unverified_features, "d_sae": sae_model.cfg.d_sae}
    check_selected_with(feature_sets, sae, selection, **unverified)
    variants = {score: _load_variant(folder, emotions, sae, **unverified) for score, folder in selections.items()}
    activations = ActivationStore(store)
    activations.require_finished("estimate the global steering direction from")
    activations.verify(progress=progress)  # the global baseline's means come from every row of it
    means = mean_difference_directions(activations, NEUTRAL, emotions, progress=progress)
    seed, sampling = protocol.seed, protocol.sampling
    methods = SteeringMethods(sae_model, feature_sets, means, seed=seed, variants=variants)
    speakers, voice = protocol.voices(tts, root), protocol.voice_for(tts, root)
    scorers = Scorers.load(recognizer, recognizer_dir)
    refs = References(root, record["sentences"], speakers, scorers, used=test_sentences + evaluation_sentences,
                      reference_clips=protocol.reference_clips)
    extra = None
    method_names = list(METHODS) + [variant_method(score) for score in variants]
    if emoshift is not None:
        extra = _emoshift_method(tts, emoshift)
        method_names.append("emoshift")

    # What makes every row (inputs by content, protocol, seeds, code): the report's record and the key of the
    # blocks kept for a resumed run.
    paths = {"sae": sae, "feature_sets": [feature_set_path(selection, e) for e in emotions], "layer": emoshift,
             **{f"feature_sets_{score}": [feature_set_path(folder, e) for e in emotions]
                for score, folder in selections.items()}}
    made_with = collect(backbone=tts, paths=paths, stores={"store": activations}, corpus=root,
                        recognizer=(recognizer, recognizer_folder(recognizer, recognizer_dir)), seeds={"sampling": seed, "random_features": seed},
                        protocol={**protocol.describe(), "sweep_alphas": sweep_alphas, "sweep_texts": sweep_texts,
                                  "max_wer_increase": max_wer_increase, "emotions": emotions,
                                  "n_bootstrap": n_bootstrap})
    cache = CellCache(out_dir, made_with, enabled=resume)

    # 1. α sweep on evaluation sentences (SER + WER only).
    sweep_scorers = scorers.without("speaker", "dnsmos")
    sweep_rows: list[dict] = []
    sweep_cells = [Cell("induction", e) for e in emotions]
    sweep_rows += run_cells(tts, methods, ["unsteered"], sweep_cells, evaluation_sentences,
                            speakers, {}, sweep_scorers, refs, seed, sampling, "sweep", progress=progress, voice=voice,
                            cache=cache)
    for method in method_names[1:]:
        for alpha in sweep_alphas[method.partition(":")[0]]:
            rows = run_cells(tts, methods, [method], sweep_cells, evaluation_sentences, speakers,
                             {method: alpha}, sweep_scorers, refs, seed, sampling, "sweep", extra, progress=progress,
                             voice=voice, cache=cache)
            for r in rows:
                r["method"] = f"{method}@{alpha:g}"
            sweep_rows += rows
    alphas = choose_alphas(sweep_rows, method_names, max_wer_increase)

    # 2. The table on test sentences, both directions.
    cells = [Cell(d, e) for d in ("induction", "suppression") for e in emotions]
    rows = run_cells(tts, methods, [m for m in method_names if m != "emoshift"], cells,
                     test_sentences, speakers, alphas, scorers, refs, seed, sampling, "table",
                     progress=progress, voice=voice, cache=cache)
    if emoshift is not None:
        rows += run_cells(tts, methods, ["emoshift"], [c for c in cells if c.direction == "induction"],
                          test_sentences, speakers, alphas, scorers, refs, seed, sampling, "table", extra,
                          progress=progress, voice=voice, cache=cache)
    if cache.reused:
        print(f"took {cache.reused} finished blocks of clips from {cache.folder} (an interrupted run of the same "
              f"inputs and settings)")
    metrics = ["emo_sim_matched", "emo_sim_prototype", "ser_hit", "p_target", "wer", "spk_sim", "dnsmos_ovrl"]
    summary = summarize(rows, metrics)
    paired = paired_comparisons(rows, method_comparisons(method_names), n_bootstrap=n_bootstrap, seed=seed)
    info = {"backbone": tts.backbone_id, "sae": sae, "hookpoint": sae_model.cfg.hook_name,
            "recognizer": getattr(scorers.recognizer, "name", recognizer), "speakers": speakers,
            "n_texts": len(test_sentences), "alphas": alphas, "seed": seed, "protocol": protocol.describe(),
            "sweep_alphas": sweep_alphas, "max_wer_increase": max_wer_increase,
            "features": {e: fs.feature_ids for e, fs in feature_sets.items()},
            "selection_score": _score_of(feature_sets),
            "selections": {score: {"path": folder, "features": {e: fs.feature_ids for e, fs in variants[score].items()}}
                           for score, folder in selections.items()},
            "phases": method_phases(methods, emotions[0], method_names)}
    sections = selection_scores_markdown(summary, {_score_of(feature_sets): feature_sets, **variants}, alphas,
                                         main=_score_of(feature_sets)) if variants else []
    _write_table1(Path(out_dir), summary, rows, sweep_rows, info, method_names, made_with, paired, sections)
    cache.clear()
    return summary


def _load_variant(folder: str, emotions: list[str], sae: str, *, allow_unverified: bool, d_sae: int) -> dict:
    """One further selection's feature sets, every emotion present and selected on this SAE."""
    from emoctl.selection.feature_set import FeatureSet, check_selected_with
    from emoctl.selection.select import feature_set_path

    missing = [e for e in emotions if not feature_set_path(folder, e).is_file()]
    if missing:
        raise ConfigError(f"selection folder {folder} has no feature set for {missing} "
                          f"(features_<emotion>.json); run `emoctl select --out_dir {folder}` with the same SAE.")
    sets = {e: FeatureSet.load(feature_set_path(folder, e)) for e in emotions}
    check_selected_with(sets, sae, folder, allow_unverified=allow_unverified, d_sae=d_sae)
    return sets


def _score_of(feature_sets: dict) -> str:
    """The selection score the feature sets record (files written before scores existed used any_step)."""
    scores = {fs.selection.get("score", "any_step") for fs in feature_sets.values()}
    if len(scores) != 1:
        raise ConfigError(f"one selection folder mixes scores {sorted(scores)}; select every emotion with one score.")
    return scores.pop()


def method_comparisons(method_names: Sequence[str]) -> list[tuple[str, str]]:
    """The method pairs Table 1 tests: SAE-Emotion, Global and Random against each other, SAE-Emotion against
    unsteered, each further selection score and EmoShift against SAE-Emotion."""
    pairs = [("sae_emotion", "global"), ("sae_emotion", "random_sae"), ("global", "random_sae"),
             ("sae_emotion", "unsteered")]
    pairs += [(m, "sae_emotion") for m in method_names if m.startswith("sae_emotion:") or m == "emoshift"]
    return [(a, b) for a, b in pairs if a in method_names and b in method_names]


def selection_scores_markdown(summary: list[dict], sets_by_score: dict[str, dict], alphas: dict[str, float],
                              main: str) -> list[str]:
    """The section comparing selection scores: overlap of their feature sets, held-out Δ, steering per score."""
    scores = list(sets_by_score)
    method = {score: "sae_emotion" if score == main else variant_method(score) for score in scores}
    emotions = list(next(iter(sets_by_score.values())))
    index = {(r["direction"], r["emotion"], r["method"]): r for r in summary}
    lines = ["## Selection scores", "",
             f"SAE-Emotion steering with the latents each selection score chose (`{main}` is the main SAE-Emotion "
             "column). Overlap: latents two scores' top-m share. Held-out Δ: mean over the set's latents of its own "
             "score's Δ on the half of the texts the selection did not see (selected-half Δ beside it; a drop is "
             "the winner's curse). Max any-step Δ: the largest seed Δ in the set (the seed's paper reports Δ = 1 "
             "for its top 6). Steering: SER accuracy with its α.", "",
             "| emotion | " + " | ".join(f"{a} ∩ {b}" for i, a in enumerate(scores) for b in scores[i + 1:]) + " | "
             + " | ".join(f"{s}: latents" for s in scores) + " |",
             "|---|" + "---:|" * (len(scores) * (len(scores) - 1) // 2) + "---|" * len(scores)]
    for e in emotions:
        ids = {s: sets_by_score[s][e].feature_ids for s in scores}
        overlap = [str(len(set(ids[a]) & set(ids[b]))) for i, a in enumerate(scores) for b in scores[i + 1:]]
        lines.append(f"| {e} | " + " | ".join(overlap) + " | "
                     + " | ".join(", ".join(map(str, ids[s])) for s in scores) + " |")
    lines += ["", "| score | α | emotion | Δ selected half | Δ held out | max any-step Δ | induction SER | "
              "suppression SER |", "|---|---:|---|---:|---:|---:|---|---|"]
    for s in scores:
        for e in emotions:
            fs = sets_by_score[s][e]
            held = fs.selection.get("held_out", {}).get("features", [])
            sel = np.mean([f["delta_select"] for f in held]) if held else math.nan
            out = np.mean([f["delta_held_out"] for f in held]) if held else math.nan
            any_step = max((f.delta_any_step for f in fs.features if f.delta_any_step is not None), default=math.nan)
            cells = [format_estimate(index[(d, e, method[s])], "ser_hit") if (d, e, method[s]) in index else "–"
                     for d in ("induction", "suppression")]
            lines.append(f"| {s} | {alphas.get(method[s], math.nan):g} | {e} | {sel:+.3f} | {out:+.3f} | "
                         f"{any_step:.2f} | {cells[0]} | {cells[1]} |")
    lines.append("")
    return lines


def method_phases(methods: SteeringMethods, emotion: str, method_names: Sequence[str]) -> dict[str, list[str]]:
    """The forward passes each method steers, read from the interventions it builds (stated in the report)."""
    from emoctl.emosteer.steer import GENERATION_PHASES

    out = {}
    for method in method_names:
        if method == "unsteered":
            continue
        if method == "emoshift":
            phases = GENERATION_PHASES
        else:
            (intervention,) = methods.interventions(method, emotion, 1.0)
            phases = intervention.phases
        out[method] = [p.value for p in sorted(phases, key=lambda p: ("prefill", "decode", "teacher_forced").index(p.value))]
    return out


def _steer_all(backbone: Backbone, interventions: list, batch: Sequence[Prompt], start: int):
    """The SAE-seed methods' context: every intervention attached (none for unsteered); any batch size."""
    from emoctl.steering import steer

    return steer(backbone, *interventions) if interventions else nullcontext()


def _emoshift_method(backbone: Backbone, folder: str) -> Callable:
    """EmoShift as a Table 1 method: its trained layer for the cell's emotion at intensity |α| (induction only)."""
    from emoctl.emosteer import EmoSteer, steer

    layer = EmoSteer.load(folder)

    def steering(cell: Cell, alpha: float, batch: Sequence[Prompt], start: int):
        if alpha == 0:
            return nullcontext()
        return steer(backbone, layer, [cell.emotion] * len(batch), alpha=abs(alpha))

    return steering


# ----------------------------------------------------------------------------------------------- writing

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
        + ", ".join(f"{method_label(m)} {a:g}" for m, a in info["alphas"].items()) + ".",
        "Induction: Neutral condition steered toward the emotion (target = emotion). Suppression: emotion "
        "condition steered away (target = Neutral). Emo-SIM: cosine of recognizer embeddings to the matched corpus "
        "recording (same text, speaker, target emotion). Values are means ± half the 95% t interval; SER accuracy "
        "shows its 95% Wilson interval.",
        "Steered passes: " + "; ".join(f"{method_label(m)} {' + '.join(p)}"
                                       for m, p in info.get("phases", {}).items())
        + " (the SAE-seed methods steer the decode steps their features were found in; EmoShift's layer also "
        "steers the prefill's last state, which predicts the first speech token).", ""]
    for metric, label in shown:
        lines += [f"## {label}", "", "| direction | emotion | " + " | ".join(method_label(m)
                                                                          for m in method_names) + " |",
                  "|---|---|" + "---|" * len(method_names)]
        for direction in ("induction", "suppression"):
            for emotion in dict.fromkeys(r["emotion"] for r in summary):
                cells = [format_estimate(index[(direction, emotion, m)], metric) if (direction, emotion, m) in index else "–"
                         for m in method_names]
                lines.append(f"| {direction} | {emotion} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


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
                    label=method_label(method))
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
                  method_names: Sequence[str], record: dict, paired: list[dict], sections: list[str]) -> None:
    from emoctl.io.fsio import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    body = "\n".join([table1_markdown(summary, info, method_names), *sections,
                      *paired_markdown(paired, {m: method_label(m) for m in method_names})])
    markdown = stamp(body, record, "table1_info.json")
    atomic_write_bytes(out / "table1.md", markdown.encode())
    atomic_write_bytes(out / "table1.csv", csv_bytes(summary))
    atomic_write_bytes(out / "table1_clips.csv", csv_bytes(rows))
    atomic_write_bytes(out / "table1_paired.csv", csv_bytes(paired))
    atomic_write_bytes(out / "alpha_sweep.csv", csv_bytes(sweep_rows))
    figure = sweep_figure(sweep_rows)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(out / "alpha_sweep.png", buffer.getvalue())
    write_report_info(out / "table1_info.json", info, record,
                      [out / name for name in ("table1.csv", "table1_clips.csv", "table1_paired.csv",
                                               "alpha_sweep.csv")])
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
    print(f"written to {out}/ (table1.md, table1.csv, table1_clips.csv, table1_paired.csv, alpha_sweep.csv, "
          f"alpha_sweep.png, tensorboard/)")
