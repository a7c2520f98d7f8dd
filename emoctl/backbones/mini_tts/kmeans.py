"""Seeded k-means in torch, for the speech codec's spectral-envelope codebook.

Lloyd iterations over the full data (chunked, so memory stays at
``chunk x k`` distances), k-means++ seeding, and deterministic handling of
empty clusters. Everything is driven by one ``torch.Generator`` so a seed
fixes the codebook bit for bit on a given machine and thread count.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

_CHUNK_ROWS = 65536


class KMeansResult(NamedTuple):
    centroids: torch.Tensor   # (k, D) float32
    inertia: float            # mean squared distance of a point to its centroid
    n_iter: int               # Lloyd iterations run


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of, and squared distance to, the nearest centroid of each row of ``x``.

    Uses ``|x|^2 - 2 x.c + |c|^2`` in chunks; the distances are clamped at 0
    because rounding can make them slightly negative.
    """
    c_sq = (centroids * centroids).sum(1)                          # (k,)
    index = torch.empty(x.shape[0], dtype=torch.int64)
    dist = torch.empty(x.shape[0], dtype=x.dtype)
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        xb = x[start:start + _CHUNK_ROWS]                          # (n, D)
        d = (xb * xb).sum(1, keepdim=True) - 2.0 * xb @ centroids.T + c_sq  # (n, k)
        best, arg = d.min(1)
        index[start:start + xb.shape[0]] = arg
        dist[start:start + xb.shape[0]] = best.clamp_min(0.0)
    return index, dist


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centre is drawn with probability ~ D(x)^2."""
    n = x.shape[0]
    x_sq = (x * x).sum(1)                                           # (N,)
    picks = [int(torch.randint(n, (1,), generator=gen))]
    min_dist = (x_sq - 2.0 * x @ x[picks[0]] + x_sq[picks[0]]).clamp_min(0.0)  # (N,)
    for _ in range(1, k):
        cumulative = min_dist.cumsum(0)
        if float(cumulative[-1]) <= 0.0:   # fewer distinct points than k: repeat points, Lloyd fixes empties
            pick = int(torch.randint(n, (1,), generator=gen))
        else:                              # inverse-CDF draw, much faster than torch.multinomial here
            u = torch.rand(1, generator=gen, dtype=cumulative.dtype) * cumulative[-1]
            pick = min(int(torch.searchsorted(cumulative, u)), n - 1)
        picks.append(pick)
        min_dist = torch.minimum(min_dist, (x_sq - 2.0 * x @ x[pick] + x_sq[pick]).clamp_min(0.0))
    return x[picks].clone()                                         # (k, D)


def kmeans(x: torch.Tensor, k: int, *, n_iter: int = 50, tol: float = 1e-4, seed: int = 0,
           max_points: int | None = 200_000, num_threads: int | None = 1, progress: bool = False) -> KMeansResult:
    """Cluster the rows of ``x`` (N, D) into ``k`` centroids.

    ``max_points`` caps the rows used (a seeded random subset) so fitting
    time does not grow with the corpus; ``tol`` stops early once the mean
    squared distance improves by less than that fraction. ``num_threads``
    (None: torch's setting) defaults to 1: the work is small and made of
    many short ops, and on a busy 2-core machine two threads made it 3-30x
    slower (OpenMP threads waiting on each other).
    """
    if x.ndim != 2 or x.shape[0] < k:
        raise ValueError(f"kmeans needs a 2-D tensor with at least k={k} rows, got shape {tuple(x.shape)}")
    with _torch_threads(num_threads or torch.get_num_threads()):
        return _lloyd(x, k, n_iter=n_iter, tol=tol, seed=seed, max_points=max_points, progress=progress)


def _lloyd(x: torch.Tensor, k: int, *, n_iter: int, tol: float, seed: int, max_points: int | None,
           progress: bool) -> KMeansResult:
    """k-means++ seeding, then Lloyd iterations (see :func:`kmeans`)."""
    gen = torch.Generator().manual_seed(seed)
    x = x.float()
    if max_points is not None and x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=gen)[:max_points]]
    centroids = _kmeans_plus_plus(x, k, gen)
    previous = float("inf")
    inertia = previous
    it = 0
    bar = tqdm(range(n_iter), desc=f"k-means (k={k}, N={x.shape[0]})", disable=not progress, leave=False)
    for it in bar:
        index, dist = nearest_centroid(x, centroids)
        inertia = float(dist.mean())
        sums = torch.zeros_like(centroids).index_add_(0, index, x)  # (k, D)
        counts = torch.bincount(index, minlength=k)                 # (k,)
        empty = (counts == 0).nonzero().flatten()
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
        if len(empty):       # re-seed empty clusters at the worst-fitted points
            worst = dist.topk(len(empty)).indices
            centroids[empty] = x[worst]
        bar.set_postfix(inertia=f"{inertia:.4g}")
        if len(empty) == 0 and previous < float("inf") and previous - inertia <= tol * previous:
            break
        previous = inertia
    return KMeansResult(centroids.contiguous(), inertia, it + 1)
