"""``SERCorpusDataModule``: (log-mel, emotion) batches from an ESD-layout corpus, original and vocoded.

The recognizer is meant for speech the mini TTS *generates*, which the WORLD
codec vocodes from discrete tokens.  So beside every clip's own log-mel the
module can hold the log-mel of its codec round trip (``codec.decode(
codec.encode(wave))``): a seeded, emotion-balanced subset of the training
split (``roundtrip_train`` clips) is added to training, and subsets of the
evaluation and test splits are kept in both versions, so validation and the
final report say how well the recognizer does on each.  (A round trip costs
about 0.1 s of one core per clip, 25x a log-mel, hence subsets.)

Log-mels are computed once and cached in ``cache_dir`` (one ``.npz`` for the
originals, one per codec for the round trips, each keyed by the front-end
settings), clip by clip keyed on path, size and modification time, and
written atomically; an epoch then costs only the network.

Splits: ``train`` trains, ``evaluation`` validates, ``test`` is what the
reported accuracy is measured on (:meth:`test_items`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from data_modules.tts_corpus import LengthBucketSampler
from emoctl.backbones.mini_tts.codec import SpeechCodec, map_in_workers
from emoctl.corpus.esd import list_corpus_clips, read_wave
from emoctl.emotions import ESD_EMOTIONS
from emoctl.errors import ConfigError
from emoctl.io.keyed_cache import read_keyed_arrays, stat_key, write_keyed_arrays
from emoctl.metrics.ser_mini import LogMel, LogMelConfig, validate_wave

ORIGINAL, ROUNDTRIP = "original", "roundtrip"
CONDITIONS = (ORIGINAL, ROUNDTRIP)


class SERBatch(NamedTuple):
    """Right-padded log-mels and what each row is."""

    logmel: torch.Tensor    # (B, n_mels, T) float32, 0 past each length
    lengths: torch.Tensor   # (B,) int64 frames
    labels: torch.Tensor    # (B,) int64 index into the emotion labels
    speakers: list[str]     # (B,) speaker ids
    roundtrip: torch.Tensor  # (B,) bool, True for codec round trips


@dataclass(frozen=True)
class SERItem:
    """One clip's features in memory."""

    logmel: torch.Tensor  # (n_mels, T) float16
    label: int
    speaker: str
    utt_id: str
    roundtrip: bool


class SERItems(Dataset):
    """Clips by index; ``dataset[list_of_indices]`` returns one collated :class:`SERBatch`."""

    def __init__(self, items: Sequence[SERItem]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, indices: Sequence[int]) -> SERBatch:
        return collate([self.items[i] for i in indices])

    @property
    def lengths(self) -> list[int]:
        return [item.logmel.shape[-1] for item in self.items]


def collate(items: Sequence[SERItem]) -> SERBatch:
    lengths = torch.tensor([it.logmel.shape[-1] for it in items], dtype=torch.long)
    out = torch.zeros(len(items), items[0].logmel.shape[0], int(lengths.max()))
    for row, it in enumerate(items):
        out[row, :, :it.logmel.shape[-1]] = it.logmel.float()
    return SERBatch(out, lengths, torch.tensor([it.label for it in items], dtype=torch.long),
                    [it.speaker for it in items], torch.tensor([it.roundtrip for it in items]))


# --------------------------------------------------------------------------- feature cache
@dataclass
class _ClipFeatures:
    """Picklable job: (T, n_mels) float16 log-mel of one sound file, optionally after a codec round trip."""

    features: LogMelConfig
    codec: Any = None  # SpeechCodec or None

    def __call__(self, path: Path) -> np.ndarray:
        import torchaudio

        wave, rate = read_wave(path)
        if self.codec is not None:
            wave, rate = self.codec.decode(self.codec.encode(wave, rate))
        x = validate_wave(wave, rate, name=str(path))
        if rate != self.features.sample_rate:
            x = torchaudio.functional.resample(x, rate, self.features.sample_rate)
        with torch.no_grad():
            return LogMel(self.features)(x).T.numpy().astype(np.float16)


def feature_digest(features: LogMelConfig, codec_digest: str | None = None) -> str:
    """12 hex digits naming a cache: the front-end settings and, for round trips, the codec."""
    text = json.dumps({"features": asdict(features), "codec": codec_digest}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_logmels(root: Path, paths: Sequence[Path], cache_file: Path, job: _ClipFeatures, *, workers: int,
                   desc: str, flush_every: int = 250) -> dict[str, np.ndarray]:
    """``rel_path -> (T, n_mels)`` for ``paths``, computing only what ``cache_file`` lacks.

    The cache is rewritten every ``flush_every`` new clips (each write atomic),
    so an interrupted run keeps most of its work.
    """

    cached = read_keyed_arrays(cache_file, "mels")
    rels = [p.relative_to(root).as_posix() for p in paths]
    stats = [stat_key(p) for p in paths]
    todo = [i for i, (r, s) in enumerate(zip(rels, stats)) if cached.get(r, (None,))[0] != s]
    if todo:
        computed = map_in_workers(job, [paths[i] for i in todo], workers=workers, total=len(todo), desc=desc,
                                  progress=True)
        for done, (i, mel) in enumerate(zip(todo, computed), 1):
            cached[rels[i]] = (stats[i], mel)
            if done % flush_every == 0 or done == len(todo):
                write_keyed_arrays(cache_file, cached, "mels")
    return {r: cached[r][1] for r in rels}


# --------------------------------------------------------------------------- data module
class SERCorpusDataModule(pl.LightningDataModule):
    """Train/validation/test log-mels of one ESD-layout corpus, with codec round trips mixed in."""

    def __init__(
        self,
        corpus_root: str,
        codec_dir: str | None = None,
        cache_dir: str | None = None,
        features: LogMelConfig = LogMelConfig(),
        labels: Sequence[str] = ESD_EMOTIONS,
        roundtrip_train: int = 400,
        roundtrip_val: int | None = 100,
        roundtrip_test: int | None = 250,
        val_split: Literal["evaluation", "test"] = "evaluation",
        max_clips_per_split: int | None = None,
        batch_size: int = 64,
        bucket_batches: int = 20,
        workers: int = 2,
        seed: int = 0,
    ) -> None:
        """
        Args:
            corpus_root: Folder of the ESD-layout corpus (``<spk>/<Emotion>/<split>/<id>.wav``).
            codec_dir: Speech codec folder (``codec.json``); None trains and tests on original clips only.
            cache_dir: Where the log-mel caches go; None: ``<corpus_root>``.
            features: Log-mel front end; must equal the model's (the model checks at setup).
            labels: Emotion folders to use, in the order of the model's logits.
            roundtrip_train: Training clips (a seeded subset, balanced over emotions) added as codec round trips.
            roundtrip_val: Validation clips also kept as round trips (a seeded, balanced subset); None: all.
            roundtrip_test: Test clips also kept as round trips (a seeded, balanced subset); None: all.
            val_split: Split that validates (a tiny corpus may have no evaluation split); test always tests.
            max_clips_per_split: Use at most this many clips per split (a seeded, balanced subset); None: all.
            batch_size: Clips per training batch.
            bucket_batches: Batches whose clips are sorted by length together (less padding).
            workers: Processes that compute log-mels and round trips the cache lacks.
            seed: Seed of the subsets and of the batch order.
        """
        super().__init__()
        if batch_size < 1 or roundtrip_train < 0 or workers < 1:
            raise ConfigError(f"data.batch_size and data.workers must be >= 1 and data.roundtrip_train >= 0, got "
                              f"{batch_size}, {workers} and {roundtrip_train}.")
        self.corpus_root = Path(corpus_root)
        self.codec_dir = Path(codec_dir) if codec_dir is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.corpus_root
        self.features = features
        self.labels = tuple(labels)
        self.roundtrip_train = roundtrip_train
        self.roundtrip_val = roundtrip_val
        self.roundtrip_test = roundtrip_test
        self.val_split = val_split
        self.max_clips_per_split = max_clips_per_split
        self.batch_size = batch_size
        self.bucket_batches = bucket_batches
        self.workers = workers
        self.seed = seed
        self.splits: dict[str, SERItems] = {}
        self.codec_digest: str | None = None
        self.prepare_seconds = 0.0
        self._prepared: dict[str, dict[str, np.ndarray]] | None = None

    # --------------------------------------------------------------- clips
    def _clips(self, split: str) -> list[Any]:
        clips = list_corpus_clips(self.corpus_root, split=split, emotions=self.labels)
        missing = sorted(set(self.labels) - {c.emotion for c in clips})
        if missing:
            raise ConfigError(f"{self.corpus_root} has no {split} clips of {missing}; set data.labels to the "
                              "emotions the corpus has (and the model's labels to match).")
        if self.max_clips_per_split is not None:
            clips = self._balanced_subset(clips, self.max_clips_per_split, salt=split)
        return clips

    def _balanced_subset(self, clips: list[Any], n: int, *, salt: str) -> list[Any]:
        """``n`` clips, as many of each emotion as possible, chosen by a seeded shuffle; sorted by id."""
        rng = np.random.default_rng([self.seed, int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16)])
        by_emotion = {e: [c for c in clips if c.emotion == e] for e in self.labels}
        for group in by_emotion.values():
            rng.shuffle(group)
        picked = [c for rank in range(max(map(len, by_emotion.values()))) for e in self.labels
                  if rank < len(by_emotion[e]) for c in [by_emotion[e][rank]]][:n]
        return sorted(picked, key=lambda c: c.utt_id)

    def _plan(self) -> dict[str, dict[str, list[Any]]]:
        """split -> condition -> clips."""
        plan: dict[str, dict[str, list[Any]]] = {}
        use_codec = self.codec_dir is not None
        for split in dict.fromkeys(("train", self.val_split, "test")):
            clips = self._clips(split)
            count = {"train": self.roundtrip_train, "test": self.roundtrip_test}.get(split, self.roundtrip_val)
            roundtrip: list[Any] = []
            if use_codec:
                roundtrip = clips if count is None else self._balanced_subset(clips, count, salt="roundtrip")
            plan[split] = {ORIGINAL: clips, ROUNDTRIP: roundtrip}
        return plan

    def _load_codec(self) -> Any:
        assert self.codec_dir is not None
        return SpeechCodec.load(self.codec_dir)

    def _features(self) -> dict[str, dict[str, np.ndarray]]:
        """condition -> rel_path -> (T, n_mels), computing what the caches lack."""
        plan = self._plan()
        out: dict[str, dict[str, np.ndarray]] = {}
        for condition in CONDITIONS:
            paths = sorted({c.path for split in plan.values() for c in split[condition]})
            if not paths:
                out[condition] = {}
                continue
            codec = self._load_codec() if condition == ROUNDTRIP else None
            self.codec_digest = codec.digest if codec is not None else self.codec_digest
            name = f".ser-mels-{feature_digest(self.features, codec.digest if codec else None)}.npz"
            out[condition] = cached_logmels(self.corpus_root, paths, self.cache_dir / name,
                                            _ClipFeatures(self.features, codec), workers=self.workers,
                                            desc=f"log-mels ({condition})")
        return out

    # ------------------------------------------------------------- lightning
    def prepare_data(self) -> None:
        start = time.perf_counter()
        self._prepared = self._features()  # kept: with one process per node, setup needs no second read
        self.prepare_seconds = time.perf_counter() - start

    def setup(self, stage: str) -> None:
        if self.splits:
            return
        features = self._prepared or self._features()  # cache hits after prepare_data on another rank
        self._prepared = None
        for split, conditions in self._plan().items():
            items = []
            for condition, clips in conditions.items():
                for c in clips:
                    mel = features[condition][c.path.relative_to(self.corpus_root).as_posix()]
                    items.append(SERItem(torch.from_numpy(np.ascontiguousarray(mel.T)), self.labels.index(c.emotion),
                                         c.speaker, c.utt_id, condition == ROUNDTRIP))
            self.splits[split] = SERItems(items)
        rank_zero_info("SER clips: " + ", ".join(
            f"{s} {len(d)} ({sum(i.roundtrip for i in d.items)} round trips)" for s, d in self.splits.items()))
        if len(self.splits["train"]) < self.batch_size:
            raise ConfigError(f"{self.corpus_root} has {len(self.splits['train'])} training clips, fewer than "
                              f"data.batch_size={self.batch_size}; lower the batch size or use a larger corpus.")

    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-band mean and std (n_mels,) of the original training clips' log-mels, over all frames."""
        mels = [it.logmel.float() for it in self.splits["train"].items if not it.roundtrip]
        total = sum(m.shape[-1] for m in mels)
        mean = torch.stack([m.sum(-1) for m in mels]).sum(0) / total
        var = torch.stack([((m - mean[:, None]) ** 2).sum(-1) for m in mels]).sum(0) / total
        return mean, var.sqrt().clamp(min=1e-3)

    def _loader(self, items: SERItems, shuffle: bool) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = LengthBucketSampler(items.lengths, self.batch_size, shuffle=shuffle, seed=self.seed, rank=rank,
                                      world_size=world, bucket_batches=self.bucket_batches, drop_last=shuffle)
        return DataLoader(items, sampler=sampler, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits[self.val_split], shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits["test"], shuffle=False)

    def test_items(self) -> SERItems:
        """The test split (both conditions), for the report written at the end of fit."""
        return self.splits["test"]

    # ----------------------------------------------------------- provenance
    def describe(self) -> dict[str, Any]:
        """What the recognizer was trained on: corpus settings and seed, codec, clip counts, cache time."""
        record_path = self.corpus_root / "corpus.json"
        corpus: dict[str, Any] | None = None
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            corpus = {k: record.get(k) for k in ("format", "emoctl_version", "seed", "settings", "splits", "emotions",
                                                 "emotion_profiles", "jitter_std", "speakers")}
        return {
            "corpus_root": os.fspath(self.corpus_root.resolve()), "corpus": corpus,
            "codec_dir": os.fspath(self.codec_dir.resolve()) if self.codec_dir else None,
            "codec_digest": self.codec_digest, "features": asdict(self.features), "labels": list(self.labels),
            "roundtrip_train": self.roundtrip_train, "roundtrip_val": self.roundtrip_val,
            "roundtrip_test": self.roundtrip_test, "val_split": self.val_split, "max_clips_per_split": self.max_clips_per_split,
            "seed": self.seed, "prepare_seconds": round(self.prepare_seconds, 1),
            "clips": {s: {"total": len(d), "roundtrip": sum(i.roundtrip for i in d.items)}
                      for s, d in self.splits.items()},
        }
