"""``MiniSERModule``: trains the embedded speech-emotion recognizer with Lightning.

Batches are :class:`data_modules.ser_corpus.SERBatch` (padded log-mels,
lengths, labels, speakers, round-trip flags).  Cross-entropy with label
smoothing; AdamW with linear warm-up then cosine decay; light SpecAugment
(time and frequency masks) and a random window of each clip in training
only.  Validation logs accuracy on
original and codec round-trip clips separately.

When ``fit`` ends, global rank 0 evaluates the test split (both conditions:
accuracy, confusion matrices, per-speaker accuracy) and writes the
recognizer with :func:`~emoctl.metrics.ser_mini.save_mini_ser` into
``export_dir`` (default ``<log dir>/ser_mini``), with ``training.json`` (the
corpus settings and seed, codec digest, recipe, wall time and the test
numbers) and a Markdown + CSV report beside it.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.nn import functional as F

from emoctl.training import OptimizerConfig, adamw_with_schedule, jsonable as _jsonable, read_recipe as _read_recipe
from emoctl.errors import ConfigError
from emoctl.metrics.ser_mini import LogMelConfig, MiniSERConfig, MiniSERNet, parameter_count, save_mini_ser

torch.serialization.add_safe_globals([MiniSERConfig, LogMelConfig])  # hparams in checkpoints; see emoctl.sae.module


class MiniSERModule(pl.LightningModule):
    """The mini SER network, trained by cross-entropy over the corpus's emotions."""

    def __init__(
        self,
        model: MiniSERConfig = MiniSERConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(lr=3e-3, weight_decay=0.01, warmup_steps=50, min_lr_fraction=0.02),
        label_smoothing: float = 0.05,
        time_masks: int = 2,
        max_time_mask: int = 20,
        freq_masks: int = 1,
        max_freq_mask: int = 8,
        train_crop_frames: int | None = 160,
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            model: Shape of the recognizer (front end, conv blocks, embedding size, labels).
            optimizer: AdamW (decay on conv and linear weights) and its warm-up and decay.
            label_smoothing: Cross-entropy label smoothing.
            time_masks: SpecAugment time masks per training clip.
            max_time_mask: Longest time mask, in 10 ms frames.
            freq_masks: SpecAugment frequency masks per training clip.
            max_freq_mask: Widest frequency mask, in mel bands.
            train_crop_frames: Train on one random window of this many 10 ms frames per clip (cheaper steps and
                no cue from utterance length); None: whole clips.  Validation and test see whole clips.
            export_dir: Where the trained recognizer folder goes; None: ``<log dir>/ser_mini``.
        """
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"need 0 <= label_smoothing < 1; got {label_smoothing}.")
        self.save_hyperparameters()
        self.optimizer_config = optimizer  # hparams may hold it as a plain dict when LightningCLI builds the module
        self.net = MiniSERNet(model)
        self.exported: Path | None = None
        self.test_report: dict[str, Any] | None = None
        self._fit_start = 0.0

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Check the data's front end and labels against the model's; take the feature statistics once."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        config = self.net.config
        if getattr(datamodule, "features", config.features) != config.features:
            raise ConfigError(f"data.features {datamodule.features} differ from model.features {config.features}; "
                              "set both to the same values in the recipe.")
        if tuple(getattr(datamodule, "labels", config.labels)) != tuple(config.labels):
            raise ConfigError(f"data.labels {tuple(datamodule.labels)} differ from model.labels {config.labels}; "
                              "they must list the same emotions in the same order.")
        if stage == "fit" and not self._normalization_set() and hasattr(datamodule, "feature_stats"):
            self.net.set_normalization(*datamodule.feature_stats())

    def _normalization_set(self) -> bool:
        """False while the net still has its initial (0, 1) feature statistics."""
        return bool(self.net.feature_mean.any()) or not bool((self.net.feature_std == 1).all())

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch._replace(logmel=batch.logmel.to(device), lengths=batch.lengths.to(device),
                              labels=batch.labels.to(device), roundtrip=batch.roundtrip.to(device))

    # --------------------------------------------------------------- the math
    def _spec_augment(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Zero random time spans and mel bands (in normalized units, zero is the training mean)."""
        hp = self.hparams
        b, m, t = x.shape
        x = (x - self.net.feature_mean[:, None]) / self.net.feature_std[:, None]
        keep = torch.ones_like(x, dtype=torch.bool)
        frames = torch.arange(t, device=x.device)
        bands = torch.arange(m, device=x.device)
        for _ in range(hp.time_masks):
            width = torch.randint(0, hp.max_time_mask + 1, (b, 1), device=x.device)
            start = (torch.rand(b, 1, device=x.device) * (lengths[:, None] - width).clamp(min=1)).long()
            keep &= ~((frames >= start) & (frames < start + width))[:, None, :]
        for _ in range(hp.freq_masks):
            width = torch.randint(0, hp.max_freq_mask + 1, (b, 1), device=x.device)
            start = (torch.rand(b, 1, device=x.device) * (m - width)).long()
            keep &= ~((bands >= start) & (bands < start + width))[:, :, None]
        x = x * keep
        return x * self.net.feature_std[:, None] + self.net.feature_mean[:, None]

    def _random_crop(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One random window of ``train_crop_frames`` per clip: (B, M, T) -> (B, M, W), lengths min(len, W)."""
        width = self.hparams.train_crop_frames
        if width is None or x.shape[-1] <= width:
            return x, lengths
        start = (torch.rand(len(lengths), device=x.device) * (lengths - width + 1).clamp(min=1)).long()  # (B,)
        index = (start[:, None] + torch.arange(width, device=x.device)).clamp(max=x.shape[-1] - 1)   # (B, W)
        return x.gather(2, index[:, None, :].expand(-1, x.shape[1], -1)), lengths.clamp(max=width)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        logmel, lengths = self._random_crop(batch.logmel, batch.lengths)
        logmel = self._spec_augment(logmel, lengths)
        logits, _ = self.net(logmel, lengths)
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=self.hparams.label_smoothing)
        acc = (logits.argmax(-1) == batch.labels).float().mean()
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log_dict({"train/loss": loss.detach(), "train/acc": acc, "train/lr": torch.tensor(lr)},
                      batch_size=len(batch.labels))
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=len(batch.labels))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        logits, _ = self.net(batch.logmel, batch.lengths)
        correct = (logits.argmax(-1) == batch.labels).float()
        loss = F.cross_entropy(logits, batch.labels, reduction="none")
        self.log("val/loss", loss.mean(), on_epoch=True, sync_dist=True, batch_size=len(correct))
        self.log("val/acc", correct.mean(), on_epoch=True, sync_dist=True, prog_bar=True, batch_size=len(correct))
        for name, rows in (("original", ~batch.roundtrip), ("roundtrip", batch.roundtrip)):
            n = int(rows.sum())
            if n:
                self.log(f"val/acc_{name}", correct[rows].mean(), on_epoch=True, sync_dist=True, batch_size=n)

    # -------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        return adamw_with_schedule(self.net.parameters(), self.optimizer_config, self.trainer.estimated_stepping_batches)

    # ----------------------------------------------------------------- export
    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    @torch.no_grad()
    def evaluate(self, items: Any, batch_size: int = 128) -> dict[str, Any]:
        """Accuracy, confusion matrix and per-speaker accuracy of ``items`` (SERItems), per condition."""
        was_training = self.net.training
        self.net.eval()
        labels = list(self.net.config.labels)
        preds, truth, speakers, roundtrip = [], [], [], []
        order = sorted(range(len(items)), key=lambda i: items.lengths[i])  # less padding
        for start in range(0, len(order), batch_size):
            batch = items[order[start:start + batch_size]]
            logits, _ = self.net(batch.logmel.to(self.device), batch.lengths.to(self.device))
            preds += logits.argmax(-1).tolist()
            truth += batch.labels.tolist()
            speakers += batch.speakers
            roundtrip += batch.roundtrip.tolist()
        self.net.train(was_training)
        report: dict[str, Any] = {"labels": labels}
        for name, flag in (("original", False), ("roundtrip", True)):
            rows = [i for i, r in enumerate(roundtrip) if r == flag]
            if not rows:
                continue
            confusion = [[0] * len(labels) for _ in labels]  # [true][predicted]
            per_speaker: dict[str, list[int]] = {}
            for i in rows:
                confusion[truth[i]][preds[i]] += 1
                per_speaker.setdefault(speakers[i], [0, 0])
                per_speaker[speakers[i]][0] += int(preds[i] == truth[i])
                per_speaker[speakers[i]][1] += 1
            report[name] = {
                "clips": len(rows), "accuracy": sum(preds[i] == truth[i] for i in rows) / len(rows),
                "confusion": confusion,
                "per_speaker_accuracy": {s: c / n for s, (c, n) in sorted(per_speaker.items())},
            }
        return report

    export_name = "ser_mini"

    def export(self, folder: Path, trainer: pl.Trainer) -> None:
        """The recognizer (``save_mini_ser``) with its test-split report and training provenance."""
        fit_seconds = time.perf_counter() - self._fit_start
        datamodule = getattr(trainer, "datamodule", None)
        test = datamodule.test_items() if hasattr(datamodule, "test_items") else None
        self.test_report = self.evaluate(test) if test is not None and len(test) else None
        describe = getattr(datamodule, "describe", None)
        metadata = {
            "data": describe() if callable(describe) else None,
            "training": {"hparams": _jsonable(dict(self.hparams)), "global_step": int(trainer.global_step),
                         "epochs": int(trainer.current_epoch), "fit_seconds": round(fit_seconds, 1),
                         "parameters": parameter_count(self.net), "recipe": _read_recipe(trainer)},
            "test": self.test_report,
        }
        extra = report_files(self.test_report) if self.test_report is not None else None
        save_mini_ser(self.net, folder, metadata, extra_files=extra)
        if self.test_report is not None:
            summary = ", ".join(f"{k} {self.test_report[k]['accuracy']:.3f}" for k in ("original", "roundtrip")
                                if k in self.test_report)
            rank_zero_info(f"mini SER test accuracy: {summary}")



def report_files(report: dict[str, Any]) -> dict[str, str]:
    """``test_report.md`` (accuracy, confusion matrices, per-speaker accuracy) and ``test_confusion.csv`` texts."""
    labels = report["labels"]
    md = ["# Mini SER on the test split", ""]
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["condition", "true", *labels])
    for name in ("original", "roundtrip"):
        if name not in report:
            continue
        r = report[name]
        md += [f"## {name} clips: accuracy {r['accuracy']:.4f} ({r['clips']} clips)", "",
               "rows: true emotion, columns: predicted", "", "| true \\ predicted | " + " | ".join(labels) + " |",
               "|---" * (len(labels) + 1) + "|"]
        md += [f"| {labels[i]} | " + " | ".join(map(str, row)) + " |" for i, row in enumerate(r["confusion"])]
        md += ["", "per-speaker accuracy: " + ", ".join(f"{s} {a:.3f}" for s, a in r["per_speaker_accuracy"].items()),
               ""]
        for i, row in enumerate(r["confusion"]):
            writer.writerow([name, labels[i], *row])
    return {"test_report.md": "\n".join(md), "test_confusion.csv": rows.getvalue()}
