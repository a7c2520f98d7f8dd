"""A LightningModule that probes the committed mini backbone with and without its emotion condition, for tests of
the probe callback and of the scorers it runs."""
from __future__ import annotations

import lightning.pytorch as pl
import torch

from emoctl.backbones import Prompt
from emoctl.backbones.loading import load_backbone
from emoctl.synthesis import synthesize


class ConditionProbe(pl.LightningModule):
    """The real mini backbone, probed with and without its emotion condition (no training)."""

    def __init__(self) -> None:
        super().__init__()
        self.tts = load_backbone("mini_tts")
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def probe_settings(self) -> list[str]:
        return ["neutral_condition", "emotion_condition"]

    def probe_synthesize(self, prompts, setting, seed):
        self.calls += 1
        if setting == "neutral_condition":
            prompts = [Prompt(p.text, p.speaker, "Neutral", p.utt_id) for p in prompts]
        return [(c.wave, c.sample_rate) for c in synthesize(self.tts, prompts, seed=seed)]

    def training_step(self, batch, batch_idx):
        return (self.dummy * 0).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD([self.dummy], lr=0.0)
