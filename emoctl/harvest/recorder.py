"""``ActivationRecorder``: one hookpoint's rows per utterance, read while a backbone generates a batch.

During decoding the hooked batch runs every step, including rows that have
already stopped (their outputs are discarded) and, under beam search, B x beams
rows that are reordered at every step.  The backbone's
:attr:`Generation.decode_rows` says, for each returned utterance, which row of
the hooked batch ran each of its decode steps along the hypothesis it
returned, so the recorder keeps exactly those states: one per generated token
that was fed back (one fewer than the tokens when ``max_new_tokens`` cut it
short, since the last sampled token is never fed).  Nothing past a stop token
and no discarded beam reaches the store, whatever the loop says about active
rows.

A hookpoint's tensor is (B, T, d), or (B, d) where the module sees one
position (CosyVoice's ``llm_decoder(y_pred[:, -1])``); a decode step's state
is the last position in the first case and the whole row in the second.

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
    """Block index of ``resid_pre.L`` or ``attn_out.L``; None for hookpoints without one (``lm_out``)."""
    match = re.fullmatch(r"(?:resid_pre|attn_out)\.(\d+)", hookpoint)
    return int(match.group(1)) if match else None


def check_hookpoint(backbone: Backbone, hookpoint: str) -> None:
    if hookpoint in backbone.hookpoints:
        return
    last = backbone.num_layers - 1
    if hookpoint_layer(hookpoint) is not None:
        raise ConfigError(f"hookpoint {hookpoint!r} is out of range: this backbone has {backbone.num_layers} blocks, "
                          f"so resid_pre.0 .. resid_pre.{last} or attn_out.0 .. attn_out.{last} (blocks counted "
                          "from 0) or lm_out.")
    raise ConfigError(f"unknown hookpoint {hookpoint!r}; this backbone has resid_pre.0 .. resid_pre.{last} (block "
                      f"inputs), attn_out.0 .. attn_out.{last} (attention outputs) and lm_out.")


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
        self._steps: list[torch.Tensor] = []         # S x (R, d), R = B x beams hooked rows

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
        self._prefill, self._steps = None, []

    def _read(self, x: torch.Tensor, ctx: HookContext) -> None:
        last = x if x.ndim == 2 else x[:, -1]  # (R, d): the state of the position this pass adds
        if ctx.phase is Phase.DECODE:
            if ctx.step != len(self._steps):
                raise RuntimeError(f"{self.hookpoint}: decode step {ctx.step} arrived after {len(self._steps)} "
                                   "recorded steps; call start() before each generate().")
            self._steps.append(last.detach().clone())
        elif ctx.phase is Phase.PREFILL:
            self._prefill = (x[:, None] if x.ndim == 2 else x).detach().clone()  # (R, P, d), text left-padded

    def rows(self, generation: Generation) -> list[torch.Tensor]:
        """Per utterance of the batch, its (n_b, d) rows: prefill positions (if read), then decode steps."""
        B = len(generation.tokens)
        parts: list[list[torch.Tensor]] = [[] for _ in range(B)]
        if Phase.PREFILL in self.phases and self._prefill is not None:
            P = self._prefill.shape[1]
            for b, n in enumerate(generation.prefill_lengths):
                # beams of a prompt share its prefill; real positions are the last n (left padding)
                parts[b].append(self._prefill[b * generation.beams, max(P - n, 0):])
        if Phase.DECODE in self.phases:
            if len(generation.decode_rows) != B:
                raise RuntimeError(f"the backbone returned {B} utterances but decode_rows for "
                                   f"{len(generation.decode_rows)}; its generate() breaks the Backbone contract.")
            steps = torch.stack(self._steps) if self._steps else None  # (S, R, d)
            for b, which in enumerate(generation.decode_rows):
                n = int(which.numel())
                if n == 0:
                    continue
                if steps is None or n > steps.shape[0]:
                    raise RuntimeError(f"utterance {b} ran {n} decode steps but the hook on {self.hookpoint} saw "
                                       f"{0 if steps is None else steps.shape[0]}; the backbone did not declare "
                                       "its decode phase on every step.")
                at = (generation.decode_steps[b] if generation.decode_steps else torch.arange(n)).to(steps.device)
                if int(at[-1]) >= steps.shape[0]:
                    raise RuntimeError(f"utterance {b} was fed at decode step {int(at[-1])} but the hook on "
                                       f"{self.hookpoint} saw {steps.shape[0]}; the backbone did not declare its "
                                       "decode phase on every step.")
                parts[b].append(steps[at, which.to(steps.device)])  # (n, d)
        d = self.backbone.hidden_size
        return [torch.cat(p) if p else torch.empty(0, d) for p in parts]
