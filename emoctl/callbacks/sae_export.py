"""``SAEExport``: write the trained SAE in SAELens' format when ``fit`` ends.

The Lightning checkpoint is for resuming; the export is for everyone else
(SAELens, notebooks, emoctl's own selection and steering).  It goes next to
the checkpoints as ``<checkpoint dir>/../sae/`` (or ``<log dir>/sae/`` when
there is no checkpoint callback) and is written atomically: a crash leaves
the previous export, never half of a new one.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from emoctl.sae.module import SAEModule


class SAEExport(pl.Callback):
    """Save ``pl_module.sae`` with ``save_pretrained`` at the end of fit (global rank 0 only)."""

    def __init__(self, dirname: str = "sae", dirpath: str | None = None) -> None:
        """
        Args:
            dirname: Folder name of the export, created beside the checkpoint folder.
            dirpath: Explicit export folder; overrides ``dirname`` and the automatic location.
        """
        self.dirname = dirname
        self.dirpath = dirpath
        self.last_export: Path | None = None

    def export_dir(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and getattr(checkpoint, "dirpath", None):
            return Path(checkpoint.dirpath).parent / self.dirname
        return Path(trainer.log_dir or trainer.default_root_dir) / self.dirname

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, SAEModule):
            raise TypeError(f"SAEExport needs an SAEModule, got {type(pl_module).__name__}.")
        if trainer.is_global_zero:
            self.last_export = self._export(trainer, pl_module)
        trainer.strategy.barrier("sae_export")

    def _export(self, trainer: pl.Trainer, module: SAEModule) -> Path:
        target = self.export_dir(trainer)
        staging = target.with_name(f".{target.name}.partial")
        if staging.exists():
            shutil.rmtree(staging)
        module.sae.save_pretrained(staging, extra_metadata=_run_metadata(trainer))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        rank_zero_info(f"SAE exported in SAELens format to {target}")
        return target


def _run_metadata(trainer: pl.Trainer) -> dict[str, Any]:
    """Provenance stored in cfg.json: where the activations came from and how long the SAE trained."""
    meta: dict[str, Any] = {"global_step": trainer.global_step}
    datamodule = getattr(trainer, "datamodule", None)
    store = getattr(datamodule, "store", None)
    if store is not None:
        spec = store.spec
        meta.update(store_path=str(store.path), backbone=spec.backbone, hookpoint=spec.hookpoint,
                    layer=spec.layer, store_rows=int(store.num_rows))
    return meta
