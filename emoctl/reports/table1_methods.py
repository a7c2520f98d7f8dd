"""Table 1's steering methods: what each one attaches to the backbone for an emotion at a step length α.

The methods are the unsteered backbone, Random SAE features, Global (mean-difference) steering and SAE-Emotion
features, all norm-matched so one α is one step length (see :mod:`emoctl.steering.directions`); each further
selection score is the method ``sae_emotion:<score>``, a trained EmoShift layer is the method ``emoshift``, and
CoCoEmo's mean-difference directions at its chosen layers (``emoctl extract``) are the method ``cocoemo``, at
their own scale (CoCoEmo's raw differences, not norm-matched: its α is CoCoEmo's α).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

from emoctl.backbones.base import Backbone, Prompt
from emoctl.emosteer import EmoSteer, steer as emosteer_steer
from emoctl.emosteer.steer import GENERATION_PHASES
from emoctl.errors import ConfigError
from emoctl.steering import SAEFeatureSteering, SteeringVectors, global_steering, random_feature_steering, vector_steering

METHODS = ("unsteered", "random_sae", "global", "sae_emotion")
LATENT_METHODS = ("random_sae", "global", "sae_emotion")
"""The methods whose α is in latent units (norm-matched to the SAE's decoder directions)."""
METHOD_LABELS = {"unsteered": "Unsteered", "random_sae": "Random SAE", "global": "Global steering",
                 "sae_emotion": "SAE-Emotion", "emoshift": "EmoShift", "cocoemo": "CoCoEmo"}


def builds_interventions(method: str) -> bool:
    """Whether :class:`SteeringMethods` attaches ``method`` as interventions (every method but EmoShift's layer)."""
    return method in METHODS or method == "cocoemo" or method.startswith("sae_emotion:")


def variant_method(score: str) -> str:
    """Method name of SAE-Emotion steering with the features another selection score chose."""
    return f"sae_emotion:{score}"


def method_label(method: str) -> str:
    """A method's column title: ``sae_emotion:rate`` is "SAE-Emotion (rate)"."""
    base, _, score = method.partition(":")
    return f"{METHOD_LABELS.get(base, base)} ({score})" if score else METHOD_LABELS.get(method, method)


class SteeringMethods:
    """Builds each method's interventions for an emotion from one SAE, its feature sets and the store's means.

    ``variants`` holds further feature sets of the same SAE (selected by another score, keyed by it); each is the
    method ``sae_emotion:<score>``, steered exactly like SAE-Emotion. Global and Random steering stay matched to
    the main feature sets. ``directions`` (a steering-vector file) is the method ``cocoemo``.
    """

    def __init__(self, sae, feature_sets: dict, mean_differences: dict, seed: int = 0,
                 variants: dict[str, dict] | None = None, directions: SteeringVectors | None = None) -> None:
        self.sae, self.feature_sets, self.mean_differences, self.seed = sae, feature_sets, mean_differences, seed
        self.variants = dict(variants or {})
        self.directions = directions

    def interventions(self, method: str, emotion: str, alpha: float) -> list:
        if method == "unsteered" or alpha == 0:
            return []
        if method == "cocoemo":
            if self.directions is None:
                raise ConfigError("method cocoemo needs directions, a steering-vector folder from `emoctl extract`.")
            return [vector_steering(self.directions, emotion, alpha)]
        base, _, score = method.partition(":")
        if base == "sae_emotion" and score:
            if score not in self.variants:
                raise ConfigError(f"method {method!r} has no feature sets; selections are "
                                  f"{', '.join(self.variants) or 'none'}.")
            return [SAEFeatureSteering(self.sae, self.variants[score][emotion].feature_ids, alpha)]
        features = self.feature_sets[emotion].feature_ids
        if method == "sae_emotion":
            return [SAEFeatureSteering(self.sae, features, alpha)]
        if method == "global":
            return [global_steering(self.mean_differences[emotion], self.sae, features, alpha)]
        if method == "random_sae":
            return [random_feature_steering(self.sae, features, alpha, seed=self.seed)]
        raise ConfigError(f"unknown steering method {method!r}; choose from {', '.join(METHODS)}.")


@dataclass(frozen=True)
class MethodInputs:
    """The trained artifacts the steering methods read, as the commands that run several methods name them
    (defaults: the committed mini-TTS artifacts and the store ``make store-mini`` writes)."""

    layer: str | None = "emoctl/assets/emoshift_mini"
    """EmoShift layer folder, trained with the backbone told Neutral; for the method ``emoshift``."""
    sae: str | None = "emoctl/assets/sae_mini"
    """Exported SAE folder; for sae_emotion, global and random_sae."""
    selection: str | None = "emoctl/assets/select_mini"
    """Folder of the SAE's feature sets (features_<emotion>.json); needed with the SAE."""
    store: str | None = "runs/stores/mini_tts_train_resid_pre5"
    """The activation store the SAE was trained on: Global steering's mean differences (``make store-mini``)."""
    directions: str | None = "emoctl/assets/directions_mini"
    """Steering-vector folder from ``emoctl extract``; for the method ``cocoemo``."""

    def check_inputs(self, methods: Sequence[str], known: Sequence[str]) -> None:
        check_method_inputs(methods, known, layer=self.layer, sae=self.sae, selection=self.selection,
                            store=self.store, directions=self.directions)


def check_method_inputs(methods: Sequence[str], known: Sequence[str], *, layer: str | None, sae: str | None,
                        selection: str | None, store: str | None, directions: str | None = None) -> None:
    """Refuse, before any work, a method list with unknown or repeated names, or a method without its inputs:
    EmoShift its layer, the SAE-side methods the SAE and its feature sets, Global also the SAE's store, CoCoEmo
    its directions."""
    unknown = [m for m in methods if m not in known]
    if not methods or unknown or len(set(methods)) != len(methods):
        raise ConfigError(f"methods={list(methods)!r}: name each of {', '.join(known)} at most once, at least one "
                          "of them.")
    if "emoshift" in methods and not layer:
        raise ConfigError("method emoshift needs layer, the folder of a trained EmoSteer layer.")
    if "cocoemo" in methods and not directions:
        raise ConfigError("method cocoemo needs directions, a steering-vector folder from `emoctl extract`.")
    sae_side = [m for m in methods if m in LATENT_METHODS]
    if sae_side and not (sae and selection):
        raise ConfigError(f"methods {sae_side} need sae and selection (the SAE folder and its feature sets).")
    if "global" in methods and not store:
        raise ConfigError("method global needs store, the activation store the SAE was trained on (its mean "
                          "differences are the direction); `make store-mini` writes the mini TTS's.")


def load_directions(folder: str, backbone: Backbone, emotions: Sequence[str]) -> SteeringVectors:
    """The steering vectors of the method ``cocoemo``, refused unless extracted from this backbone for every
    emotion asked."""
    vectors = SteeringVectors.load(folder)
    made_on = vectors.metadata.get("backbone")
    if made_on != backbone.backbone_id:
        raise ConfigError(f"the directions in {folder} were extracted from backbone {made_on}, not this one "
                          f"({backbone.backbone_id}); run `emoctl extract` on it.")
    missing = [e for e in emotions if e not in vectors.emotions]
    if missing:
        raise ConfigError(f"the directions in {folder} have no {missing}; they hold {', '.join(vectors.emotions)}. "
                          "Extract them with those emotions.")
    if emotions:  # the directions' width and hookpoints fit this backbone
        vector_steering(vectors, emotions[0], 1.0).check_backbone(backbone)
    return vectors


def emoshift_method(backbone: Backbone, layer: str | EmoSteer) -> Callable:
    """EmoShift as a Table 1 method: its trained layer for the cell's emotion at intensity |α| (induction only).

    ``layer``: its folder, or the layer already loaded. The returned ``steering(cell, alpha, batch, start)`` is the
    context one batch of the cell is spoken under."""
    layer = EmoSteer.load(layer) if isinstance(layer, str) else layer

    def steering(cell, alpha: float, batch: Sequence[Prompt], start: int):
        if alpha == 0:
            return nullcontext()
        return emosteer_steer(backbone, layer, [cell.emotion] * len(batch), alpha=abs(alpha))

    return steering


def method_phases(methods: SteeringMethods, emotion: str, method_names: Sequence[str]) -> dict[str, list[str]]:
    """The forward passes each method steers, read from the interventions it builds (stated in the report)."""
    out = {}
    for method in method_names:
        if method == "unsteered":
            continue
        if method == "emoshift":
            phases = GENERATION_PHASES
        else:
            (intervention,) = methods.interventions(method, emotion, 1.0)
            phases = intervention.phases
        out[method] = [p.value for p in sorted(phases, key=lambda p: ("prefill", "decode", "teacher_forced").index(p.value))]
    return out


def method_comparisons(method_names: Sequence[str]) -> list[tuple[str, str]]:
    """The method pairs Table 1 tests: SAE-Emotion, Global and Random against each other, SAE-Emotion against
    unsteered, each further selection score and EmoShift against SAE-Emotion, CoCoEmo against SAE-Emotion under
    every selection score and against Global."""
    pairs = [("sae_emotion", "global"), ("sae_emotion", "random_sae"), ("global", "random_sae"),
             ("sae_emotion", "unsteered")]
    pairs += [(m, "sae_emotion") for m in method_names if m.startswith("sae_emotion:") or m == "emoshift"]
    if "cocoemo" in method_names:  # CoCoEmo against each selection score's SAE-Emotion and against Global
        pairs += [("cocoemo", m) for m in method_names if m.startswith("sae_emotion")] + [("cocoemo", "global")]
    return [(a, b) for a, b in pairs if a in method_names and b in method_names]
