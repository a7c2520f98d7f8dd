"""Summaries of per-clip rows: means with 95% intervals, their Markdown form and CSV bytes."""
from __future__ import annotations

import csv
import io
import math
from typing import Sequence
from emoctl.metrics.stats import mean_ci, proportion_ci


def summarize(rows: list[dict], metrics: Sequence[str]) -> list[dict]:
    """Mean and 95% interval of each metric per (direction, emotion, method)."""

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["direction"], row["emotion"], row["method"]), []).append(row)
    out = []
    for (direction, emotion, method), members in groups.items():
        record = {"direction": direction, "emotion": emotion, "method": method, "alpha": members[0]["alpha"],
                  "n": len(members)}
        for metric in metrics:
            values = [m[metric] for m in members if metric in m]
            if not values:
                continue
            if metric == "ser_hit":
                estimate = proportion_ci(int(sum(values)), len(values))
            else:
                estimate = mean_ci(values)
            record[metric], record[f"{metric}_low"], record[f"{metric}_high"] = \
                estimate.value, estimate.low, estimate.high
        out.append(record)
    return out


def format_estimate(record: dict, metric: str, digits: int = 3) -> str:
    value = record.get(metric, math.nan)
    if not isinstance(value, float) or not math.isfinite(value):
        return "–"
    low, high = record.get(f"{metric}_low", math.nan), record.get(f"{metric}_high", math.nan)
    if math.isfinite(low) and math.isfinite(high):
        if metric == "ser_hit":  # Wilson intervals are asymmetric near 0 and 1
            return f"{value:.2f} [{low:.2f}, {high:.2f}]"
        return f"{value:.{digits}f} ± {(high - low) / 2:.{digits}f}"
    return f"{value:.{digits}f}"


def csv_bytes(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()
