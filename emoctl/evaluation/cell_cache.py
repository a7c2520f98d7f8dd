"""Resumable reports: each finished (cell, method, α) block of scored clips is kept until the report is written.

A report like Table 1 at 40 clips per cell runs for an hour or more on a CPU; a crash or a kill near its end
must not cost the whole run. Every block of rows is written atomically to ``<out_dir>/.partial/<key>.json`` as
soon as it is scored, and a rerun of the same command takes finished blocks from there.

The key is a digest of everything that decides the rows: the block itself (cell, method, α, prompts, seed,
sampling, scorers) and the report's context: the content digests of every input (backbone weights, SAE, feature
sets, store, corpus, recognizer), its protocol and seeds, the package versions and a digest of emoctl's own
source (not its commit: a commit that changes no code keeps the blocks). Change any of them and the block is
recomputed, never reused. The folder is removed once the report's files are written.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any, Mapping

from emoctl.store.fsio import atomic_write_bytes

PARTIAL_DIR = ".partial"
CODE_ROOTS = ("emoctl", "data_modules")


def source_digest() -> str:
    """Digest of emoctl's Python source (the code that turns inputs into rows), uncommitted edits included."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.blake2b(digest_size=16)
    for folder in CODE_ROOTS:
        for path in sorted((root / folder).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


class CellCache:
    """Finished blocks of per-clip rows of one report, keyed by what made them."""

    def __init__(self, out_dir: str | Path, record: Mapping[str, Any], enabled: bool = True) -> None:
        self.folder = Path(out_dir) / PARTIAL_DIR
        self.enabled = enabled
        context = {"inputs": {role: {k: v for k, v in entry.items() if k != "path"}
                              for role, entry in record["inputs"].items()},
                   "protocol": record["protocol"], "seeds": record["seeds"],
                   # the code is keyed by its source digest, so a commit that changes no code (a README edit)
                   # keeps the finished blocks
                   "packages": {k: v for k, v in record["packages"].items() if k != "emoctl_commit"},
                   "source": source_digest()}
        self._context = _canonical(context)
        self.reused = 0

    def key(self, block: Mapping[str, Any]) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(self._context.encode() + b"\0" + _canonical(block).encode())
        return h.hexdigest()

    def get(self, block: Mapping[str, Any]) -> list[dict] | None:
        """The rows of a block an earlier run finished, or None."""
        if not self.enabled:
            return None
        path = self.folder / f"{self.key(block)}.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # absent, or unreadable: computing it again is always right
        if saved.get("block") != json.loads(_canonical(block)):
            return None
        self.reused += 1
        return saved["rows"]

    def put(self, block: Mapping[str, Any], rows: list[dict]) -> None:
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {"block": json.loads(_canonical(block)), "rows": rows}
        atomic_write_bytes(self.folder / f"{self.key(block)}.json", json.dumps(data, default=_plain).encode())

    def clear(self) -> None:
        """Drop the kept blocks: the report that needed them is written."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_plain, allow_nan=True)


def _plain(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value):
        return asdict(value)
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    raise TypeError(f"cannot key or keep a {type(value).__name__} in a report's partial results: {value!r}")
