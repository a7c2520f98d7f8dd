"""Resumable reports: each finished (cell, method, α) block of scored clips is kept until the report is written.

A report like Table 1 at 40 clips per cell runs for an hour or more on a CPU; a crash or a kill near its end
must not cost the whole run. Every block of rows is written atomically to ``<out_dir>/.partial/<key>.json`` as
soon as it is scored, and a rerun of the same command takes finished blocks from there.

The key is a digest of everything that decides the rows: the block itself (cell, method, α, prompts, seed,
sampling, scorers) and the report's context: the content digests of every input (backbone weights, SAE, feature
sets, store, corpus, recognizer), its protocol and seeds, the package versions and a digest of emoctl's own
source (not its commit: a commit that changes no code keeps the blocks). Change any of them and the block is
recomputed, never reused. The folder is removed once the report's files are written.

Each kept block also carries a checksum of its own content (its block description and its rows), checked before
the block is reused; its row count must equal its prompt count. A block that fails either check is **refused**
with a paragraph naming the file, not recomputed: blocks are written atomically, so no crash leaves one half
written, and one that fails was changed after emoctl wrote it (by hand, by another program, by the disk). The
researcher must learn that something altered the report's folder, as with a store shard that fails its CRC;
recomputing without a word would make the table look the same whether or not an edited block had been used.
Deleting the named file (or the folder) is the fix, and costs only that block's compute.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any, Mapping

from emoctl.errors import EmoctlError
from emoctl.io.fsio import atomic_write_bytes

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


class KeptBlockError(EmoctlError):
    """A kept block of an interrupted report that fails its own checks (changed after emoctl wrote it)."""


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
        """The rows of a block an earlier run finished, or None; a kept block that fails its checks is refused."""
        if not self.enabled:
            return None
        path = self.folder / f"{self.key(block)}.json"
        if not path.is_file():
            return None
        saved = _read_kept(path)
        expected = json.loads(_canonical(block))
        if saved["block"] != expected:
            raise _altered(path, "describes another block than its name's (cell, method, α, prompts, seed ...)")
        n_prompts = len(expected.get("prompts", ())) or None
        if n_prompts is not None and len(saved["rows"]) != n_prompts:
            raise _altered(path, f"holds {len(saved['rows'])} rows for the block's {n_prompts} prompts")
        self.reused += 1
        return saved["rows"]

    def put(self, block: Mapping[str, Any], rows: list[dict]) -> None:
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        plain = json.loads(json.dumps({"block": block, "rows": rows}, default=_plain, allow_nan=True))
        data = {**plain, "checksum": _checksum(plain["block"], plain["rows"])}
        atomic_write_bytes(self.folder / f"{self.key(block)}.json", json.dumps(data, allow_nan=True).encode())

    def clear(self) -> None:
        """Drop the kept blocks: the report that needed them is written."""
        shutil.rmtree(self.folder, ignore_errors=True)


def check_kept_blocks(out_dir: str | Path) -> int:
    """Refuse a report folder whose ``.partial`` holds a block that fails its checksum or is not a kept block at
    all (a JSON list, a block without rows); returns the number of blocks kept there."""
    folder = Path(out_dir) / PARTIAL_DIR
    if not folder.is_dir():
        return 0
    kept = sorted(folder.glob("*.json"))
    for path in kept:
        _read_kept(path)
    return len(kept)


def _read_kept(path: Path) -> dict[str, Any]:
    """A kept block's JSON, checked against its own checksum."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _altered(path, f"is not readable JSON ({type(err).__name__})") from None
    if not isinstance(saved, dict):
        raise _altered(path, f"holds a JSON {type(saved).__name__}, not a kept block (an object with block, rows "
                             "and checksum)")
    missing = [k for k in ("block", "rows", "checksum") if k not in saved]
    if missing:
        raise _altered(path, f"has no {', '.join(missing)}")
    rows = saved["rows"]
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise _altered(path, "has rows that are not a non-empty list of per-clip records")
    if saved["checksum"] != _checksum(saved["block"], rows):
        raise _altered(path, "does not match its checksum (a value in it was changed)")
    return saved


def _checksum(block: Any, rows: Any) -> str:
    return hashlib.blake2b(_canonical({"block": block, "rows": rows}).encode(), digest_size=16).hexdigest()


def _altered(path: Path, problem: str) -> KeptBlockError:
    return KeptBlockError(
        f"the kept block {path} of an interrupted report {problem}, so it is not used. emoctl writes each block "
        f"whole and checksummed, so this one was changed after it was written (by hand, by another program or by "
        f"the disk). Delete that file (its block is computed again) or the whole {path.parent} folder, or rerun "
        f"with --resume false to compute every block afresh.")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_plain, allow_nan=True)


def _plain(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value):
        return asdict(value)
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    raise TypeError(f"cannot key or keep a {type(value).__name__} in a report's partial results: {value!r}")
