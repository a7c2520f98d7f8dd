"""emoctl: emotion control of LLM-based TTS by activation steering."""
from __future__ import annotations

__version__ = "0.1.0"
