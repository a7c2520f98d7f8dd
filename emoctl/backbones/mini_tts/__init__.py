"""The embedded mini TTS: a small UnifiedVoice-style GPT2 LM over WORLD speech tokens.

``MiniTTS.load(folder)`` gives a ready :class:`~emoctl.backbones.Backbone`;
``MiniTTSModule`` (in :mod:`emoctl.backbones.mini_tts.module`) trains one.
Imports stay light here: the codec and Lightning load only when used.
"""
from __future__ import annotations

from emoctl.backbones.mini_tts.backbone import EncodedPrompts, FactorizedTeacherForced, MiniTTS
from emoctl.backbones.mini_tts.lm import LMOutput, MiniTTSConfig, MiniTTSLM
from emoctl.backbones.mini_tts.text import CharTokenizer, TextTokenizer, tokenizer_from_config

__all__ = ["CharTokenizer", "EncodedPrompts", "FactorizedTeacherForced", "LMOutput", "MiniTTS", "MiniTTSConfig",
           "MiniTTSLM", "TextTokenizer", "tokenizer_from_config"]
