"""The layer order of pyproject.toml's ``[tool.importlinter]`` holds: ``lint-imports`` passes on the tree, fails on
a copy with one upward import, and no module imports emoctl or data_modules inside a function unless the line
says why (``# lazy: <why>``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from emoctl_tests.harness.layering import declared_layers, function_local_imports

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the packages under ``root``, with ``root``'s pyproject.toml (no cache)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_lint_imports_keeps_every_contract_on_the_tree():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_lint_imports_refuses_an_upward_import(tmp_path):
    """The check is live: one import of the reports layer from the bottom one breaks the layers contract, and
    the message names the importer, the line and the layer it may not reach."""
    for name in ("emoctl", "data_modules"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    fsio = tmp_path / "emoctl" / "io" / "fsio.py"
    fsio.write_text(fsio.read_text(encoding="utf-8") + "\nimport emoctl.reports  # noqa: E402,F401\n",
                    encoding="utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert "emoctl.io is not allowed to import emoctl.reports" in " ".join(result.stdout.split())
    assert "emoctl.io.fsio -> emoctl.reports" in result.stdout


def test_the_declared_order_is_the_one_the_counting_script_reads():
    floors = declared_layers(REPO)
    assert floors[0] == ["emoctl.cli", "emoctl.__main__"] and "emoctl.io" in floors[-1]
    names = [name for floor in floors for name in floor]
    assert len(names) == len(set(names))
    assert names.index("emoctl.commands") < names.index("emoctl.reports") < names.index("emoctl.store")


UNMARKED = [f"{path}:{line}" for path, line, marked in function_local_imports(REPO) if not marked]


def test_no_function_local_import_of_emoctl_without_a_reason():
    assert not UNMARKED, "hoist these imports, or mark the line '# lazy: <why>':\n" + "\n".join(UNMARKED)
