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
