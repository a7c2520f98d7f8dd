"""Harvest: generate speech with a frozen backbone and store its activations at one hookpoint.

``HarvestModule`` generates, ``ActivationRecorder`` reads a hookpoint during
generation, ``HarvestSession`` writes a rank's utterances into the store; the
``ActivationHarvester`` callback and the ``HarvestedStore`` builder put them together.
"""
from __future__ import annotations

from emoctl.harvest.module import HarvestModule, HarvestOutput
from emoctl.harvest.prompts import GridPrompt, PromptBatch
from emoctl.harvest.recorder import ActivationRecorder
from emoctl.harvest.session import HarvestSession

__all__ = ["ActivationRecorder", "GridPrompt", "HarvestModule", "HarvestOutput", "HarvestSession", "PromptBatch"]
