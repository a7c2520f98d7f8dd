"""What the random-weight test releases of the backbones share: a stop token that a random model still picks.

A random output head almost never picks the stop token, so random-weight utterances would all run to the token
budget and nothing about stopping could be tested.  Each release's writer runs its own model to get hidden
states; :func:`set_stop_logit` then rewrites the stop row of its head the same way for every backbone.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def set_stop_logit(states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stop: int, spread: float,
                   generator: torch.Generator) -> None:
    """Make row ``stop`` of a head (``weight`` (V, d), ``bias`` (V,)) a random direction whose logit over
    ``states`` (N, d) has mean 0 and std ``spread``.

    Scaled so, the stop logit varies across positions about as much as the best other logit stands above the
    mean: the stop token then wins at a few percent of positions, and utterances end after tens of tokens.  The
    direction is drawn from ``generator`` (the caller's seeded one), so a release is the same for a seed.
    """
    direction = torch.randn(states.shape[-1], generator=generator)
    unit = direction / direction.norm()
    projection = states @ unit
    scale = spread / projection.std()
    weight[stop] = unit * scale
    bias[stop] = -projection.mean() * scale
