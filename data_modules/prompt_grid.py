"""``PromptGridDataModule``: the prompts of a harvest, texts x speakers x emotions, in fixed batches.

Every emotional prompt comes with its neutral twin (same text, same speaker),
because the SAE paper's Δ-score compares the two.  The grid is cut into
batches once, in a fixed order, and each batch carries a key from which the
model derives its sampling seed; ranks and resumed runs then only choose
*which* batches they generate, never how a batch is made up, so an
utterance's tokens (and activations) do not depend on the number of ranks or
on where an earlier run stopped.  A batch whose utterances are all committed
is skipped (``skip_utt_ids``); a partly committed one is generated again in
full and its missing utterances are written.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from emoctl.backbones.conditions import EmotionCondition, VoiceClip
from emoctl.corpus.build import split_sizes
from emoctl.corpus.esd import open_esd
from emoctl.corpus.references import ReferenceClips
from emoctl.corpus.sentences import generate_sentences
from emoctl.emotions import NEUTRAL
from emoctl.errors import ConfigError
from emoctl.harvest.prompts import GridPrompt, PromptBatch


@dataclass
class CorpusTexts:
    """Texts from emoctl's sentence grammar, as the embedded corpus builds them (same seed, same order)."""

    n_sentences: int = 300
    """Sentences of the corpus the backbone was trained on (recipes/mini_tts.yaml's corpus has 300)."""
    seed: int = 0
    """Grammar seed of that corpus."""
    split: Literal["train", "evaluation", "test", "held_out", "unseen", "all"] = "held_out"
    """Which texts: a corpus split (ESD's 20/30/300 proportions), held_out = evaluation + test, unseen = new
    sentences after the corpus's (never spoken in training), or all of the corpus's."""
    n_unseen: int = 50
    """How many new sentences ``split: unseen`` takes."""
    limit: int | None = None
    """Keep only the first ``limit`` texts of the split."""

    def texts(self) -> list[tuple[str, str]]:
        """(text_id, text) pairs; text_id ``s0042`` is the sentence's index in the grammar's sequence."""

        n = self.n_sentences + (self.n_unseen if self.split == "unseen" else 0)
        sentences = generate_sentences(n, self.seed)
        sizes = split_sizes(self.n_sentences)
        ev, te = sizes["evaluation"], sizes["test"]
        ranges = {"evaluation": range(0, ev), "test": range(ev, ev + te), "held_out": range(0, ev + te),
                  "train": range(ev + te, self.n_sentences), "all": range(self.n_sentences),
                  "unseen": range(self.n_sentences, n)}
        chosen = list(ranges[self.split])[: self.limit]
        if not chosen:
            raise ConfigError(f"data.corpus split {self.split!r} of {self.n_sentences} sentences (limit "
                              f"{self.limit}) holds no text; choose another split or a larger n_sentences.")
        return [(f"s{i:04d}", sentences[i]) for i in chosen]


@dataclass
class EsdTexts:
    """Texts, speakers and reference clips from an ESD folder (ESD's own, or the embedded ESD-shaped corpus).

    ESD speaks the same sentences in every emotion and English speaker; a text's id is ``esd`` plus the
    number of its first Neutral clip (``esd000021``).  With ``voice: clip`` each speaker is voiced by a
    reference clip chosen by :mod:`emoctl.corpus.references`."""

    root: str = "runs/corpus/esd_espeak"
    """The ESD folder (speaker folders 0011 ... 0020, each with emotion folders and a transcript)."""
    split: Literal["train", "evaluation", "test", "held_out", "all"] = "held_out"
    """Which sentences: ESD's split (held_out = evaluation + test, never in a reference clip)."""
    limit: int | None = None
    """Keep only the first ``limit`` texts of the split."""

    def read(self, speakers: Sequence[str] | None = None) -> tuple[list[tuple[str, str]], list[str], Any]:
        """(text_id, text) pairs, the folder's speakers (in ``speakers`` when given) and their ReferenceClips."""

        utterances = open_esd(self.root, speakers=list(speakers) if speakers else None)
        wanted = {"held_out": ("evaluation", "test"), "all": ("train", "evaluation", "test")}.get(
            self.split, (self.split,))
        texts: dict[str, str] = {}
        for utt in sorted(utterances, key=lambda u: u.utt_id.rsplit("_", 1)[-1]):
            if utt.emotion == NEUTRAL and utt.split in wanted:
                texts.setdefault(utt.text.strip(), f"esd{utt.utt_id.rsplit('_', 1)[-1]}")
        pairs = [(text_id, text) for text, text_id in texts.items()][: self.limit]
        if not pairs:
            raise ConfigError(f"data.esd: {self.root} has no Neutral clip in split {self.split!r} "
                              f"(limit {self.limit}); choose another split.")
        found = sorted({u.speaker for u in utterances})
        return pairs, found, ReferenceClips(utterances, self.root)


class _Batches(Dataset):
    def __init__(self, batches: Sequence[PromptBatch]) -> None:
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> PromptBatch:
        return self.batches[i]


def _keep(batch: PromptBatch) -> PromptBatch:
    return batch  # DataLoader's collate for batch_size=None: prompts are not tensors


class PromptGridDataModule(pl.LightningDataModule):
    """Predict batches of :class:`GridPrompt` over texts x speakers x emotions, each paired with Neutral."""

    def __init__(
        self,
        texts: list[str] | None = None,
        texts_file: str | None = None,
        corpus: CorpusTexts | None = None,
        speakers: list[str] | None = None,
        emotions: list[str] | None = None,
        neutral: str = NEUTRAL,
        batch_size: int = 16,
        esd: EsdTexts | None = None,
        voice: Literal["name", "clip"] = "name",
    ) -> None:
        """
        Args:
            texts: The texts to speak, listed in the recipe (text ids t0000, t0001, ...).
            texts_file: A UTF-8 file of texts, one per line (blank lines skipped; text id = line number, L0007).
            corpus: Texts from the embedded corpus's sentence grammar (text id = sentence index, s0042).
                Give exactly one of texts, texts_file and corpus.
            speakers: Speakers to voice; None means all of the backbone's.
            emotions: Emotion conditions; None means all of the backbone's. ``neutral`` is always added,
                so every emotional prompt has its neutral twin.
            neutral: The backbone's neutral emotion name.
            batch_size: Prompts generated together. Part of an utterance's identity: its tokens depend on
                the batch it is sampled in, so a resumed harvest must keep the same batch size.
            esd: Texts (and, with voice: clip, speakers and reference clips) from an ESD folder.
            voice: How a speaker is voiced: by "name" (the mini TTS), or by a reference "clip" of the speaker
                from the ESD folder (zero-shot backbones: IndexTTS2); the store still files the ESD speaker id.
        """
        super().__init__()
        given = [name for name, v in (("texts", texts), ("texts_file", texts_file), ("corpus", corpus),
                                      ("esd", esd)) if v is not None]
        if len(given) != 1:
            raise ConfigError(f"give exactly one of data.texts, data.texts_file, data.corpus and data.esd; got "
                              f"{', '.join(given) or 'none'}.")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}.")
        if voice not in ("name", "clip"):
            raise ConfigError(f"data.voice must be 'name' or 'clip', got {voice!r}.")
        if voice == "clip" and esd is None:
            raise ConfigError("data.voice: clip takes its reference clips from an ESD folder; give data.esd.")
        # An empty list is not "all" (that is null): it makes an empty or Neutral-only grid, which would harvest
        # nothing and still exit 0.
        for key, names in (("speakers", speakers), ("emotions", emotions)):
            if names is not None and len(names) == 0:
                raise ConfigError(f"data.{key} is an empty list, so the grid holds no prompt to harvest. List at "
                                  f"least one name, or leave data.{key} out (null) for all of the backbone's.")
        self.texts_spec, self.texts_file, self.corpus, self.esd = texts, texts_file, corpus, esd
        self.speakers, self.emotions, self.neutral = speakers, emotions, neutral
        self.batch_size, self.voice = batch_size, voice
        self._references: Any = None
        self.texts = self._read_texts()
        self._skip: frozenset[str] = frozenset()
        self._bound = False
        self._condition_for: Callable[[str], EmotionCondition] | None = None

    # ----------------------------------------------------------------- texts
    def _read_texts(self) -> list[tuple[str, str]]:
        if self.texts_spec is not None:
            pairs, where = [(f"t{i:04d}", t) for i, t in enumerate(self.texts_spec)], "data.texts"
        elif self.texts_file is not None:
            path = Path(self.texts_file)
            if not path.is_file():
                raise ConfigError(f"data.texts_file {path} does not exist; give a UTF-8 file with one text per line.")
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as err:
                raise ConfigError(f"data.texts_file {path} is not UTF-8 ({err}); re-save it as UTF-8.") from None
            pairs, where = [(f"L{n:04d}", line.strip()) for n, line in enumerate(lines, 1) if line.strip()], str(path)
        elif self.esd is not None:
            pairs, found, self._references = self.esd.read(self.speakers)
            where = f"data.esd ({self.esd.root})"
            if self.voice == "clip":  # the folder's speakers are the voices
                self.speakers = self.speakers or found
                self._references.check(self.speakers)
        else:
            assert self.corpus is not None
            pairs, where = self.corpus.texts(), "data.corpus"
        if not pairs:
            raise ConfigError(f"{where} holds no text; give at least one non-empty text.")
        for text_id, text in pairs:
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"empty text {text!r} at {text_id} of {where}; every prompt needs words to speak.")
        return pairs

    # ------------------------------------------------------------ backbone
    def bind_backbone(self, speakers: Sequence[str], emotions: Sequence[str],
                      condition_for: Callable[[str], EmotionCondition] | None = None) -> None:
        """Check the grid's names against the backbone's and fill in the defaults (idempotent).

        ``condition_for`` (the backbone's): how it is asked for each emotion name; None keeps the name as a label.
        """
        checks = [("emotion", self.emotions, emotions)]
        if self.voice == "name":  # clips voice the folder's speakers; a named voice must be the backbone's
            checks.append(("speaker", self.speakers, speakers))
        for kind, wanted, known in checks:
            for name in wanted or ():
                if name not in known:
                    raise ConfigError(f"unknown {kind} {name!r} in data.{kind}s; the backbone knows: "
                                      f"{', '.join(known)}.")
        if self.neutral not in emotions:
            raise ConfigError(f"data.neutral={self.neutral!r} is not one of the backbone's emotions "
                              f"({', '.join(emotions)}); set it to the backbone's neutral condition.")
        if self.speakers is None:
            self.speakers = list(speakers)
        emotions_wanted = list(emotions) if self.emotions is None else list(self.emotions)
        self.emotions = [self.neutral] + [e for e in dict.fromkeys(emotions_wanted) if e != self.neutral]
        self.speakers = list(dict.fromkeys(self.speakers))
        self._condition_for = condition_for
        self._bound = True

    # -------------------------------------------------------------- prompts
    @property
    def prompts(self) -> list[GridPrompt]:
        """The whole grid, text-major (each pair group is contiguous), neutral first within a group."""
        if not self._bound and (self.speakers is None or self.emotions is None):
            raise ConfigError("data.speakers or data.emotions is unset and no backbone was bound to fill them in; "
                              "list them in the recipe or run the data module with a HarvestModule.")
        speakers = self.speakers or []
        emotions = self.emotions or []
        if self.neutral not in emotions:
            emotions = [self.neutral, *emotions]
        conditions = {e: self._condition_for(e) if self._condition_for is not None else e for e in emotions}
        out = []
        for text_id, text in self.texts:
            for speaker in speakers:
                voice: Any = speaker
                if self.voice == "clip":
                    voice = VoiceClip(str(self._references.for_text(speaker, text)), speaker)
                for emotion in emotions:
                    out.append(GridPrompt(text=text, voice=voice, emotion=conditions[emotion],
                                          utt_id=f"{text_id}-{speaker}-{emotion}", text_id=text_id,
                                          condition=f"prompt={emotion}", pair_key=f"{speaker}|{text_id}",
                                          label=emotion))
        return out

    def all_batches(self) -> list[PromptBatch]:
        """The fixed partition of the grid into batches (the same on every rank and every run)."""
        prompts = self.prompts
        return [PromptBatch(prompts[a:a + self.batch_size], i, prompts[a].utt_id or "")
                for i, a in enumerate(range(0, len(prompts), self.batch_size))]

    def skip_utt_ids(self, utt_ids: Iterable[str]) -> None:
        """Utterances already in the store; batches made only of these are not generated again."""
        self._skip = frozenset(utt_ids)

    def pending_batches(self, rank: int = 0, world_size: int = 1) -> list[PromptBatch]:
        """This rank's share of the batches that still hold an uncommitted utterance (round-robin)."""
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank}.")
        todo = [b for b in self.all_batches() if any(p.utt_id not in self._skip for p in b.prompts)]
        return todo[rank::world_size]

    def fingerprint(self) -> str:
        """SHA-256 of the grid and its batching: a store resumed under another grid would mix two harvests."""
        prompts = [(p.utt_id, p.text) + ((p.voice.key,) if self.voice == "clip" else ()) for p in self.prompts]
        payload = json.dumps({"prompts": prompts, "batch_size": self.batch_size})
        return hashlib.sha256(payload.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        source = ({"corpus": asdict(self.corpus)} if self.corpus is not None else
                  {"esd": asdict(self.esd), "voice": self.voice} if self.esd is not None else
                  {"texts_file": self.texts_file} if self.texts_file is not None else {"texts": len(self.texts)})
        return {**source, "speakers": self.speakers, "emotions": self.emotions, "batch_size": self.batch_size,
                "utterances": len(self.prompts), "grid_sha256": self.fingerprint()}

    # --------------------------------------------------------------- loader
    def transfer_batch_to_device(self, batch: PromptBatch, device: Any, dataloader_idx: int) -> PromptBatch:
        return batch  # prompts are text; the backbone puts its own tensors on its device

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return DataLoader(_Batches(self.pending_batches(rank, world)), batch_size=None, shuffle=False,
                          collate_fn=_keep, num_workers=0)
