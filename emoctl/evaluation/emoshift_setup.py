"""A trained EmoSteer layer ready to evaluate: its backbone, the condition the backbone is told, the prompts.

Shared by the EmoShift sweep, compound emotions and the EmoShift table, so all three load, check and steer
a layer the same way.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from emoctl.backbones.base import Backbone, Prompt
from emoctl.backbones.conditions import Voice, VoiceName
from emoctl.backbones.loading import BackboneSpec
from emoctl.errors import ConfigError
from emoctl.emotions import NEUTRAL
from emoctl.evaluation.steered import synthesize_steered
from emoctl.steering.schedules import StepSchedule
from emoctl.synthesis import Clip, SamplingConfig
from emoctl.emosteer import EmoSteer, steer


@dataclass
class SteeringSetup:
    """A loaded layer, its backbone and the prompts' condition rule, shared by the sweep, compound and Table 1."""

    backbone: Backbone
    layer: Any  # EmoSteer
    condition: str  # "neutral" or "emotion": what the backbone is told
    hookpoint: str

    @classmethod
    def load(cls, layer_dir: str, backbone: BackboneSpec | None = None) -> SteeringSetup:
        """The layer in ``layer_dir`` on ``backbone`` (None: the default checkpoint of the layer's backbone kind)."""

        layer = EmoSteer.load(layer_dir)
        meta = layer.metadata
        condition = meta.get("condition")
        if condition not in ("neutral", "emotion"):
            raise ConfigError(f"{layer_dir}/emosteer.json has no metadata.condition ('neutral' or 'emotion'), got "
                              f"{condition!r}; re-export the layer with EmoShiftModule.")
        kind = meta.get("backbone_kind", "mini_tts")
        trained_options = meta.get("backbone_options")  # e.g. CosyVoice's instructions: the condition it learnt on
        spec = backbone if backbone is not None else BackboneSpec(kind=kind)
        if spec.kind != kind:
            raise ConfigError(f"the layer in {layer_dir} was trained on a {kind} backbone but backbone.kind is "
                              f"{spec.kind!r}; name the backbone it was trained on.")
        if spec.options is None and trained_options:
            spec = dataclasses.replace(spec, options=trained_options)
        elif trained_options is not None and spec.options != trained_options:
            raise ConfigError(f"the layer in {layer_dir} was trained with backbone.options {trained_options} but "
                              f"backbone.options is {spec.options}; the backbone would be conditioned otherwise than "
                              "in training. Leave backbone.options out (the layer's are used) or give the same.")
        loaded = spec.load()
        if meta.get("backbone_id") not in (None, loaded.backbone_id):
            raise ConfigError(f"the layer in {layer_dir} was trained on backbone {meta['backbone_id']} but "
                              f"backbone.path={spec.path} gives {loaded.backbone_id}; pass the backbone it was "
                              "trained on.")
        return cls(loaded, layer, condition, meta.get("hookpoint", "lm_out"))

    def condition_of(self, target: str) -> str:
        return NEUTRAL if self.condition == "neutral" else target

    def synthesize(self, prompts: list[Prompt], mixes: Sequence[Any] | None, alpha: float | Sequence[float] | None,
                   seed: int, sampling: SamplingConfig, schedule: StepSchedule | None = None) -> list[Clip]:
        """Speak ``prompts``; ``alpha`` None: no hook at all (unsteered), else the layer toward ``mixes`` at α
        (one for all, or one per prompt), times ``schedule``'s multiplier at each decode step, when given.

        The layer holds one emotion per prompt of a generation batch, so it is attached per batch
        (:func:`~emoctl.evaluation.steered.synthesize_steered`: every setting sees the same seeds).
        """

        def steering(batch: Sequence[Prompt], start: int):
            rows = alpha if isinstance(alpha, (int, float)) else list(alpha[start:start + len(batch)])
            return steer(self.backbone, self.layer, list(mixes[start:start + len(batch)]), alpha=rows,
                         hookpoint=self.hookpoint, schedule=schedule)

        return synthesize_steered(self.backbone, prompts, None if alpha is None else steering, seed, sampling)

    def targets(self, emotions: list[str] | None) -> list[str]:
        """The target emotions (default: every one the layer steers), checked against the layer."""
        layer_emotions = self.layer.layer_emotions
        emotions = list(emotions or [e for e in layer_emotions if e != NEUTRAL])
        unknown = [e for e in emotions if e not in layer_emotions]
        if unknown:
            raise ConfigError(f"emotions {unknown} have no matrix in this layer; it steers {layer_emotions}.")
        return emotions


def target_prompts(setup: SteeringSetup, emotions: list[str], texts: list[str], speakers: list[str], tag: str,
                   voice: Callable[[str, str], Voice] | None = None) -> tuple[list[Prompt], list[str]]:
    """One prompt per (emotion, text, speaker) with the backbone's condition; the row's target emotion.

    ``voice(speaker, text)`` voices each speaker (``EvaluationProtocol.voice_for``: a reference clip for a
    backbone that clones corpus speakers); None names the speaker."""
    voice = voice or (lambda speaker, text: VoiceName(speaker))
    prompts, targets = [], []
    for e in emotions:
        for i, text in enumerate(texts):
            for s in speakers:
                prompts.append(Prompt(text, voice(s, text), setup.backbone.condition_for(setup.condition_of(e)),
                                      f"{tag}-{e}-t{i:02d}-{s}"))
                targets.append(e)
    return prompts, targets
