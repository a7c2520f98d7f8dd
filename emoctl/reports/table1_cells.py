"""Table 1's cells: a block of prompts per (direction, emotion), spoken and scored per method, and the α sweep.

* **Induction**: prompts under the Neutral condition, steered toward emotion e (α > 0); the target is e.
* **Suppression**: prompts under emotion e, steered away from e (α < 0); the target is Neutral.

Every clip of a cell uses the same prompts, batches and sampling seed across methods, so method differences
are paired. The α sweep runs induction cells on the corpus's *evaluation* sentences and picks, per method, the α
with the highest accuracy whose WER stays within ``max_wer_increase`` of the unsteered WER.
"""
from __future__ import annotations

import io
import math
import re
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile
from tqdm.auto import tqdm

from emoctl.backbones.base import Backbone, Prompt
from emoctl.backbones.conditions import Voice, VoiceName
from emoctl.evaluation.alpha import choose_alpha
from emoctl.evaluation.cell_cache import CellCache
from emoctl.emotions import NEUTRAL
from emoctl.evaluation.scoring import MeasuredClips, References, Scorers, measure_clips, score_clips
from emoctl.evaluation.steered import synthesize_steered
from emoctl.evaluation.summary import summarize
from emoctl.io.fsio import atomic_write_bytes
from emoctl.reports.table1_methods import SteeringMethods, builds_interventions
from emoctl.steering import steer
from emoctl.synthesis import Clip, SamplingConfig

AUDIO_COLUMN = "audio"
"""The column of ``table1_clips.csv`` naming a clip's FLAC file, relative to the report folder (``save_audio``)."""


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


def cell_prompts(backbone: Backbone, cell: Cell, texts: list[str], speakers: list[str], tag: str,
                 voice: Callable[[str, str], Voice] | None = None) -> list[Prompt]:
    """The cell's prompts: every text by every speaker, under the cell's condition."""
    condition = backbone.condition_for(cell.condition)
    voice = voice or (lambda speaker, text: VoiceName(speaker))
    return [Prompt(text, voice(s, text), condition, f"{tag}-{cell.direction[:3]}-{cell.emotion}-t{i:02d}-{s}")
            for i, text in enumerate(texts) for s in speakers]


def run_cells(backbone: Backbone, methods: SteeringMethods, method_names: Sequence[str], cells: Sequence[Cell],
              texts: list[str], speakers: list[str], alphas: dict[str, float], scorers: Scorers, refs: References,
              seed: int, sampling: SamplingConfig, tag: str, extra_method: Callable | None = None,
              progress: bool = True, voice: Callable[[str, str], Voice] | None = None,
              cache: CellCache | None = None, audio_dir: Path | None = None) -> list[dict]:
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
        prompts = cell_prompts(backbone, cell, texts, speakers, tag, voice)
        alpha = cell.sign * alphas.get(method, 0.0)
        block = {"tag": tag, "direction": cell.direction, "emotion": cell.emotion, "method": method, "alpha": alpha,
                 "prompts": [(p.text, p.speaker, p.emotion_key, p.utt_id) for p in prompts], "seed": seed,
                 "sampling": sampling, "scorers": scorers.names()}
        if audio_dir is not None:
            block["audio"] = True  # rows name their files; blocks kept without audio are not these rows
        kept = cache.get(block) if cache is not None else None
        if kept is not None and audio_dir is not None and not _audio_present(kept, audio_dir):
            kept = None  # a kept block whose FLAC files are gone is spoken again, so every row has its audio
        if kept is not None:
            rows += kept
            continue
        key = None
        if builds_interventions(method):
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
        if audio_dir is not None:
            for row, clip in zip(block_rows, measured.clips):
                row[AUDIO_COLUMN] = write_clip_audio(audio_dir, clip, method)
        if cache is not None:
            cache.put(block, block_rows)
        rows += block_rows
    return rows


def clip_audio_name(utt_id: str, method: str) -> str:
    """The FLAC file name of a clip: its prompt id and method, in characters every file system keeps."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"{utt_id}__{method}") + ".flac"


def write_clip_audio(audio_dir: Path, clip: Clip, method: str) -> str:
    """Write one clip as 16-bit FLAC under ``audio_dir`` (atomically); its path relative to the report folder."""
    audio_dir.mkdir(parents=True, exist_ok=True)
    name = clip_audio_name(clip.prompt.utt_id, method)
    wave = np.clip(np.asarray(clip.wave, dtype=np.float32).reshape(-1), -1.0, 1.0)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, int(clip.sample_rate), format="FLAC", subtype="PCM_16")
    atomic_write_bytes(audio_dir / name, buffer.getvalue())
    return f"{audio_dir.name}/{name}"


def _audio_present(rows: list[dict], audio_dir: Path) -> bool:
    """Whether every kept row names a FLAC file that is still in ``audio_dir``."""
    return all(row.get(AUDIO_COLUMN) and (audio_dir.parent / row[AUDIO_COLUMN]).is_file() for row in rows)


def _steer_all(backbone: Backbone, interventions: list, batch: Sequence[Prompt], start: int):
    """The SAE-seed methods' context: every intervention attached (none for unsteered); any batch size."""
    return steer(backbone, *interventions) if interventions else nullcontext()


def sweep_cells(backbone: Backbone, methods: SteeringMethods, method_names: Sequence[str], emotions: Sequence[str],
                texts: list[str], speakers: list[str], sweep_alphas: dict[str, list[float]], scorers: Scorers,
                refs: References, seed: int, sampling: SamplingConfig, extra_method: Callable | None = None,
                progress: bool = True, voice: Callable[[str, str], Voice] | None = None,
                cache: CellCache | None = None) -> list[dict]:
    """The α sweep: unsteered, then each method at each of its α, on induction cells; rows name ``method@α``."""
    cells = [Cell("induction", e) for e in emotions]
    rows = run_cells(backbone, methods, ["unsteered"], cells, texts, speakers, {}, scorers, refs, seed, sampling,
                     "sweep", progress=progress, voice=voice, cache=cache)
    for method in method_names[1:]:
        for alpha in sweep_alphas[method.partition(":")[0]]:
            swept = run_cells(backbone, methods, [method], cells, texts, speakers, {method: alpha}, scorers, refs,
                              seed, sampling, "sweep", extra_method, progress=progress, voice=voice, cache=cache)
            for r in swept:
                r["method"] = f"{method}@{alpha:g}"
            rows += swept
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
