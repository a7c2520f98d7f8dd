"""Exact streaming mean and variance by merging chunk statistics (Chan et al.).

Summing x and x² over millions of rows loses precision when the mean is
large compared to the spread; merging per-chunk (count, mean, M2) in float64
does not, and each chunk is reduced with vectorised torch ops.
"""
from __future__ import annotations

import torch


class RunningMoments:
    """Per-feature count, mean and sum of squared deviations (M2) of the rows seen so far."""

    def __init__(self, d: int) -> None:
        self.count = 0
        self.mean = torch.zeros(d, dtype=torch.float64)  # (d,)
        self.m2 = torch.zeros(d, dtype=torch.float64)    # (d,)

    def update(self, chunk: torch.Tensor) -> None:
        """Merge a (n, d) chunk of any float dtype."""
        x = chunk.to(torch.float64)                      # (n, d)
        n = x.shape[0]
        if n == 0:
            return
        chunk_mean = x.mean(dim=0)                       # (d,)
        chunk_m2 = (x - chunk_mean).square_().sum(dim=0)  # (d,)
        total = self.count + n
        delta = chunk_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += chunk_m2 + delta.square() * (self.count * n / total)
        self.count = total

    @property
    def var(self) -> torch.Tensor:
        """Population variance (ddof=0), like ``numpy.var``."""
        return self.m2 / max(self.count, 1)
