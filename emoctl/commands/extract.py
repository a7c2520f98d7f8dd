"""``emoctl extract``: per-emotion mean-difference directions at the most discriminable hookpoints (CoCoEmo's
Eq. 6), its flags the fields of :class:`~emoctl.reports.layers.ExtractSettings`."""
from __future__ import annotations

from typing import Any

from emoctl.commands.settings_flags import flags_from
from emoctl.reports.layers import ExtractSettings, run_extract
from emoctl.steering.vectors import SteeringVectors


@flags_from(ExtractSettings)
def extract_directions(**settings: Any) -> SteeringVectors:
    """Read train-split emotional/neutral pairs at the layers `emoctl inspect layers` found most discriminable (or
    the hookpoints named) and write each emotion's mean difference there as a steering-vector folder
    (vectors.json + vectors.safetensors), which `--directions` of the steering commands reads."""
    return run_extract(ExtractSettings(**settings))
