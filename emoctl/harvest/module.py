"""``HarvestModule``: a frozen backbone that generates speech for batches of prompts (Lightning predict).

It only generates; reading activations is the ``ActivationHarvester``
callback's job, so the same module serves a plain ``emoctl predict`` too.

Seeding: the mini TTS samples a whole batch from one generator, so an utterance's
tokens depend on the batch it is in (its row and its batch-mates' padding); the
IndexTTS2 and CosyVoice adapters draw prompt b from its own generator seeded
seed + b, so there only its row matters.  A batch's seed is therefore derived from its identity, the first
utterance id of the data module's fixed partition, and the partition never
changes with the number of ranks or with resuming.  Results are thus
independent of rank and restart, but not of ``data.batch_size``; greedy
decoding (``temperature: 0``) removes the dependence on batch-mates up to
floating-point effects of padding.
"""
from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import lightning.pytorch as pl

from emoctl.backbones.base import Backbone, Generation
from emoctl.backbones.loading import BackboneSpec
from emoctl.backbones.sampling import Sampling
from emoctl.emotions import ESD_EMOTIONS
from emoctl.errors import ConfigError
from emoctl.harvest.prompts import GridPrompt, PromptBatch


class HarvestOutput(NamedTuple):
    """What ``predict_step`` returns: the batch's prompts and their generation."""

    prompts: list[GridPrompt]
    generation: Generation
    batch_index: int


def batch_seed(seed: int, key: str) -> int:
    """A 63-bit generator seed from the run seed and a batch's identity (stable across processes)."""
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class HarvestModule(pl.LightningModule):
    """Generates speech tokens for each predict batch of :class:`~emoctl.harvest.prompts.PromptBatch`."""

    def __init__(
        self,
        backbone: BackboneSpec = BackboneSpec(),
        max_new_tokens: int = 1000,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
        top_p: float | None = None,
        num_beams: int = 1,
        repetition_penalty: float = 1.0,
        length_penalty: float = 1.0,
        ras_window: int | None = None,
        ras_tau: float = 0.1,
    ) -> None:
        """
        Args:
            backbone: Which TTS backbone to load (kind, checkpoint folder, device).
            max_new_tokens: Speech tokens per utterance at most (50 per second for the mini TTS).
            temperature: Sampling temperature; 0 is greedy.
            top_k: Sample among the k most likely tokens only; None samples from all.
            seed: Run seed; each batch's generator seed is derived from it and the batch's identity.
            top_p: Nucleus sampling (None: off).
            num_beams: Beam width (IndexTTS2 decodes with 3); the store keeps the states of the returned beam.
            repetition_penalty: Hugging Face's repetition penalty (IndexTTS2's release uses 10; 1 is off).
            length_penalty: Beam scores are divided by length ** length_penalty (IndexTTS2's release: 0).
            ras_window: CosyVoice's repetition-aware sampling: a token drawn ras_tau x window times among the
                row's last window tokens is drawn again from the full distribution (the releases: 10; None: off).
            ras_tau: That rule's share (the releases: 0.1).
        """
        super().__init__()
        if max_new_tokens < 1:
            raise ConfigError(f"model.max_new_tokens must be >= 1, got {max_new_tokens}.")
        if temperature < 0:
            raise ConfigError(f"model.temperature must be >= 0 (0 is greedy), got {temperature}.")
        self.spec = backbone
        self.max_new_tokens, self.temperature, self.top_k, self.seed = max_new_tokens, temperature, top_k, seed
        self.top_p, self.num_beams = top_p, num_beams
        self.repetition_penalty, self.length_penalty = repetition_penalty, length_penalty
        self.ras_window, self.ras_tau = ras_window, ras_tau
        self.backbone: Backbone = backbone.load()
        self.backbone.requires_grad_(False).eval()
        # checked now (an unsupported setting is refused by name before any prompt is read)
        self.sampling_settings = self.backbone.sampling(Sampling(
            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
            repetition_penalty=repetition_penalty, length_penalty=length_penalty, ras_window=ras_window,
            ras_tau=ras_tau))
        self._bound_to: int | None = None

    def generation_settings(self) -> dict[str, Any]:
        settings = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_k": self.top_k,
                    "seed": self.seed, "backbone_id": self.backbone.backbone_id}
        # settings added later join a store's identity only when used, so earlier stores still resume
        defaults = {"top_p": None, "num_beams": 1, "repetition_penalty": 1.0, "length_penalty": 1.0,
                    "ras_window": None}
        if self.ras_window is not None:
            defaults["ras_tau"] = None  # the share means something only with a window: recorded with it
        settings.update({k: getattr(self, k) for k, default in defaults.items() if getattr(self, k) != default})
        return settings

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            self.bind_prompts(datamodule)

    def bind_prompts(self, datamodule: Any) -> None:
        """Check the data module's speakers, emotions and texts against the backbone, once, before generating."""
        if self._bound_to == id(datamodule) or not hasattr(datamodule, "bind_backbone"):
            return
        # The grid names emotions as the corpus does (the backbone's labels, else ESD's five); the backbone
        # says how it is asked for each.
        datamodule.bind_backbone(self.backbone.speakers, self.backbone.emotions or list(ESD_EMOTIONS),
                                 self.backbone.condition_for)
        # Reject an unknown name, a condition kind the backbone does not take or unreadable text now, not hours
        # into the harvest: every voice and condition once, and every distinct text once.
        distinct: dict[tuple, GridPrompt] = {}
        for p in datamodule.prompts:
            for key in (("text", p.text), ("voice", p.voice), ("emotion", p.emotion)):
                distinct.setdefault(key, p)
        if distinct:
            self.backbone.check_prompts(list(dict.fromkeys(distinct.values())))
        self._bound_to = id(datamodule)

    # --------------------------------------------------------------- predict
    def generate_batch(self, batch: PromptBatch) -> HarvestOutput:
        generation = self.backbone.generate(batch.prompts, self.sampling_settings,
                                            seed=batch_seed(self.seed, batch.key))
        return HarvestOutput(batch.prompts, generation, batch.index)

    def predict_step(self, batch: PromptBatch, batch_idx: int = 0) -> HarvestOutput:
        return self.generate_batch(batch)

    def configure_optimizers(self) -> None:  # frozen: predict only
        return None
