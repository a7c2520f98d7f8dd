"""Mean-difference emotion directions at several hookpoints, their file, and steering all of them at once.

CoCoEmo (wsssy/CoCoEmo, ``scripts/extract.py``, its Eq. 6) takes, per emotion and layer, the mean of the emotional
utterances' pooled states minus the mean of their neutral twins' (train split), and steers by ``x + α·t`` at the
chosen layers' attention outputs at every generated position (``translation_op_``; defaults α = 3 at layers
[17, 14] of CosyVoice2, [6, 8, 1] of IndexTTS2).  :func:`mean_difference_vectors` computes the directions from
:class:`~emoctl.harvest.pooled.PairedStates` at any hookpoints, :class:`SteeringVectors` is their file (a
safetensors file and a JSON record; nothing in it executes), and :class:`MultiLayerSteering` adds them with one α
as one :class:`~emoctl.steering.base.Intervention` that composes with every other.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from emoctl.backbones.hooks import HookContext, Phase
from emoctl.errors import ConfigError
from emoctl.harvest.pooled import PairedStates
from emoctl.io.formats import read_versioned_json
from emoctl.io.fsio import atomic_folder
from emoctl.numerics import refuse_non_finite_weights
from emoctl.steering.base import Alpha, Intervention, Schedule
from emoctl.steering.directions import DirectionSteering

FORMAT_NAME = "emoctl-steering-vectors"
FORMAT_VERSION = 1
CONFIG_FILE = "vectors.json"
WEIGHTS_FILE = "vectors.safetensors"
SEPARATOR = "@"
"""Tensor names in the safetensors file are ``<emotion>@<hookpoint>``."""


@dataclass
class SteeringVectors:
    """Per emotion, one direction (d,) float32 at each of the same hookpoints."""

    vectors: dict[str, dict[str, Tensor]]
    metadata: dict[str, Any] = field(default_factory=dict)
    """Backbone id, source, pool, pairs per emotion, and the discriminability file the layers came from."""

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ConfigError("a steering-vector file needs at least one emotion.")
        points = [list(v) for v in self.vectors.values()]
        if any(p != points[0] for p in points) or not points[0]:
            raise ConfigError(f"every emotion needs directions at the same, non-empty list of hookpoints; got "
                              f"{ {e: list(v) for e, v in self.vectors.items()} }.")
        widths = {t.numel() for v in self.vectors.values() for t in v.values()}
        if len(widths) != 1 or any(t.ndim != 1 for v in self.vectors.values() for t in v.values()):
            raise ConfigError(f"steering vectors must be 1-D and of one width, got widths {sorted(widths)}.")

    @property
    def emotions(self) -> list[str]:
        return list(self.vectors)

    @property
    def hookpoints(self) -> list[str]:
        return list(next(iter(self.vectors.values())))

    def for_emotion(self, emotion: str) -> dict[str, Tensor]:
        if emotion not in self.vectors:
            raise ConfigError(f"the steering vectors have no direction for {emotion!r}; they hold "
                              f"{', '.join(self.vectors)}.")
        return self.vectors[emotion]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``vectors.json`` + ``vectors.safetensors`` atomically."""
        from safetensors.torch import save_file

        target = Path(directory)
        tensors = {f"{e}{SEPARATOR}{h}": t.detach().float().cpu().contiguous()
                   for e, by_point in self.vectors.items() for h, t in by_point.items()}
        refuse_non_finite_weights(tensors, f"the steering vectors to be saved in {target}")
        record = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "emotions": self.emotions,
                  "hookpoints": self.hookpoints, "metadata": self.metadata}
        with atomic_folder(target) as staging:
            save_file(tensors, str(staging / WEIGHTS_FILE))
            (staging / CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SteeringVectors:
        """Read a folder written by :meth:`save`: safetensors only (no pickle), every tensor named and finite."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(directory)
        remedy = "extract it again with `emoctl extract`"
        for path in (folder / CONFIG_FILE, folder / WEIGHTS_FILE):
            if not path.is_file():
                raise ConfigError(f"no steering vectors at {folder}: {path.name} is missing (a folder holds "
                                  f"{CONFIG_FILE} and {WEIGHTS_FILE}); {remedy}.")
        record = read_versioned_json(folder / CONFIG_FILE, FORMAT_NAME, FORMAT_VERSION, remedy)
        try:
            emotions, hookpoints = list(record["emotions"]), list(record["hookpoints"])
            tensors = load_file(str(folder / WEIGHTS_FILE))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{folder / CONFIG_FILE} is malformed ({err}); {remedy}.") from None
        except (SafetensorError, OSError) as err:
            raise ConfigError(f"{folder / WEIGHTS_FILE} is not a readable safetensors file "
                              f"({' '.join(str(err).split())[:200]}); {remedy}.") from None
        wanted = {f"{e}{SEPARATOR}{h}" for e in emotions for h in hookpoints}
        if set(tensors) != wanted:
            raise ConfigError(f"{folder / WEIGHTS_FILE} holds tensors {sorted(set(tensors) ^ wanted)[:6]} that do "
                              f"not match the emotions {emotions} x hookpoints {hookpoints} of {CONFIG_FILE}; {remedy}.")
        refuse_non_finite_weights(tensors, f"the steering vectors in {folder}")
        vectors = {e: {h: tensors[f"{e}{SEPARATOR}{h}"].float() for h in hookpoints} for e in emotions}
        return cls(vectors, dict(record.get("metadata", {})))


def mean_difference_vectors(states: PairedStates, hookpoints: Sequence[str] | None = None,
                            emotions: Sequence[str] | None = None, metadata: Mapping[str, Any] | None = None
                            ) -> SteeringVectors:
    """Per emotion and hookpoint: mean of its emotional states minus mean of their neutral twins (CoCoEmo Eq. 6)."""
    points = list(hookpoints or states.hookpoints)
    missing = [h for h in points if h not in states.emotional]
    if missing:
        raise ConfigError(f"the paired states hold no rows at {missing}; they were read at {states.hookpoints}.")
    wanted = list(emotions or sorted(set(states.emotions)))
    absent = [e for e in wanted if e not in states.emotions]
    if absent:
        raise ConfigError(f"no pairs of {absent}; the pairs hold {sorted(set(states.emotions))}.")
    vectors = {}
    for e in wanted:
        rows = torch.tensor([i for i, label in enumerate(states.emotions) if label == e], dtype=torch.long)
        vectors[e] = {h: (states.emotional[h][rows].double().mean(0) - states.neutral[h][rows].double().mean(0)).float()
                      for h in points}
    record = {"pool": states.pool, "pairs": {e: int(sum(label == e for label in states.emotions)) for e in wanted},
              **dict(metadata or {})}
    return SteeringVectors(vectors, record)


class MultiLayerSteering(Intervention):
    """``x_L + α·t_L`` at each of several hookpoints with one α and schedule (CoCoEmo's multi-layer translation).

    It is one intervention to its user (one α to set, one entry in :func:`~emoctl.steering.base.steer`) and
    attaches as one :class:`DirectionSteering` per hookpoint, so it composes with any other intervention there."""

    def __init__(self, vectors: Mapping[str, Tensor], alpha: Alpha, *, schedule: Schedule = None,
                 phases: Iterable[Phase | str] | None = (Phase.DECODE,), name: str = "multi_layer") -> None:
        if not vectors:
            raise ConfigError("MultiLayerSteering needs a direction at one hookpoint at least.")
        self._parts: list[DirectionSteering] = []
        super().__init__(next(iter(vectors)), alpha, schedule, phases, name)
        self._parts = [DirectionSteering(v, alpha, h, schedule=schedule, phases=phases, name=f"{name}@{h}")
                       for h, v in vectors.items()]

    @Intervention.alpha.setter
    def alpha(self, value: Alpha) -> None:
        Intervention.alpha.fset(self, value)
        for part in self._parts:
            part.alpha = value

    @property
    def schedule(self) -> Schedule:
        return self._schedule

    @schedule.setter
    def schedule(self, value: Schedule) -> None:
        """Set the schedule of every part at once (as α)."""
        self._schedule = value
        for part in getattr(self, "_parts", []):
            part.schedule = value

    @property
    def hookpoints(self) -> list[str]:
        return [p.hookpoint for p in self._parts]

    @property
    def dimension(self) -> int:
        return self._parts[0].dimension

    def parts(self) -> list[Intervention]:
        return list(self._parts)

    def check_backbone(self, backbone) -> None:
        for part in self._parts:
            part.check_backbone(backbone)

    def delta(self, x: Tensor, alpha: Tensor, ctx: HookContext) -> Tensor:
        raise TypeError("MultiLayerSteering attaches through its parts(); steer() never calls its delta.")


def vector_steering(vectors: SteeringVectors, emotion: str, alpha: Alpha, *, hookpoints: Sequence[str] | None = None,
                    schedule: Schedule = None, phases: Iterable[Phase | str] | None = (Phase.DECODE,)
                    ) -> MultiLayerSteering:
    """The emotion's directions at ``hookpoints`` (default: every one in the file) as one intervention."""
    own = vectors.for_emotion(emotion)
    points = list(hookpoints or own)
    missing = [h for h in points if h not in own]
    if missing:
        raise ConfigError(f"the steering vectors have no direction at {missing}; they hold {', '.join(own)}.")
    return MultiLayerSteering({h: own[h] for h in points}, alpha, schedule=schedule, phases=phases,
                              name=f"directions[{emotion}]")
