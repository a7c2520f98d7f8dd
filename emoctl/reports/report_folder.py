"""The folder layout the EmoShift reports share, written in one place so they stay alike.

``<stem>.md`` (with the provenance line), ``<stem>.csv`` (one row per cell), ``<stem>_clips.csv`` (one row per
clip), any extra files (a figure), and ``<stem>_info.json`` last, whose output digests let ``emoctl report diff``
compare two runs' results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from emoctl.evaluation.summary import csv_bytes
from emoctl.io.fsio import atomic_write_bytes
from emoctl.io.provenance import stamp, write_report_info


def write_report_folder(out: Path, stem: str, markdown: str, summary: list[dict], rows: list[dict],
                        info: Mapping[str, Any], record: Mapping[str, Any],
                        extra_files: Mapping[str, bytes] | None = None) -> None:
    """Write the report ``stem`` into ``out`` (see the module docstring), then its Markdown on stdout.

    ``extra_files`` maps file names in ``out`` to their bytes; they are written before the Markdown and are not
    digested in the info file (only the two CSVs are results ``report diff`` compares)."""
    extra_files = dict(extra_files or {})
    out.mkdir(parents=True, exist_ok=True)
    info_name = f"{stem}_info.json"
    markdown = stamp(markdown, record, info_name)
    summary_csv, clips_csv = out / f"{stem}.csv", out / f"{stem}_clips.csv"
    atomic_write_bytes(clips_csv, csv_bytes(rows))
    atomic_write_bytes(summary_csv, csv_bytes(summary))
    for name, data in extra_files.items():
        atomic_write_bytes(out / name, data)
    atomic_write_bytes(out / f"{stem}.md", markdown.encode())
    write_report_info(out / info_name, info, record, [summary_csv, clips_csv])
    extras = "".join(f"{name.removeprefix(stem)}, " for name in extra_files)
    print(markdown)
    print(f"written to {out}/ ({stem}.md, .csv, {extras}{stem}_clips.csv, _info.json)")
