"""Commands whose flags are the fields of a settings dataclass (``emoctl report table1``, ``report schedules``).

One place states each setting, its default and its meaning: the dataclass field and the docstring under it.
:func:`flags_from` gives the command that dataclass's fields as keyword parameters and their docstrings as the
``Args:`` block jsonargparse reads for ``--help``.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Callable

import docstring_parser


def flags_from(settings: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the command takes ``settings``' fields as flags, documented by the fields' docstrings."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        returns = typing.get_type_hints(command).get("return", inspect.Signature.empty)
        command.__signature__ = _signature(settings, returns)  # type: ignore[attr-defined]
        command.__doc__ = (command.__doc__ or "") + "\n" + _args_section(settings)
        return command

    return decorate


def _signature(settings: type, returns: Any) -> inspect.Signature:
    """The dataclass's fields as keyword parameters, with their resolved types and defaults (factories called)."""
    hints = typing.get_type_hints(settings)
    parameters = []
    for f in dataclasses.fields(settings):
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else inspect.Parameter.empty)
        parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=hints[f.name]))
    return inspect.Signature(parameters, return_annotation=returns)


def _args_section(settings: type) -> str:
    """A Google-style ``Args:`` block from the fields' docstrings (jsonargparse reads it for ``--help``)."""
    described: dict[str, str] = {}
    for cls in reversed(settings.__mro__):  # a subclass's settings keep the fields (and docs) of the base
        if dataclasses.is_dataclass(cls):
            for param in docstring_parser.parse_from_object(cls).params:
                described[param.arg_name] = " ".join((param.description or "").split())
    names = [f.name for f in dataclasses.fields(settings)]
    lines = ["", "Args:"] + [f"    {name}: {described[name]}" for name in names if name in described]
    return "\n".join(lines)
