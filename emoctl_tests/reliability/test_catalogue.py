"""Every case of the reliability catalogue against the real ``emoctl`` command, and the document that lists them.

The table lives in ``emoctl_tests/harness/reliability_cases.py``; ``docs/reliability.md`` is written from it, and the last test here
fails when the two disagree. Each case runs ``emoctl.cli.main`` in this process (as ``parse_emoctl`` does):
the same code as the console script without paying Lightning's import for each of 150 cases; an exception that
leaves ``main`` is what a user would see as a traceback, and fails the case.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from emoctl_tests.harness import reliability_cases as catalogue
from emoctl_tests.harness.reliability_cases import (
    CASES, PROGRESS_BAR, Case, build_fixtures, expand, release_writers, run_in_process,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, str]:
    """The store, SAE and checkpoint every case may name, built once (about 10 s)."""
    return build_fixtures(tmp_path_factory.mktemp("reliability"))


def _params():
    for c in CASES:
        marks = []
        if c.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=c.xfail))
        if c.skip_if_root:
            marks.append(pytest.mark.skipif(os.geteuid() == 0, reason="root may write in any folder"))
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_case(case: Case, shared: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    values = {**shared, "tmp": str(tmp_path)}
    values.update({name: str(request.getfixturevalue(name)) for name in case.needs})
    try:
        if case.setup is not None:
            values.update(case.setup(tmp_path, values))
        outcome = run_in_process(expand(case.argv, values))
    finally:
        release_writers()
    expected = [fragment.format(**values) for fragment in case.expect]
    assert not outcome.escaped, f"a traceback reached the user:\n{outcome.escaped[-4000:]}"
    assert "Traceback" not in outcome.stderr, outcome.stderr[-4000:]
    if case.ok:
        assert outcome.returncode == 0, outcome.stderr[-4000:]
        text = outcome.stdout + outcome.stderr
        assert [f for f in expected if f not in text] == [], text[-4000:]
    else:
        assert outcome.returncode != 0, f"exit 0 where an error was due:\n{outcome.stdout[-2000:]}"
        paragraph = outcome.error_paragraph
        assert paragraph, f"no `emoctl ...: error:` paragraph on stderr:\n{outcome.stderr[-4000:]}"
        after = outcome.stderr[outcome.stderr.rindex(paragraph) + len(paragraph):]
        stray = [line for line in after.split("\n")
                 if line.strip() and "\r" not in line and not PROGRESS_BAR.search(line)]
        assert stray == [], f"the error is not one closing paragraph; after it came:\n{after[:2000]}"
        message = " ".join(paragraph.split())
        assert [f for f in expected if " ".join(f.split()) not in message] == [], message
    if case.check is not None:
        case.check(tmp_path, values)


def test_the_catalogue_is_large_unique_and_covers_every_class():
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})
    runnable = [c for c in CASES if not c.skip_if_root and not c.xfail]
    assert len(runnable) >= 100, len(runnable)
    assert {c.cls for c in CASES} == set(catalogue.CLASSES)


def test_tests_named_as_also_covering_a_class_exist():
    here = Path(__file__).parents[1]  # emoctl_tests/: the files are named from there
    for listed in catalogue.ALSO_TESTED.values():
        for file, name in listed:
            assert re.search(rf"^(async )?def {name}\(", (here / file).read_text(), re.M), f"{file}::{name} is gone"


def test_docs_reliability_md_is_the_catalogue():
    assert catalogue.DOC.is_file() and catalogue.DOC.read_text() == catalogue.render(), (
        f"{catalogue.DOC} differs from the table in emoctl_tests/harness/reliability_cases.py; regenerate it with "
        "`python -m emoctl_tests.harness.reliability_cases`.")
