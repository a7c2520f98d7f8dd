"""A backbone's checkpoint files, for every adapter: their digests and the one way their weights are loaded.

A backbone's id and its speech tokenizer's digest name the bytes they were built from, so stores, token caches
and reports can tell two checkpoints apart without hashing the weights on every read.

Weights are read by :func:`load_torch_file` (``torch.load`` weights-only on the CPU, so a crafted pickle is an
error, never run), checked by :func:`refuse_non_finite_file` (every floating tensor finite) and fitted into their
module by :func:`load_strict` (every key, every shape); :func:`load_state` is the three for a plain state dict.
Each failure is one paragraph that names the file and says where a good copy comes from (``fix``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from emoctl.errors import ConfigError, first_line

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


def load_torch_file(path: Any, cannot: str, fix: str, *, mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; an unreadable, damaged or crafted file is one
    ``ConfigError``: ``"{cannot}: {the error's first line}. {fix}"`` (``cannot`` names the file, e.g. "cannot read
    the LLM checkpoint <path>"; ``fix`` says where to copy it from). ``mmap`` tries a memory-mapped read first
    (only the key list of a large file is read), then the plain one that old pickles need."""
    error: BaseException | None = None
    for mapped in ((True, False) if mmap else (False,)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, **({"mmap": True} if mapped else {}))
        except Exception as err:  # pickle, zip and torch errors differ by damage
            error = err
    assert error is not None
    raise ConfigError(f"{cannot}: {first_line(error)}. {fix}") from None


def refuse_non_finite_file(tensors: Mapping[str, torch.Tensor] | Iterable[torch.Tensor], path: Any) -> None:
    """A ``ConfigError`` naming ``path`` when a floating tensor read from it holds NaN or Inf."""
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    if not all(bool(torch.isfinite(t).all()) for t in values if t.is_floating_point()):
        raise ConfigError(f"{path} holds NaN or Inf weights; the file is damaged.")


def load_state(path: Any, what: str, fix: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path`` (the ``what`` checkpoint), read weights-only, every float finite."""
    state = load_torch_file(path, f"cannot read the {what} checkpoint {path}", fix)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} is not a state dict of tensors (the {what} checkpoint of the release).")
    refuse_non_finite_file(state, path)
    return state


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: Any, config: str, fix: str) -> None:
    """Load ``state`` into ``module`` with every key and shape matching; otherwise one ``ConfigError``: ``"{path}
    does not fit the {module's class} that {config} describes: {what differs}. {fix}"``."""
    where = f"{path} does not fit the {type(module).__name__} that {config} describes"
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that differ from the config's
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ConfigError(f"{where}: {' '.join(lines[1:4])[:600]}. {fix}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(f"{where}: {len(result.missing_keys)} missing key(s) (e.g. {result.missing_keys[:3]}), "
                          f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]}). {fix}")
