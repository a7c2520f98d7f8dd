"""Phase-gated read and write hooks on a backbone's named hookpoints.

A hookpoint is the *input* of a module: ``resid_pre.L`` is the residual
entering transformer block L (blocks counted from 0), ``lm_out`` the hidden
state entering the speech-token head; or the *output* of one: ``attn_out.L``
is what block L's attention adds to the residual, before the add (the first
element where the attention module returns a tuple).  Harvesting reads it;
steering (EmoShift, SAE features, CoCoEmo-style directions) rewrites it.

An autoregressive TTS model runs three kinds of forward pass: the *prefill*
over the prompt, one *decode* step per generated token, and, in some systems
(IndexTTS2's ``infer_v2``), a *teacher-forced* pass over the finished tokens.
The SAE seed trains only on decode-phase states, so every hook names the
phases it fires in (decode only by default), and the backbone declares the
phase it is in with :meth:`HookManager.phase`.

No torch hook is registered on a module until a hook is attached to it, and
the last removal unregisters it, so an unhooked backbone pays nothing.
"""
from __future__ import annotations

import enum
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from emoctl.errors import ConfigError


class Phase(str, enum.Enum):
    """Which kind of forward pass the backbone is running."""

    PREFILL = "prefill"
    DECODE = "decode"
    TEACHER_FORCED = "teacher_forced"


@dataclass(frozen=True)
class HookContext:
    """What a hook is told besides the tensor: where and in which phase it fires, and which rows are real."""

    hookpoint: str
    phase: Phase | None
    step: int  # decode step counter (0 for prefill and teacher-forced passes)
    active: torch.Tensor | None  # (B,) bool: rows still generating; None when all are (or the loop cannot say)
    beams: int = 1  # hooked rows per prompt: row r belongs to prompt r // beams (beam search keeps this order)

    def per_row(self, values: torch.Tensor, batch: int, what: str) -> torch.Tensor:
        """Expand ``values`` (1,) or (P,), one per prompt, to the hooked rows (batch,): a prompt's value is
        repeated over its beams (rows are reordered within a prompt at every beam step, never across)."""
        n = values.shape[0]
        if n == 1:
            return values.expand(batch, *values.shape[1:])
        if n * self.beams == batch:
            return values.repeat_interleave(self.beams) if self.beams > 1 else values
        raise ConfigError(f"{what} has {n} entries but hookpoint {self.hookpoint} runs {batch} rows "
                          f"({batch // max(self.beams, 1)} prompt(s) x {self.beams} beam(s)); give one value, "
                          "or one per prompt.")


ReadHook = Callable[[torch.Tensor, HookContext], None]
"""Sees the hookpoint's tensor, (B, T, d), or (B, d) where the module takes one position (CosyVoice's
``llm_decoder(y_pred[:, -1])``); must not modify it."""
WriteHook = Callable[[torch.Tensor, HookContext], torch.Tensor]
"""Returns the tensor that replaces the hookpoint's input, same shape and dtype."""


@dataclass(eq=False)
class _Hook:
    fn: Callable[..., Any]
    writes: bool
    phases: frozenset[Phase] | None  # None: every pass, phase known or not


class HookHandle:
    """Returned by ``add_reader``/``add_writer``; ``remove()`` detaches the hook (also as a context manager)."""

    def __init__(self, manager: HookManager, hookpoint: str, hook: _Hook) -> None:
        self._manager, self._hookpoint, self._hook = manager, hookpoint, hook

    def remove(self) -> None:
        self._manager._remove(self._hookpoint, self._hook)

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class HookManager:
    """Attaches hooks to the input (or, for ``outputs``, the output) of named modules and runs them in the order
    they were added."""

    def __init__(self, hookpoints: Mapping[str, nn.Module], outputs: Iterable[str] = ()) -> None:
        self._modules = dict(hookpoints)
        self._outputs = frozenset(outputs)
        unknown = sorted(self._outputs - set(self._modules))
        if unknown:
            raise ValueError(f"output hookpoints {unknown} name no module of {list(self._modules)}")
        self._hooks: dict[str, list[_Hook]] = {}
        self._torch_handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._phase: Phase | None = None
        self._step = 0
        self._active: torch.Tensor | None = None
        self._beams = 1

    @property
    def hookpoints(self) -> list[str]:
        return list(self._modules)

    @property
    def current_phase(self) -> Phase | None:
        return self._phase

    def has_hooks(self, hookpoint: str | None = None) -> bool:
        return bool(self._hooks.get(hookpoint)) if hookpoint else any(self._hooks.values())

    # -------------------------------------------------------------- attach
    def add_reader(self, hookpoint: str, fn: ReadHook, phases: Iterable[Phase | str] | None = (Phase.DECODE,)
                   ) -> HookHandle:
        """Call ``fn(x, ctx)`` with the hookpoint's input during the given phases (None: all passes)."""
        return self._add(hookpoint, _Hook(fn, writes=False, phases=_phase_set(phases)))

    def add_writer(self, hookpoint: str, fn: WriteHook, phases: Iterable[Phase | str] | None = (Phase.DECODE,)
                   ) -> HookHandle:
        """Replace the hookpoint's input by ``fn(x, ctx)`` during the given phases (None: all passes)."""
        return self._add(hookpoint, _Hook(fn, writes=True, phases=_phase_set(phases)))

    def clear(self) -> None:
        for hookpoint in list(self._hooks):
            for hook in list(self._hooks[hookpoint]):
                self._remove(hookpoint, hook)

    # --------------------------------------------------------------- phase
    @contextmanager
    def phase(self, phase: Phase | str, step: int = 0, active: torch.Tensor | None = None, beams: int = 1
              ) -> Iterator[None]:
        """Declare the pass the backbone is about to run; hooks gated to other phases stay silent.

        ``beams``: hooked rows per prompt (prompt-major), so per-prompt settings reach every beam."""
        previous = (self._phase, self._step, self._active, self._beams)
        self._phase, self._step, self._active, self._beams = Phase(phase), step, active, beams
        try:
            yield
        finally:
            self._phase, self._step, self._active, self._beams = previous

    # ------------------------------------------------------------ internal
    def _add(self, hookpoint: str, hook: _Hook) -> HookHandle:
        if hookpoint not in self._modules:
            raise ConfigError(
                f"unknown hookpoint {hookpoint!r}; this backbone has: {', '.join(self._modules)}."
            )
        hooks = self._hooks.setdefault(hookpoint, [])
        if not hooks:
            module = self._modules[hookpoint]
            self._torch_handles[hookpoint] = (
                module.register_forward_hook(self._make_post_hook(hookpoint)) if hookpoint in self._outputs
                else module.register_forward_pre_hook(self._make_pre_hook(hookpoint), with_kwargs=True))
        hooks.append(hook)
        return HookHandle(self, hookpoint, hook)

    def _remove(self, hookpoint: str, hook: _Hook) -> None:
        hooks = self._hooks.get(hookpoint, [])
        if hook in hooks:
            hooks.remove(hook)
        if not hooks and hookpoint in self._torch_handles:
            self._torch_handles.pop(hookpoint).remove()
            self._hooks.pop(hookpoint, None)

    def _due(self, hookpoint: str) -> list[_Hook]:
        """The hooks of ``hookpoint`` that fire in the current phase, in the order they were added."""
        return [h for h in self._hooks.get(hookpoint, ()) if h.phases is None or self._phase in h.phases]

    def _run(self, hookpoint: str, due: list[_Hook], x: torch.Tensor) -> torch.Tensor | None:
        """The ``due`` hooks on ``x``, in order; the rewritten tensor, or None if none wrote."""
        ctx = HookContext(hookpoint, self._phase, self._step, self._active, self._beams)
        changed = False
        for hook in due:
            if hook.writes:
                new = hook.fn(x, ctx)
                if new.shape != x.shape:
                    raise RuntimeError(f"write hook on {hookpoint} changed shape {tuple(x.shape)} -> "
                                       f"{tuple(new.shape)}")
                x, changed = new, True
            else:
                hook.fn(x, ctx)
        return x if changed else None

    def _make_pre_hook(self, hookpoint: str) -> Callable[..., Any]:
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            due = self._due(hookpoint)
            if not due:
                return None
            in_kwargs = not args
            key = next((k for k in _INPUT_KWARGS if k in kwargs), None) if in_kwargs else None
            if in_kwargs and key is None:
                raise RuntimeError(f"cannot find the input tensor of hookpoint {hookpoint} in {list(kwargs)}")
            x = self._run(hookpoint, due, kwargs[key] if in_kwargs else args[0])
            if x is None:
                return None
            if in_kwargs:
                return args, {**kwargs, key: x}
            return (x, *args[1:]), kwargs

        return pre_hook

    def _make_post_hook(self, hookpoint: str) -> Callable[..., Any]:
        def post_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            due = self._due(hookpoint)
            if not due:
                return None
            first = output[0] if isinstance(output, tuple) else output
            x = self._run(hookpoint, due, first)
            if x is None:
                return None
            return (x, *output[1:]) if isinstance(output, tuple) else x

        return post_hook


_INPUT_KWARGS = ("hidden_states", "input", "x")  # how blocks and heads name their first input


def _phase_set(phases: Iterable[Phase | str] | None) -> frozenset[Phase] | None:
    if phases is None:
        return None
    try:
        return frozenset(Phase(p) for p in phases)
    except ValueError as err:
        raise ConfigError(f"{err}; phases are {', '.join(p.value for p in Phase)}.") from None
