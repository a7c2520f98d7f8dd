"""One reader for every ESD copy emoctl meets: the real ESD, the embedded eSpeak corpus, and HF copies.

On disk (ESD and the embedded corpus share it)::

    <root>/<spk>/<spk>.txt                         id<TAB>text<TAB>Emotion, UTF-8, UTF-16 (BOM) or Latin-1
    <root>/<spk>/<Emotion>/{train,evaluation,test}/<spk>_<NNNNNN>.wav
    <root>/<spk>/<Emotion>/<spk>_<NNNNNN>.wav      (flat copies, without split folders)

English speakers are 0011-0020 (0001-0010 are Mandarin and are skipped).

The one rule for flat copies, applied by every reader here (:func:`read_esd`,
:func:`list_corpus_clips`, hence the mini TTS's tokenization, the data modules,
the evaluation and the reports): each speaker-and-emotion group is split by id
order, evaluation the first 20, test the next 30, train the rest (the last 300
of ESD's 350), the split used by third-party ESD recipes (:data:`FLAT_SPLIT`,
:func:`flat_split_name`).

Two readers of one layout: :func:`read_esd` reads the clips with their
transcripts and checks the folder against them (English speakers only);
:func:`list_corpus_clips` lists the audio alone (any speaker folder, no
transcript needed), for what only needs the sound (codec fitting, recognizers,
speaker similarity). :func:`read_wave` reads one clip.

Hugging Face copies (:func:`read_esd_hf`), written with ``save_to_disk`` (a
``Dataset`` or a ``DatasetDict``) or an ``audiofolder`` (wavs plus
``metadata.csv``/``metadata.jsonl``), need these columns:

* ``audio``: an ``Audio`` feature (or, in an audiofolder, the file named by ``file_name``);
* ``text``: the transcript;
* ``speaker``: ``"0011"`` .. ``"0020"`` (ints are zero-padded);
* ``emotion``: one of Neutral, Angry, Happy, Sad, Surprise (any case);
* ``utt_id`` (optional): defaults to the audio file's stem;
* ``split`` (optional): train/evaluation/test; else a DatasetDict's split names
  (``validation`` counts as evaluation), else the flat id-order rule.

Every problem is a :class:`~emoctl.errors.ConfigError` naming the file and the fix.
"""
from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Literal, Sequence

import numpy as np

from emoctl.emotions import ESD_EMOTIONS, NEUTRAL
from emoctl.errors import ConfigError

ESD_BLOCK = 350
"""Ids per emotion in ESD: Neutral 1-350, Angry 351-700, and so on."""

ESD_ENGLISH_SPEAKERS: tuple[str, ...] = tuple(f"{i:04d}" for i in range(11, 21))
SPLITS: tuple[str, ...] = ("train", "evaluation", "test")
FLAT_SPLIT: tuple[int, int] = (20, 30)
"""Clips per speaker and emotion that a flat copy gives to evaluation, then test (the rest is train)."""

SampleRatePolicy = Literal["resample", "error"]


@dataclass(frozen=True)
class EsdUtterance:
    """One clip with its transcript; audio is a file (``path``) or encoded bytes (``audio``, HF copies)."""

    utt_id: str
    speaker: str
    emotion: str
    split: str
    text: str
    path: Path | None = None
    audio: bytes | None = None
    sample_rate: int | None = None


# ------------------------------------------------------------------ transcripts
def decode_transcript(raw: bytes, path: Path) -> str:
    """Text of an ESD transcript: UTF-16 when it has a BOM, else UTF-8, else Latin-1 (which never fails)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as err:
            raise ConfigError(f"transcript {path} starts with a UTF-16 byte-order mark but is not UTF-16 ({err}); "
                              "re-save it as UTF-8.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_transcript_lines(path: Path) -> dict[str, tuple[str, str | None]]:
    """``utt_id -> (text, emotion column or None)`` of one speaker's transcript."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read transcript {path} ({err.strerror or err}); ESD keeps each speaker's texts "
                          "in <root>/<spk>/<spk>.txt as id<TAB>text<TAB>Emotion lines.") from None
    out: dict[str, tuple[str, str | None]] = {}
    for number, line in enumerate(decode_transcript(raw, path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip():
            raise ConfigError(f"{path} line {number} is not 'id<TAB>text<TAB>Emotion': {line[:80]!r}.")
        emotion = fields[2].strip() if len(fields) > 2 and fields[2].strip() else None
        out[fields[0].strip()] = (fields[1].strip(), emotion)
    return out


def read_transcripts(path: Path) -> dict[str, str]:
    """``utt_id -> text`` from an ESD transcript, whatever its encoding (UTF-8, UTF-16 or Latin-1)."""
    return {k: text for k, (text, _) in read_transcript_lines(path).items()}


# ---------------------------------------------------------------- checks
def check_emotions(emotions: Iterable[str] | None, where: str = "data.emotions") -> list[str]:
    """The requested emotions, in ESD order; an unknown name is an error listing the five."""
    if emotions is None:
        return list(ESD_EMOTIONS)
    emotions = list(emotions)
    unknown = [e for e in emotions if e not in ESD_EMOTIONS]
    if unknown:
        raise ConfigError(f"unknown emotion {unknown[0]!r} in {where}; ESD's emotions are {', '.join(ESD_EMOTIONS)} "
                          "(capitalised as written).")
    return [e for e in ESD_EMOTIONS if e in emotions]


def _canonical_emotion(name: str, where: str) -> str:
    for e in ESD_EMOTIONS:
        if name.strip().lower() == e.lower():
            return e
    raise ConfigError(f"unknown emotion {name!r} in {where}; ESD's emotions are {', '.join(ESD_EMOTIONS)}.")


def _english_speakers(found: Sequence[str], speakers: Sequence[str] | None, root: Path) -> list[str]:
    if speakers is not None:
        missing = [s for s in speakers if s not in found]
        if missing:
            raise ConfigError(f"speaker folder {root / missing[0]} is missing (data.speakers asks for {list(speakers)}); "
                              f"{root} has {', '.join(found) or 'no speaker folders'}.")
        return list(speakers)
    english = [s for s in found if s in ESD_ENGLISH_SPEAKERS]
    if not english:
        raise ConfigError(f"{root} has no English ESD speakers (folders 0011-0020); it has "
                          f"{', '.join(found) or 'no speaker folders'}. Point data.corpus_root at the folder that "
                          "holds 0011 .. 0020, or name the speakers in data.speakers.")
    return english


def flat_split_name(position: int, flat_split: tuple[int, int] = FLAT_SPLIT) -> str:
    """The split of the clip at ``position`` (0-based, in id order) of its speaker-and-emotion group in a flat copy:
    evaluation for the first ``flat_split[0]``, test for the next ``flat_split[1]``, train for the rest."""
    n_eval, n_test = flat_split
    return "evaluation" if position < n_eval else "test" if position < n_eval + n_test else "train"


def assign_flat_splits(utterances: Sequence[EsdUtterance], flat_split: tuple[int, int] = FLAT_SPLIT
                       ) -> list[EsdUtterance]:
    """Split each speaker-and-emotion group by id order: evaluation, then test, then train."""
    groups: dict[tuple[str, str], list[EsdUtterance]] = defaultdict(list)
    for u in utterances:
        groups[u.speaker, u.emotion].append(u)
    out = []
    for group in groups.values():
        for i, u in enumerate(sorted(group, key=lambda u: u.utt_id)):
            out.append(replace(u, split=flat_split_name(i, flat_split)))
    return sorted(out, key=lambda u: u.utt_id)


def check_sample_rates(utterances: Sequence[EsdUtterance], sample_rate: int, policy: SampleRatePolicy
                       ) -> None:
    """Clips at another rate are resampled (one warning) or refused, as ``policy`` says."""
    if policy not in ("resample", "error"):
        raise ConfigError(f"data.on_sample_rate must be 'resample' or 'error', got {policy!r}.")
    off = [u for u in utterances if u.sample_rate != sample_rate]
    if not off:
        return
    first = off[0]
    where = first.path or first.utt_id
    if policy == "error":
        raise ConfigError(f"{where} is at {first.sample_rate} Hz, not data.sample_rate={sample_rate} Hz "
                          f"({len(off)} clips are); resample the corpus or set data.on_sample_rate: resample.")
    warnings.warn(f"{len(off)} clips (e.g. {where} at {first.sample_rate} Hz) are not at {sample_rate} Hz and will "
                  "be resampled when tokenized.", stacklevel=2)


# ---------------------------------------------------------------- folders
def read_esd(root: str | os.PathLike, *, speakers: Sequence[str] | None = None,
             emotions: Iterable[str] | None = None, flat_split: tuple[int, int] = FLAT_SPLIT,
             sample_rate: int = 16000, on_sample_rate: SampleRatePolicy = "resample") -> list[EsdUtterance]:
    """Every clip of an ESD-layout folder (with or without split folders), sorted by id, checked."""
    import soundfile

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"ESD folder {root} does not exist; fix data.corpus_root.")
    wanted = check_emotions(emotions)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit() and len(p.name) == 4)
    utterances: list[EsdUtterance] = []
    flat = set()
    for speaker in _english_speakers(found, speakers, root):
        folder = root / speaker
        transcript_path = folder / f"{speaker}.txt"
        if not transcript_path.is_file():
            raise ConfigError(f"transcript {transcript_path} is missing: ESD keeps each speaker's texts in "
                              "<root>/<spk>/<spk>.txt as id<TAB>text<TAB>Emotion lines.")
        lines = read_transcript_lines(transcript_path)
        seen = set()
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if sub.name not in ESD_EMOTIONS:
                raise ConfigError(f"unknown emotion folder {sub}; ESD speaker folders hold {', '.join(ESD_EMOTIONS)} "
                                  "only. Rename or remove it.")
            if sub.name not in wanted:
                continue
            for wav, split in _emotion_folder_wavs(sub):
                utt = wav.stem
                if utt not in lines:
                    raise ConfigError(f"{wav} has no line {utt!r} in {transcript_path}: the transcript does not match "
                                      "the audio files. Add the line or remove the clip.")
                text, column = lines[utt]
                if column is not None and column.lower() != sub.name.lower():
                    raise ConfigError(f"{transcript_path} says {utt} is {column!r} but the clip is in {sub}; the "
                                      "transcript does not match the audio files.")
                try:
                    rate = soundfile.info(str(wav)).samplerate
                except (RuntimeError, OSError) as err:
                    raise ConfigError(f"cannot read audio file {wav} ({err}); re-copy it or remove it.") from None
                utterances.append(EsdUtterance(utt, speaker, sub.name, split or "", text, path=wav, sample_rate=rate))
                flat.add(split is None)
                seen.add(utt)
        expected = [u for u, (_, col) in lines.items()
                    if col is not None and _canonical_emotion(col, str(transcript_path)) in wanted]
        unheard = [u for u in expected if u not in seen]
        if unheard:
            raise ConfigError(f"{transcript_path} lists {len(unheard)} clips without audio (e.g. {unheard[0]}) for the "
                              f"emotions {wanted}: the transcript does not match the audio files. Restore the wavs or "
                              "limit data.emotions.")
    if not utterances:
        raise ConfigError(f"no clips in {root} for emotions {wanted}: expected ESD layout "
                          "<root>/<spk>/<Emotion>/[train|evaluation|test/]<spk>_<id>.wav.")
    if len(flat) > 1:
        raise ConfigError(f"{root} mixes emotion folders with and without train/evaluation/test subfolders; use one "
                          "layout throughout.")
    check_sample_rates(utterances, sample_rate, on_sample_rate)
    if flat == {True}:
        return assign_flat_splits(utterances, flat_split)
    return sorted(utterances, key=lambda u: u.utt_id)


@dataclass(frozen=True)
class CorpusClip:
    """One wav of an ESD-layout corpus (listed by :func:`list_corpus_clips`, without its transcript)."""
    utt_id: str          # file stem, e.g. "0011_000351"; unique across the corpus
    speaker: str         # e.g. "0011"
    emotion: str         # folder name, e.g. "Angry"
    split: str           # "train" | "evaluation" | "test" (a flat copy's by the FLAT_SPLIT rule)
    path: Path


def list_corpus_clips(corpus_root: str | os.PathLike, *, split: str | None = None,
                      emotions: Iterable[str] | None = None, flat_split: tuple[int, int] = FLAT_SPLIT
                      ) -> list[CorpusClip]:
    """All clips of the corpus, sorted by ``utt_id``, optionally of one split and some emotions.

    ``<root>/<speaker>/<Emotion>/{train,evaluation,test}/<id>.wav`` and flat copies
    (``<root>/<speaker>/<Emotion>/<id>.wav``, split by the module's one rule) are both read; files elsewhere
    are passed over. Raises ``ConfigError`` when the folder holds no clips or two clips share an id.
    """
    root = Path(corpus_root)
    if not root.is_dir():
        raise ConfigError(f"Corpus folder {root} does not exist. Build one (emoctl.corpus) or fix the path.")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS} or None, got {split!r}.")
    wanted = None if emotions is None else set(emotions)
    clips: list[CorpusClip] = []
    flat: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for wav in root.glob("*/*/**/*.wav"):
        parts = wav.relative_to(root).parts          # (speaker, Emotion, [split,] name)
        if len(parts) == 3 and parts[1] in SPLITS:       # a speaker folder given as the root
            continue
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[2] not in SPLITS):
            continue
        if wanted is not None and parts[1] not in wanted:
            continue
        if len(parts) == 3:
            flat[parts[0], parts[1]].append(wav)
        else:
            clips.append(CorpusClip(wav.stem, parts[0], parts[1], parts[2], wav))
    for (speaker, emotion), wavs in flat.items():
        for i, wav in enumerate(sorted(wavs, key=lambda w: w.stem)):
            clips.append(CorpusClip(wav.stem, speaker, emotion, flat_split_name(i, flat_split), wav))
    if split is not None:
        clips = [c for c in clips if c.split == split]
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
    import soundfile  # lazy: soundfile loads libsndfile, which most imports of the corpus package never need

    source = path if hasattr(path, "read") else str(path)
    wave, sample_rate = soundfile.read(source, dtype="float32", always_2d=False)
    return wave, int(sample_rate)


def esd_sentence_record(root: str | os.PathLike) -> dict | None:
    """What reports read of a corpus (its sentences in ESD order and the split sizes), for an ESD folder.

    ESD speaks the same 350 sentences in every emotion; clip ``<spk>_<n>`` speaks sentence (n - 1) % 350.
    The splits are the folder's own (evaluation, test, train in sentence order, 20/30/300 in ESD); a folder
    whose splits are not in that order is refused, since reports index sentences by split.  None when the
    folder has no speaker folders (not ESD)."""
    root = Path(root)
    if not root.is_dir() or not any(p.is_dir() and p.name.isdigit() for p in root.iterdir()):
        return None
    utterances = read_esd(root, emotions=[NEUTRAL])
    first = min(u.speaker for u in utterances)
    own = sorted((u for u in utterances if u.speaker == first), key=lambda u: u.utt_id)
    index = [(int(u.utt_id.rsplit("_", 1)[-1]) - 1) % ESD_BLOCK for u in own]
    if index != list(range(len(own))):
        raise ConfigError(f"{root}: speaker {first}'s Neutral clips do not number the sentences 1..{len(own)} "
                          "without gaps; reports need every sentence once.")
    order = [u.split for u in own]
    sizes = {split: order.count(split) for split in ("evaluation", "test", "train")}
    expected = ["evaluation"] * sizes["evaluation"] + ["test"] * sizes["test"] + ["train"] * sizes["train"]
    if order != expected:
        raise ConfigError(f"{root}: the Neutral clips of speaker {first} are not split as evaluation, then test, then "
                          "train in sentence order (ESD's layout); reports index sentences by split.")
    return {"sentences": [u.text.strip() for u in own], "splits": sizes, "source": "esd_folder"}


def _emotion_folder_wavs(folder: Path) -> list[tuple[Path, str | None]]:
    """(wav, split or None) of one emotion folder, with split folders or flat, not both."""
    wavs = sorted(folder.glob("*.wav"))
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    for sub in subdirs:
        if sub.name not in SPLITS:
            raise ConfigError(f"unexpected folder {sub}; an emotion folder holds train/evaluation/test folders or the "
                              "wavs themselves.")
    if wavs and subdirs:
        raise ConfigError(f"{folder} holds both wavs and split folders ({', '.join(s.name for s in subdirs)}); use one "
                          "layout.")
    if wavs:
        return [(w, None) for w in wavs]
    return [(w, sub.name) for sub in subdirs for w in sorted(sub.glob("*.wav"))]


# ------------------------------------------------------------ Hugging Face
def is_hf_copy(path: str | os.PathLike) -> bool:
    """A ``save_to_disk`` folder or an audiofolder with a metadata file."""
    p = Path(path)
    return any((p / name).is_file() for name in ("dataset_dict.json", "state.json", "metadata.csv", "metadata.jsonl"))


def read_esd_hf(path: str | os.PathLike, *, speakers: Sequence[str] | None = None,
                emotions: Iterable[str] | None = None, flat_split: tuple[int, int] = FLAT_SPLIT,
                sample_rate: int = 16000, on_sample_rate: SampleRatePolicy = "resample",
                cache_dir: str | None = None) -> list[EsdUtterance]:
    """Every clip of a Hugging Face copy of ESD (columns in the module docstring), sorted by id, checked."""
    import datasets

    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"Hugging Face dataset folder {p} does not exist; fix data.corpus_root.")
    wanted = check_emotions(emotions)
    if (p / "metadata.csv").is_file() or (p / "metadata.jsonl").is_file():
        loaded: Any = datasets.load_dataset("audiofolder", data_dir=str(p), cache_dir=cache_dir)
    else:
        loaded = datasets.load_from_disk(str(p))
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {None: loaded}
    rows: list[EsdUtterance] = []
    named_splits = all(name is not None for name in parts) and len(parts) > 1
    for part, ds in parts.items():
        missing = [c for c in ("audio", "text", "speaker", "emotion") if c not in ds.column_names]
        if missing:
            raise ConfigError(f"the Hugging Face copy at {p} lacks the columns {missing} (it has {ds.column_names}); "
                              "emoctl needs audio, text, speaker and emotion (utt_id and split optional).")
        ds = ds.cast_column("audio", datasets.Audio(decode=False))
        for i, row in enumerate(ds):
            audio = row["audio"]
            data = audio.get("bytes")
            if data is None and audio.get("path"):
                data = Path(audio["path"]).read_bytes()
            if data is None:
                raise ConfigError(f"row {i} of {p} ({part or 'dataset'}) has no audio bytes or path.")
            speaker = f"{int(row['speaker']):04d}" if str(row["speaker"]).isdigit() else str(row["speaker"])
            utt = str(row.get("utt_id") or Path(audio.get("path") or f"{speaker}_{i:06d}").stem)
            emotion = _canonical_emotion(str(row["emotion"]), f"row {utt} of {p}")
            split = row.get("split") or ({"validation": "evaluation"}.get(part, part) if named_splits else "")
            if split and split not in SPLITS:
                raise ConfigError(f"split {split!r} of row {utt} in {p} is not one of {', '.join(SPLITS)}.")
            rows.append(EsdUtterance(utt, speaker, emotion, split, str(row["text"]).strip(), audio=data,
                                     sample_rate=_bytes_rate(data, utt, p)))
    found = sorted({u.speaker for u in rows})
    keep = set(_english_speakers(found, speakers, p))
    rows = [u for u in rows if u.speaker in keep and u.emotion in wanted]
    if not rows:
        raise ConfigError(f"no rows of {p} have emotions {wanted}.")
    ids = [u.utt_id for u in rows]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"utterance ids repeat in {p} (e.g. {next(i for i in ids if ids.count(i) > 1)!r}); give "
                          "each row a unique utt_id.")
    check_sample_rates(rows, sample_rate, on_sample_rate)
    if not all(u.split for u in rows):
        return assign_flat_splits(rows, flat_split)
    return sorted(rows, key=lambda u: u.utt_id)


def _bytes_rate(data: bytes, utt: str, where: Path) -> int:
    import io

    import soundfile

    try:
        return int(soundfile.info(io.BytesIO(data)).samplerate)
    except (RuntimeError, OSError) as err:
        raise ConfigError(f"the audio of row {utt} in {where} cannot be decoded ({err}).") from None


def open_esd(path: str | os.PathLike, **kwargs: Any) -> list[EsdUtterance]:
    """:func:`read_esd_hf` for a Hugging Face copy, else :func:`read_esd`."""
    if is_hf_copy(path):
        return read_esd_hf(path, **kwargs)
    kwargs.pop("cache_dir", None)
    return read_esd(path, **kwargs)
