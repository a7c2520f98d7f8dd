"""``emoctl evaluate``: score a folder of generated clips against a manifest.

Manifest: CSV (header row) or JSONL (one object a line), UTF-8 with or without a byte order mark, with the
columns

* ``clip``: audio file, relative to ``--audio`` (or absolute);
* ``text``: what the clip should say (for WER);
* ``speaker``: speaker id (references are grouped by it for SpkSIM);
* ``target_emotion``: one of ESD's five (for SER accuracy and Emo-SIM);
* ``reference`` (optional): a recording of the same text, speaker and target
  emotion, relative to ``--audio`` (or absolute).

What is scored:

* WER of each clip's transcript (ASR: bundled Whisper tiny.en by default);
* SpkSIM: cosine of the clip's speaker embedding to the centroid of its
  speaker's reference clips (NaN for a speaker with no reference);
* DNSMOS SIG, BAK, OVRL and P.808;
* with ``--ser``: SER accuracy, the probability of the target emotion, and
  Emo-SIM against the matched reference and against the target emotion's
  prototype (mean embedding of the reference clips of that emotion).

The metrics come from :mod:`emoctl.evaluation.scoring`, the scoring path every
report uses, so a column here means what the same column means in Table 1
(``ser_hit``, ``p_target``, ``emo_sim_matched``, ``emo_sim_prototype``, ``wer``,
``spk_sim``, ``dnsmos_*``); only the references differ (the manifest's, not the
corpus's).

Every clip and reference is read and validated before any model loads, so a
bad file fails in seconds with its name.  Output in ``--out``: ``clips.csv``
(one row per clip) and ``summary.md`` (means with 95% intervals, the models
used, the reference mode of every Emo-SIM), each written to a temporary file
and renamed.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from emoctl.errors import ConfigError
from emoctl.evaluation.scoring import ReferenceSet, Scorers, Utterance, measure, score
from emoctl.io.fsio import check_output_dir
from emoctl.metrics.audio import prepare_clip
from emoctl.metrics.stats import Estimate, mean_ci, proportion_ci
from emoctl.metrics.wer import corpus_wer, normalize_text

__all__ = ["ManifestRow", "evaluate", "read_manifest"]

REQUIRED_COLUMNS = ("clip", "text", "speaker", "target_emotion")
SAMPLE_RATE = 16000  # every model here runs at 16 kHz: resample once, at load


@dataclass(frozen=True)
class ManifestRow:
    clip: str
    text: str
    speaker: str
    target_emotion: str
    reference: str = ""


def read_manifest(path: Path) -> list[ManifestRow]:
    """Rows of a CSV or JSONL manifest, with every required column present and non-empty."""
    if not path.is_file():
        raise ConfigError(f"manifest {path} does not exist; give a CSV or JSONL file with columns "
                          f"{', '.join(REQUIRED_COLUMNS)} and optionally reference.")
    try:  # utf-8-sig: spreadsheet programs start a CSV with a byte order mark, which would rename the first column
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"manifest {path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8 "
                          "CSV or JSONL.") from None
    if path.suffix.lower() in (".jsonl", ".json"):
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{path}:{number}: not a JSON object ({err.msg}).") from err
        first_line = 1
    else:
        records = list(csv.DictReader(io.StringIO(text)))
        first_line = 2
    if not records:
        raise ConfigError(f"manifest {path} has no rows.")
    rows = []
    for number, record in enumerate(records, first_line):
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{number}: each line must be a JSON object, got {type(record).__name__}.")
        missing = [c for c in REQUIRED_COLUMNS if not str(record.get(c) or "").strip()]
        if missing:
            raise ConfigError(f"{path}:{number}: missing or empty {', '.join(missing)}; every row needs "
                              f"{', '.join(REQUIRED_COLUMNS)}.")
        rows.append(ManifestRow(*(str(record[c]).strip() for c in REQUIRED_COLUMNS),
                                reference=str(record.get("reference") or "").strip()))
    return rows


def _load_audio(root: Path, relative: str) -> np.ndarray:
    """(n,) float32 at 16 kHz of one validated file."""
    import soundfile as sf

    path = Path(relative) if Path(relative).is_absolute() else root / relative
    if not path.is_file():
        raise ConfigError(f"clip {path} (from the manifest) does not exist under --audio {root}.")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (n, channels)
    except Exception as err:  # soundfile raises its own LibsndfileError / RuntimeError
        raise ConfigError(f"clip {path} could not be read as audio ({err}).") from err
    return prepare_clip(data.T, rate, name=str(path), target_rate=SAMPLE_RATE)


def evaluate(audio: Path, manifest: Path, out: Path,
             asr: Literal["whisper", "pocketsphinx", "none"] = "whisper", asr_model_dir: Optional[Path] = None,
             speaker: Literal["resemblyzer", "wavlm", "none"] = "resemblyzer", speaker_model_dir: Optional[Path] = None,
             dnsmos: bool = True, ser: Literal["none", "emotion2vec", "mini"] = "none",
             ser_model_dir: Optional[Path] = None, threads: Optional[int] = None) -> Path:
    """Score generated clips (WER, speaker similarity, DNSMOS, SER accuracy and Emo-SIM); write clips.csv and summary.md.

    Args:
        audio: Folder the manifest's clip and reference paths are relative to.
        manifest: CSV or JSONL with columns clip, text, speaker, target_emotion and optionally reference.
        out: Output folder for clips.csv and summary.md (created).
        asr: Recognizer for WER: bundled Whisper tiny.en, PocketSphinx, or none to skip WER.
        asr_model_dir: A local faster-whisper (CTranslate2) model folder instead of the bundled tiny.en.
        speaker: Speaker encoder for similarity to the speaker's reference clips, or none to skip.
        speaker_model_dir: Local WavLMForXVector folder (speaker=wavlm).
        dnsmos: Score DNSMOS SIG/BAK/OVRL/P.808.
        ser: Emotion recognizer for SER accuracy and Emo-SIM: emotion2vec (needs ser_model_dir and funasr), the
            embedded mini recognizer, or none.
        ser_model_dir: Local emotion2vec model folder (ser=emotion2vec, required), or a mini SER checkpoint folder
            (ser=mini; unset = the committed one).
        threads: CPU threads of every model (torch, CTranslate2, onnxruntime); unset keeps each library's default.
            Use 1 on a machine shared with other jobs: spinning thread pools slow down badly when oversubscribed.
    """
    check_output_dir(out, "out")  # before any work: a bad folder fails now, not after the compute
    audio, manifest, out = Path(audio), Path(manifest), Path(out)
    if not audio.is_dir():
        raise ConfigError(f"--audio {audio} is not a folder; give the folder the manifest's clip paths are under.")
    rows = read_manifest(manifest)
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads {threads} must be at least 1 (or left unset).")
        torch.set_num_threads(threads)
    if asr != "none":
        wordless = [r.clip for r in rows if not normalize_text(r.text)]
        if wordless:
            raise ConfigError(f"{manifest}: the text of {', '.join(wordless[:5])} has no words after normalization, "
                              f"so WER is undefined; give the words each clip should say (or --asr none).")
    if ser == "none" and ser_model_dir is not None:
        raise ConfigError("--ser_model_dir is set but --ser is none; add --ser emotion2vec or --ser mini.")
    scorers = Scorers.load(None if ser == "none" else ser, None if ser_model_dir is None else str(ser_model_dir),
                           asr=None if asr == "none" else asr,
                           asr_model_dir=None if asr_model_dir is None else str(asr_model_dir),
                           speaker=None if speaker == "none" else speaker,
                           speaker_model_dir=None if speaker_model_dir is None else str(speaker_model_dir),
                           dnsmos=dnsmos, threads=threads)  # fails fast on a missing funasr / folder / module
    recognizer = scorers.recognizer
    if recognizer is not None:
        unknown = sorted({r.target_emotion for r in rows} - set(recognizer.labels))
        if unknown:
            raise ConfigError(f"{manifest}: target_emotion values {unknown} are not among {recognizer.name}'s "
                              f"labels {list(recognizer.labels)}; use ESD's names.")
    clips: dict[str, np.ndarray] = {}
    references: dict[str, np.ndarray] = {}
    for row in tqdm(rows, desc="read clips", unit="clip"):
        if row.clip not in clips:
            clips[row.clip] = _load_audio(audio, row.clip)
        if row.reference and row.reference not in references:
            references[row.reference] = _load_audio(audio, row.reference)
    matched_keys = _matched_keys(rows, manifest) if recognizer is not None else {}

    start = time.perf_counter()
    utterances = [Utterance(r.clip, r.text, r.speaker, clips[r.clip], SAMPLE_RATE) for r in rows]
    measured = measure(utterances, scorers, chunk=1, progress=True)
    refs = _manifest_references(rows, references, scorers.without("asr", "dnsmos"), matched_keys)
    scored = score(measured, [r.target_emotion for r in rows], refs)
    timings = {"models": time.perf_counter() - start}
    columns: dict[str, list] = {"clip": [r.clip for r in rows], "reference": [r.reference for r in rows]}
    for key in dict.fromkeys(k for row in scored for k in row if k != "utt_id"):
        columns[key] = [row.get(key) for row in scored]

    notes: list[str] = []
    if scorers.asr is not None:
        notes.append(f"WER: {scorers.asr.name}; pooled over all words "
                     f"{corpus_wer(measured.hypotheses, [r.text for r in rows]):.3f}; text normalized by "
                     "emoctl.metrics.wer.normalize_text.")
    if scorers.speaker is not None:
        missing = sorted(s for s in {r.speaker for r in rows} if s not in refs.speaker_embedding)
        notes.append(f"SpkSIM: {scorers.speaker.name}; cosine to the centroid of the speaker's reference clips"
                     + (f"; no reference clip for speaker(s) {', '.join(missing)} (NaN)." if missing else "."))
    if scorers.dnsmos is not None:
        notes.append(f"DNSMOS: {scorers.dnsmos.name} (speechmos ONNX models, 16 kHz).")
    if recognizer is not None:
        notes.append(f"SER and Emo-SIM: {recognizer.name}. emo_sim_matched = cosine to the reference clip of the "
                     "row's speaker, target emotion and text; "
                     f"emo_sim_prototype = cosine to the mean embedding of the reference clips of the target "
                     f"emotion (emotions with a prototype: {', '.join(refs.prototype) or 'none'}).")

    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "clips.csv", _to_csv(columns))
    _write_atomic(out / "summary.md", _summary_markdown(columns, rows, audio, manifest, notes, timings))
    print(f"wrote {out / 'clips.csv'} and {out / 'summary.md'}")
    return out


def _matched_keys(rows: list[ManifestRow], manifest: Path) -> dict[tuple[str, str, str], str]:
    """(speaker, target emotion, text) -> the reference recording rows name for it; two different ones are refused."""
    keys: dict[tuple[str, str, str], str] = {}
    for row in rows:
        if not row.reference:
            continue
        key = (row.speaker, row.target_emotion, row.text)
        if keys.setdefault(key, row.reference) != row.reference:
            raise ConfigError(f"{manifest}: rows for speaker {row.speaker}, {row.target_emotion}, text {row.text!r} "
                              f"name two references ({keys[key]} and {row.reference}); the matched Emo-SIM needs "
                              "one recording per (speaker, emotion, text).")
    return keys


def _manifest_references(rows: list[ManifestRow], references: dict[str, np.ndarray], scorers,
                         matched_keys: dict[tuple[str, str, str], str]):
    """The manifest's reference clips as a :class:`ReferenceSet`: matched recordings, emotion prototypes (a reference
    carries the target emotion of the first row naming it) and each speaker's centroid of its references."""
    paths = list(references)
    if not paths:
        return ReferenceSet()
    measured = measure([Utterance(p, "", "", references[p], SAMPLE_RATE) for p in paths], scorers, chunk=1,
                       progress=True)
    refs = ReferenceSet()
    if measured.ser is not None:
        embedding = {p: measured.ser.embeddings[i] for i, p in enumerate(paths)}
        refs.matched_embedding = {key: embedding[path] for key, path in matched_keys.items()}
        emotion_of: dict[str, str] = {}
        for row in rows:
            if row.reference:
                emotion_of.setdefault(row.reference, row.target_emotion)
        by_emotion: dict[str, list[torch.Tensor]] = {}
        for path, emotion in emotion_of.items():
            by_emotion.setdefault(emotion, []).append(embedding[path])
        refs.prototype = {e: torch.stack(v).float().mean(0) for e, v in by_emotion.items()}
    if measured.speaker_embeddings is not None:
        embedding = {p: measured.speaker_embeddings[i] for i, p in enumerate(paths)}
        by_speaker: dict[str, list[str]] = {}
        for row in rows:
            if row.reference and row.reference not in by_speaker.setdefault(row.speaker, []):
                by_speaker[row.speaker].append(row.reference)
        refs.speaker_embedding = {s: torch.stack([embedding[p] for p in v]).mean(0) for s, v in by_speaker.items() if v}
    return refs


_COSINE, _MOS = (-1.0, 1.0), (1.0, 5.0)
_SUMMARY_METRICS = (("wer", "WER (mean per clip)", (0.0, math.inf)), ("spk_sim", "SpkSIM", _COSINE),
                    ("dnsmos_sig", "DNSMOS SIG", _MOS), ("dnsmos_bak", "DNSMOS BAK", _MOS),
                    ("dnsmos_ovrl", "DNSMOS OVRL", _MOS), ("dnsmos_p808", "DNSMOS P.808", _MOS),
                    ("p_target", "P(target emotion)", (0.0, 1.0)),
                    ("emo_sim_matched", "Emo-SIM (matched reference)", _COSINE),
                    ("emo_sim_prototype", "Emo-SIM (emotion prototype)", _COSINE))
"""(column, label, range) of each summarized metric; intervals are clipped to the range."""


def _summary_markdown(columns: dict, rows: list[ManifestRow], audio: Path, manifest: Path, notes: list[str],
                      timings: dict[str, float]) -> str:
    lines = ["# emoctl evaluate", "", f"- audio: `{audio}`", f"- manifest: `{manifest}` ({len(rows)} clips)", "",
             "| metric | value [95% CI] | n | NaN |", "|---|---|---|---|"]
    estimates: list[tuple[str, Estimate]] = []
    if "ser_hit" in columns:
        hits = columns["ser_hit"]
        estimates.append(("SER accuracy", proportion_ci(int(sum(hits)), len(hits))))
    estimates += [(label, mean_ci(columns[key], bounds=bounds)) for key, label, bounds in _SUMMARY_METRICS
                  if key in columns]
    lines += [f"| {label} | {est.format()} | {est.n} | {est.n_dropped} |" for label, est in estimates]
    if "ser_hit" in columns:
        lines += ["", "Per target emotion:", "", "| emotion | n | SER accuracy [95% CI] |", "|---|---|---|"]
        for emotion in dict.fromkeys(columns["target"]):
            hits = [c for c, e in zip(columns["ser_hit"], columns["target"]) if e == emotion]
            lines.append(f"| {emotion} | {len(hits)} | {proportion_ci(int(sum(hits)), len(hits)).format()} |")
    lines += ["", "Intervals: Student t for means (clipped to the metric's range), Wilson for accuracy.", ""]
    lines += [f"- {note}" for note in notes]
    if timings:
        lines += ["", "Time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())]
    return "\n".join(lines) + "\n"


def _to_csv(columns: dict[str, list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for values in zip(*columns.values()):
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in values])
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
