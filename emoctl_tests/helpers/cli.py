"""Paths of the checkout, and runners for the ``emoctl`` command (a fresh process, or parsing in this one)."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from emoctl.cli import main

REPO = Path(__file__).resolve().parents[2]
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
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as stop:  # --print_config and --help end with parser.exit()
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    return subprocess.CompletedProcess(["emoctl", *args], code, out.getvalue(), err.getvalue())


def assert_one_paragraph_error(result: subprocess.CompletedProcess, *needles: str, prefix: str = "emoctl ") -> None:
    """``result`` failed as emoctl promises: no traceback, stderr one paragraph starting with ``prefix``, holding
    every needle (compared with white space folded, since messages wrap)."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    # Lightning's seed_everything logs one line before the recipe's classes are built; the error follows it.
    message = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("Seed set to")).strip()
    assert message.startswith(prefix), message
    assert "\n\n" not in message, message
    flat = " ".join(message.split())
    for needle in needles:
        assert " ".join(needle.split()) in flat, message
