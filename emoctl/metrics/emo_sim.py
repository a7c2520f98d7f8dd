"""SER accuracy and Emo-SIM from a recognizer's outputs.

* SER accuracy: the fraction of clips whose most probable emotion is the
  target, with a Wilson 95% interval.
* Emo-SIM: cosine between the recognizer's utterance embedding of a generated
  clip and a reference embedding.  Two references, never mixed, and every
  result says which one it used:

  - ``matched``: the clip's own reference recording (same text and speaker,
    the target emotion), as in the SAE paper's Table 1;
  - ``prototype``: the mean embedding of all reference clips of the target
    emotion (an emotion centroid, less tied to one recording's text and voice).

Emo-SIM is confounded by speaker and text (a clip is similar to a reference of
the same sentence whatever its emotion), so reports give it beside SER
accuracy, not instead of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
import torch.nn.functional as F

from emoctl.errors import ConfigError
from emoctl.metrics.stats import Estimate, mean_ci, proportion_ci

__all__ = ["EMO_SIM_MODES", "EmoSim", "emo_sim_matched", "emo_sim_prototype", "emotion_prototypes", "ser_accuracy"]

EMO_SIM_MODES = ("matched", "prototype")


@dataclass(frozen=True)
class EmoSim:
    """Per-clip Emo-SIM values and the reference they were measured against."""

    values: torch.Tensor  # (N,) cosine, NaN where the clip had no reference
    mode: Literal["matched", "prototype"]
    recognizer: str

    def summary(self) -> Estimate:
        return mean_ci(self.values.numpy())

    @property
    def label(self) -> str:
        """Column name for reports, e.g. "emo_sim_prototype"."""
        return f"emo_sim_{self.mode}"


def ser_accuracy(predicted: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> Estimate:
    """Fraction of ``predicted[i] == targets[i]`` with its Wilson 95% interval."""
    if len(predicted) != len(targets):
        raise ConfigError(f"SER accuracy: {len(predicted)} predictions but {len(targets)} targets.")
    unknown = sorted(set(targets) - set(labels))
    if unknown:
        raise ConfigError(f"SER accuracy: target emotions {unknown} are not among the recognizer's labels "
                          f"{list(labels)}; use ESD's names (Neutral, Angry, Happy, Sad, Surprise).")
    hits = sum(p == t for p, t in zip(predicted, targets))
    return proportion_ci(hits, len(targets))


def emo_sim_matched(generated: torch.Tensor, references: torch.Tensor, recognizer: str) -> EmoSim:
    """Cosine of each generated embedding (N, D) to its own reference's (N, D); NaN rows of references give NaN."""
    if generated.shape != references.shape:
        raise ConfigError(f"matched Emo-SIM needs one reference per clip: embeddings {tuple(generated.shape)} vs "
                          f"references {tuple(references.shape)}.")
    return EmoSim(F.cosine_similarity(generated.float(), references.float(), dim=1), "matched", recognizer)


def emotion_prototypes(embeddings: torch.Tensor, emotions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Mean embedding (D,) of the reference clips of each emotion; ``embeddings`` is (M, D)."""
    if embeddings.shape[0] != len(emotions):
        raise ConfigError(f"emotion prototypes: {embeddings.shape[0]} embeddings but {len(emotions)} emotion labels.")
    prototypes = {}
    for emotion in dict.fromkeys(emotions):
        rows = torch.tensor([e == emotion for e in emotions])
        prototypes[emotion] = embeddings[rows].float().mean(dim=0)
    return prototypes


def emo_sim_prototype(generated: torch.Tensor, targets: Sequence[str], prototypes: Mapping[str, torch.Tensor],
                      recognizer: str) -> EmoSim:
    """Cosine of each generated embedding (N, D) to the prototype of its target emotion (NaN if none exists)."""
    if generated.shape[0] != len(targets):
        raise ConfigError(f"prototype Emo-SIM: {generated.shape[0]} embeddings but {len(targets)} targets.")
    nan = torch.full((generated.shape[1],), float("nan"))
    reference = torch.stack([prototypes.get(t, nan) for t in targets]) if len(targets) else generated
    return EmoSim(F.cosine_similarity(generated.float(), reference.float(), dim=1), "prototype", recognizer)
