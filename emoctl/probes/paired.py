"""Paired before/after statistics of a probe: mean shift, confidence intervals, p-values.

Why paired: steering is judged on the same text and speaker with and without
the intervention, so the per-pair difference removes the large variation
between sentences and voices.  Each comparison reports the mean difference
(after - before) with a t-based and a bootstrap 95% interval, the paired t-test
and the Wilcoxon signed-rank p-values, and a one-line summary such as::

    F0 mean +23.11 Hz [95% CI 12.0, 34.2], p = 1.07e-4 (paired t, n = 40)

Pairs where either side is NaN or infinite (an unvoiced clip has no F0) are
dropped and counted in ``n_dropped``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from emoctl.errors import ConfigError

__all__ = ["PROBE_LABELS", "PairedComparison", "compare_paired", "compare_profiles", "format_p"]

PROBE_LABELS: dict[str, tuple[str, str]] = {
    "f0_mean_hz": ("F0 mean", "Hz"),
    "f0_median_hz": ("F0 median", "Hz"),
    "f0_std_hz": ("F0 SD", "Hz"),
    "voiced_fraction": ("voiced fraction", ""),
    "rms": ("RMS", ""),
    "rms_dbfs": ("RMS", "dB"),
    "spectral_centroid_hz": ("spectral centroid", "Hz"),
    "duration_s": ("duration", "s"),
}
"""Probe name -> (label, unit) used in summaries; also the probes ``compare_profiles`` reports by default."""


@dataclass(frozen=True)
class PairedComparison:
    """One probe before vs after; ``to_row()`` is a flat dict for a CSV row."""

    probe: str
    """Name of the probe, e.g. "f0_mean_hz"."""
    n: int
    """Pairs used (both sides finite)."""
    n_dropped: int
    """Pairs dropped for a NaN or infinite value on either side."""
    mean_before: float
    mean_after: float
    mean_diff: float
    """Mean of (after - before)."""
    ci_low: float
    """Lower end of the t-based interval of ``mean_diff``."""
    ci_high: float
    bootstrap_low: float
    """Lower end of the bootstrap (BCa) interval of ``mean_diff``."""
    bootstrap_high: float
    p_t: float
    """Two-sided paired t-test p-value."""
    p_wilcoxon: float
    """Two-sided Wilcoxon signed-rank p-value (zero differences dropped)."""
    confidence: float
    """Coverage of both intervals, e.g. 0.95."""
    summary: str
    """One line: label, shift with unit, t interval, t-test p-value and n."""

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def format_p(p: float) -> str:
    """Three significant digits, scientific below 1e-3 without padded exponents: "1.07e-4", "0.0312"."""
    if not math.isfinite(p):
        return "nan"
    if p == 0.0 or p >= 1e-3:
        return f"{p:.3g}"
    mantissa, exponent = f"{p:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def compare_paired(before: Sequence[float] | np.ndarray, after: Sequence[float] | np.ndarray, *, probe: str = "",
                   confidence: float = 0.95, n_bootstrap: int = 9999, seed: int = 0) -> PairedComparison:
    """Compare matched measurements: ``before[i]`` and ``after[i]`` are the same text and speaker.

    Args:
        before: One value per pair without the intervention.
        after: One value per pair with it.
        probe: Probe name; names in ``PROBE_LABELS`` get a readable label and unit in the summary.
        confidence: Coverage of the intervals.
        n_bootstrap: Bootstrap resamples of the mean difference.
        seed: Seed of the bootstrap, so reports are reproducible.
    """
    first = np.asarray(before, dtype=np.float64).reshape(-1)
    second = np.asarray(after, dtype=np.float64).reshape(-1)
    if first.shape != second.shape:
        raise ConfigError(f"compare_paired({probe!r}): {first.size} values before but {second.size} after; "
                          f"the two lists must hold the same pairs in the same order.")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"compare_paired: confidence={confidence} must be in (0, 1), e.g. 0.95.")
    keep = np.isfinite(first) & np.isfinite(second)
    first, second = first[keep], second[keep]
    diff = second - first  # (n,)
    n = diff.size
    nan = math.nan
    mean_diff = float(diff.mean()) if n else nan
    ci_low = ci_high = boot_low = boot_high = p_t = p_wilcoxon = nan
    if n >= 2:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # scipy warns on constant differences and returns nan/0, kept as is
            sem = float(diff.std(ddof=1)) / math.sqrt(n)
            half_width = stats.t.ppf(0.5 + confidence / 2, n - 1) * sem
            ci_low, ci_high = float(mean_diff - half_width), float(mean_diff + half_width)
            p_t = float(stats.ttest_rel(second, first).pvalue)
            if np.any(diff != 0):
                p_wilcoxon = float(stats.wilcoxon(diff).pvalue)
            if sem > 0:
                interval = stats.bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=n_bootstrap,
                                           method="BCa", random_state=np.random.default_rng(seed)).confidence_interval
                boot_low, boot_high = float(interval.low), float(interval.high)
            else:
                boot_low = boot_high = mean_diff
    return PairedComparison(
        probe=probe, n=n, n_dropped=int((~keep).sum()),
        mean_before=float(first.mean()) if n else nan, mean_after=float(second.mean()) if n else nan,
        mean_diff=mean_diff, ci_low=ci_low, ci_high=ci_high, bootstrap_low=boot_low, bootstrap_high=boot_high,
        p_t=p_t, p_wilcoxon=p_wilcoxon, confidence=confidence,
        summary=_summary(probe, n, mean_diff, ci_low, ci_high, p_t, confidence))


def compare_profiles(before: Sequence[Any], after: Sequence[Any], probes: Sequence[str] = tuple(PROBE_LABELS), *,
                     confidence: float = 0.95, n_bootstrap: int = 9999, seed: int = 0) -> list[PairedComparison]:
    """``compare_paired`` for each probe of matched ``AcousticProfile``s (or row dicts from ``to_row``)."""
    if len(before) != len(after):
        raise ConfigError(f"compare_profiles: {len(before)} profiles before but {len(after)} after; pass the "
                          f"same pairs (same text and speaker) in the same order.")
    rows_before, rows_after = [_row(p) for p in before], [_row(p) for p in after]
    comparisons = []
    for probe in probes:
        if rows_before and probe not in rows_before[0]:
            raise ConfigError(f"compare_profiles: no probe named {probe!r}; choose from "
                              f"{', '.join(rows_before[0])}.")
        comparisons.append(compare_paired([r[probe] for r in rows_before], [r[probe] for r in rows_after],
                                          probe=probe, confidence=confidence, n_bootstrap=n_bootstrap, seed=seed))
    return comparisons


def _row(profile: Any) -> Mapping[str, float]:
    return profile if isinstance(profile, Mapping) else profile.to_row()


def _summary(probe: str, n: int, mean_diff: float, ci_low: float, ci_high: float, p: float,
             confidence: float) -> str:
    label, unit = PROBE_LABELS.get(probe, (probe or "difference", ""))
    half_width = (ci_high - ci_low) / 2
    # Three significant digits of the interval's half-width; one more for the shift itself.
    ci_decimals = max(0, 2 - math.floor(math.log10(half_width))) if half_width > 0 and math.isfinite(half_width) else 1
    unit_text = f" {unit}" if unit else ""
    level = f"{confidence * 100:g}%"
    return (f"{label} {mean_diff:+.{ci_decimals + 1}f}{unit_text} [{level} CI {ci_low:.{ci_decimals}f}, "
            f"{ci_high:.{ci_decimals}f}], p = {format_p(p)} (paired t, n = {n})")
