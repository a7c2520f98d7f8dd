"""Exact row-wise top-k of the SAE's (B, d_sae) pre-activations: ``torch.topk`` and two exact alternatives.

The top-k over the pre-activations is the largest single term of a CPU SAE step after the matmuls
(``emoctl bench sae``). Both alternatives here return the same latents as ``torch.topk`` (the tests check it)
while handing ``torch.topk`` a much narrower matrix:

* **block maxima**: split each row into blocks of ``block`` latents. Every top-k entry lies in a block whose
  maximum is at least the k-th largest value, and at most k blocks have such a maximum, so the k blocks with the
  largest maxima hold every top-k entry: a top-k over (B, d_sae / block) maxima, a gather of k * block
  candidates, and a top-k over those.
* **sampled threshold**: the ``oversample * k * ratio``-th largest value of every ``stride``-th latent is a
  threshold most rows exceed on about ``oversample * k`` latents; the top-k of the latents above it is exact
  wherever at least k pass, and rows where fewer pass fall back to ``torch.topk``.

``emoctl bench topk`` times them against ``torch.topk`` at the SAE's shape.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from emoctl.errors import ConfigError

TopK = Callable[[Tensor, int], tuple[Tensor, Tensor]]


def topk_torch(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``torch.topk`` along rows, unsorted: (values, indices), each (B, k)."""
    return pre.topk(k, dim=1, sorted=False)


def topk_block_max(pre: Tensor, k: int, block: int = 16) -> tuple[Tensor, Tensor]:
    """Exact row-wise top-k through the k blocks of ``block`` columns with the largest maxima."""
    _check(pre, k)
    if block < 1:
        raise ConfigError(f"block={block} must be >= 1.")
    B, n = pre.shape
    n_blocks = math.ceil(n / block)
    if n_blocks <= k:  # the pruning keeps every block: nothing to gain
        return topk_torch(pre, k)
    padded = pre if n_blocks * block == n else F.pad(pre, (0, n_blocks * block - n), value=float("-inf"))
    blocks = padded.view(B, n_blocks, block)
    _, chosen = blocks.amax(dim=2).topk(k, dim=1, sorted=False)  # (B, k) block ids
    candidates = blocks.gather(1, chosen.unsqueeze(2).expand(B, k, block)).view(B, k * block)
    values, position = candidates.topk(k, dim=1, sorted=False)
    return values, chosen.gather(1, position // block) * block + position % block


def topk_sampled_threshold(pre: Tensor, k: int, stride: int = 8, oversample: float = 3.0) -> tuple[Tensor, Tensor]:
    """Exact row-wise top-k of the entries above a threshold estimated from every ``stride``-th column."""
    _check(pre, k)
    if stride < 1 or oversample < 1.0:
        raise ConfigError(f"stride={stride} must be >= 1 and oversample={oversample} >= 1.")
    B, n = pre.shape
    sample = pre[:, ::stride]
    rank = min(sample.shape[1], max(1, math.ceil(oversample * k * sample.shape[1] / n)))
    threshold = sample.topk(rank, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    passed = pre >= threshold
    counts = passed.sum(dim=1)
    rows, cols = passed.nonzero(as_tuple=True)  # row-major: each row's passing columns are contiguous
    width = max(int(counts.max()), k)
    slot = torch.arange(rows.numel(), device=pre.device) - (counts.cumsum(0) - counts)[rows]
    candidates = pre.new_full((B, width), float("-inf"))
    candidates[rows, slot] = pre[rows, cols]
    columns = torch.zeros((B, width), dtype=torch.long, device=pre.device)
    columns[rows, slot] = cols
    values, position = candidates.topk(k, dim=1, sorted=False)
    indices = columns.gather(1, position)
    short = counts < k  # too few passed: those rows are not exact yet
    if bool(short.any()):
        values[short], indices[short] = topk_torch(pre[short], k)
    return values, indices


SELECTORS: dict[str, TopK] = {"torch.topk": topk_torch, "block maxima": topk_block_max,
                              "sampled threshold": topk_sampled_threshold}


def _check(pre: Tensor, k: int) -> None:
    if pre.ndim != 2 or not 1 <= k <= pre.shape[1]:
        raise ConfigError(f"top-k needs a (B, n) matrix and 1 <= k <= n; got shape {tuple(pre.shape)} and k={k}.")
