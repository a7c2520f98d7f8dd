"""``ThreadPrefetcher``: training batches gathered ahead by threads of the training process.

A DataLoader worker *process* hands every batch to the trainer through a fresh shared-memory segment; for a
(4096, 1280) float32 batch that transfer costs more than the gather itself (page faults on every new segment,
``emoctl bench loader``). The gather is NumPy ``take`` on memory-mapped shards plus one finiteness sum, and both
release the GIL, so threads overlap it with the training step without any inter-process copy. Batches come out
in the sampler's order whatever the thread count, so a run's data order does not depend on it.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import torch

from emoctl.errors import ConfigError


class ThreadPrefetcher:
    """Iterate ``dataset[indices]`` for each ``indices`` of ``sampler``, ``depth`` batches ahead on ``threads``."""

    def __init__(self, dataset: Any, sampler: Iterable, threads: int = 2, depth: int = 4,
                 pin_memory: bool = False) -> None:
        """
        Args:
            dataset: Indexed by one array of row indices per batch (``ActivationDataset``).
            sampler: Yields those arrays (``ShuffledBatchSampler``); ``set_epoch`` is forwarded to it.
            threads: Gathering threads (at least 1).
            depth: Batches in flight at most (at least ``threads``); bounds the memory held ahead.
            pin_memory: Return page-locked tensors (for a fast, asynchronous copy to a GPU).
        """
        if threads < 1 or depth < threads:
            raise ConfigError(f"ThreadPrefetcher needs threads >= 1 and depth >= threads, got threads={threads}, "
                              f"depth={depth}.")
        self.dataset = dataset
        self.sampler = sampler  # Lightning finds set_epoch here, as on a DataLoader with batch_size=None ...
        self.batch_sampler = None  # ... whose batch_sampler is None
        self.threads = threads
        self.depth = depth
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def _load(self, indices: Any) -> torch.Tensor:
        batch = self.dataset[indices]
        return batch.pin_memory() if self.pin_memory else batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="emoctl-batches")
        pending: deque[Future] = deque()
        try:
            for indices in self.sampler:
                pending.append(pool.submit(self._load, indices))
                if len(pending) >= self.depth:
                    yield pending.popleft().result()  # a gather's error (a damaged shard) is raised here
            while pending:
                yield pending.popleft().result()
        finally:  # also when the consumer stops early: drop what was gathered ahead
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
