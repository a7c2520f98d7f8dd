"""Recipes for filling a missing activation store.

A data module given a builder can create its store on first use, so one
``emoctl fit`` goes from nothing to a trained SAE.  The synthetic builder
gives rows of a known dictionary (demos, recovery tests); ``HarvestedStore``
harvests a TTS backbone's activations.
"""
from __future__ import annotations

import shutil
import sys
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from data_modules.prompt_grid import CorpusTexts, PromptGridDataModule
from emoctl.backbones.loading import BackboneSpec
from emoctl.harvest.module import HarvestModule
from emoctl.harvest.run import harvest_into
from emoctl.harvest.session import HarvestSettingsMismatch
from emoctl.io.fsio import ExclusiveLock
from emoctl.store.manifest import MANIFEST_NAME
from emoctl.store.synthetic import write_sparse_dictionary_store


@contextmanager
def building(path: Path) -> Iterator[bool]:
    """Hold the right to build the store at ``path``; yields False when it exists once that right is held.

    A second process that wants the same store (two fits of one recipe started together) waits for the first
    and then uses the store it built, rather than taking the first one's live ``.building`` folder for a crash
    leftover: the lock (``.<name>.lock`` beside the store, dropped by the OS when its holder dies) is what tells
    a live build from a dead one."""
    lock = ExclusiveLock.beside(path)
    if not lock.acquire():
        print(f"waiting for {lock.owner()}, which is building the store at {path}; this run uses it when done",
              file=sys.stderr, flush=True)
        lock.acquire(blocking=True)
    try:
        yield not (path / MANIFEST_NAME).exists()
    finally:
        lock.release()


class StoreBuilder(ABC):
    """Creates an activation store at a path that does not hold one yet."""

    @abstractmethod
    def build(self, path: Path) -> None:
        """Write a complete store at ``path``, which does not exist yet."""

    def build_atomically(self, path: Path) -> None:
        """Build beside ``path`` and rename into place, so a crash never leaves a half-built store there; a build
        of the same path under way in another process is waited for, and its store used."""
        path = Path(path)
        staging = path.with_name(f".{path.name}.building")
        with building(path) as needed:
            if not needed:
                return
            if staging.exists():  # left by a crash: no live process holds the lock
                shutil.rmtree(staging)
            staging.parent.mkdir(parents=True, exist_ok=True)
            self.build(staging)
            staging.rename(path)


class SyntheticSparseStore(StoreBuilder):
    """Rows drawn from a known sparse dictionary, for demos and dictionary-recovery tests."""

    def __init__(
        self,
        d_model: int = 64,
        n_atoms: int = 256,
        k_active: int = 4,
        n_utterances: int = 400,
        rows_per_utterance: tuple[int, int] = (20, 60),
        noise_std: float = 0.01,
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        """
        Args:
            d_model: Width of each row.
            n_atoms: Size of the true dictionary (unit-norm atoms).
            k_active: Atoms summed into each row, with random positive magnitudes.
            n_utterances: Fake utterances, each a segment of consecutive rows.
            rows_per_utterance: Inclusive range of segment lengths.
            noise_std: Standard deviation of the Gaussian noise added to each row.
            dtype: Stored dtype: float32, float16 or bfloat16.
            seed: Makes the store deterministic.
        """
        self.kwargs = dict(d_model=d_model, n_atoms=n_atoms, k_active=k_active, n_utterances=n_utterances,
                           rows_per_utterance=tuple(rows_per_utterance), noise_std=noise_std, dtype=dtype, seed=seed)

    def build(self, path: Path) -> None:
        write_sparse_dictionary_store(path, **self.kwargs)


class HarvestedStore(StoreBuilder):
    """Harvests a backbone's activations into the store, so one ``emoctl fit`` goes from a TTS to an SAE.

    Runs in a single process (the data module's ``prepare_data``).  The harvest
    is built in ``.<name>.building`` beside the store and renamed when complete;
    a run killed midway resumes from the utterances committed there.
    """

    def __init__(
        self,
        backbone: BackboneSpec = BackboneSpec(),
        hookpoint: str = "resid_pre.5",
        phases: tuple[str, ...] = ("decode",),
        dtype: str = "float32",
        texts: list[str] | None = None,
        texts_file: str | None = None,
        corpus: CorpusTexts | None = None,
        speakers: list[str] | None = None,
        emotions: list[str] | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 1000,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
        shard_rows: int = 1 << 16,
    ) -> None:
        """
        Args:
            backbone: The TTS backbone to harvest (kind, checkpoint folder, device).
            hookpoint: ``resid_pre.L`` (input of block L, counted from 0) or ``lm_out``.
            phases: Forward passes to read: decode and/or prefill.
            dtype: Row dtype on disk: float32, bfloat16 or float16.
            texts: Texts listed here; or texts_file (one per line); or corpus (the sentence grammar).
            texts_file: File of texts, one per line.
            corpus: Texts from the embedded corpus's sentence grammar.
            speakers: Speakers to voice; None: all of the backbone's.
            emotions: Emotions (Neutral is always added); None: all of the backbone's.
            batch_size: Prompts generated together.
            max_new_tokens: Speech tokens per utterance at most.
            temperature: Sampling temperature; 0 is greedy.
            top_k: Sample among the k most likely tokens; None: all.
            seed: Run seed (each batch's seed derives from it).
            shard_rows: Rows per shard file.
        """
        self.backbone = backbone
        self.hookpoint, self.phases, self.dtype, self.shard_rows = hookpoint, tuple(phases), dtype, shard_rows
        self.data_kwargs = dict(texts=texts, texts_file=texts_file, corpus=corpus, speakers=speakers,
                                emotions=emotions, batch_size=batch_size)
        self.model_kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)

    def build(self, path: Path) -> None:
        module = HarvestModule(self.backbone, **self.model_kwargs)
        datamodule = PromptGridDataModule(**self.data_kwargs)
        harvest_into(path, module, datamodule, self.hookpoint, self.phases, dtype=self.dtype,
                     shard_rows=self.shard_rows)

    def build_atomically(self, path: Path) -> None:
        """Like the base class, but a staging folder left by a killed harvest is resumed, not wiped."""
        path = Path(path)
        staging = path.with_name(f".{path.name}.building")
        with building(path) as needed:
            if not needed:
                return
            staging.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.build(staging)
            except HarvestSettingsMismatch:
                shutil.rmtree(staging)  # a stale partial harvest of another recipe: never visible as a store
                self.build(staging)
            staging.rename(path)
