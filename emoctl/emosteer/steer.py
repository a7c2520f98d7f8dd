"""The EmoSteer layer as a steering intervention: each prompt's emotion (or mix) at its intensity α.

``EmoSteerShift`` is an :class:`~emoctl.steering.base.Intervention` like the
SAE-feature and mean-difference ones, so every method attaches through the one
:func:`emoctl.steering.steer` and states its phases.  Its change of the hooked
state is ``ε · α_b · Σ_e w_be · h W_e``.  The phases differ by use, and are
always named:

* training: phase ``teacher_forced``: every target position of the batch;
* generation (:data:`GENERATION_PHASES`, the default): ``prefill`` and
  ``decode``, since the prefill's ``lm_out`` is the state that predicts the
  first speech token and each decode step the next one.  (The SAE-seed
  methods steer ``decode`` only, the phase their features were found in.)

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
from emoctl.backbones.hooks import HookContext, Phase
from emoctl.emosteer.layer import EmoSteer, EmotionMix
from emoctl.errors import ConfigError
from emoctl.steering.base import Alpha, Intervention, steer as attach_interventions

GENERATION_PHASES = (Phase.PREFILL, Phase.DECODE)
TRAINING_PHASES = (Phase.TEACHER_FORCED,)


class EmoSteerShift(Intervention):
    """``h -> h + ε · α_b · Σ_e w_be · h W_e`` for prompt b's emotion mix ``emotions[b]``.

    Rows whose mix has no layer (Neutral under ``neutral: identity``) or whose α is 0 are left bit-identical.
    Set ``record = True`` to keep the last change in ``last_shift`` (training logs its norm).
    """

    def __init__(self, layer: EmoSteer, emotions: Sequence[EmotionMix], alpha: Alpha = 1.0, *,
                 hookpoint: str = "lm_out", phases: Iterable[Phase | str] | None = GENERATION_PHASES,
                 name: str = "") -> None:
        if not emotions:
            raise ConfigError("EmoSteerShift needs one emotion (or mix) per prompt, got none.")
        self.layer = layer
        self.mixes = torch.as_tensor(layer.coefficients(emotions, 1.0))  # (P, E) float32 weights w_be
        super().__init__(hookpoint, alpha, None, phases, name or f"emosteer{list(emotions)[:3]}")
        self._has_layer = self.mixes.ne(0).any(dim=1).double()  # (P,) 0 for identity rows
        self.record = False
        self.last_shift: torch.Tensor | None = None

    @property
    def dimension(self) -> int:
        return self.layer.config.hidden_size

    def row_alpha(self, ctx: HookContext, batch: int) -> torch.Tensor | None:
        alpha = super().row_alpha(ctx, batch)
        if alpha is None:
            return None
        alpha = alpha * ctx.per_row(self._has_layer, batch, f"{self.name}: emotions")
        return alpha if bool((alpha != 0).any()) else None

    def delta(self, x: torch.Tensor, alpha: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        mixes = ctx.per_row(self.mixes, x.shape[0], f"{self.name}: emotions").to(x.device)  # (B, E)
        change = self.layer.config.epsilon * self.layer.shift(x, mixes * alpha.to(torch.float32)[:, None])
        if self.record:
            self.last_shift = change
        return change


@contextmanager
def steer(backbone: Backbone, layer: EmoSteer, emotions: Sequence[EmotionMix], alpha: Alpha = 1.0, *,
          hookpoint: str = "lm_out", phases: Iterable[Phase | str] | None = GENERATION_PHASES
          ) -> Iterator[EmoSteerShift]:
    """Steer every generation inside the block: prompt b towards ``emotions[b]`` at intensity ``alpha``."""
    if layer.config.hidden_size != backbone.hidden_size:
        raise ConfigError(f"the EmoSteer layer is {layer.config.hidden_size} wide but the backbone's hidden size "
                          f"is {backbone.hidden_size}; it was trained on another backbone.")
    shift = EmoSteerShift(layer, emotions, alpha, hookpoint=hookpoint, phases=phases)
    with attach_interventions(backbone, shift):
        yield shift
