"""Turn an ESD-layout corpus into speech tokens once, and keep them on disk.

Tokenizing is WORLD analysis of every clip (a few hundredths of a second per
second of audio), cheap but not free, and the LM reads the tokens every
epoch. So the tokens are cached next to the corpus in
``.tokens-<codec digest>.npz``: a different codec gets a different file, and
inside a file each clip is keyed by its path, size and modification time, so
added or re-rendered clips are re-encoded and the rest reused.

The clips are listed and read by :mod:`emoctl.corpus.esd` (``list_corpus_clips``,
``read_wave``), with its one rule for flat copies.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoctl.backbones.mini_tts.codec import SpeechCodec, map_in_workers
from emoctl.corpus.esd import list_corpus_clips, read_wave
from emoctl.errors import ConfigError
from emoctl.io.keyed_cache import read_keyed_arrays, stat_key, write_keyed_arrays

CACHE_PREFIX = ".tokens-"


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
