"""The statistics of a listening test: two-way bootstrap means, paired tests over clips and Krippendorff's alpha.

Ratings form a raters x clips matrix with gaps (a rater may skip a clip). A method's mean opinion score is the
mean of its ratings; its interval resamples raters *and* clips (prompts) with replacement, because both are
samples: another panel and other sentences would give another score, and an interval over ratings alone treats
20 ratings of one clip as 20 independent clips. Methods are compared on the prompts they share (the same text,
speaker and seed, so clip i of one method is clip i of the other): a Wilcoxon signed-rank test over the clips'
mean ratings. Agreement between raters is Krippendorff's alpha, which takes gaps and any number of raters.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy.stats import binomtest, wilcoxon

from emoctl.errors import ConfigError

Metric = Literal["interval", "ordinal", "nominal"]


def two_way_bootstrap(ratings: np.ndarray, n_bootstrap: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of a (raters, clips) matrix (NaN: not rated) and its percentile interval, resampling raters and clips.

    A resample draws raters and clips with replacement, as multinomial counts, and takes the weighted mean of the
    ratings present; a resample with no rating present is dropped.
    """
    matrix = np.asarray(ratings, dtype=np.float64)
    if matrix.ndim != 2 or not np.isfinite(matrix).any():
        raise ConfigError(f"two_way_bootstrap needs a (raters, clips) matrix with at least one rating, got shape "
                          f"{matrix.shape}.")
    if n_bootstrap < 1 or not 0.0 < confidence < 1.0:
        raise ConfigError(f"two_way_bootstrap: n_bootstrap={n_bootstrap} must be >= 1 and confidence={confidence} "
                          "in (0, 1).")
    present = np.isfinite(matrix)
    values = np.where(present, matrix, 0.0)
    n_raters, n_clips = matrix.shape
    rng = np.random.default_rng(seed)
    rater_counts = rng.multinomial(n_raters, np.full(n_raters, 1.0 / n_raters), size=n_bootstrap)  # (B, R)
    clip_counts = rng.multinomial(n_clips, np.full(n_clips, 1.0 / n_clips), size=n_bootstrap)     # (B, C)
    sums = np.einsum("br,rc,bc->b", rater_counts, values, clip_counts)
    weights = np.einsum("br,rc,bc->b", rater_counts, present.astype(np.float64), clip_counts)
    means = sums[weights > 0] / weights[weights > 0]
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail]) if means.size else (math.nan, math.nan)
    return float(matrix[present].mean()), float(low), float(high)


def wilcoxon_paired(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired clip means (zero differences dropped; all zero: p = 1)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0 or not (diff != 0).any():
        return 1.0
    return float(wilcoxon(diff, zero_method="wilcox").pvalue)


def binomial_p(wins: int, losses: int) -> float:
    """Two-sided exact binomial p of ``wins`` against ``losses`` under a fair coin (ties left out; none: p = 1)."""
    return float(binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0


def krippendorff_alpha(ratings: np.ndarray, metric: Metric = "interval") -> float:
    """Krippendorff's alpha of a (raters, units) matrix (NaN: not rated): 1 - observed / expected disagreement.

    Built from the coincidence matrix of the values: each unit rated by m >= 2 raters adds its m(m - 1) ordered
    pairs of values with weight 1 / (m - 1). ``interval``: squared difference; ``ordinal``: squared count of the
    values between two values (by Krippendorff's rank rule); ``nominal``: 0 if equal, else 1. NaN when no unit has
    two ratings or every value is the same (no disagreement to expect).
    """
    matrix = np.asarray(ratings, dtype=np.float64)
    if matrix.ndim != 2:
        raise ConfigError(f"krippendorff_alpha needs a (raters, units) matrix, got shape {matrix.shape}.")
    values = np.unique(matrix[np.isfinite(matrix)])
    if values.size < 2:
        return math.nan
    index = {v: i for i, v in enumerate(values)}
    coincidence = np.zeros((values.size, values.size))
    for unit in matrix.T:
        present = unit[np.isfinite(unit)]
        m = present.size
        if m < 2:
            continue
        counts = np.zeros(values.size)
        for v in present:
            counts[index[v]] += 1
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (m - 1)
    totals = coincidence.sum(axis=1)
    n = totals.sum()
    if n < 2:
        return math.nan
    delta = _distance(values, totals, metric)
    observed = (coincidence * delta).sum()
    expected = (np.outer(totals, totals) * delta).sum() / (n - 1)
    return math.nan if expected == 0 else float(1.0 - observed / expected)


def _distance(values: np.ndarray, totals: np.ndarray, metric: Metric) -> np.ndarray:
    """The squared distance δ² between every two values of the metric."""
    if metric == "interval":
        return np.subtract.outer(values, values) ** 2
    if metric == "nominal":
        return 1.0 - np.eye(values.size)
    if metric == "ordinal":
        cumulative = np.concatenate([[0.0], np.cumsum(totals)])
        delta = np.zeros((values.size, values.size))
        for c in range(values.size):
            for k in range(values.size):
                lo, hi = min(c, k), max(c, k)
                delta[c, k] = (cumulative[hi + 1] - cumulative[lo] - (totals[c] + totals[k]) / 2) ** 2
        return delta
    raise ConfigError(f"krippendorff_alpha: metric={metric!r} must be interval, ordinal or nominal.")
