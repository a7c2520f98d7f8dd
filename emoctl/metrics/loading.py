"""One place that turns a recognizer name and an optional folder into an :class:`EmotionRecognizer`."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from emoctl.errors import ConfigError
from emoctl.metrics.ser import EmotionRecognizer
from emoctl.metrics.emotion2vec import Emotion2Vec
from emoctl.metrics.ser_mini import DEFAULT_MINI_SER_DIR, load_mini_ser

RECOGNIZERS = ("mini", "emotion2vec")


@lru_cache(maxsize=4)
def load_recognizer(kind: str = "mini", path: str | None = None) -> EmotionRecognizer:
    """``"mini"``: the embedded recognizer (``path`` None = the committed one); ``"emotion2vec"``: funasr, local dir.

    Cached, so callbacks and reports that ask again reuse the loaded model.
    """
    if kind == "mini":

        return load_mini_ser(path)
    if kind == "emotion2vec":
        if path is None:
            raise ConfigError("recognizer 'emotion2vec' needs the folder of a local emotion2vec model "
                              "(plus_large or base), e.g. recognizer_dir: /models/emotion2vec_plus_large.")

        return Emotion2Vec(path)
    raise ConfigError(f"unknown recognizer {kind!r}; choose one of {', '.join(RECOGNIZERS)}.")


def recognizer_folder(kind: str, path: str | None) -> Path | None:
    """The folder whose files are the recognizer's weights (the committed mini SER when ``path`` is None), which a
    report's provenance digests."""
    if path is not None:
        return Path(path)
    if kind == "mini":

        return Path(DEFAULT_MINI_SER_DIR)
    return None
