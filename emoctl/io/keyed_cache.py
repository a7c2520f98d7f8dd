"""A per-file array cache on disk: one ``.npz`` holding an array per source file, keyed by path and stat.

The speech-token cache of the mini TTS and the log-mel cache of the mini SER
both map "this audio file, as it is now" to an array that is slow to compute.
An entry stays valid while the file's (size, mtime) stamp is unchanged; the
arrays are stored concatenated with offsets, and the file is replaced
atomically, so a crash never leaves half a cache (a damaged one is only a lost
speed-up).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

Stamp = tuple[int, int]
"""(size in bytes, mtime in ns) of a source file."""


def stat_key(path: Path) -> Stamp:
    """The stamp that invalidates a cache entry when its source file changes."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def read_keyed_arrays(path: Path, field: str) -> dict[str, tuple[Stamp, np.ndarray]]:
    """rel_path -> (stamp, array) from ``path``; empty when the file is missing or unreadable."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            rel, size, mtime, offsets, data = z["rel_paths"], z["sizes"], z["mtimes_ns"], z["offsets"], z[field]
    except (OSError, KeyError, ValueError):  # a damaged cache is only a lost speed-up
        return {}
    return {str(r): ((int(s), int(m)), data[offsets[i]:offsets[i + 1]])
            for i, (r, s, m) in enumerate(zip(rel, size, mtime))}


def write_keyed_arrays(path: Path, entries: dict[str, tuple[Stamp, np.ndarray]], field: str,
                       empty: np.ndarray | None = None) -> None:
    """Write ``entries`` (sorted by rel_path) under a temporary name in the same folder, then rename.

    ``empty`` is the array stored when there are no entries (it fixes the dtype and trailing shape).
    """
    rel = sorted(entries)
    arrays = [entries[r][1] for r in rel]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    data = np.concatenate(arrays) if arrays else (empty if empty is not None else np.zeros(0))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, rel_paths=np.array(rel), sizes=np.array([entries[r][0][0] for r in rel], dtype=np.int64),
                     mtimes_ns=np.array([entries[r][0][1] for r in rel], dtype=np.int64),
                     offsets=np.concatenate([[0], np.cumsum(lengths)]), **{field: data})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
