"""Point estimates with 95% confidence intervals for metric summaries.

Means (WER per clip, similarities, MOS) get a Student-t interval; proportions
(SER accuracy) get a Wilson score interval, which stays inside [0, 1] and is
not degenerate at 0% or 100% as the normal approximation is for small n.
NaN values (a metric that could not be computed for a clip) are dropped and
counted, never averaged in.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["Estimate", "mean_ci", "proportion_ci"]


@dataclass(frozen=True)
class Estimate:
    """A summary value with its interval; ``n`` counts the finite values used."""

    value: float
    low: float
    high: float
    n: int
    n_dropped: int = 0
    confidence: float = 0.95

    def format(self, digits: int = 3) -> str:
        """"0.812 [0.774, 0.850]" (or "nan" when nothing was finite)."""
        if not math.isfinite(self.value):
            return "nan"
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_row(self) -> dict:
        return asdict(self)


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95,
            bounds: tuple[float, float] = (-math.inf, math.inf)) -> Estimate:
    """Mean of the finite values with a t interval (NaN bounds for fewer than 2 values).

    ``bounds`` is the metric's range (WER >= 0, cosine in [-1, 1], MOS in [1, 5]); the interval is clipped to it
    so a small-n interval does not claim impossible values.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = array[np.isfinite(array)]
    n = finite.size
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, array.size, confidence)
    mean = float(finite.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, 1, array.size - 1, confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * finite.std(ddof=1) / math.sqrt(n))
    low, high = max(bounds[0], mean - half), min(bounds[1], mean + half)
    return Estimate(mean, low, high, n, array.size - n, confidence)


def proportion_ci(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """Fraction ``successes / n`` with its Wilson score interval."""
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0, confidence)
    p = successes / n
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n, 0, confidence)
