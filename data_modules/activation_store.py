"""``ActivationStoreDataModule``: batches of activation rows for SAE training.

Rows come from a sharded store (:mod:`emoctl.store`); the train/validation
split is by pair group or utterance, never by row, so held-out FVU is measured
on utterances the SAE never saw.  Batches are whole (B, d) tensors read with
one indexed gather per batch, shuffled across shards with bounded memory, gathered ahead by threads of the
training process (:class:`~emoctl.store.prefetch.ThreadPrefetcher`) or by DataLoader worker processes.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from data_modules.resume import batches_done_this_epoch
from data_modules.store_builders import StoreBuilder
from emoctl.errors import ConfigError, StoreNotFoundError
from emoctl.store import ActivationDataset, ActivationStore, ShuffledBatchSampler
from emoctl.store.prefetch import ThreadPrefetcher


class ActivationStoreDataModule(pl.LightningDataModule):
    """Train and validation batches from one activation store directory."""

    def __init__(
        self,
        path: str,
        batch_size: int = 4096,
        val_fraction: float = 0.02,
        split_by: Literal["pair_key", "utt_id"] = "pair_key",
        window_rows: int = 1 << 20,
        num_workers: int = 0,
        prefetch_threads: int = 2,
        seed: int = 0,
        build: StoreBuilder | None = None,
        verify: bool = True,
        pin_memory: bool | None = None,
    ) -> None:
        """
        Args:
            path: Directory of the activation store (the one thing a user usually edits).
            batch_size: Rows per batch on each rank.
            val_fraction: Fraction of groups held out for validation.
            split_by: Hold out whole pair groups (same text and speaker across emotions) or whole utterances.
            window_rows: Rows shuffled together in memory; bounds the reader's working set.
            num_workers: DataLoader worker processes per rank; 0 (the default) reads in the training process,
                where ``prefetch_threads`` gather ahead (a worker process hands each batch over through fresh
                shared memory, which costs more than the gather: ``emoctl bench loader``).
            prefetch_threads: Threads of the training process that gather batches ahead when num_workers is 0
                (0: gather each batch when it is asked for). The batch order does not depend on it.
            seed: Seed of the split and of the shuffle.
            build: How to create the store when ``path`` holds none (e.g. SyntheticSparseStore); None means
                a missing store is an error.
            verify: Check every shard's and utterance table's CRC-32 once before training (about a second per
                GB), so a shard damaged on disk is refused rather than trained on.
            pin_memory: Hand batches over in page-locked memory, so the copy to the GPU can overlap compute.
                None (the default): pin when the trainer runs on CUDA.
        """
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}.")
        if batch_size <= 0:
            raise ConfigError(f"data.batch_size must be positive, got {batch_size}.")
        if num_workers < 0 or prefetch_threads < 0:
            raise ConfigError(f"data.num_workers and data.prefetch_threads must be >= 0, got {num_workers} and "
                              f"{prefetch_threads}.")
        self.path = Path(path)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.split_by = split_by
        self.window_rows = window_rows
        self.num_workers = num_workers
        self.prefetch_threads = prefetch_threads
        self.seed = seed
        self.builder = build
        self.verify = verify
        self.pin_memory = pin_memory
        self.store: ActivationStore | None = None

    @property
    def d_model(self) -> int | None:
        """Row width of the store, once it is open (the SAE checks it against its d_in)."""
        return self.store.d_model if self.store is not None else None

    def prepare_data(self) -> None:
        # Runs on one process per node before setup(): the place to create files.
        if not (self.path / "manifest.json").exists():
            if self.builder is None:
                raise StoreNotFoundError(
                    f"no activation store at {self.path} (manifest.json missing). Set data.path to a store "
                    "directory, or give data.build (e.g. class_path: data_modules.SyntheticSparseStore) "
                    "to create one."
                )
            self.builder.build_atomically(self.path)

    def setup(self, stage: str) -> None:
        if self.store is None:
            self.store = ActivationStore(self.path)
            self.store.require_finished("train on")
            if self.verify:
                self.store.verify(progress=True)
            self.train_rows, self.val_rows = self.store.split(self.val_fraction, seed=self.seed, by=self.split_by)
            if len(self.train_rows) < self.batch_size:
                raise ConfigError(
                    f"the store at {self.path} has {len(self.train_rows)} training rows, fewer than "
                    f"data.batch_size={self.batch_size}. Lower the batch size or harvest more."
                )

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        sampler = ShuffledBatchSampler(self.train_rows, self.batch_size, seed=self.seed, rank=rank,
                                       world_size=world, window_rows=self.window_rows, drop_last=True)
        done = batches_done_this_epoch(self.trainer)
        if done:  # resumed mid-epoch: Lightning restarts the loader at its first batch; continue where it was
            sampler.resume_after(done)
            # Lightning then warns that the loader is not resumable and rows may repeat; here they do not.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the "
                                    "epoch ended")
        return self._loader(sampler)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_and_world()
        batch = min(self.batch_size, max(len(self.val_rows) // world, 1))
        sampler = ShuffledBatchSampler(self.val_rows, batch, seed=self.seed, rank=rank, world_size=world,
                                       window_rows=self.window_rows, drop_last=True)
        return self._loader(sampler)

    def _loader(self, sampler: ShuffledBatchSampler) -> DataLoader | ThreadPrefetcher:
        assert self.store is not None, "setup() must run first"
        pin = self.pin_memory
        if pin is None:
            pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        dataset = ActivationDataset(self.store, None)
        if self.num_workers == 0 and self.prefetch_threads > 0:
            return ThreadPrefetcher(dataset, sampler, threads=self.prefetch_threads, depth=2 * self.prefetch_threads,
                                    pin_memory=pin)
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,  # the sampler yields whole batches of row indices
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.num_workers > 0,
        )
