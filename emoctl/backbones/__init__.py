"""Backbones: the TTS models emoctl reads and steers, behind one interface."""
from __future__ import annotations

from emoctl.backbones.base import Backbone, Generation, Prompt, TeacherForcedOutput
from emoctl.backbones.hooks import HookContext, HookHandle, HookManager, Phase

__all__ = ["Backbone", "Generation", "HookContext", "HookHandle", "HookManager", "Phase", "Prompt",
           "TeacherForcedOutput"]
