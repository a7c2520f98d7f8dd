"""What every steering intervention shares: α, its schedule over decode steps, phases, attaching.

An intervention computes a *change* ``delta(x, ctx)`` of the hooked tensor
``x`` (B, T, d); :func:`steer` registers one write hook per hookpoint that adds
the changes of all interventions there, each computed from the same input, so
composition is a sum (two emotions' feature sets with their own α's).

Strength: ``alpha`` is a number or one number per prompt (under beams it
reaches every beam of its prompt), multiplied at
decode step t by ``schedule(t)`` (a callable, or a list whose last entry holds
for later steps).  A row whose effective α is 0 is left bit-identical (the
hook returns its input rows untouched), and when every row's α is 0 the hook
returns ``x`` itself.  Removing the handle unregisters the torch hook.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import defaultdict
from typing import Callable, Iterable, Sequence, Union

import torch
from torch import Tensor

from emoctl.backbones.base import Backbone
from emoctl.backbones.hooks import HookContext, HookHandle, Phase, _phase_set
from emoctl.errors import ConfigError

Alpha = Union[float, Sequence[float], Tensor]
"""A steering strength: one number, or one per batch row."""
Schedule = Union[Callable[[int], float], Sequence[float], None]
"""Multiplier of α per decode step (HookContext.step); None means 1 at every step."""


class Intervention(ABC):
    """A change of one hookpoint's tensor with strength α, gated to some phases (decode by default)."""

    def __init__(self, hookpoint: str, alpha: Alpha, schedule: Schedule = None,
                 phases: Iterable[Phase | str] | None = (Phase.DECODE,), name: str = "") -> None:
        self.hookpoint = hookpoint
        self.alpha = alpha
        self.schedule = schedule
        phase_set = _phase_set(phases)
        self.phases: frozenset[Phase] | None = phase_set
        self.name = name or type(self).__name__

    # ------------------------------------------------------------ strength
    @property
    def alpha(self) -> Alpha:
        return self._alpha

    @alpha.setter
    def alpha(self, value: Alpha) -> None:
        """Set α between generations (an α sweep needs no re-attaching)."""
        values = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        if values.numel() == 0 or not bool(torch.isfinite(values).all()):
            raise ConfigError(f"{type(self).__name__}: alpha={value!r} must be a finite number or a non-empty list "
                              "of finite numbers (one per batch row).")
        self._alpha = value
        self._alpha_values = values  # (1,) or (B,)

    @property
    def dimension(self) -> int:
        """Width of the tensor this intervention edits."""
        raise NotImplementedError

    def row_alpha(self, ctx: HookContext, batch: int) -> Tensor | None:
        """(B,) float64 effective α at this pass, or None when it is 0 for every row."""
        values = ctx.per_row(self._alpha_values, batch, f"{self.name}: alpha")  # a prompt's α on all its beams
        factor = _schedule_at(self.schedule, ctx.step, self.name)
        if factor == 0.0 or not bool((values != 0).any()):
            return None
        return values * factor

    def parts(self) -> list[Intervention]:
        """What :func:`steer` attaches: the intervention itself, or, for one that edits several hookpoints
        (:class:`~emoctl.steering.vectors.MultiLayerSteering`), one single-hookpoint intervention each."""
        return [self]

    def fires_in(self, phase: Phase | None) -> bool:
        return self.phases is None or phase in self.phases

    # --------------------------------------------------------------- change
    @abstractmethod
    def delta(self, x: Tensor, alpha: Tensor, ctx: HookContext) -> Tensor:
        """Change of ``x`` (B, T, d) or (B, d) at per-row strengths ``alpha`` (B,) float64; same shape as ``x``."""

    def check_backbone(self, backbone: Backbone) -> None:
        """Raise a ConfigError if this intervention cannot run on ``backbone``."""
        if self.hookpoint not in backbone.hookpoints:
            raise ConfigError(f"{self.name}: unknown hookpoint {self.hookpoint!r}; this backbone has "
                              f"{', '.join(backbone.hookpoints)}.")
        if backbone.hidden_size != self.dimension:
            raise ConfigError(
                f"{self.name} edits vectors of width {self.dimension}, but hookpoint {self.hookpoint} of this "
                f"backbone has width {backbone.hidden_size}. Use an SAE (or direction) built on this backbone's "
                "activations at that hookpoint."
            )


def _schedule_at(schedule: Schedule, step: int, name: str) -> float:
    if schedule is None:
        return 1.0
    if callable(schedule):
        value = float(schedule(step))
    else:
        if len(schedule) == 0:
            raise ConfigError(f"{name}: the schedule list is empty; give at least one multiplier or None.")
        value = float(schedule[min(step, len(schedule) - 1)])
    if not math.isfinite(value):
        raise ConfigError(f"{name}: schedule gave {value} at decode step {step}; it must be finite.")
    return value


class SteeringHandle:
    """Detaches what :func:`steer` attached; also a context manager."""

    def __init__(self, handles: list[HookHandle], interventions: list[Intervention]) -> None:
        self._handles = handles
        self.interventions = interventions

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def steer(backbone: Backbone, *interventions: Intervention) -> SteeringHandle:
    """Attach interventions as write hooks; those on one hookpoint add their changes of the same input (a
    multi-hookpoint intervention attaches its :meth:`~Intervention.parts`)."""
    if not interventions:
        raise ConfigError("steer() needs at least one intervention.")
    for intervention in interventions:
        intervention.check_backbone(backbone)
    by_point: dict[str, list[Intervention]] = defaultdict(list)
    for intervention in interventions:
        for part in intervention.parts():
            by_point[part.hookpoint].append(part)
    handles = []
    try:
        for hookpoint, members in by_point.items():
            phases = None if any(i.phases is None for i in members) else frozenset().union(*(i.phases for i in members))
            handles.append(backbone.hooks.add_writer(hookpoint, _writer(members), phases=phases))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return SteeringHandle(handles, list(interventions))


def _writer(members: list[Intervention]) -> Callable[[Tensor, HookContext], Tensor]:
    def write(x: Tensor, ctx: HookContext) -> Tensor:
        if x.shape[-1] != members[0].dimension:
            raise ConfigError(f"hookpoint {ctx.hookpoint} carries width {x.shape[-1]} but the steering there edits "
                              f"width {members[0].dimension}.")
        batch = x.shape[0]
        total: Tensor | None = None
        on: Tensor | None = None  # (B,) rows some intervention changes
        for intervention in members:
            if not intervention.fires_in(ctx.phase):
                continue
            alpha = intervention.row_alpha(ctx, batch)
            if alpha is None:
                continue
            change = intervention.delta(x, alpha.to(x.device), ctx)  # (B, T, d) float
            total = change if total is None else total + change
            rows = alpha.to(x.device) != 0
            on = rows if on is None else on | rows
        if total is None:
            return x  # nothing to do: the very same tensor
        steered = x + total.to(x.dtype)
        return torch.where(on.view(-1, *([1] * (x.ndim - 1))), steered, x)  # α = 0 rows: untouched bits

    return write
