"""Which hookpoints carry emotion: CoCoEmo's discriminability analysis, and the file steering reads its layers from.

Definition (wsssy/CoCoEmo ``cocoemo/discriminability/_probe.py::compute_discriminability_for_steering``, run by
``scripts/discriminability.py``): at each layer, a binary classifier is fit on the *train* split's pooled states,
emotional (every emotion together) against neutral, and its accuracy on the *validation* split's states is that
layer's discriminability; the recommended layers are the five most accurate.  Two classifiers, as there:

* ``linear`` (the script's default): scikit-learn's ``StandardScaler`` then ``LogisticRegression`` (L2, C = 1,
  lbfgs, ``random_state=42``, ``max_iter=8000``), the pipeline CoCoEmo fits;
* ``centroid`` (the library's default): nearest class mean; a state is emotional when it is at least as close to
  the emotional mean.

Beside CoCoEmo's pooled score, each emotion's own accuracy (that emotion's pairs only) is reported.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from emoctl.errors import ConfigError
from emoctl.harvest.pooled import PairedStates
from emoctl.io.formats import read_versioned_json
from emoctl.io.fsio import atomic_write_bytes

Classifier = Literal["linear", "centroid"]
CLASSIFIERS = ("linear", "centroid")
FORMAT_NAME = "emoctl-layer-discriminability"
FORMAT_VERSION = 1
RECOMMENDED = 5
"""CoCoEmo's script recommends its five most discriminable layers."""


def fit_classifier(positive: Tensor, negative: Tensor, method: Classifier = "linear", C: float = 1.0,
                   max_iter: int = 8000) -> Callable[[Tensor], Tensor]:
    """A predictor ``(N, d) -> (N,) bool`` (True: emotional) fit on ``positive`` vs ``negative`` states."""
    if method not in CLASSIFIERS:
        raise ConfigError(f"classifier={method!r}: choose one of {', '.join(CLASSIFIERS)}.")
    if positive.shape[0] == 0 or negative.shape[0] == 0:
        raise ConfigError("a discriminability classifier needs states of both classes.")
    pos, neg = positive.double(), negative.double()
    if method == "centroid":
        mu_pos, mu_neg = pos.mean(0), neg.mean(0)
        return lambda x: (x.double() - mu_pos).norm(dim=1) <= (x.double() - mu_neg).norm(dim=1)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = torch.cat([pos, neg]).numpy()
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, solver="lbfgs", random_state=42,
                                                                max_iter=max_iter))
    probe.fit(x, y)
    return lambda s: torch.from_numpy(probe.predict(s.double().numpy()) > 0.5)


def accuracy(predict: Callable[[Tensor], Tensor], positive: Tensor, negative: Tensor) -> float:
    """Share of states classified correctly (emotional as emotional, neutral as neutral)."""
    right = int(predict(positive).sum()) + int((~predict(negative)).sum())
    return right / (positive.shape[0] + negative.shape[0])


@dataclass
class LayerScore:
    """One hookpoint's discriminability."""

    hookpoint: str
    accuracy: float
    """Validation accuracy of every emotion together vs neutral (CoCoEmo's score)."""
    train_accuracy: float
    n_train: int
    n_eval: int
    per_emotion: dict[str, float] = field(default_factory=dict)
    """Validation accuracy of each emotion's own classifier (its pairs only)."""


@dataclass
class Discriminability:
    """Every inspected hookpoint's score, most discriminable first, and what they were measured on."""

    scores: list[LayerScore]
    classifier: str
    pool: str
    backbone: str
    source: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Pairs per emotion in the ``train`` and ``evaluation`` splits."""

    def ranked(self) -> list[LayerScore]:
        """Most accurate first; ties keep the backbone's hookpoint order."""
        order = {s.hookpoint: i for i, s in enumerate(self.scores)}
        return sorted(self.scores, key=lambda s: (-s.accuracy, order[s.hookpoint]))

    def top(self, k: int, family: str | None = None) -> list[str]:
        """The ``k`` most discriminable hookpoints, optionally of one family (``attn_out``: CoCoEmo's site)."""
        pool = [s.hookpoint for s in self.ranked() if family is None or s.hookpoint.split(".")[0] == family]
        if not 1 <= k <= len(pool):
            have = f" of family {family}" if family else ""
            raise ConfigError(f"asked for the top {k} layers, but the discriminability file scores {len(pool)} "
                              f"hookpoints{have}; choose k in 1 .. {len(pool)} or inspect more hookpoints.")
        return pool[:k]

    def to_json(self) -> dict:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "classifier": self.classifier, "pool": self.pool,
                "backbone": self.backbone, "source": self.source, "counts": self.counts,
                "recommended": [s.hookpoint for s in self.ranked()[:RECOMMENDED]],
                "scores": [asdict(s) for s in self.scores]}

    def save(self, path: str | Path) -> Path:
        target = Path(path)
        atomic_write_bytes(target, (json.dumps(self.to_json(), indent=2) + "\n").encode())
        return target

    @classmethod
    def load(cls, path: str | Path) -> Discriminability:
        source = Path(path)
        if not source.is_file():
            raise ConfigError(f"no discriminability file at {source}; write one with `emoctl inspect layers`.")
        remedy = "rewrite it with `emoctl inspect layers`"
        raw = read_versioned_json(source, FORMAT_NAME, FORMAT_VERSION, remedy)
        try:
            scores = [LayerScore(**s) for s in raw["scores"]]
            out = cls(scores, raw["classifier"], raw["pool"], raw["backbone"], raw["source"], raw.get("counts", {}))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{source} is malformed ({err}); {remedy}.") from None
        bad = [s.hookpoint for s in scores if not (isinstance(s.accuracy, (int, float)) and math.isfinite(s.accuracy)
                                                   and 0.0 <= s.accuracy <= 1.0)]
        if not scores or bad:
            raise ConfigError(f"{source} has no scores or accuracies outside [0, 1] at {bad}; {remedy}.")
        return out


def layer_discriminability(train: PairedStates, evaluation: PairedStates, classifier: Classifier = "linear", *,
                           backbone: str = "", source: str = "", hookpoints: Sequence[str] | None = None
                           ) -> Discriminability:
    """Fit on ``train``'s pairs, score on ``evaluation``'s, at every hookpoint both hold (see module docstring)."""
    points = list(hookpoints or train.hookpoints)
    missing = [h for h in points if h not in train.emotional or h not in evaluation.emotional]
    if missing:
        raise ConfigError(f"hookpoints {missing} lack states in the train or evaluation pairs.")
    if train.pool != evaluation.pool:
        raise ConfigError(f"train states are pooled by {train.pool!r} but evaluation states by {evaluation.pool!r}.")
    emotions = sorted(set(train.emotions) & set(evaluation.emotions))
    if not emotions:
        raise ConfigError(f"the train pairs ({sorted(set(train.emotions))}) and evaluation pairs "
                          f"({sorted(set(evaluation.emotions))}) share no emotion.")
    scores = []
    for h in points:
        predict = fit_classifier(train.emotional[h], train.neutral[h], classifier)
        per_emotion = {}
        for e in emotions:
            tr, ev = _rows(train.emotions, e), _rows(evaluation.emotions, e)
            own = fit_classifier(train.emotional[h][tr], train.neutral[h][tr], classifier)
            per_emotion[e] = accuracy(own, evaluation.emotional[h][ev], evaluation.neutral[h][ev])
        scores.append(LayerScore(h, accuracy(predict, evaluation.emotional[h], evaluation.neutral[h]),
                                 accuracy(predict, train.emotional[h], train.neutral[h]),
                                 2 * len(train.emotions), 2 * len(evaluation.emotions), per_emotion))
    counts = {"train": train.counts(), "evaluation": evaluation.counts()}
    return Discriminability(scores, classifier, train.pool, backbone, source, counts)


def _rows(labels: Sequence[str], emotion: str) -> Tensor:
    return torch.tensor([i for i, label in enumerate(labels) if label == emotion], dtype=torch.long)
