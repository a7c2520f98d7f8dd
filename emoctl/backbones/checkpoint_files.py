"""Digests of a backbone's checkpoint files, shared by every adapter.

A backbone's id and its speech tokenizer's digest name the bytes they were built from, so stores, token caches
and reports can tell two checkpoints apart without hashing the weights on every read.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable

from emoctl.errors import ConfigError

_DIGEST_CHUNK = 1 << 22


def digest_files(named: Iterable[tuple[str, Path]], extra: bytes = b"",
                 source_of: Callable[[Path], str] = lambda path: "the model's release") -> str:
    """blake2b of ``extra`` then, per file, its label and bytes (read in 4 MB chunks); an unreadable file is one
    error naming it and where it comes from (``source_of(path)``)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(extra)
    for label, path in named:
        h.update(label.encode())
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_DIGEST_CHUNK):
                    h.update(chunk)
        except OSError as err:
            raise ConfigError(f"cannot read {path} to digest it: {err}. Copy it from {source_of(path)} into the "
                              "checkpoint folder.") from None
    return h.hexdigest()
