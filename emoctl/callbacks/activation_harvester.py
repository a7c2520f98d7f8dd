"""``ActivationHarvester``: during ``predict``, store each utterance's activations at one hookpoint.

The glue between :class:`~emoctl.harvest.module.HarvestModule` (which only
generates) and the activation store (which only stores).  Each DDP rank
writes its own shard series; after a barrier, rank 0 consolidates the store.
A harvest started again with the same recipe skips the utterances already
committed, and refuses a store harvested under other settings.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from emoctl.errors import ConfigError
from emoctl.harvest.module import HarvestModule
from emoctl.harvest.recorder import parse_phases
from emoctl.harvest.session import HarvestSession
from emoctl.store import consolidate_store
from emoctl.store.manifest import mark_finished


class ActivationHarvester(pl.Callback):
    """Reads ``hookpoint`` in the given phases and writes every finished utterance to the store at ``path``."""

    def __init__(self, path: str, hookpoint: str = "resid_pre.5", phases: tuple[str, ...] = ("decode",),
                 dtype: str = "float32", shard_rows: int = 1 << 16, commit_every_s: float = 60.0) -> None:
        """
        Args:
            path: Store directory (created, or resumed when it holds a harvest with the same settings).
            hookpoint: ``resid_pre.L`` (input of block L, counted from 0), ``attn_out.L`` (its attention's
                output) or ``lm_out``.
            phases: Forward passes to read: decode (one row per generated token, the SAE paper's choice)
                and/or prefill (one row per prompt position).
            dtype: Row dtype on disk: float32, bfloat16 or float16.
            shard_rows: Rows per shard file; a full shard is committed at once.
            commit_every_s: Also commit the partial shard once this many seconds have passed since the last
                commit, so a killed harvest loses at most about this much generation (0: every batch).
        """
        self.path, self.hookpoint, self.dtype, self.shard_rows = path, hookpoint, dtype, shard_rows
        self.commit_every_s = commit_every_s
        self.phases = parse_phases(phases)
        self.session: HarvestSession | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return

        if not isinstance(pl_module, HarvestModule):
            raise ConfigError(f"ActivationHarvester needs model.class_path emoctl.harvest.HarvestModule, got "
                              f"{type(pl_module).__name__}.")
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "skip_utt_ids"):
            raise ConfigError("ActivationHarvester needs data.class_path data_modules.PromptGridDataModule, got "
                              f"{type(datamodule).__name__}.")
        pl_module.bind_prompts(datamodule)
        settings = {"generation": pl_module.generation_settings(), "prompts": datamodule.describe()}
        self.session = HarvestSession(self.path, pl_module.backbone, self.hookpoint, self.phases, settings,
                                      dtype=self.dtype, rank=trainer.global_rank, shard_rows=self.shard_rows,
                                      commit_every_s=self.commit_every_s)
        datamodule.skip_utt_ids(self.session.committed)  # before predict asks for its dataloader
        total = len(datamodule.prompts)
        done = len(self.session.committed)
        rank_zero_info(f"Harvest: {total} utterances ({done} already committed in {self.path}, skipped), "
                       f"{self.hookpoint} in {', '.join(p.value for p in self.phases)}.")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.session is not None, "setup() opens the session"
        self.session.recorder.attach()

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        assert self.session is not None
        self.session.recorder.start()

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        assert self.session is not None
        self.session.write(outputs.prompts, outputs.generation)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        session, self.session = self.session, None
        assert session is not None
        session.close()
        trainer.strategy.barrier("activation_harvester")  # every rank's shards are committed
        if trainer.is_global_zero:
            consolidate_store(self.path)
            if trainer.limit_predict_batches in (None, 1.0):  # every prompt of the grid went through
                mark_finished(self.path)
        rank_zero_info(f"Harvest (rank {trainer.global_rank}): {session.summary()}")
        if session.truncated:
            rank_zero_warn(f"{session.truncated} utterances hit max_new_tokens before STOP; raise "
                           "model.max_new_tokens if that is not intended.")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.session is not None:  # commit what was appended; the next run resumes from there
            self.session.abort()
            self.session = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.session is not None:
            self.session.abort()
            self.session = None
