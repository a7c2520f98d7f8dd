"""Table 1 of the SAE seed: inducing and suppressing emotions by steering, per method, with 95% intervals.

Protocol (the paper's, on whatever backbone is configured):

* **Induction**: prompts under the Neutral condition, steered toward emotion e
  (α > 0); the target is e.
* **Suppression**: prompts under emotion e, steered away from e (α < 0); the
  target is Neutral.
* **Methods**: the unsteered backbone, Random SAE features, Global
  (mean-difference) steering and SAE-Emotion features, all norm-matched so one
  α is one step length (see :mod:`emoctl.reports.table1_methods`).
* **Metrics** per clip: SER accuracy and Emo-SIM (the recognizer is named in
  the report; Emo-SIM against the matched corpus recording of the same text,
  speaker and target emotion, and against the target emotion's prototype),
  WER of the bundled ASR, speaker similarity to the speaker's corpus
  recordings, DNSMOS OVRL.  Means with 95% intervals over utterances.
* **α**: a sweep on the corpus's *evaluation* sentences picks, per method, the
  α with the highest induction accuracy whose WER stays within
  ``max_wer_increase`` of the unsteered WER; the table then runs on the
  *test* sentences, which neither the sweep nor the backbone's training saw
  (:mod:`emoctl.reports.table1_cells`).

Every clip of a (direction, emotion) cell uses the same prompts, batches and
sampling seed across methods, so method differences are paired.
Outputs (:mod:`emoctl.reports.table1_render`): ``table1.md``, ``table1.csv``,
``table1_clips.csv``, ``alpha_sweep.csv`` and ``alpha_sweep.png`` in
``out_dir``; the same numbers and figure in TensorBoard under
``<out_dir>/tensorboard``. With ``save_audio``, every clip of the table is also kept as FLAC in
``<out_dir>/clips/``, named in the ``audio`` column of ``table1_clips.csv`` (for ``emoctl listen build``).

:class:`Table1Settings` holds every setting and refuses bad ones before any work; :func:`run_table1` runs
them; ``emoctl report table1`` (:mod:`emoctl.commands.table1`) takes the settings as flags.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from emoctl.backbones.loading import BackboneSpec
from emoctl.errors import ConfigError
from emoctl.evaluation.cell_cache import CellCache, check_kept_blocks
from emoctl.evaluation.paired import paired_comparisons
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.evaluation.scoring import References, Scorers
from emoctl.evaluation.summary import summarize
from emoctl.evaluation.texts import split_sentences
from emoctl.io.fsio import check_output_dir
from emoctl.io.provenance import collect
from emoctl.metrics.loading import recognizer_folder
from emoctl.emotions import ESD_EMOTIONS, NEUTRAL
from emoctl.reports.table1_cells import Cell, choose_alphas, run_cells, sweep_cells
from emoctl.reports.table1_methods import (LATENT_METHODS, METHODS, SteeringMethods, emoshift_method, load_directions,
                                           method_comparisons, method_phases, variant_method)
from emoctl.reports.table1_render import selection_scores_markdown, write_table1
from emoctl.sae.export import load_pretrained
from emoctl.selection.feature_set import feature_set_path, load_feature_sets
from emoctl.steering import store_mean_differences
from emoctl.steering.sae_features import LATENT_ALPHA_RULE, latent_alpha_ok
from emoctl.store import ActivationStore

CLIPS_DIR = "clips"
"""The folder of a report's FLAC clips (``save_audio``), under ``out_dir``."""

DEFAULT_SWEEP: dict[str, list[float]] = {"random_sae": [4.0, 8.0], "global": [4.0, 8.0], "sae_emotion": [4.0, 8.0],
                                         "emoshift": [1.0, 2.0, 3.0], "cocoemo": [1.0, 2.0, 3.0]}


@dataclass(frozen=True)
class Table1Settings:
    """Everything ``emoctl report table1`` runs with; bad values are refused here, before any work."""

    sae: str
    """Exported SAE folder (cfg.json + sae_weights.safetensors)."""
    store: str
    """The activation store the SAE was trained on (for the global mean-difference direction)."""
    selection: str
    """Folder of ``emoctl select`` feature sets (features_<emotion>.json)."""
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    """The backbone the SAE was trained on (kind, checkpoint folder, device)."""
    corpus_root: str = "runs/corpus/esd_espeak"
    """ESD-shaped corpus: held-out sentences and reference recordings."""
    out_dir: str = "reports"
    """Where the report files go."""
    emotions: list[str] | None = None
    """Emotions to induce and suppress; None: every emotion with a feature set."""
    protocol: EvaluationProtocol = field(default_factory=EvaluationProtocol)
    """Speakers, the table's sentences (test split), reference clips, seed (shared by every method of a cell) and
    sampling."""
    sweep_alphas: dict[str, list[float]] | None = None
    """α values of the sweep per method (on evaluation-split sentences); None: SAE-side methods 4, 8 (latent units,
    norm-matched) and EmoShift 1, 2, 3 (the CPU default; widen it on a GPU)."""
    sweep_texts: int = 2
    """Evaluation-split sentences per sweep cell."""
    max_wer_increase: float = 0.15
    """Largest mean WER increase over unsteered that the α choice accepts."""
    emoshift: str | None = None
    """Optional folder of a trained EmoShift layer, added as a method (induction only)."""
    directions: str | None = None
    """Optional steering-vector folder from ``emoctl extract`` (CoCoEmo's mean differences at its chosen layers),
    added as the method ``cocoemo`` (both directions; α at CoCoEmo's scale, swept 1, 2, 3 by default)."""
    recognizer: str = "mini"
    """"mini" (embedded) or "emotion2vec" (needs recognizer_dir)."""
    recognizer_dir: str | None = None
    """Recognizer folder; None for the embedded default."""
    selections: dict[str, str] | None = None
    """Further feature-set folders of the same SAE, keyed by the score that selected them (``{"rate": ...,
    "mass": ...}`` from ``emoctl select --score``): each becomes the method ``sae_emotion:<score>``, swept and run
    like SAE-Emotion, and the report compares the scores."""
    n_bootstrap: int = 2000
    """Resamples of the paired bootstrap behind the Emo-SIM comparisons between methods."""
    resume: bool = True
    """Keep each finished (cell, method) block under ``out_dir/.partial`` and take the blocks an interrupted run of
    the same inputs and settings finished (removed once the report is written)."""
    allow_unverified_features: bool = False
    """Apply feature sets that record no SAE digest (written by other code), which cannot be checked against
    ``sae``; by default they are refused."""
    save_audio: bool = False
    """Also write every clip of the table (not of the α sweep) as FLAC into ``out_dir/clips/``, each named in the
    ``audio`` column of table1_clips.csv (relative to ``out_dir``): the input of ``emoctl listen build``."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.protocol.split != "test":
            raise ConfigError(f"Table 1 reports on test sentences and sweeps α on evaluation sentences; "
                              f"protocol.split={self.protocol.split!r} must be 'test'.")
        if not math.isfinite(self.max_wer_increase) or self.max_wer_increase < 0:
            raise ConfigError(f"max_wer_increase={self.max_wer_increase} must be a finite number >= 0 (the largest "
                              f"mean WER increase over unsteered that the α choice accepts; a negative bound rejects "
                              f"every α).")
        if self.n_bootstrap < 1:
            raise ConfigError(f"n_bootstrap={self.n_bootstrap} must be >= 1 (resamples of the paired Emo-SIM "
                              f"bootstrap).")
        bad = {score: folder for score, folder in self.selection_folders.items()
               if not score or ":" in score or "@" in score}
        if bad:
            raise ConfigError(f"selections keys name the score that selected a feature-set folder (e.g. rate, mass); "
                              f"{sorted(bad)} cannot be a method suffix (empty, ':' or '@').")
        if self.sweep_texts < 1:
            raise ConfigError(f"sweep_texts={self.sweep_texts} must be >= 1 (evaluation sentences per α-sweep cell).")
        unknown = sorted(set(self.sweep_alphas or {}) - set(DEFAULT_SWEEP))
        if unknown:
            raise ConfigError(f"sweep_alphas has no method {unknown}; its keys are {', '.join(DEFAULT_SWEEP)}.")
        sweeps = self.sweeps
        if any(not values or any(not math.isfinite(a) or a <= 0 for a in values) for values in sweeps.values()):
            raise ConfigError(f"every sweep_alphas list needs finite α > 0 (the sign is the cell's direction), got "
                              f"{sweeps}.")
        too_strong = {m: [a for a in sweeps[m] if not latent_alpha_ok(a)] for m in LATENT_METHODS}
        too_strong = {m: values for m, values in too_strong.items() if values}
        if too_strong:
            raise ConfigError(f"sweep_alphas {too_strong} steer latents too hard: α must be {LATENT_ALPHA_RULE}.")

    @property
    def sweeps(self) -> dict[str, list[float]]:
        """The α swept per method: ``sweep_alphas`` over :data:`DEFAULT_SWEEP`."""
        return {**DEFAULT_SWEEP, **(self.sweep_alphas or {})}

    @property
    def selection_folders(self) -> dict[str, str]:
        """``selections``, empty when none are given."""
        return dict(self.selections or {})


def run_table1(settings: Table1Settings) -> list[dict]:
    """Run the SAE seed's Table 1 protocol and write table1.md / .csv, the α sweep CSV and figure; the summary rows."""
    s = settings
    check_output_dir(s.out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    if s.resume:
        check_kept_blocks(s.out_dir)  # an altered kept block is refused now, not after the blocks before it
    root, protocol, selections, sweep_alphas = Path(s.corpus_root), s.protocol, s.selection_folders, s.sweeps
    test_sentences, record = protocol.texts(root)
    evaluation_sentences, _ = split_sentences(root, "evaluation", s.sweep_texts)
    tts = s.backbone.load()
    sae_model = load_pretrained(s.sae)
    emotions = list(s.emotions or [e for e in (tts.emotions or ESD_EMOTIONS) if e != NEUTRAL
                                   and feature_set_path(s.selection, e).is_file()])
    if not emotions:
        raise ConfigError(f"no feature sets in {s.selection} (features_<emotion>.json); run `emoctl select` first.")
    directions = load_directions(s.directions, tts, emotions) if s.directions else None  # before the store pass
    d_sae, unverified = sae_model.cfg.d_sae, s.allow_unverified_features
    feature_sets = load_feature_sets(s.selection, emotions, s.sae, d_sae, allow_unverified=unverified)
    variants = {score: load_feature_sets(folder, emotions, s.sae, d_sae, allow_unverified=unverified)
                for score, folder in selections.items()}
    activations = ActivationStore(s.store)  # opened for its content digest in the record
    means = store_mean_differences(s.store, emotions, NEUTRAL, progress=s.progress)
    seed, sampling = protocol.seed, protocol.sampling
    methods = SteeringMethods(sae_model, feature_sets, means, seed=seed, variants=variants, directions=directions)
    speakers, voice = protocol.voices(tts, root), protocol.voice_for(tts, root)
    scorers = Scorers.load(s.recognizer, s.recognizer_dir)
    refs = References(root, record["sentences"], speakers, scorers, used=test_sentences + evaluation_sentences,
                      reference_clips=protocol.reference_clips)
    extra = None
    method_names = list(METHODS) + [variant_method(score) for score in variants]
    if directions is not None:
        method_names.append("cocoemo")
    if s.emoshift is not None:
        extra = emoshift_method(tts, s.emoshift)
        method_names.append("emoshift")

    # What makes every row (inputs by content, protocol, seeds, code): the report's record and the key of the
    # blocks kept for a resumed run.
    paths = {"sae": s.sae, "feature_sets": [feature_set_path(s.selection, e) for e in emotions], "layer": s.emoshift,
             "directions": s.directions,
             **{f"feature_sets_{score}": [feature_set_path(folder, e) for e in emotions]
                for score, folder in selections.items()}}
    made_with = collect(backbone=tts, paths=paths, stores={"store": activations}, corpus=root,
                        recognizer=(s.recognizer, recognizer_folder(s.recognizer, s.recognizer_dir)),
                        seeds={"sampling": seed, "random_features": seed},
                        protocol={**protocol.describe(), "sweep_alphas": sweep_alphas, "sweep_texts": s.sweep_texts,
                                  "max_wer_increase": s.max_wer_increase, "emotions": emotions,
                                  "n_bootstrap": s.n_bootstrap})
    cache = CellCache(s.out_dir, made_with, enabled=s.resume)
    run = {"progress": s.progress, "voice": voice, "cache": cache}
    audio = {"audio_dir": Path(s.out_dir) / CLIPS_DIR} if s.save_audio else {}

    # 1. α sweep on evaluation sentences (SER + WER only).
    sweep_rows = sweep_cells(tts, methods, method_names, emotions, evaluation_sentences, speakers, sweep_alphas,
                             scorers.without("speaker", "dnsmos"), refs, seed, sampling, extra, **run)
    alphas = choose_alphas(sweep_rows, method_names, s.max_wer_increase)

    # 2. The table on test sentences, both directions.
    cells = [Cell(d, e) for d in ("induction", "suppression") for e in emotions]
    rows = run_cells(tts, methods, [m for m in method_names if m != "emoshift"], cells,
                     test_sentences, speakers, alphas, scorers, refs, seed, sampling, "table", **run, **audio)
    if s.emoshift is not None:
        rows += run_cells(tts, methods, ["emoshift"], [c for c in cells if c.direction == "induction"],
                          test_sentences, speakers, alphas, scorers, refs, seed, sampling, "table", extra, **run,
                          **audio)
    if cache.reused:
        print(f"took {cache.reused} finished blocks of clips from {cache.folder} (an interrupted run of the same "
              f"inputs and settings)")

    # 3. Summaries, paired tests and the files.
    metrics = ["emo_sim_matched", "emo_sim_prototype", "ser_hit", "p_target", "wer", "spk_sim", "dnsmos_ovrl"]
    summary = summarize(rows, metrics)
    paired = paired_comparisons(rows, method_comparisons(method_names), n_bootstrap=s.n_bootstrap, seed=seed)
    main_score = _score_of(feature_sets)
    info = {"backbone": tts.backbone_id, "sae": s.sae, "hookpoint": sae_model.cfg.hook_name,
            "recognizer": getattr(scorers.recognizer, "name", s.recognizer), "speakers": speakers,
            "n_texts": len(test_sentences), "alphas": alphas, "seed": seed, "protocol": protocol.describe(),
            "sweep_alphas": sweep_alphas, "max_wer_increase": s.max_wer_increase,
            "features": {e: fs.feature_ids for e, fs in feature_sets.items()},
            "selection_score": main_score,
            "selections": {score: {"path": folder, "features": {e: fs.feature_ids for e, fs in variants[score].items()}}
                           for score, folder in selections.items()},
            "phases": method_phases(methods, emotions[0], method_names),
            "directions": ({"path": s.directions, "hookpoints": directions.hookpoints}
                           if directions is not None else None)}
    sections = selection_scores_markdown(summary, {main_score: feature_sets, **variants}, alphas,
                                         main=main_score) if variants else []
    write_table1(Path(s.out_dir), summary, rows, sweep_rows, info, method_names, made_with, paired, sections)
    cache.clear()
    if s.save_audio:
        print(f"clips of the table written as FLAC to {Path(s.out_dir) / CLIPS_DIR}/ (column audio of "
              "table1_clips.csv)")
    return summary


def _score_of(feature_sets: dict) -> str:
    """The selection score the feature sets record (files written before scores existed used any_step)."""
    scores = {fs.selection.get("score", "any_step") for fs in feature_sets.values()}
    if len(scores) != 1:
        raise ConfigError(f"one selection folder mixes scores {sorted(scores)}; select every emotion with one score.")
    return scores.pop()
