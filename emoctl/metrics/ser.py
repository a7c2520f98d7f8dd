"""The speech-emotion recognizer interface behind SER accuracy and Emo-SIM.

Two implementations share it: the embedded recognizer trained on the mini
corpus (no download, what tests and CI use) and emotion2vec loaded through
funasr from a local model directory (what the papers use).  Both report
probabilities over ESD's five emotions and an utterance embedding, so every
metric is computed the same way whichever one a report names.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from emoctl.emotions import ESD_EMOTIONS  # every recognizer reports probabilities in this order


@dataclass(frozen=True)
class SERResult:
    """What a recognizer says about a batch of clips."""

    probs: torch.Tensor       # (N, len(labels)) float32, rows sum to 1
    embeddings: torch.Tensor  # (N, D) float32 utterance embeddings (for Emo-SIM)
    labels: tuple[str, ...]   # column names of ``probs``

    def predicted(self) -> list[str]:
        """The most probable label of each clip."""
        return [self.labels[i] for i in self.probs.argmax(dim=1).tolist()]

    def prob_of(self, emotion: str) -> torch.Tensor:
        """(N,) probability of one label."""
        return self.probs[:, self.labels.index(emotion)]


class EmotionRecognizer(ABC):
    """Maps waveforms to emotion probabilities over :data:`ESD_EMOTIONS` and utterance embeddings."""

    #: Short name written into every report that uses this recognizer (e.g. "mini-ser", "emotion2vec_plus_large").
    name: str
    labels: tuple[str, ...] = ESD_EMOTIONS

    @abstractmethod
    def __call__(self, waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int | Sequence[int]) -> SERResult:
        """Recognize a batch of mono clips (any lengths; resampled as the model needs)."""
