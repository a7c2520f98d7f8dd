"""Teacher-forced negative log-likelihood of target speech tokens under a backbone.

Shared by EmoShift (only the steering layer trains) and full fine-tuning, so
both optimise exactly the same number.  The backbone computes it
(``Backbone.teacher_forced_nll``): generically from the ``teacher_forced``
logits, or in a cheaper exact form of its own (the mini TTS's factorized
envelope/F0 heads never build the 8193-way distribution).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

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
    nll, valid = backbone.teacher_forced_nll(prompts, speech, lengths)
    return TokenNLL(nll, valid)
