"""Recipes for filling a missing activation store.

A data module given a builder can create its store on first use, so one
``emoctl fit`` goes from nothing to a trained SAE.  The synthetic builder
stands in for a TTS harvest until a backbone is configured; a harvest builder
joins it when the backbone interface lands.
"""
from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from pathlib import Path

from emoctl.store.synthetic import write_sparse_dictionary_store


class StoreBuilder(ABC):
    """Creates an activation store at a path that does not hold one yet."""

    @abstractmethod
    def build(self, path: Path) -> None:
        """Write a complete store at ``path``, which does not exist yet."""

    def build_atomically(self, path: Path) -> None:
        """Build beside ``path`` and rename into place, so a crash never leaves a half-built store there."""
        path = Path(path)
        staging = path.with_name(f".{path.name}.building")
        if staging.exists():  # left by an earlier crash
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
