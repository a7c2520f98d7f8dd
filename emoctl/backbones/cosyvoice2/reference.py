"""Upstream's own CosyVoice2 decode loop, as the fidelity tests and ``emoctl bench cosyvoice --kind cosyvoice2``
run it: ``Qwen2LM.inference`` fed as ``frontend_instruct2`` feeds it (the instruction and ``<|endofprompt|>``
as prompt text, no prompt speech), under ``torch.manual_seed(seed)``.

Upstream's loop hands ``Qwen2Encoder.forward_one_step`` a (1, 1) mask at every cached step.  transformers 4 read
it as "attend to everything"; transformers 5 pads a short mask with False, so every step then attends to the
first position only.  ``full_mask`` (the default) hands it a mask over every cached position instead, the
loop's meaning; ``full_mask=False`` runs the loop exactly as written.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from emoctl.backbones.base import Prompt


@contextlib.contextmanager
def full_length_step_mask(encoder: Any) -> Iterator[None]:
    """Within the block, ``encoder.forward_one_step`` (upstream's ``Qwen2Encoder``) sees a mask over the cached
    and the new positions, whatever mask its caller passes."""
    original = encoder.forward_one_step

    def one_step(xs: torch.Tensor, masks: torch.Tensor, cache: Any = None) -> Any:
        past = cache.get_seq_length() if cache is not None else 0
        return original(xs, torch.ones(1, 1, past + xs.shape[1], dtype=torch.bool, device=xs.device), cache)

    encoder.forward_one_step = one_step
    try:
        yield
    finally:
        del encoder.forward_one_step


def upstream_inference(backbone: Any, prompt: Prompt, seed: int, full_mask: bool = True,
                       max_tokens: int | None = None) -> list[int]:
    """The speech tokens upstream's ``Qwen2LM.inference`` draws for ``prompt`` under ``torch.manual_seed(seed)``
    (at most ``max_tokens`` of them), on ``backbone``'s own modules."""
    device = backbone.device
    ids = backbone.text_ids(prompt.text)
    instruction = backbone.text_ids(prompt.emotion.text + "<|endofprompt|>")

    def as_tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor([values], dtype=torch.int32, device=device)

    mask = full_length_step_mask(backbone.llm.llm) if full_mask else contextlib.nullcontext()
    with mask:
        torch.manual_seed(seed)
        loop = backbone.llm.inference(
            text=as_tensor(ids), text_len=torch.tensor([len(ids)], dtype=torch.int32, device=device),
            prompt_text=as_tensor(instruction),
            prompt_text_len=torch.tensor([len(instruction)], dtype=torch.int32, device=device),
            prompt_speech_token=torch.zeros(1, 0, dtype=torch.int32, device=device),
            prompt_speech_token_len=torch.tensor([0], dtype=torch.int32, device=device),
            embedding=torch.zeros(0, 192, device=device))
        tokens = []
        for token in loop:
            tokens.append(int(token))
            if max_tokens is not None and len(tokens) >= max_tokens:
                break
        return tokens
