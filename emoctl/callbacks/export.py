"""``ModelExport``: the one way a trained model leaves ``fit``, for every LightningModule of emoctl.

The Lightning checkpoint is for resuming; the export is for everyone else
(SAELens, notebooks, the reports, other tools).  A module says what its export
is by implementing :class:`Exportable` (a folder name and a method that writes
the files into a folder); this callback decides where the folder goes, writes
it atomically (``emoctl.io.fsio.atomic_folder``: a staging folder renamed into place, so a crash leaves the
previous export, never half of a new one) and saves the resolved recipe beside
the files as ``recipe.yaml``, so every export says how it was made.

Location: ``dirpath`` when given, else ``<checkpoint dir>/../<name>`` (the run's
log folder), else ``<log dir>/<name>``.  Only global rank 0 writes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from emoctl.errors import ConfigError
from emoctl.io.fsio import atomic_folder
from emoctl.numerics import refuse_non_finite_weights
from emoctl.training import read_recipe, run_dir

RECIPE_FILE = "recipe.yaml"


@runtime_checkable
class Exportable(Protocol):
    """What a LightningModule implements to be exported by :class:`ModelExport`."""

    export_name: str
    """Folder name of the export (``sae``, ``emosteer``, ``mini_tts``, ...)."""

    def export(self, folder: Path, trainer: pl.Trainer) -> None:
        """Write the export's files into ``folder`` (it does not exist yet; create it)."""


class ModelExport(pl.Callback):
    """Export ``pl_module`` (an :class:`Exportable`) when fit ends, atomically, with its recipe beside it."""

    def __init__(self, dirname: str | None = None, dirpath: str | None = None) -> None:
        """
        Args:
            dirname: Folder name of the export; None: the module's ``export_name``.
            dirpath: Explicit export folder; overrides ``dirname`` and the automatic location.
        """
        self.dirname = dirname
        self.dirpath = dirpath
        self.last_export: Path | None = None

    def export_dir(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        name = self.dirname or getattr(pl_module, "export_name", None)
        if not name:
            raise ConfigError(f"ModelExport: {type(pl_module).__name__} has no export_name; set dirname.")
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and getattr(checkpoint, "dirpath", None):
            return Path(checkpoint.dirpath).parent / name
        return run_dir(trainer) / name

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, Exportable):
            raise ConfigError(f"ModelExport needs a module with export_name and export(folder, trainer); "
                              f"{type(pl_module).__name__} has neither. Remove the callback from the recipe.")
        # On every rank (they hold the same weights), so none waits at the barrier for a rank that refused.
        refuse_non_finite_weights(pl_module.state_dict(), f"{type(pl_module).__name__} at the end of fit "
                                                          f"(step {trainer.global_step}; nothing was exported)")
        if trainer.is_global_zero:
            self.last_export = self.write(trainer, pl_module)
            pl_module.exported = self.last_export  # type: ignore[attr-defined]
        trainer.strategy.barrier("model_export")

    def write(self, trainer: pl.Trainer, pl_module: Exportable) -> Path:
        target = self.export_dir(trainer, pl_module)  # type: ignore[arg-type]
        with atomic_folder(target, create=False) as staging:
            pl_module.export(staging, trainer)
            recipe = read_recipe(trainer)
            if recipe is not None:
                (staging / RECIPE_FILE).write_text(recipe)
        rank_zero_info(f"{type(pl_module).__name__}: exported to {target}")
        return target


def export_callbacks(model: object, listed: Iterable[pl.Callback] = ()) -> list[ModelExport]:
    """The :class:`ModelExport` a fit of ``model`` ends with: one to ``hparams.export_dir`` (None: beside the
    checkpoints) for an :class:`Exportable` model, none when ``listed`` (the recipe's callbacks) already holds
    a ModelExport or the model is not exportable.  ``emoctl fit`` adds it (:mod:`emoctl.lightning_cli`), so a
    LightningModule need not know the callbacks; a Trainer built by hand takes ``callbacks=export_callbacks(m)``."""
    if not isinstance(model, Exportable) or any(isinstance(c, ModelExport) for c in listed):
        return []
    hparams = getattr(model, "hparams", None) or {}
    return [ModelExport(dirpath=hparams.get("export_dir"))]
