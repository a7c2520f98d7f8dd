"""``emoctl report table1``: the SAE seed's Table 1, its flags the fields of :class:`Table1Settings`.

The command's signature is built from the settings dataclass (:func:`~emoctl.commands.settings_flags.flags_from`),
so every field is a flag of the same name and its docstring is the flag's ``--help``.
"""
from __future__ import annotations

from typing import Any

from emoctl.commands.settings_flags import flags_from
from emoctl.reports.table1 import Table1Settings, run_table1


@flags_from(Table1Settings)
def table1(**settings: Any) -> list[dict]:
    """Run the SAE seed's Table 1 protocol and write table1.md / .csv, the α sweep CSV and figure."""
    return run_table1(Table1Settings(**settings))
