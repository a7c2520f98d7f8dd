"""ESD's five emotion names: the one place they are spelled out (bottom layer, so every package may import it).

``ESD_EMOTIONS`` is in ESD's id-block order (Neutral 1-350, Angry 351-700, Happy 701-1050, Sad 1051-1400,
Surprise 1401-1750); it is also the label order of the emotion recognizers. ``NEUTRAL`` is the reference
condition that steering, pairing and the evaluation compare the other four against.
"""
from __future__ import annotations

__all__ = ["ESD_EMOTIONS", "NEUTRAL"]

NEUTRAL = "Neutral"
"""ESD's neutral emotion: the unsteered reference."""

ESD_EMOTIONS: tuple[str, ...] = (NEUTRAL, "Angry", "Happy", "Sad", "Surprise")
"""ESD's emotions, in ESD's id-block order."""
