"""``RunFolderLock``: one fit at a time in a run folder, and a fresh fit never lands on a finished run.

Two fits given the same logger version write the same folder: each replaces the other's ``config.yaml`` and
export, and their checkpoints end up side by side as ``last.ckpt`` and ``last-v1.ckpt`` of different runs, while
both exit 0. A fresh fit into a finished run's folder likewise replaces its export and leaves the old
``last.ckpt`` beside the new one. This callback holds an exclusive lock on the run folder (``.fit.lock``, an
OS lock the kernel drops when the process dies) from setup to the end of the fit, and refuses, naming the
folder, a second fit while one runs and a fresh fit (no ``--ckpt_path``) into a folder that already holds
checkpoints or an export. Global rank 0 decides and tells the other ranks, so every rank stops together.
"""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl

from emoctl.callbacks.export import ModelExport
from emoctl.errors import ConfigError
from emoctl.io.fsio import ExclusiveLock
from emoctl.training import run_dir

LOCK_NAME = ".fit.lock"


class RunFolderRefused(ConfigError):
    """A fit that may not write its run folder: another fit holds it, or it holds a finished run."""


class RunFolderLock(pl.Callback):
    """Hold the run folder for the fit's lifetime (rank 0); refuse a second writer and a fresh fit over a run."""

    def __init__(self, resuming: bool = False) -> None:
        """
        Args:
            resuming: The fit continues a checkpoint (``--ckpt_path``), so the folder may hold that run.
        """
        self.resuming = resuming
        self._lock: ExclusiveLock | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._lock is not None:
            return
        problem = self._take(trainer, pl_module) if trainer.is_global_zero else None
        problem = trainer.strategy.broadcast(problem)
        if problem:
            raise RunFolderRefused(problem)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.release()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _take(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        """Lock the folder; the refusal's paragraph, or None when this fit may write there."""
        folder = run_dir(trainer)
        lock = ExclusiveLock(folder / LOCK_NAME)
        if not lock.acquire():
            return (f"the run folder {folder} is in use by another fit ({lock.owner()}); two fits in one folder "
                    f"would replace each other's config.yaml, checkpoints and export. Give this fit another "
                    f"folder (--trainer.logger.init_args.version=<new name>), or wait for that one to end.")
        found = [] if self.resuming else _results_in(folder, trainer, pl_module)
        if found:
            lock.release()
            return (f"the run folder {folder} already holds a run ({', '.join(found)}), and this fit starts "
                    f"afresh (no --ckpt_path), so it would replace that run's export and mix its checkpoints with "
                    f"the new ones. Give the new run another folder (--trainer.logger.init_args.version=<new "
                    f"name>), or continue that run with --ckpt_path {folder / 'checkpoints' / 'last.ckpt'}.")
        self._lock = lock
        return None


def _results_in(folder: Path, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
    """What an earlier run left in ``folder`` that a fresh fit would replace or mix with: checkpoints, exports."""
    found = []
    checkpoint = trainer.checkpoint_callback
    ckpt_dir = Path(checkpoint.dirpath) if checkpoint is not None and getattr(checkpoint, "dirpath", None) \
        else folder / "checkpoints"
    ckpts = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if ckpts:
        found.append(f"{len(ckpts)} checkpoint{'s' if len(ckpts) > 1 else ''} in {ckpt_dir}")
    for callback in trainer.callbacks:
        if isinstance(callback, ModelExport):
            try:
                target = callback.export_dir(trainer, pl_module)
            except ConfigError:
                continue
            if target.exists() and target.resolve().is_relative_to(folder.resolve()):
                found.append(f"the export {target}")
    return found
