"""Prompts in, waveforms out: batched generation plus vocoding, the step every evaluation shares.

Reports (emotionality, Table 1, attribution) and callbacks all need "speak
these prompts with this backbone, under whatever hooks are attached, with this
seed".  Doing it in one place keeps the sampling settings, the batching and the
seeding identical across them, which is what makes steered-vs-unsteered pairs
comparable: the same prompts in the same batches with the same seed see the
same sampling noise, so their difference is the intervention's.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from emoctl.backbones.base import Backbone, Prompt
from emoctl.backbones.sampling import Sampling
from emoctl.errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig(Sampling):
    """How the evaluations draw speech tokens: :class:`Sampling` with their defaults, plus the batch size."""

    temperature: float = 0.8
    """Softmax temperature (0 = greedy)."""
    top_k: int | None = 50
    """Keep only the k most likely tokens (None: all)."""
    max_new_tokens: int = 600
    """Hard cap on speech tokens per utterance (12 s at 50 Hz)."""
    batch_size: int = 25
    """Prompts generated together (part of a clip's identity: it sets the batch seed)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:  # checked with the rest, before any model is loaded
            raise ConfigError(f"invalid sampling settings: batch_size={self.batch_size} (>= 1).")

    def for_batch(self, seed: int) -> Sampling:
        """The backbone's settings for one batch: these, with the batch's seed."""
        values = {f.name: getattr(self, f.name) for f in fields(Sampling)}
        return Sampling(**{**values, "seed": seed})


@dataclass(frozen=True)
class Clip:
    """One synthesized utterance."""

    prompt: Prompt
    tokens: torch.Tensor  # (T,) int64 speech tokens
    wave: np.ndarray      # (n,) float32
    sample_rate: int
    finished: bool        # False when max_new_tokens cut it short


def synthesize(backbone: Backbone, prompts: Sequence[Prompt], *, seed: int = 0,
               sampling: SamplingConfig = SamplingConfig(), progress: bool | str = False) -> list[Clip]:
    """Generate and vocode every prompt, in order; batch b uses seed ``seed + b`` (independent of hooks)."""
    clips: list[Clip] = []
    batches = range(0, len(prompts), sampling.batch_size)
    desc = progress if isinstance(progress, str) else "synthesize"
    for b, start in enumerate(tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False)):
        batch = list(prompts[start:start + sampling.batch_size])
        out = backbone.generate(batch, sampling.for_batch(seed + b))
        for prompt, tokens, done in zip(batch, out.tokens, out.finished):
            if tokens.numel() == 0:  # stopped at once: an empty clip (probes give NaN, scorers skip it)
                clips.append(Clip(prompt, tokens, np.zeros(0, np.float32), backbone.sample_rate, bool(done)))
                continue
            wave, rate = backbone.vocode(tokens, prompt)
            clips.append(Clip(prompt, tokens, np.asarray(wave, dtype=np.float32), int(rate), bool(done)))
    return clips
