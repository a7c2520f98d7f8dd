"""``TTSCorpusDataModule``: (prompt, speech tokens) batches from an ESD copy.

The clips come from :func:`emoctl.corpus.esd.open_esd`, the one ESD reader:
the real ESD or the embedded eSpeak corpus (``<root>/<spk>/<Emotion>/
[{train,evaluation,test}/]<id>.wav`` with ``<root>/<spk>/<spk>.txt``), or a
Hugging Face copy (``save_to_disk`` or audiofolder; columns in that module).
The codec tokens of every clip are cached next to the data in
``.tokens-<codec digest>.npz`` (a new codec never reads old tokens; a changed
clip is re-encoded).  When the codec folder is empty and ``fit_codec`` is
given, the codec is first fitted on the training split, so one ``emoctl fit``
goes from wavs to a model.

Batches group utterances of similar length (less padding, so fewer wasted
FLOPs), come in random order, and every DDP rank gets its own equal, disjoint
share of them (emoctl's CLI sets ``use_distributed_sampler: false``).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, NamedTuple, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from data_modules.resume import batches_done_this_epoch
from emoctl.backbones.base import Prompt
from emoctl.backbones.conditions import Voice, VoiceClip, VoiceName
from emoctl.backbones.loading import BackboneSpec
from emoctl.backbones.mini_tts.codec import SpeechCodec, analyze_for_fit
from emoctl.backbones.mini_tts.tokenize_corpus import AudioSource, cache_path, cache_tokens, tokenize_sources
from emoctl.corpus.esd import FLAT_SPLIT, EsdUtterance, check_emotions, open_esd, read_transcripts
from emoctl.corpus.references import ReferenceClips
from emoctl.errors import ConfigError
from emoctl.io.fsio import atomic_folder
from emoctl.store.sampler import ResumableBatchSampler

__all__ = ["CodecFit", "LengthBucketSampler", "TTSBatch", "TTSCorpusDataModule", "TTSItems", "collate",
           "read_transcripts"]


class TTSBatch(NamedTuple):
    """Utterances to teacher-force: prompts and right-padded speech tokens."""

    prompts: list[Prompt]
    speech: torch.Tensor  # (B, T) int64, 0 after each row's length
    speech_lengths: torch.Tensor  # (B,) int64


@dataclass
class CodecFit:
    """How to fit the speech codec on the training split when ``codec_dir`` holds none."""

    n_env_codes: int = 256
    """Spectral-envelope codes (k-means centroids)."""
    n_f0_bins: int = 32
    """F0 bins, bin 0 unvoiced."""
    seed: int = 0
    """k-means seed."""
    workers: int = 2
    """Processes for WORLD analysis."""
    max_kmeans_frames: int = 200_000
    """Frames k-means sees at most (a seeded subset)."""


class TTSItems(Dataset):
    """Utterances by index; ``dataset[list_of_indices]`` returns one collated :class:`TTSBatch`."""

    def __init__(self, prompts: Sequence[Prompt], tokens: Sequence[torch.Tensor]) -> None:
        self.prompts, self.tokens = list(prompts), list(tokens)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, indices: Sequence[int]) -> TTSBatch:
        return collate([self.prompts[i] for i in indices], [self.tokens[i] for i in indices])


def collate(prompts: Sequence[Prompt], tokens: Sequence[torch.Tensor]) -> TTSBatch:
    lengths = torch.tensor([len(t) for t in tokens], dtype=torch.long)
    speech = torch.zeros(len(tokens), max(lengths.tolist(), default=0), dtype=torch.long)
    for row, t in enumerate(tokens):
        speech[row, :len(t)] = t
    return TTSBatch(list(prompts), speech, lengths)


class LengthBucketSampler(ResumableBatchSampler):
    """Yields index arrays, one per batch: similar lengths together, random batch order, a share per rank.

    Each epoch the utterances are shuffled, cut into windows of ``bucket_batches``
    batches, sorted by length inside a window and cut into batches; the batches
    are shuffled again and dealt round-robin to the ranks, which all get the same
    number of batches.  Used as a DataLoader ``sampler`` with ``batch_size=None``
    so that Lightning's ``set_epoch`` reaches it.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, bucket_batches: int = 50, drop_last: bool = True) -> None:
        if batch_size < 1 or bucket_batches < 1:
            raise ConfigError(f"batch_size and bucket_batches must be >= 1, got {batch_size} and {bucket_batches}.")
        super().__init__(seed, rank, world_size)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.bucket_batches, self.drop_last = bucket_batches, drop_last

    def _all_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.lengths)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        window = self.batch_size * self.bucket_batches
        batches: list[np.ndarray] = []
        for start in range(0, n, window):
            chunk = order[start:start + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches[:len(batches) // self.world_size * self.world_size]

    def __iter__(self) -> Iterator[np.ndarray]:
        skip = self._take_skip()
        yield from self._all_batches()[self.rank::self.world_size][skip:]

    def __len__(self) -> int:
        return len(self._all_batches()) // self.world_size


class TTSCorpusDataModule(pl.LightningDataModule):
    """Train and validation batches of (prompt, codec tokens) from one ESD-layout corpus."""

    def __init__(
        self,
        corpus_root: str,
        codec_dir: str | None = None,
        backbone: BackboneSpec | None = None,
        cache_dir: str | None = None,
        batch_size: int = 16,
        val_split: Literal["evaluation", "test"] = "evaluation",
        max_speech_tokens: int = 1000,
        bucket_batches: int = 50,
        num_workers: int = 0,
        tokenize_workers: int = 2,
        seed: int = 0,
        fit_codec: CodecFit | None = None,
        speakers: list[str] | None = None,
        emotions: list[str] | None = None,
        flat_split: tuple[int, int] = FLAT_SPLIT,
        sample_rate: int = 16000,
        on_sample_rate: Literal["resample", "error"] = "resample",
        voice: Literal["name", "clip"] = "name",
    ) -> None:
        """
        Args:
            corpus_root: ESD folder (real ESD or the embedded corpus, with or without split folders) or a
                Hugging Face copy (save_to_disk folder or audiofolder).
            codec_dir: Folder of the mini TTS's speech codec (``codec.json`` + ``codec.safetensors``), for training
                a mini TTS (with ``fit_codec``, fitted here first). Give this or ``backbone``.
            backbone: The backbone whose own speech tokenizer encodes the clips (EmoShift and SFT on a trained
                backbone); the token cache is keyed by that tokenizer's digest. Give this or ``codec_dir``.
            cache_dir: Where the token cache goes; None: inside ``corpus_root``.
            batch_size: Utterances per batch on each rank.
            val_split: Corpus split used for validation ("train" is always the training split).
            max_speech_tokens: Longer utterances are left out (keep it <= the model's max_speech_tokens).
            bucket_batches: Batches whose utterances are sorted by length together; 1 disables bucketing.
            num_workers: DataLoader worker processes per rank.
            tokenize_workers: Processes for encoding clips the token cache lacks.
            seed: Seed of the batch order.
            fit_codec: Fit and save a codec into ``codec_dir`` when it holds none; None makes that an error.
            speakers: Speakers to read; None: every English ESD speaker folder present (0011-0020).
            emotions: Emotions to read (ESD names); None: all five.
            flat_split: Clips per speaker and emotion a flat copy gives to evaluation, then test (rest: train).
            sample_rate: Expected sample rate of the audio.
            on_sample_rate: Clips at another rate: "resample" them (with a warning) or refuse with an "error".
            voice: How each prompt names its voice: the speaker's "name" (backbones that know the corpus's
                speakers, like the mini TTS), or a reference "clip" of the speaker (zero-shot backbones such as
                IndexTTS2 and CosyVoice), chosen by emoctl.corpus.references (the speaker's first Neutral training
                clip, or its second when the first speaks the same sentence).
        """
        super().__init__()
        if batch_size < 1 or max_speech_tokens < 1:
            raise ConfigError(f"data.batch_size and data.max_speech_tokens must be >= 1, got {batch_size} and "
                              f"{max_speech_tokens}.")
        if (codec_dir is None) == (backbone is None):
            raise ConfigError("give data.backbone (the backbone whose speech tokenizer encodes the clips) or "
                              "data.codec_dir (a mini TTS codec folder, to train a mini TTS), not "
                              + ("both." if codec_dir is not None else "neither."))
        if backbone is not None and fit_codec is not None:
            raise ConfigError("data.fit_codec fits a mini TTS codec into data.codec_dir; with data.backbone the "
                              "backbone's own tokenizer is used. Remove fit_codec.")
        self.corpus_root = Path(corpus_root)
        self.codec_dir = Path(codec_dir) if codec_dir is not None else None
        self.backbone = backbone
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.val_split = val_split
        self.max_speech_tokens = max_speech_tokens
        self.bucket_batches = bucket_batches
        self.num_workers = num_workers
        self.tokenize_workers = tokenize_workers
        self.seed = seed
        self.fit_codec = fit_codec
        self.speakers = speakers
        self.emotions = check_emotions(emotions)
        self.flat_split = tuple(flat_split)
        self.sample_rate = sample_rate
        self.on_sample_rate = on_sample_rate
        if voice not in ("name", "clip"):
            raise ConfigError(f"data.voice must be 'name' or 'clip', got {voice!r}.")
        self.voice = voice
        self.codec = None
        self.train_items: TTSItems | None = None
        self.val_items: TTSItems | None = None
        self.n_too_long = 0

    def _voices(self, utterances: list[EsdUtterance]) -> Callable[[EsdUtterance], Voice]:
        """Each utterance's voice condition: its speaker's name, or a reference clip of the speaker that is not
        the utterance itself (teacher forcing must not hear the target it predicts)."""
        if self.voice == "name":
            return lambda utt: VoiceName(utt.speaker)
        references = ReferenceClips(utterances, self.corpus_root)
        references.check(sorted({u.speaker for u in utterances}))

        def voice_of(utt: EsdUtterance) -> Voice:
            return VoiceClip(str(references.for_text(utt.speaker, utt.text)), utt.speaker)

        return voice_of

    # --------------------------------------------------------------- files
    def utterances(self) -> list[EsdUtterance]:
        """Every clip of the selected speakers and emotions, with text and split, checked by the ESD reader."""
        return open_esd(self.corpus_root, speakers=self.speakers, emotions=self.emotions, flat_split=self.flat_split,
                        sample_rate=self.sample_rate, on_sample_rate=self.on_sample_rate, cache_dir=self.cache_dir)

    def _used(self, utterances: list[EsdUtterance]) -> list[EsdUtterance]:
        """The clips of the training and validation splits: the only ones tokenized (the test split is ~9% of
        ESD and of the embedded corpus, and encoding is the slow part of a first run)."""
        return [u for u in utterances if u.split in ("train", self.val_split)]

    def _sources(self, utterances: list[EsdUtterance]) -> list[Any]:
        """Each clip's audio and token-cache key: its file, or the bytes of a Hugging Face row."""

        return [AudioSource.of_file(u.path, self.corpus_root) if u.path is not None
                else AudioSource.of_bytes(f"hf:{u.utt_id}", u.audio) for u in utterances]  # type: ignore[arg-type]

    @property
    def tokenizer_digest(self) -> str | None:
        """Digest of the speech tokenizer whose tokens the batches carry (None before setup)."""
        return self.codec.digest if self.codec is not None else None

    def _load_tokenizer(self) -> Any:
        """The speech tokenizer: the backbone's own, or the mini TTS codec in ``codec_dir``."""
        if self.backbone is not None:
            tokenizer = self.backbone.load().speech_tokenizer
            if tokenizer is None:
                raise ConfigError(f"the {self.backbone.kind} backbone at {self.backbone.path or 'its default path'} "
                                  "has no speech tokenizer to encode the corpus with; point data.backbone.path at a "
                                  "complete checkpoint folder.")
            return tokenizer

        return SpeechCodec.load(self.codec_dir)

    def _tokens(self, utterances: list[EsdUtterance], codec: Any, progress: bool) -> list[torch.Tensor]:
        return tokenize_sources(self._sources(utterances), codec, cache_path(self.corpus_root, codec, self.cache_dir),
                                workers=self.tokenize_workers, progress=progress,
                                desc=f"Tokenizing {self.corpus_root.name}")

    def prepare_data(self) -> None:
        # One process per node: fit the codec if asked, then fill the token cache.
        utterances = self.utterances()
        if self.codec_dir is not None and not (self.codec_dir / "codec.json").is_file():
            if self.fit_codec is None:
                raise ConfigError(
                    f"no speech codec in {self.codec_dir} (codec.json missing). Point data.codec_dir at a codec "
                    "folder, or set data.fit_codec: {} in the recipe to fit one on the corpus's training split."
                )
            self._fit_codec_atomically([u for u in utterances if u.split == "train"])
        self._tokens(self._used(utterances), self._load_tokenizer(), progress=True)

    def _fit_codec_atomically(self, train: list[EsdUtterance]) -> None:
        """Fit the codec on the training clips, save it, and cache those clips' tokens from the same analysis."""

        fit = self.fit_codec
        assert fit is not None
        rank_zero_info(f"Fitting the speech codec on {self.corpus_root} (train split) into {self.codec_dir}")
        sources = self._sources(train)
        frames = analyze_for_fit([s.read() for s in sources], workers=fit.workers)
        codec = SpeechCodec.fit_frames(frames, n_env_codes=fit.n_env_codes, n_f0_bins=fit.n_f0_bins, seed=fit.seed,
                                       max_kmeans_frames=fit.max_kmeans_frames)
        with atomic_folder(self.codec_dir) as staging:
            codec.save(staging)
        # Tokenizing is WORLD analysis plus a nearest-centroid search: the analysis is done, so encoding the
        # training clips here spares the token cache a second pass over them (on the embedded corpus, fitting
        # and tokenizing took 6.1 min this way against 13.5 with the second pass).
        codec = self._load_tokenizer()  # the saved codec, whose digest names the cache file
        cache_tokens(cache_path(self.corpus_root, codec, self.cache_dir), sources,
                     [codec.encode_frames(f) for f in frames])

    def setup(self, stage: str) -> None:
        if self.train_items is not None:
            return
        self.codec = self._load_tokenizer()
        utterances = self._used(self.utterances())
        tokens = self._tokens(utterances, self.codec, progress=False)  # a cache hit after prepare_data
        splits: dict[str, tuple[list[Prompt], list[torch.Tensor]]] = {"train": ([], []), self.val_split: ([], [])}
        voice_of = self._voices(utterances)
        self.n_too_long = 0
        for utt, clip_tokens in zip(utterances, tokens):  # _used: every clip is of one of the two splits
            if len(clip_tokens) > self.max_speech_tokens or len(clip_tokens) == 0:
                self.n_too_long += 1
                continue
            prompts, toks = splits[utt.split]
            prompts.append(Prompt(utt.text, voice_of(utt), utt.emotion, utt.utt_id))
            toks.append(clip_tokens)
        if self.n_too_long:
            rank_zero_warn(f"left out {self.n_too_long} clips longer than data.max_speech_tokens="
                           f"{self.max_speech_tokens} (or empty).")
        self.train_items, self.val_items = TTSItems(*splits["train"]), TTSItems(*splits[self.val_split])
        if len(self.train_items) < self.batch_size:
            raise ConfigError(f"{self.corpus_root} has {len(self.train_items)} training clips, fewer than "
                              f"data.batch_size={self.batch_size}; lower the batch size or use a larger corpus.")

    # ------------------------------------------------------------- loaders
    @property
    def prompts(self) -> list[Prompt]:
        """Every prompt of both splits (the model checks its speakers, emotions and alphabet against them)."""
        return [*(self.train_items.prompts if self.train_items else []),
                *(self.val_items.prompts if self.val_items else [])]

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, items: TTSItems | None, shuffle: bool, resume_after: int = 0) -> DataLoader:
        if items is None:
            raise RuntimeError("setup() must run before the data loaders are built")
        rank, world = self._rank_and_world()
        sampler = LengthBucketSampler([len(t) for t in items.tokens], self.batch_size, shuffle=shuffle, seed=self.seed,
                                      rank=rank, world_size=world, bucket_batches=self.bucket_batches,
                                      drop_last=shuffle)
        sampler.resume_after(resume_after)
        return DataLoader(items, sampler=sampler, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        done = batches_done_this_epoch(self.trainer)
        if done:  # resumed mid-epoch: Lightning restarts the loader at its first batch; continue where it was
            # Lightning then warns that the loader is not resumable and batches may repeat; here they do not.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the "
                                    "epoch ended")
        return self._loader(self.train_items, shuffle=True, resume_after=done)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_items, shuffle=False)

    # ----------------------------------------------------------- provenance
    def describe(self) -> dict[str, Any]:
        """What the model was trained on, for its checkpoint: corpus build records, codec, split sizes."""
        corpus_records = {}
        for path in sorted(self.corpus_root.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                record = None
            if isinstance(record, dict):  # the build settings and checksum identify the corpus; the
                record.pop("utterances", None)  # per-clip rows (MBs) stay in the corpus folder
            corpus_records[path.name] = record
        train_tokens = sum(len(t) for t in self.train_items.tokens) if self.train_items else 0
        return {
            "corpus_root": os.fspath(self.corpus_root.resolve()), "corpus_records": corpus_records,
            "codec_dir": os.fspath(self.codec_dir.resolve()) if self.codec_dir is not None else None,
            "backbone": {"kind": self.backbone.kind, "path": self.backbone.path} if self.backbone is not None else None,
            "codec_digest": self.codec.digest if self.codec is not None else None,
            "train_clips": len(self.train_items) if self.train_items else 0, "train_tokens": train_tokens,
            "speakers": sorted({p.speaker for p in self.prompts}), "emotions": self.emotions,
            "voice": self.voice, "val_split": self.val_split, "val_clips": len(self.val_items) if self.val_items else 0,
            "left_out_too_long": self.n_too_long, "max_speech_tokens": self.max_speech_tokens,
        }
