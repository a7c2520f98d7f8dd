"""Loading a file never runs code from it: crafted pickles in a checkpoint, a release folder or a cache.

Each crafted file would, if unpickled with the full pickle machinery, create a marker file. The test feeds
it to every loader that reads that kind of file and checks that the load is refused with an emoctl error
and that the marker was never written.
"""
from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emoctl.errors import ConfigError, EmoctlError


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the smallest code execution a pickle can smuggle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_torch_file(path: Path, marker: Path, wrap: bool = True) -> Path:
    """A torch.save archive whose pickle holds the payload (inside a plausible state-dict mapping)."""
    obj = {"state_dict": {"weight": torch.zeros(2)}, "hook": _Payload(marker)} if wrap else _Payload(marker)
    torch.save(obj, path)
    return path


def test_crafted_lightning_checkpoint_is_refused_without_running_it(tmp_path):
    from emoctl.lightning_cli import check_resume

    marker = tmp_path / "pwned"
    ckpt = _crafted_torch_file(tmp_path / "evil.ckpt", marker)
    with pytest.raises(ConfigError, match=r"evil\.ckpt is not a readable Lightning checkpoint"):
        check_resume(str(ckpt), {})
    assert not marker.exists()


def test_crafted_files_in_an_indextts2_release_are_refused_without_running_them(indextts2_release, tmp_path):
    """gpt.pth, the emotion tables, the w2v-BERT stats and CAMPPlus are torch pickles: each is loaded with
    weights_only, so a crafted one is an error naming the file, never executed."""
    from emoctl.backbones.indextts2.backbone import IndexTTS2
    from emoctl.backbones.indextts2.features import SpeakerStyle
    from emoctl.backbones.indextts2.release import ReleaseFolder

    marker = tmp_path / "pwned"
    for name in ("gpt.pth", "feat1.pt", "wav2vec2bert_stats.pt", "hf_cache/campplus_cn_common.bin"):
        copy = tmp_path / name.replace("/", "_")
        shutil.copytree(indextts2_release, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.pt", "*.pth",
                                                                               "*.bin"))
        for original in indextts2_release.rglob("*"):
            target = copy / original.relative_to(indextts2_release)
            if original.is_file() and not target.exists():
                os.symlink(original, target)  # the big files stay where they are
        (copy / name).unlink()
        _crafted_torch_file(copy / name, marker)
        release = ReleaseFolder.open(copy)
        with pytest.raises(EmoctlError, match=name.rsplit("/", 1)[-1].replace(".", r"\.")):
            if name == "hf_cache/campplus_cn_common.bin":
                SpeakerStyle(copy / name).campplus
            elif name == "wav2vec2bert_stats.pt":
                IndexTTS2(release).features(np.zeros(16000, dtype=np.float32) + 0.01, 16000)
            else:
                IndexTTS2(release)
        assert not marker.exists(), name


def test_a_token_cache_with_pickled_objects_is_ignored_not_run(tmp_path):
    """The corpus token cache is an .npz read with allow_pickle=False: an object array in it is a cache miss."""
    from emoctl.io.keyed_cache import read_keyed_arrays

    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    np.savez(tmp_path / "tokens.npz", rel_paths=np.array(["a.wav"]), sizes=np.array([1]), mtimes_ns=np.array([1]),
             offsets=np.array([0, 1]), tokens=evil)
    assert read_keyed_arrays(tmp_path / "tokens.npz", "tokens") == {}
    assert not marker.exists()
    with pytest.raises(ValueError):  # and a plain np.load refuses it too: no reader of ours opts into pickle
        np.load(tmp_path / "tokens.npz")["tokens"]
    assert not marker.exists()


def test_the_payload_really_runs_when_pickle_is_allowed(tmp_path):
    """The crafted files are real: full unpickling writes the marker (so the tests above can fail)."""
    marker = tmp_path / "pwned"
    path = _crafted_torch_file(tmp_path / "evil.pt", marker, wrap=False)
    handle = torch.load(path, weights_only=False)
    handle.close()
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()


_OPENED: list[str] | None = None
"""Paths Python opened while a test records them (``sys.addaudithook``'s "open" events), else None."""


def _record_open(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_record_open)


def test_paths_config_yaml_names_outside_the_release_are_never_read(indextts2_release, tmp_path):
    """config.yaml's path keys may not leave the folder by name (``..``, absolute paths), even towards files
    that would load; a symlink inside the folder pointing elsewhere is still followed (the control: every
    copy here is one, its weights symlinked to the session's release)."""
    global _OPENED
    from emoctl_tests.harness.reliability_indextts2 import ESCAPES, edit_config, release_copy

    from emoctl.backbones.loading import load_backbone

    control = load_backbone("indextts2", str(release_copy(indextts2_release, tmp_path / "control")))
    original = load_backbone("indextts2", str(indextts2_release))
    assert control.backbone_id == original.backbone_id

    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("gpt.pth", "feat1.pt", "feat2.pt", "wav2vec2bert_stats.pt", "bpe.model"):
        shutil.copyfile(indextts2_release / name, outside / name)  # each would load if it were followed
    escapes = {f"escape {i}": damage for i, (damage, _) in enumerate(ESCAPES.values())}
    for key, section in (("gpt_checkpoint", None), ("spk_matrix", None), ("w2v_stat", None),
                         ("bpe_model", "dataset")):
        file = {"gpt_checkpoint": "gpt.pth", "spk_matrix": "feat1.pt", "w2v_stat": "wav2vec2bert_stats.pt",
                "bpe_model": "bpe.model"}[key]
        for how, value in (("relative", f"../outside/{file}"), ("absolute", str(outside / file))):
            escapes[f"{key} {how}"] = (lambda folder, key=key, section=section, value=value: edit_config(
                folder, lambda cfg: (cfg[section] if section else cfg).__setitem__(key, value)))
    for what, damage in escapes.items():
        bad = release_copy(indextts2_release, tmp_path / what.replace(" ", "_"))
        damage(bad)
        _OPENED = []
        try:
            with pytest.raises(ConfigError, match="release folder") as err:
                load_backbone("indextts2", str(bad))
        finally:
            opened, _OPENED = _OPENED, None
        assert str(bad / "config.yaml") in str(err.value), what
        forbidden = (str(outside), str(bad) + "-outside", "/etc/hostname")  # what the escaping names lead to
        strays = [p for p in opened if os.path.realpath(p).startswith(forbidden)]
        assert strays == [], (what, strays)


@pytest.mark.parametrize("name", ["hf_cache/bigvgan/bigvgan_generator.pt", "s2mel.pth"])
def test_crafted_vocoder_weights_are_refused_even_when_torch_defaults_to_full_unpickling(
        indextts2_release, tmp_path, monkeypatch, name):
    """Upstream's BigVGAN.from_pretrained and load_checkpoint2 call torch.load with torch's default, which
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns into full unpickling; the adapter reads both files weights-only."""
    from emoctl_tests.harness.reliability_indextts2 import release_copy

    from emoctl.backbones.indextts2.release import ReleaseFolder
    from emoctl.backbones.indextts2.vocoder import S2MelVocoder

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    copy = release_copy(indextts2_release, tmp_path / "release")
    (copy / name).unlink()
    _crafted_torch_file(copy / name, marker)
    vocoder = S2MelVocoder(ReleaseFolder.open(copy))
    with pytest.raises(EmoctlError, match=name.rsplit("/", 1)[0].replace(".", r"\.")):
        vocoder.bigvgan if "bigvgan" in name else vocoder.s2mel
    assert not marker.exists(), name
