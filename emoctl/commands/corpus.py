"""``emoctl corpus build`` and ``emoctl corpus ceiling``: the embedded ESD-shaped corpus and its SER ceiling."""
from __future__ import annotations

import numpy as np

from emoctl.corpus.build import build_corpus, read_corpus_record
from emoctl.corpus.ceiling import KNOBS, ceiling_markdown, fit_gaussian_classes, knob_features, predict_gaussian_classes
from emoctl.errors import ConfigError

__all__ = ["build_corpus", "prosody_ceiling"]  # build_corpus is the library's own typed function, used as is


def prosody_ceiling(corpus_root: str = "runs/corpus/esd_espeak", test_split: str = "test") -> dict:
    """Accuracy and confusion of the Bayes (QDA) classifier on the true knobs, trained off ``test_split``.

    Args:
        corpus_root: A finished corpus (its ``corpus.json`` records every utterance's knobs).
        test_split: Split to score on; the classifier is fitted on the other splits.
    """
    record = read_corpus_record(corpus_root)
    x, emotion_names, splits = knob_features(record)
    emotions = list(record["emotions"])
    labels = np.asarray([emotions.index(e) for e in emotion_names])
    test = np.asarray([s == test_split for s in splits])
    if not test.any() or test.all():
        raise ConfigError(f"test_split={test_split!r} must name one of the corpus's splits "
                          f"{sorted(set(splits))} and leave others to fit on.")
    model = fit_gaussian_classes(x[~test], labels[~test], len(emotions))
    predicted = predict_gaussian_classes(x[test], *model)
    confusion = np.zeros((len(emotions), len(emotions)), dtype=np.int64)
    np.add.at(confusion, (labels[test], predicted), 1)
    result = {"emotions": emotions, "accuracy": float(np.trace(confusion) / confusion.sum()),
              "confusion": confusion.tolist(), "test_split": test_split, "test_utterances": int(test.sum()),
              "knobs": list(KNOBS), "jitter_std": record.get("jitter_std")}
    print(ceiling_markdown(result))
    return result
