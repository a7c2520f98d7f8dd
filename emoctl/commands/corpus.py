"""``emoctl corpus build``, ``ceiling`` and ``codec``: the embedded ESD-shaped corpus, its SER ceiling, a codec fitted on it."""
from __future__ import annotations

import numpy as np

from emoctl.corpus.build import build_corpus, read_corpus_record
from emoctl.corpus.esd import list_corpus_clips, read_wave
from emoctl.corpus.ceiling import KNOBS, ceiling_markdown, fit_gaussian_classes, knob_features, predict_gaussian_classes
from emoctl.errors import ConfigError
from emoctl.io.fsio import check_output_dir

__all__ = ["build_corpus", "prosody_ceiling", "fit_subframe_codec"]  # build_corpus is the library's own typed function, used as is


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


def fit_subframe_codec(out_dir: str = "runs/codec/subframe", corpus_root: str = "runs/corpus/esd_espeak",
                       n_clips: int = 2000, n_codes: int = 1024, n_levels: int = 6, decoder_steps: int = 1500,
                       seed: int = 0, workers: int = 2, progress: bool = True) -> dict:
    """Fit a sub-frame codec (four 5 ms envelopes per token, RVQ, context decoder) on the corpus's train split.

    Args:
        out_dir: Where codec.json and codec.safetensors go (``emoctl inspect codec --codec_dir`` reads it).
        corpus_root: The ESD-layout corpus (``make corpus``).
        n_clips: Train-split clips fitted on, a seeded draw (0: all of them).
        n_codes: Codes per RVQ level.
        n_levels: RVQ levels per token.
        decoder_steps: Training steps of the context decoder.
        seed: Seed of the clip draw, the k-means and the decoder.
        workers: Processes for the WORLD analysis.
        progress: Show progress bars.
    """
    from emoctl.backbones.mini_tts.subframe_codec import DecoderTraining, SubframeCodec  # lazy: imports torch

    check_output_dir(out_dir, "out_dir")
    if n_clips < 0:
        raise ConfigError(f"n_clips must be >= 0 (0: the whole train split), got {n_clips}.")
    clips = list_corpus_clips(corpus_root, split="train")
    if 0 < n_clips < len(clips):
        keep = np.random.default_rng(seed).choice(len(clips), size=n_clips, replace=False)
        clips = [clips[i] for i in sorted(keep)]
    codec = SubframeCodec.fit([read_wave(c.path) for c in clips], n_codes=n_codes, n_levels=n_levels, seed=seed,
                              workers=workers, progress=progress, training=DecoderTraining(steps=decoder_steps))
    codec.save(out_dir)
    return {"codec": repr(codec), "out_dir": out_dir, "clips": len(clips)}
