"""What the adapter needs from upstream's ``indextts`` package, and the one repair it makes.

``indextts2-inference`` is installed with ``pip install --no-deps`` (the Makefile pins it), so its import is
checked here with an error that says how to install it.  The repair: with transformers 5.24 Hugging Face's
``generate`` hands the KV cache to ``prepare_inputs_for_generation`` as ``cache``, while upstream's
``GPT2InferenceModel`` reads ``past_key_values``; the cache is then never used and every step recomputes the
whole sequence (hook shapes grow 61, 62, 63, ... instead of staying at 1), and on 5.18-5.23 the missing
attention mask crashes the first step.  :func:`repair_cached_generate` restores upstream's cached path on an
instance, for the fidelity test and the benchmark that compare with upstream's own ``inference_speech``; the
adapter's own decode loop does not go through ``generate``.
"""
from __future__ import annotations

import types
from typing import Any

import torch

from emoctl.errors import ConfigError

UPSTREAM_PACKAGE = "indextts2-inference==2.1.1"
INSTALL_HINT = (f"install it with `make indextts2` (pip install --no-deps {UPSTREAM_PACKAGE} plus einops, omegaconf, "
                "sentencepiece, munch); it cannot be a plain dependency because its metadata pulls "
                "nemo-text-processing, which the GPT and the vocoder do not need.")


def require_indextts() -> None:
    """Fail with the install command when upstream's package is missing."""
    import importlib

    try:
        importlib.import_module("indextts.gpt.model_v2")
    except ImportError as err:
        raise ConfigError(f"the IndexTTS2 backbone needs upstream's `indextts` package ({err}); {INSTALL_HINT}"
                          ) from None


def repair_cached_generate(inference_model: Any) -> Any:
    """Make upstream's ``GPT2InferenceModel.generate`` use its KV cache under this transformers version.

    Wraps the instance's ``prepare_inputs_for_generation`` so that a cache passed as ``cache`` reaches
    upstream's code as ``past_key_values``, and a missing attention mask becomes all ones (what 5.17 did).
    Returns the same instance.
    """
    original = type(inference_model).prepare_inputs_for_generation

    def prepare(self: Any, input_ids: torch.Tensor, past_key_values: Any = None, **kwargs: Any) -> dict:
        if past_key_values is None:
            past_key_values = kwargs.pop("cache", None)
        if kwargs.get("attention_mask") is None:
            kwargs["attention_mask"] = torch.ones_like(input_ids)
        inputs = original(self, input_ids, past_key_values=past_key_values, **kwargs)
        inputs.pop("use_cache", None)
        inputs["use_cache"] = True
        return inputs

    inference_model.prepare_inputs_for_generation = types.MethodType(prepare, inference_model)
    return inference_model
