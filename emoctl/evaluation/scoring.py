"""Scoring clips: the evaluation models, the references clips are compared with and per-clip metric rows.

One path for every number of the same name, whoever asks: the reports (Table 1,
the EmoShift sweep, compound emotions and the EmoShift table) score clips they
synthesize against the corpus's recordings (:class:`References`), and ``emoctl
evaluate`` scores audio files against the references a manifest names
(:class:`ReferenceSet` built by the caller).  Both run :func:`measure` (each
evaluation model once over the clips) and :func:`score` (SER hit and
P(target), Emo-SIM against the matched recording and the target emotion's
prototype, WER of the ASR, speaker similarity to the speaker's reference
centroid, DNSMOS).  :func:`score` takes the targets separately, so one set of
measured clips is scored against several targets for free.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from emoctl.corpus.esd import list_corpus_clips, read_wave
from emoctl.emotions import NEUTRAL  # the target of suppression and the condition of induction
from emoctl.errors import ConfigError
from emoctl.metrics.dnsmos import DNSMOSScore, load_dnsmos
from emoctl.metrics.loading import load_recognizer
from emoctl.metrics.quality import SpeechQualityModel
from emoctl.metrics.ser import EmotionRecognizer, SERResult
from emoctl.metrics.speaker import SpeakerEncoder, load_speaker_encoder
from emoctl.metrics.wer import SpeechRecognizer, load_asr, word_error_rate
from emoctl.synthesis import Clip


@dataclass
class Scorers:
    """The evaluation models, loaded once; a None model leaves its metrics out."""

    recognizer: EmotionRecognizer | None
    """SER hit, P(target), Emo-SIM."""
    asr: SpeechRecognizer | None
    """Transcripts and WER."""
    speaker: SpeakerEncoder | None
    """SpkSIM."""
    dnsmos: SpeechQualityModel | None
    """DNSMOS: SIG, BAK, OVRL, P.808."""

    @classmethod
    def load(cls, recognizer: str | None = "mini", recognizer_dir: str | None = None, *,
             asr: str | None = "whisper", asr_model_dir: str | None = None, speaker: str | None = "resemblyzer",
             speaker_model_dir: str | None = None, dnsmos: bool = True, threads: int | None = None) -> Scorers:
        """Load the named models (None: leave that metric out); ``threads`` caps the CPU threads of ASR and DNSMOS."""
        asr_model = spk = mos = None
        if asr is not None:
            asr_model = load_asr(asr, asr_model_dir, threads if asr == "whisper" else None)
        if speaker is not None:
            spk = load_speaker_encoder(speaker, speaker_model_dir)
        if dnsmos:
            mos = load_dnsmos(threads=threads or min(2, os.cpu_count() or 1))
        ser = load_recognizer(recognizer, recognizer_dir) if recognizer is not None else None
        return cls(ser, asr_model, spk, mos)

    def names(self) -> list[str]:
        """The metrics' models present, by role and class: part of what decides a report's rows."""
        return [f"{k}={type(getattr(self, k)).__name__}:{getattr(getattr(self, k), 'name', '')}"
                for k in ("recognizer", "asr", "speaker", "dnsmos") if getattr(self, k) is not None]

    def without(self, *metrics: str) -> Scorers:
        """The same models less some ("recognizer", "asr", "speaker", "dnsmos"): a cheaper pass."""
        return Scorers(**{k: None if k in metrics else getattr(self, k) for k in ("recognizer", "asr", "speaker",
                                                                                  "dnsmos")})


@dataclass(frozen=True)
class Utterance:
    """What scoring needs of one clip: its id, the words it should say, who should say them, its audio."""

    utt_id: str
    text: str
    speaker: str
    wave: np.ndarray  # (n,) float32
    sample_rate: int


@dataclass
class ReferenceSet:
    """What clips are compared with: matched recordings, emotion prototypes and speaker centroids (embeddings)."""

    matched_embedding: dict[tuple[str, str, str], torch.Tensor] = field(default_factory=dict)
    """(speaker, emotion, text) -> recognizer embedding of a recording of that text by that speaker and emotion."""
    prototype: dict[str, torch.Tensor] = field(default_factory=dict)
    """Emotion -> mean recognizer embedding of its reference recordings."""
    speaker_embedding: dict[str, torch.Tensor] = field(default_factory=dict)
    """Speaker -> mean speaker-encoder embedding of its reference recordings."""

    def matched(self, speaker: str, emotion: str, text: str) -> torch.Tensor | None:
        return self.matched_embedding.get((speaker, emotion, text))


@dataclass
class Measured:
    """What the evaluation models say about a list of clips, before any target emotion is chosen."""

    utterances: list[Utterance]
    ser: SERResult | None            # probabilities and embeddings per clip
    hypotheses: list[str] | None     # ASR transcripts
    wers: list[float] | None
    speaker_embeddings: torch.Tensor | None
    dnsmos: list[DNSMOSScore] | None


def measure(utterances: Sequence[Utterance], scorers: Scorers, chunk: int | None = None,
            progress: bool = False) -> Measured:
    """Run every configured evaluation model over ``utterances``.

    ``chunk``: clips per model call (None: all at once). With 1, an unreadable clip's error names it and the
    progress bars move per clip; batched recognizers may differ in the last float bits between chunk sizes.
    """
    utterances = list(utterances)
    step = chunk or max(1, len(utterances))
    pieces = [utterances[i:i + step] for i in range(0, len(utterances), step)]

    def run(label: str, call) -> list:
        out = []
        for piece in tqdm(pieces, desc=label, unit=f"×{step} clips" if step > 1 else "clip",
                          disable=not progress or len(pieces) < 2):
            out.append(call([u.wave for u in piece], [u.sample_rate for u in piece], [u.utt_id for u in piece]))
        return out

    hyps = wers = spk = mos = ser = None
    if scorers.asr is not None:
        hyps = [h for part in run(f"WER ({scorers.asr.name})",
                                  lambda w, r, n: scorers.asr.transcribe(w, r, names=n)) for h in part]
        wers = word_error_rate(hyps, [u.text for u in utterances], names=[u.utt_id for u in utterances])
    if scorers.speaker is not None:
        spk = torch.cat(run(f"SpkSIM ({scorers.speaker.name})", lambda w, r, n: scorers.speaker.embed(w, r, names=n)))
    if scorers.dnsmos is not None:
        mos = [s for part in run("DNSMOS", lambda w, r, n: scorers.dnsmos(w, r, names=n)) for s in part]
    if scorers.recognizer is not None:
        parts = run(f"SER ({scorers.recognizer.name})", lambda w, r, n: scorers.recognizer(w, r))
        ser = parts[0] if len(parts) == 1 else SERResult(torch.cat([p.probs for p in parts]),
                                                         torch.cat([p.embeddings for p in parts]), parts[0].labels)
    return Measured(utterances, ser, hyps, wers, spk, mos)


def score(measured: Measured, targets: Sequence[str], refs: ReferenceSet) -> list[dict]:
    """Per-clip metric rows: SER hit and P(target), Emo-SIM (matched, prototype), WER, SpkSIM, DNSMOS.

    A clip with no matched recording, or a speaker with no reference, scores NaN there (never a guess).
    """
    if len(targets) != len(measured.utterances):
        raise ConfigError(f"{len(targets)} target emotions for {len(measured.utterances)} clips.")
    ser = measured.ser
    predicted = ser.predicted() if ser is not None else None
    rows = []
    for i, (utt, target) in enumerate(zip(measured.utterances, targets)):
        row: dict[str, Any] = {"utt_id": utt.utt_id, "text": utt.text, "speaker": utt.speaker, "target": target}
        if ser is not None:
            emb = ser.embeddings[i]
            ref, proto = refs.matched(utt.speaker, target, utt.text), refs.prototype.get(target)
            row.update({"predicted": predicted[i], "ser_hit": float(predicted[i] == target),
                        "p_target": float(ser.prob_of(target)[i]),
                        "emo_sim_matched": float(F.cosine_similarity(emb, ref, dim=0)) if ref is not None else math.nan,
                        "emo_sim_prototype": float(F.cosine_similarity(emb, proto, dim=0))
                        if proto is not None else math.nan})
        row["duration_s"] = len(utt.wave) / utt.sample_rate
        if measured.wers is not None:
            row["hypothesis"], row["wer"] = measured.hypotheses[i], measured.wers[i]
        if measured.speaker_embeddings is not None:
            centroid = refs.speaker_embedding.get(utt.speaker)
            row["spk_sim"] = (float(F.cosine_similarity(measured.speaker_embeddings[i], centroid, dim=0))
                              if centroid is not None else math.nan)
        if measured.dnsmos is not None:
            mos = measured.dnsmos[i]
            row.update({"dnsmos_ovrl": float(mos.ovrl), "dnsmos_sig": float(mos.sig), "dnsmos_bak": float(mos.bak),
                        "dnsmos_p808": float(mos.p808)})
        rows.append(row)
    return rows


class References(ReferenceSet):
    """The corpus's recordings behind a report: matched clips of the spoken sentences, prototypes, speaker centroids.

    Matched: the recording of the same sentence by the same speaker in the target emotion. Prototype: the mean
    recognizer embedding of the loaded recordings of each emotion. Speaker centroid: the mean speaker embedding
    of the speaker's first ``reference_clips`` Neutral recordings (the protocol's ``reference_clips``).
    """

    def __init__(self, corpus_root: Path, sentences: list[str], speakers: list[str], scorers: Scorers,
                 used: Sequence[str] | None = None, split: str | None = None, reference_clips: int = 8) -> None:
        index = {text: i for i, text in enumerate(sentences)}
        wanted = None if used is None else {index[t] for t in used if t in index}  # only what is spoken
        clips = [c for c in list_corpus_clips(corpus_root, split=split) if c.speaker in speakers
                 and (wanted is None or (int(c.utt_id.split("_")[1]) - 1) % 350 in wanted)]
        keys = [(c.speaker, c.emotion, sentences[(int(c.utt_id.split("_")[1]) - 1) % 350]) for c in clips]
        waves = [read_wave(c.path) for c in clips]
        ser = scorers.recognizer([w for w, _ in waves], [r for _, r in waves])
        matched = {k: ser.embeddings[i] for i, k in enumerate(keys)}
        by_emotion: dict[str, list[torch.Tensor]] = {}
        for (_, emotion, _), emb in matched.items():
            by_emotion.setdefault(emotion, []).append(emb)
        centroids: dict[str, torch.Tensor] = {}
        if scorers.speaker is not None:
            for speaker in speakers:
                own = [i for i, k in enumerate(keys) if k[0] == speaker and k[1] == NEUTRAL][:reference_clips]
                if not own:
                    raise ConfigError(f"speaker {speaker} has no {NEUTRAL} recording in {corpus_root}"
                                      f"{'' if split is None else f' (split {split})'} to build its speaker-similarity "
                                      "reference from; choose speakers the corpus records.")
                emb = scorers.speaker.embed([waves[i][0] for i in own], [waves[i][1] for i in own])
                centroids[speaker] = emb.mean(0)
        super().__init__(matched, {e: torch.stack(v).mean(0) for e, v in by_emotion.items()}, centroids)


def utterance_of(clip: Clip) -> Utterance:
    return Utterance(clip.prompt.utt_id, clip.prompt.text, clip.prompt.speaker, clip.wave, clip.sample_rate)


@dataclass
class MeasuredClips:
    """Measurements of synthesized clips, kept beside the clips (whose prompts give ids and conditions)."""

    clips: list[Clip]
    measured: Measured


def measure_clips(clips: list[Clip], scorers: Scorers) -> MeasuredClips:
    """Run every configured evaluation model once over synthesized ``clips``."""
    return MeasuredClips(list(clips), measure([utterance_of(c) for c in clips], scorers))


def score_clips(clips: list[Clip] | MeasuredClips, targets: list[str], scorers: Scorers, refs: ReferenceSet
                ) -> list[dict]:
    """:func:`score` rows of synthesized clips, with each prompt's id and condition and whether the clip finished.

    ``clips`` may be :class:`MeasuredClips` from an earlier call (its clips relabelled, if need be), so one set of
    clips is scored against several targets without running the evaluation models again.
    """
    measured = clips if isinstance(clips, MeasuredClips) else measure_clips(clips, scorers)
    rows = []
    for clip, row in zip(measured.clips, score(measured.measured, targets, refs)):
        out: dict[str, Any] = {}
        for key, value in row.items():
            out[key] = value
            if key == "speaker":
                out["condition"] = clip.prompt.emotion_key
            elif key == "duration_s":
                out["finished"] = clip.finished
        out["utt_id"] = clip.prompt.utt_id
        rows.append(out)
    return rows
