"""What a harvest batch is made of: prompts that carry their store labels, and the batch's identity."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from emoctl.backbones.base import Prompt
from emoctl.backbones.conditions import VoiceClip
from emoctl.store.spec import UtteranceMeta


@dataclass(frozen=True)
class GridPrompt(Prompt):
    """A prompt with the labels the activation store keeps for its utterance."""

    text_id: str = ""
    condition: str = ""
    """How it is produced, e.g. ``prompt=Angry``."""
    pair_key: str = ""
    """Shared by the prompts of one text and speaker (``speaker|text_id``)."""
    label: str = ""
    """The corpus emotion the store files the utterance under (empty: the condition's key). A backbone asked by
    vector or instruction still stores ESD's name, so selection pairs emotions the same way on every backbone."""

    def meta(self, speech_tokens: torch.Tensor | None = None) -> UtteranceMeta:
        """The store's record of this prompt; with the tokens it generated, enough to speak it again."""
        if not self.utt_id:
            raise ValueError("a GridPrompt needs an utt_id to be stored")
        return UtteranceMeta(utt_id=self.utt_id, text_id=self.text_id, speaker=self.speaker,
                             emotion=self.label or self.emotion_key, condition=self.condition,
                             pair_key=self.pair_key, text=self.text,
                             voice_clip=self.voice.path if isinstance(self.voice, VoiceClip) else "",
                             speech_tokens=None if speech_tokens is None else tuple(speech_tokens.tolist()))


class PromptBatch(NamedTuple):
    """One batch of a fixed partition: its prompts, its index in the partition and its seed key."""

    prompts: list[GridPrompt]
    index: int
    key: str
    """The first utt_id: the batch's identity, the same on every rank and in every resumed run."""
