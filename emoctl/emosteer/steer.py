"""Attach an EmoSteer layer to a backbone's hookpoint, with each row's emotion and intensity.

Training and inference use the same write hook; only the phases differ:

* training: phase ``teacher_forced``: every target position of the batch;
* generation: phases ``prefill`` and ``decode``: the prefill's ``lm_out`` is the
  state that predicts the first speech token, each decode step the next one.

Sweeping the intensity over a trained layer is a loop::

    layer = EmoSteer.load("runs/emoshift_mini/version_0/emosteer")
    for alpha in (0, 1, 2, 3, 4):
        with steer(tts, layer, ["Angry"] * len(prompts), alpha=alpha):
            out = tts.generate(prompts, temperature=0)
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import torch

from emoctl.backbones.base import Backbone
from emoctl.backbones.hooks import HookContext, HookHandle, Phase
from emoctl.emosteer.layer import EmoSteer, EmotionMix
from emoctl.errors import ConfigError

GENERATION_PHASES = (Phase.PREFILL, Phase.DECODE)
TRAINING_PHASES = (Phase.TEACHER_FORCED,)


class SteeringHook:
    """The write hook: ``h -> h + ε · Σ_e c_be · h W_e`` for the batch's (B, E) coefficients.

    ``coefficients`` may be replaced between forwards (the trainer does so per batch).
    When every coefficient is zero the input is returned untouched, so α = 0 is
    bit-identical to the unsteered backbone.
    """

    def __init__(self, layer: EmoSteer, coefficients: torch.Tensor) -> None:
        self.layer = layer
        self.set(coefficients)
        self.last_shift: torch.Tensor | None = None  # (B, T, d) ε·Σ c·hW of the last call, when record is on
        self.record = False

    def set(self, coefficients: torch.Tensor) -> None:
        if coefficients.ndim != 2 or coefficients.shape[1] != len(self.layer.layer_emotions):
            raise ConfigError(f"coefficients must be (batch, {len(self.layer.layer_emotions)}), got "
                              f"{tuple(coefficients.shape)}.")
        self.coefficients = coefficients
        self._all_zero = not bool(coefficients.ne(0).any())  # decided once here, no host sync per step

    def __call__(self, x: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        if x.shape[0] != self.coefficients.shape[0]:
            raise ConfigError(f"the EmoSteer hook on {ctx.hookpoint} was given {self.coefficients.shape[0]} rows "
                              f"of emotions but the batch has {x.shape[0]}; pass one emotion per prompt.")
        if self._all_zero:
            return x
        delta = self.layer.config.epsilon * self.layer.shift(x, self.coefficients)  # (B, T, d)
        if self.record:
            self.last_shift = delta
        return x + delta.to(x.dtype)


def attach(backbone: Backbone, layer: EmoSteer, emotions: Sequence[EmotionMix],
           alpha: float | Sequence[float] | torch.Tensor = 1.0, *, hookpoint: str = "lm_out",
           phases: Iterable[Phase | str] | None = GENERATION_PHASES) -> tuple[HookHandle, SteeringHook]:
    """Register the layer as a write hook; ``handle.remove()`` detaches it."""
    if layer.config.hidden_size != backbone.hidden_size:
        raise ConfigError(f"the EmoSteer layer is {layer.config.hidden_size} wide but the backbone's hidden size "
                          f"is {backbone.hidden_size}; it was trained on another backbone.")
    hook = SteeringHook(layer, layer.coefficients(emotions, alpha))
    return backbone.hooks.add_writer(hookpoint, hook, phases=phases), hook


@contextmanager
def steer(backbone: Backbone, layer: EmoSteer, emotions: Sequence[EmotionMix],
          alpha: float | Sequence[float] | torch.Tensor = 1.0, *, hookpoint: str = "lm_out",
          phases: Iterable[Phase | str] | None = GENERATION_PHASES) -> Iterator[SteeringHook]:
    """Steer every generation inside the block: row b towards ``emotions[b]`` at intensity ``alpha``."""
    handle, hook = attach(backbone, layer, emotions, alpha, hookpoint=hookpoint, phases=phases)
    try:
        yield hook
    finally:
        handle.remove()
