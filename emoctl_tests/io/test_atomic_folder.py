"""One atomic folder writer (``emoctl.io.fsio.atomic_folder``), and every export that uses it keeps the previous
folder whole when the write fails halfway."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emoctl.emosteer import EmoSteer, EmoSteerConfig
from emoctl.io.fsio import atomic_folder, remove_dead_staging
from emoctl.metrics.ser_mini import MiniSERConfig, MiniSERNet, save_mini_ser
from emoctl.sae import SAEConfig, TopKSAE, save_pretrained
from emoctl_tests.helpers.tiny_tts import EMOTIONS, random_tts


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


def test_a_crash_inside_the_block_keeps_the_previous_folder_and_leaves_no_staging(tmp_path):
    target = tmp_path / "export"
    with atomic_folder(target) as staging:
        (staging / "a.txt").write_text("v1")
    assert (target / "a.txt").read_text() == "v1"
    with pytest.raises(RuntimeError, match="halfway"):
        with atomic_folder(target) as staging:
            (staging / "a.txt").write_text("v2")
            (staging / "b.txt").write_text("half")
            raise RuntimeError("halfway")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and (target / "a.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with atomic_folder(target) as staging:
        (staging / "c.txt").write_text("v3")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]  # the new folder replaces the old one whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_nested_writers_and_create_false(tmp_path):
    target = tmp_path / "outer"
    with atomic_folder(target, create=False) as staging:
        assert not staging.exists()
        with atomic_folder(staging) as inner:
            (inner / "w.txt").write_text("inner")
        (staging / "recipe.yaml").write_text("r")
    assert sorted(p.name for p in target.iterdir()) == ["recipe.yaml", "w.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outer"]


def test_leftovers_of_dead_processes_are_cleaned_and_a_parked_previous_folder_comes_back(tmp_path):
    target, dead, live = tmp_path / "export", _dead_pid(), os.getpid()
    (tmp_path / f".export.{dead}.partial").mkdir()  # killed while writing
    (tmp_path / f".export.{dead}.old").mkdir()  # killed between the two renames: the previous export
    (tmp_path / f".export.{dead}.old" / "a.txt").write_text("v1")
    (tmp_path / f".export.{live}.partial").mkdir()  # a live writer's (this process): kept
    remove_dead_staging(target)
    assert (target / "a.txt").read_text() == "v1"
    assert not (tmp_path / f".export.{dead}.partial").exists() and not (tmp_path / f".export.{dead}.old").exists()
    assert len(list(tmp_path.glob(".export.*.partial"))) == 1


def _layer() -> EmoSteer:
    return EmoSteer(EmoSteerConfig(hidden_size=32, emotions=EMOTIONS, epsilon=1e-3))


WRITERS = {
    "mini_tts": (lambda folder: random_tts().save(folder), "config.json"),
    "emosteer": (lambda folder: _layer().save(folder), "emosteer.json"),
    "ser_mini": (lambda folder: save_mini_ser(MiniSERNet(MiniSERConfig(channels=8)), folder), "config.json"),
    "sae": (lambda folder: save_pretrained(TopKSAE(SAEConfig(d_in=8, d_sae=16, k=2)), folder), "cfg.json"),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_export_keeps_the_previous_folder_when_it_fails_halfway(tmp_path, monkeypatch, name):
    """The weights are written, then writing the config file fails: the folder is still the previous export."""
    write, config_name = WRITERS[name]
    target = tmp_path / name
    write(target)
    before = {p.relative_to(target): p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()}
    real_write_text = Path.write_text

    def failing_write_text(self: Path, *args, **kwargs):
        if self.name == config_name:
            real_write_text(self, "{\"half\": ", encoding="utf-8")
            raise OSError("disk full")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    torch.manual_seed(123)
    with pytest.raises(OSError, match="disk full"):
        write(target)
    monkeypatch.undo()
    after = {p.relative_to(target): p.read_bytes() for p in sorted(target.rglob("*")) if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no staging or parked folder left
