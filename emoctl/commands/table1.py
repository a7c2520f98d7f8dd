"""``emoctl report table1``: the SAE seed's Table 1, its flags the fields of :class:`Table1Settings`.

The command's signature is built from the settings dataclass, so every field is a flag of the same name and
its docstring is the flag's ``--help`` (one place states each setting, its default and its meaning).
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

import docstring_parser

from emoctl.reports.table1 import Table1Settings, run_table1


def table1(**settings: Any) -> list[dict]:
    """Run the SAE seed's Table 1 protocol and write table1.md / .csv, the α sweep CSV and figure."""
    return run_table1(Table1Settings(**settings))


def _signature(settings: type) -> inspect.Signature:
    """The dataclass's fields as keyword parameters, with their resolved types and defaults (factories called)."""
    hints = typing.get_type_hints(settings)
    parameters = []
    for f in dataclasses.fields(settings):
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else inspect.Parameter.empty)
        parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=hints[f.name]))
    return inspect.Signature(parameters, return_annotation=list[dict])


def _args_section(settings: type) -> str:
    """A Google-style ``Args:`` block from the fields' docstrings (jsonargparse reads it for ``--help``)."""
    lines = ["", "Args:"]
    for param in docstring_parser.parse_from_object(settings).params:
        lines.append(f"    {param.arg_name}: {' '.join((param.description or '').split())}")
    return "\n".join(lines)


table1.__signature__ = _signature(Table1Settings)  # type: ignore[attr-defined]
table1.__doc__ = (table1.__doc__ or "") + "\n" + _args_section(Table1Settings)
