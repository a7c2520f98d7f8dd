"""``emoctl calibrate``: α → P(target emotion) per method and emotion, its flags the fields of
:class:`~emoctl.reports.calibration.CalibrationSettings`.

The calibration it writes is the recognizer's reading on one backbone: recognizers are biased on synthetic
speech, so an intensity is "this recognizer's P(target)", not how much emotion a listener hears.
"""
from __future__ import annotations

from typing import Any

from emoctl.commands.settings_flags import flags_from
from emoctl.reports.calibration import CalibrationSettings, run_calibration


@flags_from(CalibrationSettings)
def calibrate(**settings: Any) -> list[dict]:
    """Speak Neutral prompts at a grid of α per method and emotion; fit P(target) over α (monotone, with bootstrap
    intervals, beside WER, SpkSIM and the finished rate); write calibration.json (read by --intensity) and
    calibration.md / .csv / .png to out_dir. P(target) is the recognizer's, which is biased on synthetic speech."""
    return run_calibration(CalibrationSettings(**settings))
