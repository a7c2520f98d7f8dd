"""Turn an ESD-layout corpus into speech tokens once, and keep them on disk.

Tokenizing is WORLD analysis of every clip (a few hundredths of a second per
second of audio), cheap but not free, and the LM reads the tokens every
epoch. So the tokens are cached next to the corpus in
``.tokens-<codec digest>.npz``: a different codec gets a different file, and
inside a file each clip is keyed by its path, size and modification time, so
added or re-rendered clips are re-encoded and the rest reused.

ESD layout: ``<root>/<speaker>/<Emotion>/{train,evaluation,test}/<id>.wav``;
copies without the split folders (``<root>/<speaker>/<Emotion>/<id>.wav``)
are read too, with ``split=None``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from emoctl.backbones.mini_tts.codec import SpeechCodec, map_in_workers
from emoctl.errors import ConfigError
from emoctl.io.keyed_cache import read_keyed_arrays, stat_key, write_keyed_arrays

SPLITS = ("train", "evaluation", "test")
CACHE_PREFIX = ".tokens-"


@dataclass(frozen=True)
class CorpusClip:
    """One wav of an ESD-layout corpus."""
    utt_id: str          # file stem, e.g. "0011_000351"; unique across the corpus
    speaker: str         # e.g. "0011"
    emotion: str         # folder name, e.g. "Angry"
    split: str | None    # "train" | "evaluation" | "test", None for a flat copy
    path: Path


def list_corpus_clips(corpus_root: str | os.PathLike, *, split: str | None = None,
                      emotions: Iterable[str] | None = None) -> list[CorpusClip]:
    """All clips of the corpus, sorted by ``utt_id``, optionally of one split and some emotions.

    Raises ``ConfigError`` when the folder holds no clips or two clips share an id.
    """
    root = Path(corpus_root)
    if not root.is_dir():
        raise ConfigError(f"Corpus folder {root} does not exist. Build one (emoctl.corpus) or fix the path.")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS} or None, got {split!r}.")
    wanted = None if emotions is None else set(emotions)
    clips: list[CorpusClip] = []
    for wav in root.glob("*/*/**/*.wav"):
        parts = wav.relative_to(root).parts          # (speaker, Emotion, [split,] name)
        if len(parts) == 3 and parts[1] in SPLITS:       # a speaker folder given as the root
            continue
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[2] not in SPLITS):
            continue
        clip_split = parts[2] if len(parts) == 4 else None
        if (split is not None and clip_split != split) or (wanted is not None and parts[1] not in wanted):
            continue
        clips.append(CorpusClip(wav.stem, parts[0], parts[1], clip_split, wav))
    if not clips:
        raise ConfigError(f"No clips in {root} (split={split!r}, emotions={emotions!r}): expected ESD layout "
                          "<root>/<speaker>/<Emotion>/[train|evaluation|test/]<id>.wav.")
    clips.sort(key=lambda c: c.utt_id)
    for a, b in zip(clips, clips[1:]):
        if a.utt_id == b.utt_id:
            raise ConfigError(f"Two clips share the id {a.utt_id!r}: {a.path} and {b.path}. Utterance ids "
                              "(file stems) must be unique across the corpus.")
    return clips


def read_wave(path: str | os.PathLike | BinaryIO) -> tuple[np.ndarray, int]:
    """(float32 samples, sample rate) of a sound file (or file object); multi-channel files come as (N, C)."""
    import soundfile
    source = path if hasattr(path, "read") else str(path)
    wave, sample_rate = soundfile.read(source, dtype="float32", always_2d=False)
    return wave, int(sample_rate)


def iter_corpus_waves(corpus_root: str | os.PathLike, *, split: str | None = "train",
                      emotions: Iterable[str] | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """``(wave, sample_rate)`` of each clip of a split, for :meth:`SpeechCodec.fit`.

    A generator, so a large corpus is never in memory at once; it has no
    length, so pass ``list(...)`` to ``fit`` if you want a bounded progress bar.
    """
    for clip in list_corpus_clips(corpus_root, split=split, emotions=emotions):
        yield read_wave(clip.path)


@dataclass(frozen=True)
class AudioSource:
    """One clip to tokenize, wherever its audio lives: a file, or encoded bytes (a Hugging Face row)."""
    key: str                  # unique cache key: the path relative to the corpus root, or "hf:<utt_id>"
    stamp: tuple[int, int]    # changes when the audio does: (size, mtime_ns) of a file, (len, crc32) of bytes
    path: Path | None = None
    data: bytes | None = None

    @classmethod
    def of_file(cls, path: Path, root: Path) -> AudioSource:
        return cls(path.relative_to(root).as_posix(), stat_key(path), path=path)

    @classmethod
    def of_bytes(cls, key: str, data: bytes) -> AudioSource:
        import zlib
        return cls(key, (len(data), zlib.crc32(data)), data=data)

    def read(self) -> tuple[np.ndarray, int]:
        if self.path is not None:
            return read_wave(self.path)
        import io
        return read_wave(io.BytesIO(self.data))  # type: ignore[arg-type]


@dataclass
class _PathEncoder:
    """Picklable job: tokens of one sound file or AudioSource, by any speech tokenizer (``encode``)."""
    tokenizer: Any

    def __call__(self, source: Path | AudioSource) -> np.ndarray:
        wave, sample_rate = source.read() if isinstance(source, AudioSource) else read_wave(source)
        name = str(source.path or source.key) if isinstance(source, AudioSource) else str(source)
        if isinstance(self.tokenizer, SpeechCodec):  # the codec names the file in its errors
            return self.tokenizer.encode_frames(self.tokenizer.analyze(wave, sample_rate, name=name))
        try:
            return np.asarray(self.tokenizer.encode(wave, sample_rate))
        except ConfigError as err:
            raise ConfigError(f"{name}: {err}") from None


def cache_path(corpus_root: str | os.PathLike, codec: SpeechCodec, cache_dir: str | os.PathLike | None = None
               ) -> Path:
    """Where :func:`tokenize_corpus` keeps the tokens of this corpus under this codec."""
    return Path(cache_dir if cache_dir is not None else corpus_root) / f"{CACHE_PREFIX}{codec.digest}.npz"


def tokenize_corpus(corpus_root: str | os.PathLike, codec: SpeechCodec, cache_dir: str | os.PathLike | None = None,
                    workers: int = 1, progress: bool = True) -> dict[str, torch.Tensor]:
    """``utt_id -> (T,) int64 tokens`` for every clip of the corpus, all splits.

    Reuses ``<cache_dir or corpus_root>/.tokens-<codec.digest>.npz`` for clips
    whose file is unchanged (same size and mtime), encodes the others in
    ``workers`` processes and rewrites the cache if anything changed.
    """
    root = Path(corpus_root)
    clips = list_corpus_clips(root)
    tokens = tokenize_sources([AudioSource.of_file(clip.path, root) for clip in clips], codec,
                              cache_path(root, codec, cache_dir), workers=workers, progress=progress,
                              desc=f"Tokenizing {root.name}")
    return dict(zip((clip.utt_id for clip in clips), tokens))


def cache_tokens(cache_file: Path, sources: Sequence[AudioSource], tokens: Sequence[np.ndarray]) -> None:
    """Put tokens already encoded from ``sources`` into the cache file, as :func:`tokenize_sources` would.

    For a caller that had the clips' WORLD frames anyway (fitting the codec
    analyses its training clips), so :func:`tokenize_sources` finds them and
    does not analyze those clips a second time.
    """
    if len(sources) != len(tokens):
        raise ValueError(f"{len(sources)} sources but {len(tokens)} token arrays")
    cached = read_keyed_arrays(cache_file, "tokens")
    for source, clip_tokens in zip(sources, tokens):
        cached[source.key] = (source.stamp, np.asarray(clip_tokens, dtype=np.int32))
    write_keyed_arrays(cache_file, cached, "tokens", empty=np.zeros(0, np.int32))


def tokenize_sources(sources: Sequence[AudioSource], codec: SpeechCodec, cache_file: Path, *, workers: int = 1,
                     progress: bool = True, desc: str = "Tokenizing", flush_every: int = 2000) -> list[torch.Tensor]:
    """(T,) int64 tokens of each source, in order, through the cache file ``cache_file``.

    Sources whose key and stamp are in the cache are not decoded again; the
    others are encoded in ``workers`` processes and added to the cache, which is
    rewritten atomically every ``flush_every`` new clips and at the end, so an
    interrupted first run keeps most of its work.  Entries of other sources
    stay, so jobs that read different splits of one corpus share a cache
    instead of evicting each other's.  The file name carries the codec digest
    (see :func:`cache_path`), so a new codec never reads old tokens.
    """
    cached = read_keyed_arrays(cache_file, "tokens")
    keys = [s.key for s in sources]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"two clips share the cache key {next(k for k in keys if keys.count(k) > 1)!r}.")
    todo = [i for i, s in enumerate(sources) if cached.get(s.key, (None,))[0] != s.stamp]
    tokens: list[np.ndarray | None] = [cached[s.key][1] if s.key in cached else None for s in sources]
    if todo:
        encoded = map_in_workers(_PathEncoder(codec), [sources[i].path or sources[i] for i in todo],
                                 workers=workers, total=len(todo), desc=desc, progress=progress)
        for done, (i, toks) in enumerate(zip(todo, encoded), 1):
            tokens[i] = toks
            cached[sources[i].key] = (sources[i].stamp, np.asarray(toks, dtype=np.int32))
            if done % flush_every == 0 or done == len(todo):
                write_keyed_arrays(cache_file, cached, "tokens", empty=np.zeros(0, np.int32))
    return [torch.from_numpy(np.asarray(t, dtype=np.int64)) for t in tokens]
