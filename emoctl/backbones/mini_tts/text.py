"""Text tokenizers of the mini TTS: text -> integer ids for the LM's text embedding.

The LM only sees ids and a vocabulary size, so any tokenizer that maps a
string to ids can feed it.  The default is character-level (lower-cased
letters, digits, space, basic punctuation): an English corpus needs nothing
more to learn, and it has no files to ship.  A phoneme tokenizer (e.g. eSpeak
NG's IPA output) can replace it by subclassing :class:`TextTokenizer` and
registering a ``kind`` in :data:`TOKENIZERS`; the checkpoint stores the kind and
vocabulary, so a saved model always reads text the way it was trained to.
"""
from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from emoctl.errors import ConfigError

PAD_ID = 0  # id 0 is reserved for padding in every tokenizer, so vocabularies start at 1


class TextTokenizer(ABC):
    """Maps text to ids in ``[1, vocab_size)``; id 0 is padding."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Size of the LM's text embedding table, padding included."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; raises ConfigError for empty text or symbols the tokenizer cannot read."""

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """JSON-able settings, including ``kind``, from which :func:`tokenizer_from_config` rebuilds it."""


class CharTokenizer(TextTokenizer):
    """One id per character of a fixed alphabet, after lower-casing and typographic clean-up."""

    kind = "char"
    DEFAULT_SYMBOLS: ClassVar[str] = " abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()"
    # Typographic variants that an ESD-like transcript contains, mapped to their plain forms.
    _REPLACEMENTS: ClassVar[dict[str, str]] = {
        "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
        "\u2026": "...", "\t": " ", "\n": " ", "\r": " ",
    }

    def __init__(self, symbols: str = DEFAULT_SYMBOLS) -> None:
        if len(set(symbols)) != len(symbols) or not symbols:
            raise ConfigError(f"CharTokenizer symbols must be non-empty and distinct, got {symbols!r}.")
        self.symbols = symbols
        self._ids = {ch: i + 1 for i, ch in enumerate(symbols)}  # 0 is padding

    @property
    def vocab_size(self) -> int:
        return len(self.symbols) + 1

    def normalize(self, text: str) -> str:
        """Lower-case, plain quotes and dashes, NFKC, runs of spaces collapsed, ends stripped."""
        text = unicodedata.normalize("NFKC", text)
        for src, dst in self._REPLACEMENTS.items():
            text = text.replace(src, dst)
        return re.sub(r" {2,}", " ", text.lower()).strip()

    def encode(self, text: str) -> list[int]:
        clean = self.normalize(text)
        if not clean:
            raise ConfigError(f"empty text {text!r}: a prompt needs at least one character to speak.")
        unknown = sorted({ch for ch in clean if ch not in self._ids})
        if unknown:
            raise ConfigError(
                f"text {text!r} has characters the tokenizer cannot read: {unknown!r}. Its alphabet is "
                f"{self.symbols!r}; rewrite the text (e.g. spell out symbols) or train with a larger alphabet."
            )
        return [self._ids[ch] for ch in clean]

    def to_config(self) -> dict[str, Any]:
        return {"kind": self.kind, "symbols": self.symbols}


TOKENIZERS: dict[str, type[TextTokenizer]] = {CharTokenizer.kind: CharTokenizer}
"""Tokenizer classes by ``kind``; a new tokenizer registers itself here."""


def tokenizer_from_config(config: dict[str, Any]) -> TextTokenizer:
    """Rebuild a tokenizer from :meth:`TextTokenizer.to_config` output (e.g. from a checkpoint)."""
    settings = dict(config)
    kind = settings.pop("kind", None)
    if kind not in TOKENIZERS:
        raise ConfigError(f"unknown text tokenizer kind {kind!r}; known kinds: {', '.join(TOKENIZERS)}.")
    return TOKENIZERS[kind](**settings)
