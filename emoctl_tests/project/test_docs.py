"""The docs build and README's links: a broken link, a missing anchor or a page left out of the nav fails here
rather than on a reader's screen."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target "title"), not images
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto: ...

needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                                  reason="mkdocs is not installed (it is in the dev extra: pip install -e '.[dev]')")


def broken_relative_links(markdown: Path) -> list[str]:
    """Each relative link target in ``markdown`` (anchor stripped) that names no existing file or folder."""
    text = re.sub(r"```.*?```", "", markdown.read_text(), flags=re.DOTALL)  # links in code blocks are not links
    broken = []
    for target in LINK.findall(text):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (markdown.parent / path).exists():
            broken.append(target)
    return broken


def mkdocs_build(root: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of ``root``'s mkdocs.yml into ``site``."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(root / "mkdocs.yml"), "--site-dir", str(site)],
                          capture_output=True, text=True, timeout=300)


def test_readme_links_name_existing_files():
    readme = REPO / "README.md"
    assert broken_relative_links(readme) == []
    assert len(readme.read_text().splitlines()) <= README_MAX_LINES


def test_broken_readme_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("# here\n")
    readme = tmp_path / "README.md"
    readme.write_text("[ok](docs/here.md#top) [web](https://example.org) [gone](docs/gone.md#x)\n"
                      "```\n[in code](not/a/link.md)\n```\n")
    assert broken_relative_links(readme) == ["docs/gone.md#x"]


@needs_mkdocs
def test_docs_build_strict(tmp_path):
    result = mkdocs_build(REPO, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    built = {p.relative_to(tmp_path / "site").with_suffix(".md").as_posix()
             for p in (tmp_path / "site").rglob("*.html") if p.name not in ("404.html", "search.html")}
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert pages <= built


@needs_mkdocs
def test_docs_build_fails_on_broken_links_and_pages_missing_from_the_nav(tmp_path):
    """The strict build is able to fail: a link to a missing page, a missing anchor, a link to a file outside
    docs/ and a page the nav leaves out are each named."""
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    bad = ["no_such_page.md", "results.md#no-such-section", "../emoctl/cli.py"]
    page = tmp_path / "docs" / "formats.md"
    page.write_text(page.read_text() + "".join(f"\n[bad]({target})\n" for target in bad))
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n")
    result = mkdocs_build(tmp_path, tmp_path / "site")
    assert result.returncode != 0
    for named in [*bad, "orphan.md"]:
        assert named in result.stdout + result.stderr, named
