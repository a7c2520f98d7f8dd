"""The suite's fixtures: one thread for tiny models, the embedded corpus and random-weight
release folders of the real backbones. Helpers that tests import live in ``emoctl_tests/helpers/``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emoctl.backbones.cosyvoice2.random_release import write_random_release as write_random_cosyvoice2
from emoctl.backbones.cosyvoice_instruct.random_release import write_random_release as write_random_cosyvoice
from emoctl.backbones.indextts2.random_release import write_random_release as write_random_indextts2
from emoctl.backbones.indextts2.random_release import write_voice_clip
from emoctl.corpus.build import build_corpus
from emoctl_tests.helpers.cli import REPO


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine they lose a lot.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus_root():
    """The embedded corpus at the path `make corpus` uses, built (about a minute) or resumed (a checksum pass).

    Tests that need the committed backbone's held-out sentences and the corpus's own recordings share it."""
    root = REPO / "runs" / "corpus" / "esd_espeak"
    build_corpus(str(root), n_sentences=300, speakers=10, seed=0, workers=2, progress=False)
    return root


def with_reference_clips(root: Path) -> Path:
    """Three 2 s reference voices (F0 140, 220, 180 Hz) in ``clips/`` beside a release folder; returns the folder."""
    clips = root.parent / "clips"
    clips.mkdir()
    for i, f0 in enumerate((140.0, 220.0, 180.0)):
        write_voice_clip(clips / f"ref{i}.wav", seconds=2.0, f0=f0, seed=i)
    return root


@pytest.fixture(scope="session")
def indextts2_release(tmp_path_factory):
    """A complete IndexTTS2 release folder of random weights in upstream's formats (tiny: 2 GPT blocks at the
    released width 1280), written once per session (about 40 s, 1 GB), with three reference clips beside it."""
    root = write_random_indextts2(tmp_path_factory.mktemp("indextts2") / "release")
    return with_reference_clips(root)


@pytest.fixture(scope="session")
def cosyvoice_release(tmp_path_factory):
    """A complete CosyVoice-300M-Instruct release folder of random weights in upstream's formats (tiny: 2 + 2
    blocks at d = 128, released vocabularies), written once per session (about 10 s, 23 MB), with three
    reference clips beside it."""
    root = write_random_cosyvoice(tmp_path_factory.mktemp("cosyvoice") / "release")
    return with_reference_clips(root)


@pytest.fixture(scope="session")
def cosyvoice2_release(tmp_path_factory):
    """A complete CosyVoice2 release folder of random weights in upstream's formats (tiny: a 2-layer Qwen2 at
    d = 64, a tiny byte-level BPE, the flow at its hard-wired width 512), written once per session (about 10 s,
    60 MB), with three reference clips beside it."""
    root = write_random_cosyvoice2(tmp_path_factory.mktemp("cosyvoice2") / "release")
    return with_reference_clips(root)
