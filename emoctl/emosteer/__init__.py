"""EmoShift (arXiv 2601.22873): a learnable per-emotion linear shift of a frozen TTS's output embedding.

``EmoSteer`` is the layer, :func:`steer` attaches it to a backbone for
generation, ``EmoShiftModule`` (in :mod:`emoctl.emosteer.module`) trains it,
``SFTModule`` (in :mod:`emoctl.emosteer.sft`) is the full fine-tuning baseline.
"""
from __future__ import annotations

from emoctl.emosteer.layer import EmoSteer, EmoSteerConfig, EmotionMix
from emoctl.emosteer.steer import GENERATION_PHASES, TRAINING_PHASES, EmoSteerShift, steer

__all__ = ["EmoSteer", "EmoSteerConfig", "EmoSteerShift", "EmotionMix", "GENERATION_PHASES", "TRAINING_PHASES",
           "steer"]
