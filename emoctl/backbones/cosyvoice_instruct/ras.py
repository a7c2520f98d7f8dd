"""CosyVoice's repetition-aware sampling (RAS), one row at a time, with the row's own generator.

Upstream (``cosyvoice.utils.common.ras_sampling`` inside ``TransformerLM.sampling_ids``) draws each speech
token like this:

1. **nucleus**: sort the softmax (stable, descending) and keep tokens while the running sum is below top-p and
   fewer than top-k are kept; draw one of them, weighted by probability;
2. **repetition check**: if the drawn token occurs at least ``window * tau`` times among the row's last
   ``window`` tokens, draw again from the full distribution;
3. **minimum length**: before the row has ``min_len`` tokens a drawn stop token is rejected and 1-2 run again
   (upstream gives up after 100 tries); the first step never sees the stop token at all.

:func:`draw` repeats those steps with the same random calls on tensors of the same sizes, so a row seeded
like upstream's global RNG draws upstream's tokens.  The sort and softmax run batched for all rows (they are
per-row operations); only the draws are per row, because each row has its own generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emoctl.errors import ConfigError

MAX_TRIALS = 100  # upstream's sampling_ids


@dataclass(frozen=True)
class RasSettings:
    """Upstream's ``ras_sampling`` arguments (None: that rule is off)."""

    top_p: float | None
    top_k: int | None
    window: int | None
    tau: float


def _nucleus(probs: torch.Tensor, order: torch.Tensor, head: np.ndarray, settings: RasSettings,
             generator: torch.Generator | None) -> int:
    """Upstream's ``nucleus_sampling`` for one row: ``probs`` (V,), ``order`` its stable descending argsort,
    ``head`` the leading sorted probabilities as float32 (enough of them to cover top-k)."""
    top_p = np.float32(1.0 if settings.top_p is None else settings.top_p)
    top_k = len(head) if settings.top_k is None else settings.top_k
    cum, kept = np.float32(0.0), 0
    for value in head:  # float32 running sum and float32 comparison, as upstream's 0-d tensors
        if cum < top_p and kept < top_k:
            cum = np.float32(cum + value)
            kept += 1
        else:
            break
    kept_probs = probs[order[:kept]]
    return int(order[int(torch.multinomial(kept_probs, 1, replacement=True, generator=generator))])


def draw(logp: torch.Tensor, histories: list[list[int]], stop: int, min_lengths: list[int],
         settings: RasSettings, generators: list[torch.Generator] | None, rows: list[int]) -> dict[int, int]:
    """One token for each row in ``rows`` of ``logp`` (B, V) log-probabilities (the first step's stop token
    already at -inf); ``histories[b]`` are row b's tokens so far."""
    probs = torch.softmax(logp.float(), dim=-1)
    values, order = probs.sort(dim=-1, descending=True, stable=True)
    width = values.shape[1] if settings.top_k is None else min(settings.top_k, values.shape[1])
    heads = values[:, :width].cpu().numpy()
    chosen: dict[int, int] = {}
    for b in rows:
        g = generators[b] if generators is not None else None
        recent = histories[b][-settings.window:] if settings.window else []
        for _ in range(MAX_TRIALS + 1):
            token = _nucleus(probs[b], order[b], heads[b], settings, g)
            if settings.window and recent.count(token) >= settings.window * settings.tau:
                token = int(torch.multinomial(probs[b], 1, replacement=True, generator=g))
            if token != stop or len(histories[b]) >= min_lengths[b]:
                break
        else:
            raise ConfigError(f"row {b} drew the stop token {MAX_TRIALS} times before reaching its minimum length "
                              f"of {min_lengths[b]} tokens (upstream gives up there too); the model or the "
                              "steering makes it want to stop: lower the steering strength.")
        chosen[b] = token
    return chosen


def greedy(logp: torch.Tensor, histories: list[list[int]], stop: int, min_lengths: list[int], rows: list[int]
           ) -> dict[int, int]:
    """The most likely token of each row; before its minimum length, the most likely one that is not stop."""
    best = logp.argmax(-1).tolist()
    chosen = {}
    for b in rows:
        token = best[b]
        if token == stop and len(histories[b]) < min_lengths[b]:
            masked = logp[b].clone()
            masked[stop] = -float("inf")
            token = int(masked.argmax())
        chosen[b] = token
    return chosen
