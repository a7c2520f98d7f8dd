"""``emoctl report schedules``: emotion switched on inside one utterance, its flags the fields of
:class:`~emoctl.reports.schedules.SchedulesSettings`."""
from __future__ import annotations

from typing import Any

from emoctl.commands.settings_flags import flags_from
from emoctl.reports.schedules import SchedulesSettings, run_schedules


@flags_from(SchedulesSettings)
def report_schedules(**settings: Any) -> list[dict]:
    """Switch from Neutral to an emotion at a time, cut each clip there, and score each segment against unsteered
    and whole-utterance steering (SER, F0, RMS, centroid, paired tests; F0 and RMS around the switch); writes
    schedules.md / .csv / .png and the rest to out_dir."""
    return run_schedules(SchedulesSettings(**settings))
