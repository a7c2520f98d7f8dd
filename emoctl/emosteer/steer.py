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
from emoctl.steering.base import Alpha, Intervention, Schedule, steer as attach_interventions
from emoctl.steering.schedules import Resolved, SegmentPlan, StepSchedule

GENERATION_PHASES = (Phase.PREFILL, Phase.DECODE)
TRAINING_PHASES = (Phase.TEACHER_FORCED,)


class EmoSteerShift(Intervention):
    """``h -> h + ε · s_t · α_b · Σ_e w_be · h W_e`` for prompt b's emotion mix ``emotions[b]`` at step t.

    ``schedule`` gives the multiplier s_t of α per decode step (prefill reads step 0), as for every
    intervention.  ``step_mixes`` instead gives one mix per decode step shared by every prompt (the last holds
    for later steps): segments with their own emotions (:meth:`SegmentPlan.step_mixes`); then ``emotions``
    must be None.  Rows whose mix has no layer (Neutral under ``neutral: identity``) or whose α is 0 are left
    bit-identical.  Set ``record = True`` to keep the last change in ``last_shift`` (training logs its norm).
    """

    def __init__(self, layer: EmoSteer, emotions: Sequence[EmotionMix] | None, alpha: Alpha = 1.0, *,
                 hookpoint: str = "lm_out", phases: Iterable[Phase | str] | None = GENERATION_PHASES,
                 schedule: Schedule = None, step_mixes: Sequence[EmotionMix] | None = None, name: str = "") -> None:
        if step_mixes is not None:
            if emotions is not None:  # one of the two would be ignored
                raise ConfigError("EmoSteerShift takes either emotions (one mix per prompt) or step_mixes (one mix "
                                  "per decode step, for every prompt), not both.")
            if not step_mixes:
                raise ConfigError("EmoSteerShift: step_mixes is empty; give one emotion mix per decode step.")
        elif not emotions:
            raise ConfigError("EmoSteerShift needs one emotion (or mix) per prompt, got none.")
        self.layer = layer
        per_step = step_mixes is not None
        rows = list(step_mixes if per_step else emotions)  # type: ignore[arg-type]
        coefficients = torch.as_tensor(layer.coefficients(rows, 1.0))  # (P, E) or (S, E) float32 weights w_e
        self.step_mixes: torch.Tensor | None = coefficients if per_step else None
        self.mixes = None if per_step else coefficients
        label = f"emosteer[{len(rows)} steps]" if per_step else f"emosteer{rows[:3]}"
        super().__init__(hookpoint, alpha, schedule, phases, name or label)
        self._has_layer = coefficients.ne(0).any(dim=1).double()  # (P,) or (S,) 0 for identity rows
        self.record = False
        self.last_shift: torch.Tensor | None = None

    @property
    def dimension(self) -> int:
        return self.layer.config.hidden_size

    def row_alpha(self, ctx: HookContext, batch: int) -> torch.Tensor | None:
        alpha = super().row_alpha(ctx, batch)
        if alpha is None:
            return None
        if self.step_mixes is not None:
            alpha = alpha * self._has_layer[min(ctx.step, len(self._has_layer) - 1)]
        else:
            alpha = alpha * ctx.per_row(self._has_layer, batch, f"{self.name}: emotions")
        return alpha if bool((alpha != 0).any()) else None

    def _row_mixes(self, ctx: HookContext, batch: int) -> torch.Tensor:
        """(B, E) weights of this pass: each prompt's own mix, or the decode step's mix on every row."""
        if self.step_mixes is not None:
            return self.step_mixes[min(ctx.step, self.step_mixes.shape[0] - 1)].expand(batch, -1)
        return ctx.per_row(self.mixes, batch, f"{self.name}: emotions")

    def delta(self, x: torch.Tensor, alpha: torch.Tensor, ctx: HookContext) -> torch.Tensor:
        mixes = self._row_mixes(ctx, x.shape[0]).to(x.device)  # (B, E)
        change = self.layer.config.epsilon * self.layer.shift(x, mixes * alpha.to(torch.float32)[:, None])
        if self.record:
            self.last_shift = change
        return change


@contextmanager
def steer(backbone: Backbone, layer: EmoSteer, emotions: Sequence[EmotionMix] | None, alpha: Alpha = 1.0, *,
          hookpoint: str = "lm_out", phases: Iterable[Phase | str] | None = GENERATION_PHASES,
          schedule: Resolved | Schedule = None) -> Iterator[EmoSteerShift]:
    """Steer every generation inside the block: prompt b towards ``emotions[b]`` at intensity ``alpha``.

    ``schedule``: a multiplier of α per decode step, or a resolved user schedule
    (:mod:`emoctl.steering.schedules`); segments replace ``emotions`` (give None) by their per-step mix, each
    segment's α times ``alpha``."""
    if layer.config.hidden_size != backbone.hidden_size:
        raise ConfigError(f"the EmoSteer layer is {layer.config.hidden_size} wide but the backbone's hidden size "
                          f"is {backbone.hidden_size}; it was trained on another backbone.")
    shift = shift_for(layer, emotions, alpha, schedule, hookpoint=hookpoint, phases=phases)
    with attach_interventions(backbone, shift):
        yield shift


def shift_for(layer: EmoSteer, emotions: Sequence[EmotionMix] | None, alpha: Alpha, schedule: Resolved | Schedule,
              *, hookpoint: str = "lm_out", phases: Iterable[Phase | str] | None = GENERATION_PHASES
              ) -> EmoSteerShift:
    """The EmoSteerShift of a schedule: per-step multipliers of α, or segments as a per-step emotion mix."""
    if isinstance(schedule, SegmentPlan):
        if emotions is not None:
            raise ConfigError(f"the schedule's segments name their own emotions "
                              f"({', '.join(s.emotion for s in schedule.segments)}), so the per-prompt emotions "
                              f"{list(emotions)[:3]} would be ignored; pass emotions=None with segments.")
        return EmoSteerShift(layer, None, alpha, hookpoint=hookpoint, phases=phases,
                             step_mixes=schedule.step_mixes())
    per_step = schedule.schedule if isinstance(schedule, StepSchedule) else schedule
    return EmoSteerShift(layer, emotions, alpha, hookpoint=hookpoint, phases=phases, schedule=per_step)
