"""Timing rows that must do equal work, interleaved over rounds: what the generation benchmarks share.

Each case returns how many tokens it produced; every case must produce the same number (otherwise the
timings compare different work and the benchmark stops).  Rounds interleave the cases, so a slower stretch
of a shared machine hits all of them, and each case keeps its best round.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from emoctl.errors import ConfigError


def resolve_device(device: str, command: str, auto: bool = True) -> torch.device:
    """The torch device a benchmark's ``--device`` names, or a one-paragraph refusal before any work: an unknown
    name, or CUDA on a machine without it (torch would fail later, with its driver's traceback). ``auto`` (where
    ``auto`` is allowed) is CUDA when available, else the CPU."""
    choices = "cpu, cuda, cuda:N or auto" if auto else "cpu, cuda or cuda:N"
    if auto and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{command} --device {device!r} is not a device; use {choices}.") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{command} --device {device!r}: the benchmark runs on {choices}.")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{command} --device {device!r}, but CUDA is not available on this machine (no GPU or "
                              "no driver torch can use); use --device cpu" + (" or auto." if auto else "."))
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{command} --device {device!r}, but this machine has {torch.cuda.device_count()} "
                              "GPU(s) (cuda:0 ...); pick one of them.")
    return dev


def sync(device: str | torch.device) -> None:
    """Wait for a CUDA device's queued kernels (nothing on the CPU): CUDA runs ahead of Python, so a timing
    must end when the work does."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def equal_work_rows(cases: Sequence[tuple[str, Callable[[], int]]], repeats: int, desc: str) -> tuple[list[dict], int]:
    """Rows ``{row, seconds, tokens_per_s, ratio}`` (ratio to the first case's tokens/s) and the token count."""
    best: dict[str, float] = {}
    counts: dict[str, int] = {}
    for _ in tqdm(range(repeats), desc=desc, unit="round"):
        for name, fn in cases:
            start = time.perf_counter()
            counts[name] = fn()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"rows generated different token counts {counts}; the timings are not comparable")
    tokens = next(iter(counts.values()))
    base = tokens / best[cases[0][0]]
    return [{"row": name, "seconds": best[name], "tokens_per_s": tokens / best[name],
             "ratio": tokens / best[name] / base} for name, _ in cases], tokens
