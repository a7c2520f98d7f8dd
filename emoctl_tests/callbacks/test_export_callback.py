"""ModelExport, the one export path: location, atomicity, the recipe beside the files, a clear refusal."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest

from emoctl.callbacks.export import RECIPE_FILE, ModelExport
from emoctl.errors import ConfigError


class _Writes(pl.LightningModule):
    """The smallest Exportable: writes one file, or fails halfway when told to."""

    export_name = "thing"

    def __init__(self, payload: str, fail: bool = False) -> None:
        super().__init__()
        self.payload, self.fail = payload, fail

    def export(self, folder: Path, trainer: pl.Trainer) -> None:
        folder.mkdir()
        (folder / "weights.txt").write_text(self.payload)
        if self.fail:
            raise RuntimeError("disk full")


def _trainer(root: Path) -> pl.Trainer:
    return pl.Trainer(default_root_dir=str(root), logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)


def test_export_lands_atomically_with_its_recipe_and_a_failed_one_keeps_the_previous(tmp_path):
    trainer = _trainer(tmp_path)
    (tmp_path / "config.yaml").write_text("model:\n  lr: 0.1\n")  # what LightningCLI saves in the log dir
    first = _Writes("v1")
    ModelExport().on_fit_end(trainer, first)
    target = tmp_path / "thing"
    assert first.exported == target and (target / "weights.txt").read_text() == "v1"
    assert (target / RECIPE_FILE).read_text() == "model:\n  lr: 0.1\n"
    with pytest.raises(RuntimeError, match="disk full"):
        ModelExport().on_fit_end(trainer, _Writes("v2", fail=True))
    assert (target / "weights.txt").read_text() == "v1"  # the previous export, whole
    assert not list(tmp_path.glob(".*partial"))
    ModelExport(dirpath=str(tmp_path / "elsewhere")).on_fit_end(trainer, _Writes("v3"))
    assert (tmp_path / "elsewhere" / "weights.txt").read_text() == "v3"


def test_a_module_without_an_export_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="_Plain has neither"):
        ModelExport().on_fit_end(_trainer(tmp_path), type("_Plain", (pl.LightningModule,), {})())
