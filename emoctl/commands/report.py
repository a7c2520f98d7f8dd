"""``emoctl report``: which inputs and results of two reports differ, the README's quoted tables, the EmoShift
seed's Table 1 (the SAE seed's Table 1 is :mod:`emoctl.commands.table1`) and mixed emotions scored as CoCoEmo
scores them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from emoctl.commands.settings_flags import flags_from
from emoctl.reports.diff import diff_reports
from emoctl.reports.mixtures import MixturesSettings, run_mixtures
from emoctl.reports.readme_tables import check_readme, quoted_tables, quoting_pages, sync_readme
from emoctl.reports.table1_emoshift import emoshift_table1

__all__ = ["emoshift_table1", "readme_tables", "report_diff"]  # emoshift_table1: still in its report module


def report_diff(first: str, second: str) -> None:
    """Compare two report folders (or two ``*_info.json`` files): which inputs (model digests, corpus, recognizer),
    protocol values, seeds, package versions and machine settings differ, and whether the result files agree.
    Exits with status 1 when anything differs, like ``diff``.

    Args:
        first: A report folder (e.g. ``reports``) or one ``*_info.json``.
        second: The folder or file to compare it with.
    """
    if diff_reports(first, second):
        raise SystemExit(1)


def readme_tables(readme: str = "README.md", check: bool = False) -> None:
    """Copy each report table that README and the pages of docs/ beside it quote
    (``<!-- table: reports/X.md #N -->`` ... ``<!-- /table -->``) from the report into the page, or with
    ``--check true`` only say which differ (exit status 1 if any).

    Args:
        readme: The README to update or check; report paths in its markers, and in those of the Markdown pages
            under the docs/ folder beside it, are relative to its folder.
        check: Compare only; change nothing.
    """
    root = Path(readme).parent
    pages = quoting_pages(readme)
    if check:
        problems = [problem for page in pages for problem in check_readme(page, root)]
        for problem in problems:
            print(problem)
        if problems:
            raise SystemExit(1)
        counts = {page: len(quoted_tables(page.read_text(), str(page))) for page in pages}
        print(f"{sum(counts.values())} quoted tables equal their reports (" +
              ", ".join(f"{page}: {n}" for page, n in counts.items() if n) + ")")
        return
    changed = sum(sync_readme(page, root) for page in pages)
    print(f"{changed} quoted table(s) updated from their reports in {', '.join(str(p) for p in pages)}")


@flags_from(MixturesSettings)
def report_mixtures(**settings: Any) -> list[dict]:
    """Speak soft-label mixtures of emotions with every method that mixes (EmoShift's layer, SAE feature sets,
    Global, CoCoEmo's directions) and score them as CoCoEmo does: E-SIM, TEP, S-SIM, WER, Spearman's ρ between
    asked and measured proportions, and the H-Rate; mixtures.md / .csv / .png and the clips' rows to out_dir."""
    return run_mixtures(MixturesSettings(**settings))
