"""How well can *any* recognizer tell the corpus's emotions apart?  A classifier on the prosody knobs themselves.

The corpus draws every utterance's four eSpeak knobs (pitch, pitch range, rate,
volume) around its emotion's profile with Gaussian jitter, so the classes
overlap by design.  A recognizer that heard the knobs perfectly could still not
beat the Bayes classifier on them.  This module fits that classifier (one
Gaussian per emotion with full covariance, equal priors: quadratic discriminant
analysis, the Bayes rule for Gaussian classes) on the knobs recorded in
``corpus.json`` for the training sentences and scores it on the test
sentences.  Pitch and rate are taken relative to each speaker's own baseline,
as a listener who knows the voice would hear them.

The result is an estimate of the ceiling for SER accuracy on the corpus: an
audio recognizer also has to *measure* the knobs (rate and range from a
2-3 s clip are noisy), so it should land below it.
"""
from __future__ import annotations


import numpy as np

from emoctl.errors import ConfigError

KNOBS = ("pitch", "pitch_range", "rate", "volume")


def knob_features(record: dict) -> tuple[np.ndarray, list[str], list[str]]:
    """(N, 4) speaker-relative knobs of every utterance in a corpus.json record, their emotions and splits."""
    speakers = record["speakers"]
    rows, emotions, splits = [], [], []
    for u in record["utterances"]:
        voice = speakers[u["speaker"]]
        rows.append([u["pitch"] - (50 + voice["pitch_offset"]), u["pitch_range"], u["rate"] / voice["rate_wpm"],
                     u["volume"]])
        emotions.append(u["emotion"])
        splits.append(u["split"])
    return np.asarray(rows, dtype=np.float64), emotions, splits


def fit_gaussian_classes(x: np.ndarray, labels: np.ndarray, n_classes: int,
                         ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class mean (C, D), inverse covariance (C, D, D) and log-determinant (C,).

    ``ridge`` (times the mean feature variance) keeps a class with no spread in some knob invertible.
    """
    d = x.shape[1]
    scale = ridge * float(x.var(0).mean()) + 1e-12
    means, precisions, logdets = [], [], []
    for c in range(n_classes):
        members = x[labels == c]
        if len(members) < 2:
            raise ConfigError(f"class {c} has {len(members)} training utterances; need at least 2.")
        cov = np.cov(members, rowvar=False) + scale * np.eye(d)
        means.append(members.mean(0))
        precisions.append(np.linalg.inv(cov))
        logdets.append(np.linalg.slogdet(cov)[1])
    return np.stack(means), np.stack(precisions), np.asarray(logdets)


def predict_gaussian_classes(x: np.ndarray, means: np.ndarray, precisions: np.ndarray,
                             logdets: np.ndarray) -> np.ndarray:
    """argmax over classes of the Gaussian log-likelihood (equal priors)."""
    diff = x[:, None, :] - means[None]                                   # (N, C, D)
    mahalanobis = np.einsum("ncd,cde,nce->nc", diff, precisions, diff)   # (N, C)
    return np.argmax(-0.5 * (mahalanobis + logdets[None]), axis=1)


def ceiling_markdown(result: dict) -> str:
    emotions = result["emotions"]
    lines = [f"Bayes (QDA) classifier on the true speaker-relative prosody knobs, {result['test_utterances']} "
             f"{result['test_split']} utterances: accuracy **{result['accuracy']:.1%}** (the ceiling for SER on "
             "this corpus).", "", "| true \\ predicted | " + " | ".join(emotions) + " |",
             "|---|" + "---|" * len(emotions)]
    for name, row in zip(emotions, result["confusion"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)
