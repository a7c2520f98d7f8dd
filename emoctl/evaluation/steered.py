"""Steered synthesis: speak prompts batch by batch, each batch inside its steering method's context.

Batch b uses seed ``seed + b``, as :func:`emoctl.synthesis.synthesize` does, so every method (and every α)
of a comparison sees the same sampling noise; a per-batch context lets per-prompt interventions (an
EmoSteer layer with one emotion per prompt) match the batch they steer.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Sequence

from emoctl.backbones.base import Backbone, Prompt
from emoctl.synthesis import Clip, SamplingConfig, synthesize

SteeringContext = Callable[[Sequence[Prompt], int], AbstractContextManager]
"""``steering(batch, start)``: the context a batch is spoken in (``start``: its first prompt's index)."""


def synthesize_steered(backbone: Backbone, prompts: Sequence[Prompt], steering: SteeringContext | None, seed: int,
                       sampling: SamplingConfig) -> list[Clip]:
    """Every prompt, in order, each batch inside ``steering(batch, start)`` (None: no hook at all)."""
    clips: list[Clip] = []
    for b, start in enumerate(range(0, len(prompts), sampling.batch_size)):
        batch = list(prompts[start:start + sampling.batch_size])
        with steering(batch, start) if steering is not None else nullcontext():
            clips += synthesize(backbone, batch, seed=seed + b, sampling=sampling)
    return clips
