"""``EmoShiftModule``: trains an EmoSteer layer on a frozen TTS backbone with Lightning.

Batches are ``(prompts, speech, speech_lengths)`` as
:class:`data_modules.tts_corpus.TTSCorpusDataModule` yields them.  Each row is
steered by the layer of its own emotion (h' = h + ε·h·W_e at ``lm_out``, every
teacher-forced position) and the loss is the token-averaged cross-entropy of
its target speech tokens.  With ``condition: neutral`` the backbone is told
"Neutral" for every row, so the layer alone has to carry the emotion; with
``condition: emotion`` it hears the row's emotion as in the paper's setting.

Only the layer trains.  The backbone stays in eval mode (dropout off) even
when Lightning calls ``.train()``, never receives gradients, and is left out
of the Lightning checkpoints (its id is stored instead and checked on
resume).  When ``fit`` ends, global rank 0 writes the layer with
:meth:`EmoSteer.save` beside the checkpoints (``<ckpt dir>/../emosteer``, or
``<log dir>/emosteer``, or ``export_dir``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from emoctl.backbones.base import Backbone, Prompt
from emoctl.training import OptimizerConfig, adamw_with_schedule, jsonable as _jsonable, read_recipe as _read_recipe
from emoctl.emosteer.layer import EmoSteer, EmoSteerConfig
from emoctl.backbones.loading import BackboneSpec
from emoctl.emosteer.objective import teacher_forced_nll
from emoctl.emosteer.steer import TRAINING_PHASES, steer
from emoctl.errors import ConfigError
from emoctl.synthesis import synthesize

torch.serialization.add_safe_globals([EmoSteerConfig])  # hparams in checkpoints; see emoctl.sae.module


class EmoShiftModule(pl.LightningModule):
    """A frozen backbone and the EmoSteer layer that learns to shift its output embedding."""

    def __init__(
        self,
        layer: EmoSteerConfig,
        backbone: BackboneSpec = BackboneSpec(),
        condition: Literal["emotion", "neutral"] = "emotion",
        hookpoint: str = "lm_out",
        optimizer: OptimizerConfig = OptimizerConfig(lr=1.0, warmup_steps=50, min_lr_fraction=0.1),
        export_dir: str | None = None,
        probe_alphas: Sequence[float] = (1.0,),
    ) -> None:
        """
        Args:
            layer: The EmoSteer layer: its width (the backbone's at ``hookpoint``), the emotions it serves (Neutral
                included, each known to the backbone), Neutral as identity or a layer of its own, rank (None for
                full d×d matrices, the paper's), ε of h' = h + ε·h·W_e (the paper's 0.001) and the low-rank
                initialisation.
            backbone: The frozen backbone (kind, checkpoint folder; path null: the kind's committed default).
            condition: Emotion condition the backbone is given: each row's own ("emotion") or "neutral" for all,
                so that only the layer carries the emotion.
            hookpoint: Backbone hookpoint the layer rewrites (the input of the speech-token head).
            optimizer: AdamW on the layer's matrices and its warm-up and decay. Adam's step does not scale with ε,
                so the shift ε·h·W moves by about ε·lr per step: lr = 1 with ε = 1e-3 is an ordinary 1e-3 step on
                the product ε·W.
            export_dir: Where the trained layer goes; None: beside the checkpoints.
            probe_alphas: Intensities at which a ``ProbeCallback`` listens to the layer (besides unsteered).
        """
        super().__init__()
        if condition not in ("emotion", "neutral"):
            raise ConfigError(f"model.condition must be 'emotion' or 'neutral', got {condition!r}.")
        self.save_hyperparameters()
        # hparams keep these as plain dicts when LightningCLI builds the module
        self.backbone_spec, self.optimizer_config = backbone, optimizer
        self.backbone: Backbone = backbone.load()
        self.backbone.eval().requires_grad_(False)
        unknown = sorted(set(layer.emotions) - set(self.backbone.emotions))
        if unknown:
            raise ConfigError(f"model.layer.emotions has {unknown}, which the backbone at "
                              f"{backbone.path or backbone.kind} does not know ({', '.join(self.backbone.emotions)}).")
        if condition == "neutral" and layer.neutral_name not in self.backbone.emotions:
            raise ConfigError(f"condition: neutral needs the backbone to know {layer.neutral_name!r} "
                              f"(model.layer.neutral_name); it knows {', '.join(self.backbone.emotions)}.")
        if hookpoint not in self.backbone.hookpoints:
            raise ConfigError(f"model.hookpoint={hookpoint!r} is not a hookpoint of this backbone; it has "
                              f"{', '.join(self.backbone.hookpoints)}.")
        if layer.hidden_size != self.backbone.hidden_size:
            raise ConfigError(f"model.layer.hidden_size={layer.hidden_size}, but the backbone at "
                              f"{backbone.path or backbone.kind} is {self.backbone.hidden_size} wide at {hookpoint}; "
                              f"set model.layer.hidden_size: {self.backbone.hidden_size}.")
        self.emosteer = EmoSteer(layer)
        self.backbone_id = self.backbone.backbone_id
        self.strict_loading = False  # checkpoints hold the layer only; the backbone comes from model.backbone
        self.exported: Path | None = None
        self.backbone_was_training = False  # set if a step ever saw the backbone in train mode (tests read it)

    # --------------------------------------------------------- frozen parts
    def train(self, mode: bool = True) -> EmoShiftModule:
        """Lightning calls ``.train()`` each epoch; the frozen backbone must keep dropout off regardless."""
        super().train(mode)
        self.backbone.eval()
        return self

    def parameter_report(self) -> dict[str, Any]:
        """Trainable (layer) and frozen (backbone) parameter counts, and their ratio."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        backbone = sum(p.numel() for p in self.backbone.parameters())
        return {"trainable": trainable, "backbone": backbone, "ratio": trainable / max(backbone, 1)}

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        prompts: Sequence[Prompt] = getattr(datamodule, "prompts", ()) or ()
        missing = sorted({p.emotion_label for p in prompts} - set(self.emosteer.emotions))
        if missing:
            raise ConfigError(f"the corpus has emotions {missing} that the EmoSteer layer does not serve "
                              f"({self.emosteer.emotions}); add them to model.emotions or to data.emotions' filter.")
        if prompts:  # names, condition kinds and text, as the backbone will hear them, before the first step
            self.backbone.check_prompts(self.backbone_prompts(prompts))
        data_digest = getattr(datamodule, "tokenizer_digest", None)
        model_digest = self.backbone.tokenizer_digest
        if data_digest is not None and model_digest is not None and data_digest != model_digest:
            raise ConfigError(f"the data module's speech tokens come from tokenizer {data_digest} but the backbone at "
                              f"{self.backbone_spec.path or self.backbone_spec.kind} speaks {self.backbone.tokenizer_digest}: its target tokens "
                              "would mean other sounds. Point data.codec_dir at the backbone's codec/ folder.")
        report = self.parameter_report()
        rank_zero_info(f"EmoShift: {report['trainable']:,} trainable parameters (EmoSteer, "
                       f"{'full' if self.emosteer.config.rank is None else 'rank ' + str(self.emosteer.config.rank)}) "
                       "on a frozen "
                       f"backbone of {report['backbone']:,} ({report['ratio']:.2%}).")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Prompts are frozen dataclasses of strings, which Lightning's generic mover cannot rebuild.
        prompts, speech, lengths = batch
        return prompts, speech.to(device, non_blocking=True), lengths.to(device, non_blocking=True)

    # --------------------------------------------------------------- the math
    def backbone_prompts(self, prompts: Sequence[Prompt]) -> list[Prompt]:
        """The prompts as the backbone hears them: each clip's own emotion, or Neutral for all under
        ``condition: neutral``, in the backbone's own condition (a label, a vector, an instruction)."""
        names = ([p.emotion_label for p in prompts] if self.hparams.condition == "emotion"
                 else [self.emosteer.config.neutral_name] * len(prompts))
        return [p.with_emotion(self.backbone.condition_for(name)) for p, name in zip(prompts, names)]

    def _losses(self, batch: Any) -> dict[str, Any]:
        prompts, speech, lengths = batch
        emotions = [p.emotion_label for p in prompts]
        with steer(self.backbone, self.emosteer, emotions, 1.0, hookpoint=self.hparams.hookpoint,
                   phases=TRAINING_PHASES) as hook:
            hook.record = True
            out = teacher_forced_nll(self.backbone, self.backbone_prompts(prompts), speech, lengths)
        return {"loss": out.mean(), "tokens": out.valid.sum(), "valid": out.valid, "shift": hook.last_shift,
                "emotions": emotions}

    def _shift_stats(self, losses: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Mean ‖v_e‖ (v_e = h·W_e) over the real positions of each emotion's rows in the batch."""
        shift, valid = losses["shift"], losses["valid"]
        if shift is None:  # every row Neutral-identity or the layer still exactly zero
            return {}
        v_norm = shift.detach().float().norm(dim=-1) / self.emosteer.config.epsilon  # (B, T')
        stats = {}
        for name in sorted(set(losses["emotions"]) & set(self.emosteer.layer_emotions)):
            rows = torch.tensor([e == name for e in losses["emotions"]], device=v_norm.device)
            mask = valid & rows[:, None]
            stats[f"train/v_norm/{name}"] = (v_norm * mask).sum() / mask.sum().clamp(min=1)
        return stats

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.backbone_was_training |= self.backbone.training
        losses = self._losses(batch)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        n = len(batch[0])
        self.log_dict({"train/loss": losses["loss"].detach(), "train/lr": torch.tensor(lr), **self._shift_stats(losses)},
                      batch_size=n)
        with torch.no_grad():
            norms = self.emosteer.matrices().flatten(1).norm(dim=1)  # (E,) ‖W_e‖_F
        self.log_dict({f"train/W_norm/{e}": norms[i] for i, e in enumerate(self.emosteer.layer_emotions)}, batch_size=n)
        self.log("loss", losses["loss"].detach(), prog_bar=True, logger=False, batch_size=n)
        return losses["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        losses = self._losses(batch)
        # Weighting each batch by its token count makes the epoch mean a token average.
        self.log("val/loss", losses["loss"], on_epoch=True, sync_dist=True, batch_size=int(losses["tokens"]))

    # ----------------------------------------------------------------- probes
    def probe_settings(self) -> list[str]:
        """Settings a :class:`~emoctl.callbacks.probe.ProbeCallback` compares: unsteered, then each α."""
        return ["unsteered"] + [f"alpha={a:g}" for a in self.hparams.probe_alphas]

    @torch.no_grad()
    def probe_synthesize(self, prompts: Sequence[Prompt], setting: str, seed: int) -> list[tuple[Any, int]]:
        """Speak each prompt under the backbone's condition, steered toward the prompt's emotion at α."""
        alpha = 0.0 if setting == "unsteered" else float(setting.removeprefix("alpha="))
        with steer(self.backbone, self.emosteer, [p.emotion_label for p in prompts], alpha=alpha,
                   hookpoint=self.hparams.hookpoint):
            clips = synthesize(self.backbone, self.backbone_prompts(prompts), seed=seed)
        return [(clip.wave, clip.sample_rate) for clip in clips]

    # -------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        params = list(self.emosteer.parameters())
        trainable = [p for p in self.parameters() if p.requires_grad]
        if {id(p) for p in trainable} != {id(p) for p in params}:
            raise RuntimeError("EmoShift must train exactly the EmoSteer parameters, but other parameters require "
                               "gradients; the backbone was unfrozen somewhere.")
        # one group, decayed throughout (every EmoSteer tensor is a matrix), as checkpoints of earlier runs hold
        return adamw_with_schedule(params, self.optimizer_config, self.trainer.estimated_stepping_batches,
                                   decay_groups=False)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("backbone.")]:
            del state[key]
        checkpoint["emoshift_backbone_id"] = self.backbone_id

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("emoshift_backbone_id")
        if saved is not None and saved != self.backbone_id:
            raise ConfigError(f"this checkpoint trained an EmoSteer layer on backbone {saved}, but "
                              f"model.backbone.path={self.backbone_spec.path} is {self.backbone_id}; "
                              "point model.backbone.path at the original backbone.")
        missing = [k for k in self.emosteer.state_dict() if f"emosteer.{k}" not in checkpoint.get("state_dict", {})]
        if missing:
            raise ConfigError(f"the checkpoint lacks the EmoSteer tensors {missing}; it was written by another model "
                              "(rank or emotions differ?).")

    # ----------------------------------------------------------------- export
    export_name = "emosteer"

    def export(self, folder: Path, trainer: pl.Trainer) -> None:
        """The EmoSteer layer (``EmoSteer.save``), with the backbone it was trained on and the data."""
        datamodule = getattr(trainer, "datamodule", None)
        describe = getattr(datamodule, "describe", None)
        metadata = {
            "backbone_id": self.backbone_id, "backbone_kind": self.backbone_spec.kind,
            "backbone_path": self.backbone_spec.path, "backbone_options": self.backbone_spec.options,
            "hookpoint": self.hparams.hookpoint,
            "condition": self.hparams.condition, "parameters": self.parameter_report(),
            "data": describe() if callable(describe) else None,
            "training": {"hparams": _jsonable(dict(self.hparams)), "global_step": int(trainer.global_step),
                         "recipe": _read_recipe(trainer)},
        }
        self.emosteer.save(folder, metadata=metadata)
