"""Which sentences an evaluation speaks: the corpus's held-out test sentences, or its evaluation sentences."""
from __future__ import annotations

from pathlib import Path

from emoctl.errors import ConfigError
from emoctl.corpus.build import read_corpus_record


def corpus_test_sentences(corpus_root: Path) -> tuple[list[str], dict]:
    """The corpus's test-split sentences (never seen in LM training) and its corpus.json."""

    record = read_corpus_record(corpus_root)
    splits = record["splits"]
    first = splits["evaluation"]
    return record["sentences"][first:first + splits["test"]], record


def split_sentences(corpus_root: Path, split: str, n_texts: int) -> tuple[list[str], dict]:
    """The first ``n_texts`` sentences of a corpus split (``test``: never seen in backbone or layer training)."""
    test, record = corpus_test_sentences(corpus_root)
    n_eval = record["splits"]["evaluation"]
    if split == "test":
        texts = test
    elif split == "evaluation":
        texts = record["sentences"][:n_eval]
    else:
        raise ConfigError(f"split must be 'test' or 'evaluation', got {split!r}.")
    return texts[:n_texts], record
