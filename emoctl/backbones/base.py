"""The interface every TTS backbone implements.

emoctl's methods touch a backbone in four places only: its hookpoints (read
for harvest, written for steering), batched autoregressive generation of
speech tokens (prefill and decode phases kept apart so hooks can tell them
apart), a teacher-forced forward returning speech-token logits (to train
steering layers such as EmoShift), and a vocoder from tokens to audio.  The
embedded mini TTS, IndexTTS2 and CosyVoice adapters all implement this class.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from emoctl.backbones.hooks import HookManager


@dataclass(frozen=True)
class Prompt:
    """One utterance to synthesize: what to say, in whose voice, under which emotion condition."""

    text: str
    speaker: str
    emotion: str
    utt_id: str | None = None


@dataclass
class Generation:
    """Speech tokens generated for a batch of prompts, one 1-D tensor per prompt (stop token removed)."""

    tokens: list[torch.Tensor]
    prefill_lengths: list[int]  # prompt positions per utterance (the prefill phase)
    finished: list[bool] = field(default_factory=list)  # False where max_new_tokens cut it short


@dataclass
class TeacherForcedOutput:
    """Logits over the speech-token vocabulary at every target position, and the targets they predict."""

    logits: torch.Tensor  # (B, T, V)
    targets: torch.Tensor  # (B, T) int64; -100 where there is nothing to predict (padding)

    def loss(self) -> torch.Tensor:
        """Token-averaged cross-entropy, the training loss of the steering papers."""
        return nn.functional.cross_entropy(self.logits.flatten(0, 1).float(), self.targets.flatten(),
                                           ignore_index=-100)


class Backbone(nn.Module, ABC):
    """A frozen LLM-TTS seen through emoctl's four touch points."""

    #: Identifier written into activation-store manifests (name plus checkpoint digest).
    backbone_id: str
    hidden_size: int
    num_layers: int
    vocab_size: int
    sample_rate: int
    hooks: HookManager

    @property
    def hookpoints(self) -> list[str]:
        """``resid_pre.0`` … ``resid_pre.{num_layers-1}`` (input of block L, counted from 0) and ``lm_out``."""
        return self.hooks.hookpoints

    @property
    @abstractmethod
    def speakers(self) -> list[str]:
        """Speaker names this backbone can voice."""

    @property
    @abstractmethod
    def emotions(self) -> list[str]:
        """Emotion conditions it accepts (e.g. ESD's Neutral, Angry, Happy, Sad, Surprise)."""

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int = 1000, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None) -> Generation:
        """Sample speech tokens for a batch, declaring each forward's phase to :attr:`hooks`."""

    @abstractmethod
    def teacher_forced(self, prompts: Sequence[Prompt], targets: Sequence[torch.Tensor]) -> TeacherForcedOutput:
        """One forward pass over prompts plus target tokens (phase ``teacher_forced``)."""

    @abstractmethod
    def vocode(self, tokens: torch.Tensor, speaker: str) -> tuple[np.ndarray, int]:
        """Waveform (float32, mono) and sample rate for one utterance's speech tokens."""
