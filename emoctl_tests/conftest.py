"""Shared fixtures: paths, and runners for the `emoctl` command (a fresh process, or parsing in this one)."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


def run_emoctl(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    """Run ``python -m emoctl`` as a user would, in a fresh process."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "emoctl", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def parse_emoctl(*args: str) -> subprocess.CompletedProcess:
    """Run ``emoctl``'s entry point in this process, for commands that only parse (``--print_config``, ``--help``).

    Same parser and output as the command, without paying Lightning's import again (about 8 s a call on
    2 cores). Tests of exit codes and of what reaches a user's terminal on error use :func:`run_emoctl`."""
    from emoctl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as stop:  # --print_config and --help end with parser.exit()
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    return subprocess.CompletedProcess(["emoctl", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine they lose a lot.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def emoctl():
    return run_emoctl


@pytest.fixture(scope="session")
def corpus_root():
    """The embedded corpus at the path `make corpus` uses, built (about a minute) or resumed (a checksum pass).

    Tests that need the committed backbone's held-out sentences and the corpus's own recordings share it."""
    from emoctl.corpus.build import build_corpus

    root = REPO / "runs" / "corpus" / "esd_espeak"
    build_corpus(str(root), n_sentences=300, speakers=10, seed=0, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def indextts2_release(tmp_path_factory):
    """A complete IndexTTS2 release folder of random weights in upstream's formats (tiny: 2 GPT blocks at the
    released width 1280), written once per session (about 40 s, 1 GB), with two reference clips beside it."""
    from emoctl.backbones.indextts2.random_release import write_random_release, write_voice_clip

    root = write_random_release(tmp_path_factory.mktemp("indextts2") / "release")
    clips = root.parent / "clips"
    clips.mkdir()
    for i, f0 in enumerate((140.0, 220.0, 180.0)):
        write_voice_clip(clips / f"ref{i}.wav", seconds=2.0, f0=f0, seed=i)
    return root


@pytest.fixture(scope="session")
def cosyvoice_release(tmp_path_factory):
    """A complete CosyVoice-300M-Instruct release folder of random weights in upstream's formats (tiny: 2 + 2
    blocks at d = 128, released vocabularies), written once per session (about 10 s, 23 MB), with three
    reference clips beside it."""
    from emoctl.backbones.cosyvoice_instruct.random_release import write_random_release
    from emoctl.backbones.indextts2.random_release import write_voice_clip

    root = write_random_release(tmp_path_factory.mktemp("cosyvoice") / "release")
    clips = root.parent / "clips"
    clips.mkdir()
    for i, f0 in enumerate((140.0, 220.0, 180.0)):
        write_voice_clip(clips / f"ref{i}.wav", seconds=2.0, f0=f0, seed=i)
    return root
