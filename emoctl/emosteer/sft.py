"""``SFTModule``: full fine-tuning of the backbone on the EmoShift data, the paper's CosyVoice-SFT baseline.

Same batches, same teacher-forced loss (:func:`~emoctl.emosteer.objective.teacher_forced_nll`)
under each row's emotion condition, same step budget in the recipe; the
difference is what trains: every backbone parameter, with its dropout on.
The fine-tuned backbone is exported with its own ``save`` at fit end.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from emoctl.backbones.base import Backbone
from emoctl.training import OptimizerConfig, adamw_with_schedule, jsonable as _jsonable
from emoctl.backbones.loading import BackboneSpec
from emoctl.emosteer.objective import teacher_forced_nll
from emoctl.errors import ConfigError


class SFTModule(pl.LightningModule):
    """Fine-tunes all of a pretrained backbone by teacher forcing."""

    def __init__(
        self,
        backbone: BackboneSpec = BackboneSpec(),
        optimizer: OptimizerConfig = OptimizerConfig(lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01, warmup_steps=50,
                                                     min_lr_fraction=0.1),
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            backbone: The pretrained backbone (kind, checkpoint folder; path null: the kind's committed default).
            optimizer: AdamW and its warm-up and decay (fine-tuning: a peak rate lower than pretraining's).
            export_dir: Where the fine-tuned backbone goes; None: beside the checkpoints as ``sft_backbone``.
        """
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_config = optimizer  # hparams may hold it as a plain dict when LightningCLI builds the module
        self.backbone: Backbone = backbone.load()
        self.backbone.requires_grad_(True)
        self.exported: Path | None = None

    def parameter_report(self) -> dict[str, Any]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        backbone = sum(p.numel() for p in self.backbone.parameters())
        return {"trainable": trainable, "backbone": backbone, "ratio": trainable / max(backbone, 1)}

    def setup(self, stage: str) -> None:
        report = self.parameter_report()
        rank_zero_info(f"SFT: {report['trainable']:,} trainable parameters (the whole backbone).")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        prompts, speech, lengths = batch
        return prompts, speech.to(device, non_blocking=True), lengths.to(device, non_blocking=True)

    def _loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        prompts, speech, lengths = batch
        prompts = [p.with_emotion(self.backbone.condition_for(p.emotion_label)) for p in prompts]  # its own condition
        out = teacher_forced_nll(self.backbone, prompts, speech, lengths)
        return out.mean(), out.valid.sum()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss.detach(), batch_size=len(batch[0]))
        self.log("train/lr", torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"]), batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, tokens = self._loss(batch)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=int(tokens))

    def configure_optimizers(self) -> Any:
        return adamw_with_schedule(self.backbone.parameters(), self.optimizer_config,
                                   self.trainer.estimated_stepping_batches)

    export_name = "sft_backbone"

    def export(self, folder: Path, trainer: pl.Trainer) -> None:
        """The fine-tuned backbone in its own checkpoint layout (its ``save``), with the SFT settings."""
        save = getattr(self.backbone, "save", None)
        if not callable(save):
            raise ConfigError(f"SFT: the {self.backbone.kind} backbone has no save(), so the fine-tuned weights "
                              "cannot be exported; only the Lightning checkpoints hold them.")
        metadata = getattr(self.backbone, "metadata", None)
        if isinstance(metadata, dict):
            metadata["sft"] = {"hparams": _jsonable(dict(self.hparams)), "global_step": int(trainer.global_step),
                               "parameters": self.parameter_report()}
        save(folder)
