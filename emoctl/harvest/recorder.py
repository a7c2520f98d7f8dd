"""``ActivationRecorder``: one hookpoint's rows per utterance, read while a backbone generates a batch.

During decoding every row of the batch runs every step, including rows that
have already stopped (their outputs are discarded).  The backbone marks the
rows still generating in ``HookContext.active``, and only those rows are
kept: utterance b gets one row per decode step in which it fed a real token,
i.e. one row per generated token (one fewer when ``max_new_tokens`` cut it
short, since the last sampled token is never fed back).

The hook only copies the (B, d) slice of each step; the per-utterance
selection happens once per batch, after generation, so the decode loop pays
one small copy per step and no host synchronisation.
"""
from __future__ import annotations

import re
from typing import Iterable

import torch

from emoctl.backbones.base import Backbone, Generation
from emoctl.backbones.hooks import HookContext, HookHandle, Phase
from emoctl.errors import ConfigError

HARVEST_PHASES = (Phase.PREFILL, Phase.DECODE)
"""Phases a generation runs; teacher-forced passes are not part of a harvest."""


def hookpoint_layer(hookpoint: str) -> int | None:
    """Block index of ``resid_pre.L``; None for hookpoints without one (``lm_out``)."""
    match = re.fullmatch(r"resid_pre\.(\d+)", hookpoint)
    return int(match.group(1)) if match else None


def check_hookpoint(backbone: Backbone, hookpoint: str) -> None:
    if hookpoint in backbone.hookpoints:
        return
    layer = hookpoint_layer(hookpoint)
    if layer is not None:
        raise ConfigError(f"hookpoint {hookpoint!r} is out of range: this backbone has {backbone.num_layers} blocks, "
                          f"so resid_pre.0 .. resid_pre.{backbone.num_layers - 1} (blocks counted from 0) or lm_out.")
    raise ConfigError(f"unknown hookpoint {hookpoint!r}; this backbone has resid_pre.0 .. "
                      f"resid_pre.{backbone.num_layers - 1} and lm_out.")


def parse_phases(phases: Iterable[str | Phase]) -> tuple[Phase, ...]:
    out = []
    for p in phases:
        try:
            phase = Phase(p)
        except ValueError:
            raise ConfigError(f"unknown phase {p!r}; a harvest reads prefill and/or decode.") from None
        if phase not in HARVEST_PHASES:
            raise ConfigError(f"phase {phase.value!r} does not run during generation; a harvest reads prefill "
                              "and/or decode.")
        if phase not in out:
            out.append(phase)
    if not out:
        raise ConfigError("phases is empty; give decode (the SAE paper's choice), prefill, or both.")
    return tuple(sorted(out, key=HARVEST_PHASES.index))  # prefill rows come before decode rows


class ActivationRecorder:
    """Attach to a backbone, ``start()`` before each ``generate``, ``rows(generation)`` after it."""

    def __init__(self, backbone: Backbone, hookpoint: str, phases: Iterable[str | Phase] = (Phase.DECODE,)) -> None:
        check_hookpoint(backbone, hookpoint)
        self.backbone, self.hookpoint, self.phases = backbone, hookpoint, parse_phases(phases)
        self._handle: HookHandle | None = None
        self._prefill: torch.Tensor | None = None    # (B, P, d)
        self._steps: list[torch.Tensor] = []         # S x (B, d)
        self._active: list[torch.Tensor | None] = []  # S x (B,) bool, None: all rows

    def attach(self) -> ActivationRecorder:
        if self._handle is None:
            self._handle = self.backbone.hooks.add_reader(self.hookpoint, self._read, phases=self.phases)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> ActivationRecorder:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def start(self) -> None:
        """Forget the previous batch."""
        self._prefill, self._steps, self._active = None, [], []

    def _read(self, x: torch.Tensor, ctx: HookContext) -> None:
        if ctx.phase is Phase.DECODE:
            self._steps.append(x[:, -1].detach().clone())  # (B, d)
            self._active.append(ctx.active)
        elif ctx.phase is Phase.PREFILL:
            self._prefill = x.detach().clone()  # (B, P, d), text left-padded

    def rows(self, generation: Generation) -> list[torch.Tensor]:
        """Per utterance of the batch, its (n_b, d) rows: prefill positions (if read), then decode steps."""
        B = len(generation.tokens)
        parts: list[list[torch.Tensor]] = [[] for _ in range(B)]
        if Phase.PREFILL in self.phases and self._prefill is not None:
            P = self._prefill.shape[1]
            for b, n in enumerate(generation.prefill_lengths):
                parts[b].append(self._prefill[b, P - n:])  # real positions are the last n (left padding)
        if Phase.DECODE in self.phases and self._steps:
            steps = torch.stack(self._steps)  # (S, B, d)
            ones = torch.ones(B, dtype=torch.bool, device=steps.device)
            active = torch.stack([ones if a is None else a.to(steps.device) for a in self._active])  # (S, B)
            for b in range(B):
                parts[b].append(steps[active[:, b], b])  # (n_b, d)
        d = self.backbone.hidden_size
        return [torch.cat(p) if p else torch.empty(0, d) for p in parts]
