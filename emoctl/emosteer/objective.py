"""Teacher-forced negative log-likelihood of target speech tokens under a backbone.

Shared by EmoShift (only the steering layer trains) and full fine-tuning, so
both optimise exactly the same number.  The mini TTS has factorized
envelope/F0 heads; its own ``lm.nll`` gives the exact per-token NLL without
building the 8193-way distribution.  Other backbones go through the generic
``teacher_forced`` logits.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch.nn import functional as F

from emoctl.backbones.base import Backbone, Prompt


class TokenNLL(NamedTuple):
    """Per-position NLL and where it counts."""

    nll: torch.Tensor  # (B, T') float32, 0 where invalid
    valid: torch.Tensor  # (B, T') bool: a real target (speech token or the final STOP)

    def mean(self) -> torch.Tensor:
        """Token-averaged cross-entropy, the papers' training loss."""
        return self.nll.sum() / self.valid.sum().clamp(min=1)


def teacher_forced_nll(backbone: Backbone, prompts: Sequence[Prompt], speech: torch.Tensor,
                       lengths: torch.Tensor) -> TokenNLL:
    """NLL of ``speech[b, :lengths[b]]`` and then STOP after each prompt, one forward pass."""
    from emoctl.backbones.mini_tts import MiniTTS
    from emoctl.backbones.mini_tts.lm import IGNORE_INDEX

    if isinstance(backbone, MiniTTS):
        out = backbone.teacher_forced_factors(prompts, speech, lengths)
        valid = out.targets != IGNORE_INDEX
        return TokenNLL(backbone.lm.nll(out.env_logp, out.f0_logp, out.targets).float(), valid)
    targets = [speech[b, :int(lengths[b])] for b in range(speech.shape[0])]
    out = backbone.teacher_forced(prompts, targets)
    nll = F.cross_entropy(out.logits.float().transpose(1, 2), out.targets, ignore_index=-100, reduction="none")
    return TokenNLL(nll, out.targets != -100)
