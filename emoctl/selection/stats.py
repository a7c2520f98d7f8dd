"""Paired statistics of firing indicators: Δ-score, exact McNemar test, BH q-values, bootstrap CI.

For one emotion and one latent, each pair (emotional u, neutral twin v) is one
of four cells: fired in both, in neither, only in u (count ``b``) or only in v
(count ``c``).  Then

    Δ = mean over pairs of [1(u) - 1(v)] = (b - c) / n_pairs,

and under "the emotion does not change firing" each discordant pair is a fair
coin, so the exact McNemar test is a two-sided binomial test of b successes in
b + c trials at p = 1/2.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from emoctl.errors import ConfigError


@dataclass(frozen=True)
class PairCounts:
    """Per-latent cell counts over the pairs of one emotion; each array is (d_sae,)."""

    emotion_only: np.ndarray
    """b: pairs where the latent fired in the emotional utterance only."""
    neutral_only: np.ndarray
    """c: pairs where it fired in the neutral twin only."""
    both: np.ndarray
    neither: np.ndarray
    n_pairs: int

    @property
    def delta(self) -> np.ndarray:
        """(d_sae,) float64 Δ-score in [-1, 1]."""
        return (self.emotion_only - self.neutral_only) / self.n_pairs


def delta_scores(emotional: np.ndarray, neutral: np.ndarray) -> PairCounts:
    """Cell counts from paired (n_pairs, d_sae) bool indicators (row i of both is pair i)."""
    if emotional.shape != neutral.shape or emotional.ndim != 2 or emotional.shape[0] == 0:
        raise ConfigError(f"delta_scores needs two equal (n_pairs >= 1, d_sae) indicator matrices, got "
                          f"{emotional.shape} and {neutral.shape}.")
    e, v = emotional.astype(bool), neutral.astype(bool)
    both = (e & v).sum(0)
    fired_e, fired_v = e.sum(0), v.sum(0)
    n = e.shape[0]
    return PairCounts(emotion_only=(fired_e - both).astype(np.int64), neutral_only=(fired_v - both).astype(np.int64),
                      both=both.astype(np.int64), neither=(n - fired_e - fired_v + both).astype(np.int64), n_pairs=n)


def mcnemar_exact(b: np.ndarray | int, c: np.ndarray | int) -> np.ndarray:
    """Two-sided exact McNemar p-values: ``binomtest(b, b + c, 0.5)`` per latent (1 when b + c = 0).

    Latents share few distinct (b, c) cells, so each distinct one is tested once.
    """
    b_arr, c_arr = np.broadcast_arrays(np.asarray(b, dtype=np.int64), np.asarray(c, dtype=np.int64))
    if np.any(b_arr < 0) or np.any(c_arr < 0):
        raise ConfigError("mcnemar_exact: discordant counts must be >= 0.")
    cells, inverse = np.unique(np.stack([b_arr.ravel(), c_arr.ravel()], axis=1), axis=0, return_inverse=True)
    p = np.array([binomtest(int(bb), int(bb + cc), 0.5).pvalue if bb + cc > 0 else 1.0 for bb, cc in cells])
    return p[inverse.ravel()].reshape(b_arr.shape)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) controlling the false discovery rate, same shape."""
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    n = flat.size
    if n == 0:
        return p.copy()
    order = np.argsort(flat)
    scaled = flat[order] * n / np.arange(1, n + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1.0)  # monotone from the largest p down
    q = np.empty(n)
    q[order] = q_sorted
    return q.reshape(p.shape)


def bootstrap_delta_ci(differences: np.ndarray, n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0,
                       block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of Δ over pairs, for each column of (n_pairs, m) paired differences.

    Resampling pairs with replacement is the same as drawing multinomial counts over the
    pairs, so each block of resamples is one (block, n_pairs) @ (n_pairs, m) product.
    """
    diff = np.asarray(differences, dtype=np.float64)
    if diff.ndim == 1:
        diff = diff[:, None]
    n = diff.shape[0]
    if n == 0:
        raise ConfigError("bootstrap_delta_ci needs at least one pair.")
    if not 0.0 < confidence < 1.0 or n_bootstrap < 1:
        raise ConfigError(f"bootstrap_delta_ci: confidence={confidence} must be in (0, 1) and n_bootstrap="
                          f"{n_bootstrap} >= 1.")
    rng = np.random.default_rng(seed)
    uniform = np.full(n, 1.0 / n)
    means = np.empty((n_bootstrap, diff.shape[1]))
    for a in range(0, n_bootstrap, block):
        counts = rng.multinomial(n, uniform, size=min(block, n_bootstrap - a))  # (block, n_pairs)
        means[a:a + counts.shape[0]] = counts @ diff / n
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail], axis=0)
    return low, high


def wilcoxon_signed_rank(differences: np.ndarray, block: int = 256) -> np.ndarray:
    """Two-sided Wilcoxon signed-rank p-values of each column of (n_pairs, d_sae) paired differences (the test
    of the ``rate`` and ``mass`` scores; zero differences are dropped, as Wilcoxon's original rule has it).
    A column with no non-zero difference gets p = 1.  Columns go in blocks to bound memory."""
    from scipy.stats import wilcoxon

    diff = np.asarray(differences, dtype=np.float64)
    if diff.ndim != 2 or diff.shape[0] == 0:
        raise ConfigError(f"wilcoxon_signed_rank needs (n_pairs >= 1, d_sae) differences, got {diff.shape}.")
    p = np.ones(diff.shape[1])
    nonzero = (diff != 0).any(axis=0)
    columns = np.flatnonzero(nonzero)
    for a in range(0, columns.size, block):
        cols = columns[a:a + block]
        with np.errstate(invalid="ignore", divide="ignore"):
            result = wilcoxon(diff[:, cols], zero_method="wilcox", axis=0, nan_policy="propagate")
        p[cols] = np.nan_to_num(np.asarray(result.pvalue, dtype=np.float64), nan=1.0)
    return p


def top_m_stability(differences: np.ndarray, chosen: list[int], m: int, n_bootstrap: int = 200, seed: int = 0,
                    block: int = 32) -> np.ndarray:
    """How often each chosen latent is among the top ``m`` (by Δ, Δ > 0) over bootstrap resamples of the pairs:
    (len(chosen),) shares in [0, 1], from (n_pairs, d_sae) paired differences.  The significance filter is not
    re-run per resample: this measures the ranking's stability."""
    diff = np.asarray(differences, dtype=np.float32)
    n = diff.shape[0]
    if n == 0 or n_bootstrap < 1:
        raise ConfigError(f"top_m_stability needs pairs and n_bootstrap >= 1, got {n} and {n_bootstrap}.")
    rng = np.random.default_rng(seed)
    uniform = np.full(n, 1.0 / n)
    hits = np.zeros(len(chosen))
    chosen_arr = np.asarray(chosen, dtype=np.int64)
    for a in range(0, n_bootstrap, block):
        counts = rng.multinomial(n, uniform, size=min(block, n_bootstrap - a)).astype(np.float32)
        deltas = counts @ diff / n  # (block, d_sae)
        deltas[deltas <= 0] = -np.inf
        top = np.argpartition(-deltas, kth=min(m, deltas.shape[1]) - 1, axis=1)[:, :m]  # (block, m), unordered
        valid = np.take_along_axis(deltas, top, axis=1) > -np.inf
        for row, ok in zip(top, valid):
            hits += np.isin(chosen_arr, row[ok])
    return hits / n_bootstrap
