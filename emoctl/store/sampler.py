"""``ShuffledBatchSampler``: shuffled batches of row indices with a bounded
working set, for DDP.

A full random permutation of millions of rows touches every page of every
shard in every batch.  Instead the rows are cut into contiguous *blocks*, the
block order is shuffled, and rows are shuffled within a *window* of
consecutive blocks; a batch then reads from at most one window (or two, at a
window's edge), so the page cache needs only about ``window_rows`` rows.

DDP: every rank computes the same sequence from (seed, epoch) and takes its
own slice of each run of ``world_size * batch_size`` rows, so ranks get
disjoint rows and the same number of batches without communicating.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from emoctl.errors import ConfigError


class ResumableBatchSampler:
    """What emoctl's batch samplers share: each rank's share of an order fixed by (seed, epoch), the epoch set by
    Lightning's ``set_epoch``, and ``resume_after`` so a run resumed mid-epoch sees what an uninterrupted one would.

    A subclass checks its own settings, calls ``super().__init__``, and starts each pass with :meth:`_take_skip`.
    """

    def __init__(self, seed: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank}.")
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._skip = 0  # batches the next pass leaves out (resume_after)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch start; the order depends on (seed, epoch)."""
        self.epoch = epoch

    def resume_after(self, batches: int) -> None:
        """Make the next pass start after its first ``batches`` batches: a run resumed mid-epoch then sees the
        batches an uninterrupted one would (the same order, nothing repeated); later passes start at 0."""
        if batches < 0:
            raise ConfigError(f"resume_after needs batches >= 0, got {batches}.")
        self._skip = batches

    def _take_skip(self) -> int:
        """The batches this pass leaves out, once: the next pass starts at 0 again."""
        skip, self._skip = self._skip, 0
        return skip


class ShuffledBatchSampler(ResumableBatchSampler):
    """Yields sorted int64 arrays of global row indices, one array per batch."""

    def __init__(
        self,
        rows: np.ndarray,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        window_rows: int = 1 << 20,
        block_rows: int | None = None,
        drop_last: bool = True,
    ) -> None:
        """
        Args:
            rows: The global row indices to draw from (e.g. one side of ``ActivationStore.split``).
            batch_size: Rows per batch on each rank.
            seed: With the epoch (``set_epoch``), fixes the order.
            rank: This process's rank; it gets every ``world_size``-th slice of the shuffled rows.
            world_size: Number of ranks.
            window_rows: Rows shuffled together; bounds the set of rows read at one time.
            block_rows: Contiguous rows kept together when shuffling block order; default
                ``window_rows // 64``, so a window mixes 64 places of the store.
            drop_last: Drop the rows that do not fill a batch on every rank. If False, the tail becomes
                one shorter batch per rank (fewer than ``world_size`` rows may still be dropped so
                ranks stay equal).
        """
        if batch_size <= 0 or window_rows <= 0 or (block_rows is not None and block_rows <= 0):
            raise ConfigError(f"batch_size, window_rows and block_rows must be positive, got "
                              f"{batch_size}, {window_rows}, {block_rows}.")
        super().__init__(seed, rank, world_size)
        self.rows = np.sort(np.asarray(rows, dtype=np.int64).reshape(-1))  # sorted: blocks are contiguous on disk
        self.batch_size = batch_size
        self.block_rows = block_rows or max(1, window_rows // 64)
        self.blocks_per_window = max(1, window_rows // self.block_rows)
        self.drop_last = drop_last

    @property
    def _rows_per_step(self) -> int:
        return self.batch_size * self.world_size

    def _tail_per_rank(self) -> int:
        """Rows of the shorter last batch on each rank (0 with drop_last)."""
        if self.drop_last:
            return 0
        return (len(self.rows) % self._rows_per_step) // self.world_size

    def __len__(self) -> int:
        return len(self.rows) // self._rows_per_step + (self._tail_per_rank() > 0)

    def _shuffled_positions(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Positions into ``self.rows`` in shuffled order, one window at a time."""
        n = len(self.rows)
        n_blocks = -(-n // self.block_rows)
        block_order = rng.permutation(n_blocks)
        offsets = np.arange(self.block_rows, dtype=np.int64)
        for w in range(0, n_blocks, self.blocks_per_window):
            blocks = block_order[w:w + self.blocks_per_window]
            positions = (blocks[:, None] * self.block_rows + offsets).reshape(-1)  # (blocks * block_rows,)
            positions = positions[positions < n]  # the last block may be short
            yield positions[rng.permutation(len(positions))]

    def __iter__(self) -> Iterator[np.ndarray]:
        skip = self._take_skip()
        for i, batch in enumerate(self._batches()):
            if i >= skip:
                yield batch

    def _batches(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        step = self._rows_per_step
        full_steps = len(self.rows) // step
        pending = np.empty(0, dtype=np.int64)
        emitted = 0
        for window in self._shuffled_positions(rng):
            pending = np.concatenate([pending, window])
            usable = min(len(pending) // step, full_steps - emitted)
            for s in range(usable):
                mine = pending[s * step + self.rank * self.batch_size:][:self.batch_size]
                yield np.sort(self.rows[mine])
            pending = pending[usable * step:]
            emitted += usable
        tail = self._tail_per_rank()
        if tail:
            yield np.sort(self.rows[pending[self.rank * tail:(self.rank + 1) * tail]])
