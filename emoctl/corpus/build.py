"""Write the eSpeak NG corpus to disk in ESD's layout, deterministically and resumably.

Layout (that of ESD, the Emotional Speech Dataset, so ESD readers work on it)::

    <root>/corpus.json                       written last: settings, prosody of every utterance, checksum
    <root>/speakers.json                     voice, sex and base settings of each speaker
    <root>/0011/0011.txt                     "0011_000001<TAB>text<TAB>Neutral" per line
    <root>/0011/Neutral/evaluation/0011_000001.wav
    <root>/0011/Neutral/test/0011_000021.wav
    <root>/0011/Neutral/train/0011_000051.wav
    <root>/0011/Angry/...                    ids 351.., Happy 701.., Sad 1051.., Surprise 1401..

Why it is built this way:

- Every file is a pure function of the settings (``synthesize`` is
  deterministic, jitter is keyed by utterance), so the same seed gives
  bit-identical files whatever the worker count or the order of work.
- A wav appears under its final name only complete (written to a temp file,
  then renamed), so after a crash the files on disk are exactly the finished
  ones: a rerun renders only the rest.  ``corpus.json`` appears last and marks
  the corpus complete; a settings stamp guards a half-built root against being
  resumed with other settings.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import emoctl
from emoctl.corpus.emotions import EMOTIONS, JITTER, PROFILES, utterance_prosody
from emoctl.corpus.esd import ESD_BLOCK, esd_sentence_record
from emoctl.corpus.espeak import SAMPLE_RATE as SOURCE_RATE
from emoctl.corpus.espeak import espeak_ng_version, synthesize
from emoctl.corpus.sentences import generate_sentences
from emoctl.corpus.voices import Speaker, select_speakers
from emoctl.errors import ConfigError
from emoctl.io.formats import wav_bytes

__all__ = ["ESD_BLOCK", "SPLITS", "Utterance", "build_corpus", "plan_corpus", "read_corpus_record", "split_sizes",
           "trim_silence"]

SPLITS = ("evaluation", "test", "train")
"""ESD's split folders, in id order within an emotion: the first 20, the next 30, the remaining 300."""
FORMAT_VERSION = 1
"""Bumped whenever the same settings would give different files."""
TRIM_MARGIN_S = 0.05
"""Silence kept before the first and after the last sound, in seconds."""
TRIM_THRESHOLD_DB = -50.0
"""A sample is sound when its magnitude is above the peak by this much (dB)."""
CORPUS_JSON, SPEAKERS_JSON, BUILD_STAMP = "corpus.json", "speakers.json", ".emoctl-corpus-build.json"


@dataclass(frozen=True)
class Utterance:
    """One file of the corpus: what to say, how, and where it goes."""

    utt_id: str
    speaker: Speaker
    emotion: str
    sentence_index: int
    text: str
    split: str
    knobs: dict[str, int]
    """eSpeak settings actually used: rate, pitch, pitch_range, volume."""

    @property
    def relative_path(self) -> str:
        return f"{self.speaker.speaker_id}/{self.emotion}/{self.split}/{self.utt_id}.wav"


def read_corpus_record(root: str | os.PathLike) -> dict:
    """The ``corpus.json`` of a finished corpus, or, for an ESD folder (which has none), the same record
    derived from its transcripts and split folders; ``ConfigError`` with the build command otherwise."""
    path = Path(root) / CORPUS_JSON
    if path.is_file():
        return json.loads(path.read_text())

    record = esd_sentence_record(root)
    if record is None:
        raise ConfigError(f"no finished corpus at {root} ({CORPUS_JSON} missing, and no ESD speaker folders). "
                          f"Build it with `make corpus` or `emoctl corpus build --root {root}`.")
    return record


def split_sizes(n_sentences: int) -> dict[str, int]:
    """Sentences per split: ESD's 20/30/300 of 350, scaled to ``n_sentences``; test keeps at least one."""
    evaluation = round(20 * n_sentences / ESD_BLOCK)
    test = max(1, round(30 * n_sentences / ESD_BLOCK))
    evaluation = min(evaluation, n_sentences - test)
    return {"evaluation": evaluation, "test": test, "train": n_sentences - evaluation - test}


def _split_of(sentence_index: int, sizes: dict[str, int]) -> str:
    if sentence_index < sizes["evaluation"]:
        return "evaluation"
    return "test" if sentence_index < sizes["evaluation"] + sizes["test"] else "train"


def plan_corpus(n_sentences: int, speakers: int, seed: int) -> list[Utterance]:
    """Every utterance of the corpus, ordered by speaker, emotion and sentence (no audio made)."""
    sentences = generate_sentences(n_sentences, seed)
    sizes = split_sizes(n_sentences)
    plan = []
    for speaker in select_speakers(speakers):
        for block, emotion in enumerate(EMOTIONS):
            for index, text in enumerate(sentences):
                plan.append(Utterance(
                    utt_id=f"{speaker.speaker_id}_{block * ESD_BLOCK + index + 1:06d}", speaker=speaker,
                    emotion=emotion, sentence_index=index, text=text, split=_split_of(index, sizes),
                    knobs=utterance_prosody(speaker, emotion, index, seed)))
    return plan


def trim_silence(samples: np.ndarray, sample_rate: int, margin_s: float = TRIM_MARGIN_S,
                 threshold_db: float = TRIM_THRESHOLD_DB) -> np.ndarray:
    """Cut leading and trailing silence and pad exactly ``margin_s`` of zeros on each side.

    A fixed margin (not "whatever eSpeak left") keeps durations comparable
    across emotions: rate changes then show in speech, not in pauses.
    """
    magnitude = np.abs(samples)  # (n,)
    peak = float(magnitude.max()) if len(samples) else 0.0
    margin = np.zeros(round(margin_s * sample_rate), samples.dtype)
    if peak == 0.0:
        return np.concatenate([margin, margin])
    sound = np.flatnonzero(magnitude > peak * 10 ** (threshold_db / 20))
    return np.concatenate([margin, samples[sound[0]:sound[-1] + 1], margin])


def _render(utterance: Utterance, sample_rate: int) -> bytes:
    """The WAV file (16-bit PCM mono) of one utterance, as bytes."""
    samples, _ = synthesize(utterance.text, utterance.speaker.voice, **utterance.knobs)  # (n,) at 22050 Hz
    samples = trim_silence(samples, SOURCE_RATE)
    if sample_rate != SOURCE_RATE:
        import soxr

        samples = soxr.resample(samples, SOURCE_RATE, sample_rate, quality="HQ")  # (m,)
    return wav_bytes(samples, sample_rate)


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _read_existing(path: Path, sample_rate: int) -> tuple[int, str] | None:
    """(num_samples, sha256) of a finished wav at ``path``, or None if absent or not a valid file of this corpus."""
    try:
        data = path.read_bytes()
        with wave.open(io.BytesIO(data)) as wav:
            frames, ok = wav.getnframes(), (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, sample_rate)
    except (FileNotFoundError, wave.Error, EOFError):
        return None
    if not ok or len(data) != 44 + 2 * frames:
        return None
    return frames, hashlib.sha256(data).hexdigest()


def _make_utterance(job: tuple[Utterance, str, int]) -> tuple[str, int, str]:
    """Render and write one wav (runs in worker processes); returns (utt_id, num_samples, sha256)."""
    utterance, root, sample_rate = job
    data = _render(utterance, sample_rate)
    _write_atomic(Path(root) / utterance.relative_path, data)
    return utterance.utt_id, (len(data) - 44) // 2, hashlib.sha256(data).hexdigest()


def _check_arguments(n_sentences, speakers, seed, sample_rate, workers) -> None:
    def is_int(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    if not is_int(n_sentences) or not 1 <= n_sentences <= ESD_BLOCK:
        raise ConfigError(f"build_corpus(): n_sentences={n_sentences!r} must be an integer from 1 to {ESD_BLOCK}: "
                          f"ESD's id blocks hold {ESD_BLOCK} sentences per emotion.")
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"build_corpus(): seed={seed!r} must be a non-negative integer.")
    if not is_int(sample_rate) or not 8000 <= sample_rate <= 48000:
        raise ConfigError(f"build_corpus(): sample_rate={sample_rate!r} must be an integer in Hz from 8000 to 48000 "
                          f"(ESD uses 16000; eSpeak NG speaks at {SOURCE_RATE}).")
    if not is_int(workers) or workers < 1:
        raise ConfigError(f"build_corpus(): workers={workers!r} must be a positive integer (processes).")
    select_speakers(speakers)  # raises ConfigError for a bad count


def _design_fingerprint(plan: list[Utterance]) -> str:
    """Hash of every text, voice and knob setting: an edit to the tables in code then blocks a mixed resume."""
    design = [(u.utt_id, u.text, u.speaker.to_dict(), u.knobs) for u in plan]
    return hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()


def _claim_root(root: Path, settings: dict) -> None:
    """Make ``root`` ours: empty, or holding a (partial) corpus with the same settings."""
    for name in (CORPUS_JSON, BUILD_STAMP):
        if (root / name).is_file():
            try:
                found = json.loads((root / name).read_text()).get("settings")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
                raise ConfigError(f"{root / name} is not a readable emoctl corpus record ({error}). Delete it to "
                                  f"resume the build (finished wavs are kept), or build into another folder.") from None
            if found != settings:
                raise ConfigError(
                    f"{root / name} records a corpus built with settings {found}, not {settings}. Build into another "
                    f"folder, or delete {root} to rebuild it with the new settings.")
            break
    else:
        if root.exists() and any(root.iterdir()):
            raise ConfigError(f"{root} is not empty and holds no emoctl corpus ({CORPUS_JSON} or {BUILD_STAMP}); "
                              f"build into an empty or new folder so no other files are mixed in or overwritten.")
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(root / BUILD_STAMP, (json.dumps({"settings": settings}, indent=1) + "\n").encode())


def _write_text_files(root: Path, plan: list[Utterance], speakers: tuple[Speaker, ...]) -> dict[str, bytes]:
    """Transcripts and speakers.json (cheap and deterministic: rewritten on every run)."""
    files = {SPEAKERS_JSON: (json.dumps({s.speaker_id: s.to_dict() for s in speakers}, indent=1) + "\n").encode()}
    for speaker in speakers:
        lines = [f"{u.utt_id}\t{u.text}\t{u.emotion}\n" for u in plan if u.speaker == speaker]
        files[f"{speaker.speaker_id}/{speaker.speaker_id}.txt"] = "".join(lines).encode("utf-8")
        for emotion in EMOTIONS:
            for split in SPLITS:
                (root / speaker.speaker_id / emotion / split).mkdir(parents=True, exist_ok=True)
    for relative, data in files.items():
        _write_atomic(root / relative, data)
    return files


def build_corpus(root: str, *, n_sentences: int = 300, speakers: int = 10, seed: int = 0, sample_rate: int = 16000,
                 workers: int = 1, progress: bool = True) -> Path:
    """Synthesize the corpus into ``root`` (created if needed) and return its path.

    Resumable: finished wavs already in ``root`` are kept, only missing or
    damaged ones are rendered, and the result is bit-identical to a fresh
    build.  ``workers`` processes render in parallel without changing a byte;
    they are spawned, so a script that calls this with ``workers > 1`` needs the
    ``if __name__ == "__main__":`` guard.

    Args:
        root: Corpus folder (created; must be empty or hold a corpus built with the same settings).
        n_sentences: Parallel sentences per speaker and emotion (ESD has 350), split 20/30/300-style.
        speakers: Speakers, the first ones of ``emoctl.corpus.voices.SPEAKERS`` (10 = ESD's 0011-0020).
        seed: Seed of the sentences and the per-utterance prosody jitter.
        sample_rate: Output rate in Hz (ESD uses 16000; eSpeak NG speaks at 22050).
        workers: Rendering processes.
        progress: Show a progress bar.
    """
    _check_arguments(n_sentences, speakers, seed, sample_rate, workers)
    root_path = Path(root)
    settings = {"format_version": FORMAT_VERSION, "n_sentences": int(n_sentences), "speakers": int(speakers),
                "seed": int(seed), "sample_rate": int(sample_rate), "source_sample_rate": SOURCE_RATE,
                "trim_margin_s": TRIM_MARGIN_S, "trim_threshold_db": TRIM_THRESHOLD_DB,
                "espeak_ng_version": espeak_ng_version()}
    plan = plan_corpus(n_sentences, speakers, seed)
    speaker_table = select_speakers(speakers)
    settings["design_sha256"] = _design_fingerprint(plan)
    _claim_root(root_path, settings)
    text_files = _write_text_files(root_path, plan, speaker_table)

    for leftover in root_path.glob("*/*/*/.*.tmp"):  # temp files of a killed build
        leftover.unlink(missing_ok=True)
    done: dict[str, tuple[int, str]] = {}
    for utterance in plan:
        existing = _read_existing(root_path / utterance.relative_path, sample_rate)
        if existing is not None:
            done[utterance.utt_id] = existing
    missing = [u for u in plan if u.utt_id not in done]
    if missing:
        (root_path / CORPUS_JSON).unlink(missing_ok=True)  # no longer complete until rewritten
    jobs = [(u, str(root_path), int(sample_rate)) for u in missing]
    with tqdm(total=len(plan), initial=len(done), desc=f"corpus {root_path.name}", unit="utt",
              disable=not progress) as bar:
        if workers == 1 or len(jobs) < 2:
            results = map(_make_utterance, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)))
            results = pool.imap_unordered(_make_utterance, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers))))
        try:
            for utt_id, num_samples, digest in results:
                done[utt_id] = (num_samples, digest)
                bar.update()
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()

    _write_manifest(root_path, settings, plan, done, text_files, speaker_table)
    (root_path / BUILD_STAMP).unlink(missing_ok=True)
    return root_path


def _write_manifest(root: Path, settings: dict, plan: list[Utterance], done: dict[str, tuple[int, str]],
                    text_files: dict[str, bytes], speakers: tuple[Speaker, ...]) -> None:
    """corpus.json: everything needed to reproduce and to analyse the corpus with ground-truth prosody."""
    utterances = [{"id": u.utt_id, "speaker": u.speaker.speaker_id, "emotion": u.emotion,
                   "sentence_index": u.sentence_index, "split": u.split, "path": u.relative_path, **u.knobs,
                   "num_samples": done[u.utt_id][0], "sha256": done[u.utt_id][1]} for u in plan]
    digests = {u.relative_path: done[u.utt_id][1] for u in plan}
    digests.update({path: hashlib.sha256(data).hexdigest() for path, data in text_files.items()})
    checksum = hashlib.sha256("".join(f"{p}\t{digests[p]}\n" for p in sorted(digests)).encode()).hexdigest()
    sentences = generate_sentences(settings["n_sentences"], settings["seed"])
    manifest = {
        "format": "emoctl-esd-corpus", "emoctl_version": emoctl.__version__, "seed": settings["seed"],
        "settings": settings, "splits": split_sizes(settings["n_sentences"]), "emotions": list(EMOTIONS),
        "emotion_profiles": {name: asdict(profile) for name, profile in PROFILES.items()},
        "jitter_std": asdict(JITTER), "speakers": {s.speaker_id: s.to_dict() for s in speakers},
        "sentences": sentences, "utterances": utterances,
        "checksum": {"algorithm": "sha256", "value": checksum,
                     "of": "sorted lines '<relative path>\\t<sha256 of file>\\n' over every wav, transcript and speakers.json"},
    }
    rows = ",\n  ".join(json.dumps(row, separators=(",", ":")) for row in utterances)  # one line per utterance
    text = json.dumps({**manifest, "utterances": "@rows@"}, indent=1).replace('"@rows@"', f"[\n  {rows}\n ]")
    _write_atomic(root / CORPUS_JSON, (text + "\n").encode())
