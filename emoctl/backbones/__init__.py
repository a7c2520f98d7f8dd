"""Backbones: the TTS models emoctl reads and steers, behind one interface."""
from __future__ import annotations

from emoctl.backbones.hooks import HookContext, HookHandle, HookManager, Phase

__all__ = ["HookContext", "HookHandle", "HookManager", "Phase"]
