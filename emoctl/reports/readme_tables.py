"""README's result tables are copies of the committed reports' tables, kept equal by a marker and a check.

A table in README that comes from a report sits between

    <!-- table: reports/table1.md #2 -->
    | ... the 2nd Markdown table of reports/table1.md, verbatim ... |
    <!-- /table -->

``emoctl report readme`` rewrites every such block of README and of the pages under docs/ from its report;
``--check true`` (and the test suite) only compares, and names the first differing cell, so no page can drift from
the reports it quotes. A line that looks like a mistyped marker is refused, since its table would leave the check.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from emoctl.errors import ConfigError
from emoctl.io.fsio import atomic_write_bytes

OPEN = re.compile(r"^<!-- table: (?P<path>\S+) #(?P<index>\d+) -->$")
CLOSE = "<!-- /table -->"
NEAR_MARKER = re.compile(r"^<!?-*\s*/?\s*(?P<word>[A-Za-z]{3,7})\b", re.IGNORECASE)
"""A line that starts like an HTML comment whose first word may be a mistyped ``table`` (tested by
:func:`_near_miss`): two spaces, a missing colon, ``Table`` or ``tabel`` would otherwise leave the check silently."""


@dataclass(frozen=True)
class QuotedTable:
    """One marked block of README: which report table it quotes and where it sits (0-based line numbers)."""

    report: str
    index: int          # 1-based: the index-th Markdown table of the report
    first_line: int     # the marker line
    last_line: int      # the closing marker line
    lines: tuple[str, ...]


def markdown_tables(text: str) -> list[list[str]]:
    """Every run of consecutive lines starting with ``|``, in order."""
    tables: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def quoted_tables(readme_text: str, readme: str = "README.md") -> list[QuotedTable]:
    """The marked blocks of a README; an unclosed or nested marker is an error naming its line."""
    lines = readme_text.splitlines()
    for number, line in enumerate(lines, 1):
        if _near_miss(line.strip()):
            raise ConfigError(f"{readme}:{number}: `{line.strip()}` looks like a table marker but is not one, so "
                              "the table after it would leave the check without a word. Write it exactly as "
                              "`<!-- table: reports/<file>.md #<n> -->` (one space each side, lower case, a colon) "
                              f"or `{CLOSE}`, or rephrase the comment.")
    blocks: list[QuotedTable] = []
    i = 0
    while i < len(lines):
        match = OPEN.match(lines[i].strip())
        if match:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == CLOSE
                        or OPEN.match(lines[j].strip())), None)
            if end is None or lines[end].strip() != CLOSE:
                raise ConfigError(f"{readme}:{i + 1}: the table marker `{lines[i].strip()}` has no `{CLOSE}` "
                                  "before the next marker or the end of the file; add it after the table.")
            blocks.append(QuotedTable(match["path"], int(match["index"]), i, end, tuple(lines[i + 1:end])))
            i = end
        i += 1
    return blocks


def _near_miss(line: str) -> bool:
    """Whether a stripped line is a mistyped marker: not an exact opening or closing marker, but a comment (or
    something close to ``<!--``) whose first word is ``table`` give or take one letter, in any case."""
    if OPEN.match(line) or line == CLOSE:
        return False
    match = NEAR_MARKER.match(line)
    if match is None or "-" not in line[:match.start("word")]:
        return False
    return _within_one_edit(match["word"].lower(), "table")


def _within_one_edit(a: str, b: str) -> bool:
    """Levenshtein distance at most 1 (one letter added, dropped, changed or two swapped)."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [k for k in range(len(a)) if a[k] != b[k]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:k] + long[k + 1:] == short for k in range(len(long)))


def report_table(root: Path, report: str, index: int, where: str) -> list[str]:
    path = root / report
    try:
        tables = markdown_tables(path.read_text())
    except OSError as err:
        raise ConfigError(f"{where} quotes {report}, which cannot be read ({err.strerror}); rerun the report that "
                          "writes it or fix the marker.") from None
    if not 1 <= index <= len(tables):
        raise ConfigError(f"{where} quotes table #{index} of {report}, which has {len(tables)} table(s); fix the "
                          "marker's number.")
    return tables[index - 1]


def check_readme(readme: str | Path = "README.md", root: str | Path | None = None) -> list[str]:
    """One message per quoted table that differs from its report (empty when README is in sync)."""
    readme = Path(readme)
    root = Path(root) if root is not None else readme.parent
    problems = []
    for block in quoted_tables(readme.read_text(), str(readme)):
        where = f"{readme}:{block.first_line + 1}"
        expected = report_table(root, block.report, block.index, where)
        if list(block.lines) == expected:
            continue
        first = next((k for k, (a, b) in enumerate(zip(block.lines, expected)) if a != b),
                     min(len(block.lines), len(expected)))
        shown = block.lines[first] if first < len(block.lines) else "(missing)"
        wanted = expected[first] if first < len(expected) else "(no such row)"
        problems.append(f"{where}: table #{block.index} of {block.report} differs at its row {first + 1} "
                        f"(README line {block.first_line + 2 + first}): README has `{shown}`, the report `{wanted}`")
    return problems


def sync_readme(readme: str | Path = "README.md", root: str | Path | None = None) -> int:
    """Rewrite every quoted table from its report; returns how many changed."""
    readme = Path(readme)
    root = Path(root) if root is not None else readme.parent
    text = readme.read_text()
    lines = text.splitlines()
    changed = 0
    for block in reversed(quoted_tables(text, str(readme))):
        expected = report_table(root, block.report, block.index, f"{readme}:{block.first_line + 1}")
        if list(block.lines) != expected:
            lines[block.first_line + 1:block.last_line] = expected
            changed += 1
    if changed:
        atomic_write_bytes(readme, ("\n".join(lines) + ("\n" if text.endswith("\n") else "")).encode())
    return changed


def quoting_pages(readme: str | Path) -> list[Path]:
    """The pages whose quoted tables ``emoctl report readme`` keeps: the README and every Markdown page of the
    ``docs/`` folder beside it (report paths in all of them are relative to the README's folder)."""
    readme = Path(readme)
    docs = readme.parent / "docs"
    return [readme, *(sorted(docs.rglob("*.md")) if docs.is_dir() else [])]
