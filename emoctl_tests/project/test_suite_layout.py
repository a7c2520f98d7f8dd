"""The suite stays navigable: tests sit in the folder of the package they test, tests import helpers (never other
tests or conftest), and the backbone contract an adapter author needs is importable from the package."""
from __future__ import annotations

import ast
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1]
SHARED = {"helpers", "harness"}


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_test_file_sits_in_a_package_folder():
    loose = sorted(p.name for p in SUITE.glob("test_*.py"))
    assert not loose, f"move {loose} into the emoctl_tests/<package>/ folder of the package they test"
    for folder in (p for p in SUITE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert (folder / "__init__.py").is_file(), f"{folder} needs an __init__.py (tests are imported by package)"
        if folder.name in SHARED:
            assert not list(folder.glob("test_*.py")), f"{folder} holds helpers, not tests"


def test_no_module_imports_a_test_module_or_conftest():
    offenders = []
    for path in sorted(SUITE.rglob("*.py")):
        for name in _imported_modules(path):
            last = name.rsplit(".", 1)[-1]
            if last == "conftest" or last.startswith("test_"):
                offenders.append(f"{path.relative_to(SUITE)} imports {name}")
    assert not offenders, "move what they share into emoctl_tests/helpers/:\n" + "\n".join(offenders)


def test_the_contract_suite_is_importable_from_the_package():
    from emoctl.testing import BackboneContract

    checks = [name for name in vars(BackboneContract) if name.startswith("test_")]
    assert len(checks) >= 10, checks
