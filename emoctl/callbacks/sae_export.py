"""``SAEExport``: the SAE's :class:`~emoctl.callbacks.export.ModelExport`, as SAE recipes name it.

The export is ``SAEModule.export``: SAELens' layout (``cfg.json`` +
``sae_weights.safetensors``) with the store's provenance, beside the checkpoints
as ``<checkpoint dir>/../sae/`` and written atomically with the recipe beside it.
"""
from __future__ import annotations

import lightning.pytorch as pl

from emoctl.callbacks.export import ModelExport
from emoctl.errors import ConfigError
from emoctl.sae.module import SAEModule


class SAEExport(ModelExport):
    """Export an :class:`SAEModule` at the end of fit (global rank 0 only)."""

    def __init__(self, dirname: str = "sae", dirpath: str | None = None) -> None:
        """
        Args:
            dirname: Folder name of the export, created beside the checkpoint folder.
            dirpath: Explicit export folder; overrides ``dirname`` and the automatic location.
        """
        super().__init__(dirname=dirname, dirpath=dirpath)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, SAEModule):
            raise ConfigError(f"SAEExport needs an SAEModule, got {type(pl_module).__name__}; use ModelExport.")
        super().on_fit_end(trainer, pl_module)
