"""``ActivationDataset``: a map-style dataset whose items are whole batches.

``__getitem__`` takes an array of global row indices and returns the (B, d)
rows with one gather per shard, so a ``DataLoader(dataset, sampler=
ShuffledBatchSampler(...), batch_size=None)`` produces batches without a
Python call per row.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from emoctl.store.reader import ActivationStore


class ActivationDataset(Dataset):
    """Batches of store rows, indexed by arrays of global row indices."""

    def __init__(self, store: ActivationStore, rows: np.ndarray | None = None) -> None:
        """
        Args:
            store: The open store (pickled to DataLoader workers without its memmaps).
            rows: The global rows this dataset serves (e.g. the train side of ``store.split``), or None for
                all. It sets ``len()``; items are always addressed by *global* row index, so the same array
                given to ``ShuffledBatchSampler`` yields valid batches.
        """
        self.store = store
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return self.store.num_rows if self.rows is None else len(self.rows)

    def __getitem__(self, indices: np.ndarray | torch.Tensor | list[int]) -> torch.Tensor:
        return self.store.rows(indices)  # (B, d), store dtype
