"""Choosing a steering strength from a sweep: one rule for every method and report.

The rule: the swept α with the highest SER accuracy (pooled over the sweep's emotions, which have equal
numbers of clips) among those whose mean WER stays within ``max_wer_increase`` of the unsteered WER; ties go
to the smallest α; if no α keeps WER within bound, the smallest swept α (the least damaging), and the
choice says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class AlphaChoice:
    alpha: float
    accuracy: float
    wer: float
    within_bound: bool
    """False when no swept α kept WER within bound and the smallest was taken."""


def choose_alpha(accuracy: Mapping[float, float], wer: Mapping[float, float], unsteered_wer: float,
                 max_wer_increase: float) -> AlphaChoice:
    """``accuracy[α]`` and ``wer[α]`` of each swept α (> 0 or < 0, never the unsteered row)."""
    if not accuracy:
        raise ValueError("choose_alpha needs at least one swept α.")
    bound = unsteered_wer + max_wer_increase if math.isfinite(unsteered_wer) else math.inf
    ok = [a for a in sorted(accuracy, key=abs) if wer.get(a, 0.0) <= bound]
    if not ok:
        smallest = min(accuracy, key=abs)
        return AlphaChoice(smallest, accuracy[smallest], wer.get(smallest, math.nan), False)
    best = max(ok, key=lambda a: (accuracy[a], -abs(a)))
    return AlphaChoice(best, accuracy[best], wer.get(best, math.nan), True)
