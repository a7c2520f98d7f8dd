"""What differs between the transformers versions emoctl runs on, in one place.

transformers 5.24 renamed ``GPT2Model.forward``'s ``past_key_values`` argument (and output field) to ``cache``;
the mini TTS and the IndexTTS2 adapter both call GPT-2 blocks with a KV cache, and the CosyVoice2 adapter its
Qwen2 model, so each asks here which name this installed version uses.
"""
from __future__ import annotations

import inspect
from functools import lru_cache


@lru_cache(maxsize=1)
def gpt2_cache_argument() -> str:
    """``"cache"`` (transformers >= 5.24) or ``"past_key_values"``: the name of GPT2Model's KV-cache argument
    and of the output field that returns it."""
    from transformers import GPT2Model

    return "cache" if "cache" in inspect.signature(GPT2Model.forward).parameters else "past_key_values"


@lru_cache(maxsize=1)
def qwen2_cache_argument() -> str:
    """The same rename for ``Qwen2Model.forward`` (CosyVoice2's LLM)."""
    from transformers import Qwen2Model

    return "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"
