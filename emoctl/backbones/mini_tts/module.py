"""``MiniTTSModule``: trains the mini TTS language model with Lightning.

Batches are ``(prompts, speech, speech_lengths)``: a list of
:class:`~emoctl.backbones.Prompt`, right-padded speech tokens (B, T) and their
lengths (B,), as :class:`data_modules.TTSCorpusDataModule` yields them.  The
loss is the token-averaged cross-entropy of every speech token and the final
STOP, computed from the factorized heads (equal to cross-entropy over the
full 8193-way distribution, without building it).  AdamW with linear warm-up
then cosine or linear decay; TensorBoard gets train/val loss and envelope and
F0 accuracy.

When ``fit`` ends, global rank 0 writes a :meth:`MiniTTS.save` folder with the
data module's codec and the run's provenance (``<log dir>/mini_tts`` unless
``export_dir`` is set), atomically: this is the folder ``MiniTTS.load`` reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from emoctl.backbones.base import Prompt
from emoctl.backbones.mini_tts.backbone import MiniTTS
from emoctl.backbones.mini_tts.lm import IGNORE_INDEX, MiniTTSConfig, MiniTTSLM
from emoctl.emotions import ESD_EMOTIONS
from emoctl.backbones.mini_tts.text import CharTokenizer
from emoctl.errors import ConfigError
from emoctl.training import OptimizerConfig, adamw_with_schedule, jsonable as _jsonable, read_recipe as _read_recipe

torch.serialization.add_safe_globals([MiniTTSConfig])  # hparams in checkpoints; see emoctl.sae.module

ESD_SPEAKERS = ("0011", "0012", "0013", "0014", "0015", "0016", "0017", "0018", "0019", "0020")


class MiniTTSModule(pl.LightningModule):
    """The mini TTS LM with its speaker, emotion and text tables, trained by teacher forcing."""

    def __init__(
        self,
        model: MiniTTSConfig = MiniTTSConfig(),
        speakers: Sequence[str] = ESD_SPEAKERS,
        emotions: Sequence[str] = ESD_EMOTIONS,
        text_symbols: str = CharTokenizer.DEFAULT_SYMBOLS,
        optimizer: OptimizerConfig = OptimizerConfig(lr=1e-3, betas=(0.9, 0.98), weight_decay=0.01, warmup_steps=300,
                                                     min_lr_fraction=0.05),
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            model: Shape of the LM (width, depth, heads, dropout, codec sizes, position tables).
            speakers: Speaker names, one embedding each; every corpus speaker must be among them.
            emotions: Emotion names, one embedding each; every corpus emotion must be among them.
            text_symbols: Alphabet of the character tokenizer (after lower-casing).
            optimizer: AdamW (no decay on biases or LayerNorms) and its warm-up and decay.
            export_dir: Where the trained MiniTTS folder goes; None: ``<log dir>/mini_tts``.
        """
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_config = optimizer  # hparams may hold it as a plain dict when LightningCLI builds the module
        tokenizer = CharTokenizer(text_symbols)
        lm = MiniTTSLM(model, text_vocab_size=tokenizer.vocab_size, n_speakers=len(speakers),
                       n_emotions=len(emotions))
        self.tts = MiniTTS(lm, tokenizer, list(speakers), list(emotions))
        self.exported: Path | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Fail before the first step if the corpus has a speaker, emotion or character the model lacks."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        prompts: Sequence[Prompt] = getattr(datamodule, "prompts", ()) or ()
        for name, known, seen in (("speakers", self.tts.speakers, {p.speaker for p in prompts}),
                                  ("emotions", self.tts.emotions, {p.emotion_key for p in prompts})):
            missing = sorted(seen - set(known))
            if missing:
                raise ConfigError(f"the corpus has {name} {missing} that model.{name} lacks ({known}); add them "
                                  f"to model.{name} in the recipe.")
        for prompt in prompts:
            self.tts.tokenizer.encode(prompt.text)  # raises ConfigError naming the text and its characters

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Prompts are frozen dataclasses of strings, which Lightning's generic mover cannot rebuild.
        prompts, speech, lengths = batch
        return prompts, speech.to(device, non_blocking=True), lengths.to(device, non_blocking=True)

    # --------------------------------------------------------------- the math
    def _losses(self, batch: Any) -> dict[str, torch.Tensor]:
        prompts, speech, lengths = batch
        out = self.tts.teacher_forced_factors(prompts, speech, lengths)
        lm = self.tts.lm
        nll = lm.nll(out.env_logp, out.f0_logp, out.targets)  # (B, T + 1)
        valid = out.targets != IGNORE_INDEX
        stop = out.targets == lm.config.stop_token
        n_f0 = lm.config.n_f0_bins
        env_target = torch.where(stop, lm.config.n_env_codes, out.targets.clamp(min=0) // n_f0)
        voiced_or_not = valid & ~stop  # positions with an F0 target
        tokens = valid.sum().clamp(min=1)
        return {
            "loss": nll.sum() / tokens,
            "env_acc": ((out.env_logp.argmax(-1) == env_target) & valid).sum() / tokens,
            "f0_acc": ((out.f0_logp.argmax(-1) == out.targets.clamp(min=0) % n_f0) & voiced_or_not).sum()
            / voiced_or_not.sum().clamp(min=1),
            "tokens": tokens,
        }

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log_dict({"train/loss": losses["loss"].detach(), "train/env_acc": losses["env_acc"],
                       "train/f0_acc": losses["f0_acc"], "train/lr": torch.tensor(lr)}, batch_size=len(batch[0]))
        self.log("loss", losses["loss"].detach(), prog_bar=True, logger=False, batch_size=len(batch[0]))
        return losses["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        losses = self._losses(batch)
        # Weighting each batch by its token count makes the epoch mean a token average.
        self.log_dict({f"val/{k}": losses[k] for k in ("loss", "env_acc")}, on_epoch=True, sync_dist=True,
                      batch_size=int(losses["tokens"]))
        self.log("val/f0_acc", losses["f0_acc"], on_epoch=True, sync_dist=True, batch_size=int(losses["tokens"]))

    # -------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        return adamw_with_schedule(self.tts.parameters(), self.optimizer_config,
                                   self.trainer.estimated_stepping_batches)

    # ----------------------------------------------------------------- export
    export_name = "mini_tts"

    def export(self, folder: Path, trainer: pl.Trainer) -> None:
        """The trained TTS in ``MiniTTS.save``'s layout, with its codec and training provenance."""
        datamodule = getattr(trainer, "datamodule", None)
        self.tts.codec = getattr(datamodule, "codec", None)
        describe = getattr(datamodule, "describe", None)
        self.tts.metadata = {
            "data": describe() if callable(describe) else None,
            "training": {"hparams": _jsonable(dict(self.hparams)), "global_step": int(trainer.global_step),
                         "max_steps": int(trainer.max_steps), "recipe": _read_recipe(trainer)},
        }
        self.tts.save(folder)
        rank_zero_info(f"MiniTTS backbone_id {self.tts.backbone_id}")
