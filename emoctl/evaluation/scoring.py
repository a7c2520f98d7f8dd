"""Scoring synthesized clips: the evaluation models, the corpus references and per-clip metric rows.

Every report (Table 1, the EmoShift sweep, compound emotions and the EmoShift
table) measures clips here, so every number of the same name is computed the
same way: SER hit and P(target), Emo-SIM against the matched corpus recording
and the emotion's prototype, WER of the bundled ASR, speaker similarity to the
speaker's corpus recordings and DNSMOS OVRL.  :func:`measure_clips` runs the
models once; :func:`score_clips` turns that into rows for any target emotion,
so one set of unsteered clips is scored against several targets for free.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from emoctl.synthesis import Clip

NEUTRAL = "Neutral"
"""The corpus's neutral emotion: the target of suppression and the condition of induction."""


@dataclass
class Scorers:
    """The evaluation models, loaded once."""

    recognizer: object
    asr: object | None
    speaker: object | None
    dnsmos: object | None

    @classmethod
    def load(cls, recognizer: str, recognizer_dir: str | None, wer: bool, speaker: bool, dnsmos: bool) -> Scorers:
        from emoctl.metrics.loading import load_recognizer

        asr = spk = mos = None
        if wer:
            from emoctl.metrics.wer import load_asr

            asr = load_asr("whisper")
        if speaker:
            from emoctl.metrics.speaker import load_speaker_encoder

            spk = load_speaker_encoder("resemblyzer")
        if dnsmos:
            from emoctl.metrics.dnsmos import load_dnsmos

            mos = load_dnsmos(threads=min(2, os.cpu_count() or 1))  # one process here: let ONNX use two cores
        return cls(load_recognizer(recognizer, recognizer_dir), asr, spk, mos)


class References:
    """Corpus recordings that generated clips are compared with (Emo-SIM and speaker similarity)."""

    def __init__(self, corpus_root: Path, sentences: list[str], speakers: list[str], scorers: Scorers,
                 used: Sequence[str] | None = None, split: str | None = None) -> None:
        from emoctl.backbones.mini_tts.tokenize_corpus import list_corpus_clips, read_wave

        self.index = {text: i for i, text in enumerate(sentences)}
        wanted = None if used is None else {self.index[t] for t in used if t in self.index}  # only what is spoken
        clips = [c for c in list_corpus_clips(corpus_root, split=split) if c.speaker in speakers
                 and (wanted is None or (int(c.utt_id.split("_")[1]) - 1) % 350 in wanted)]
        self.keys = [(c.speaker, c.emotion, (int(c.utt_id.split("_")[1]) - 1) % 350) for c in clips]
        waves = [read_wave(c.path) for c in clips]
        self.waves = waves
        ser = scorers.recognizer([w for w, _ in waves], [r for _, r in waves])
        self.ser_embedding = {k: ser.embeddings[i] for i, k in enumerate(self.keys)}
        by_emotion: dict[str, list[torch.Tensor]] = {}
        for (speaker, emotion, _), emb in self.ser_embedding.items():
            by_emotion.setdefault(emotion, []).append(emb)
        self.prototype = {e: torch.stack(v).mean(0) for e, v in by_emotion.items()}
        self.speaker_embedding: dict[str, torch.Tensor] = {}
        if scorers.speaker is not None:
            for speaker in speakers:
                own = [i for i, k in enumerate(self.keys) if k[0] == speaker and k[1] == NEUTRAL][:8]
                emb = scorers.speaker.embed([waves[i][0] for i in own], [waves[i][1] for i in own])
                self.speaker_embedding[speaker] = emb.mean(0)

    def matched(self, speaker: str, emotion: str, text: str) -> torch.Tensor | None:
        return self.ser_embedding.get((speaker, emotion, self.index.get(text, -1)))


@dataclass
class Measured:
    """What the evaluation models say about a list of clips, before any target emotion is chosen."""

    clips: list[Clip]
    ser: Any                         # SERResult: probabilities and embeddings per clip
    hypotheses: list[str] | None     # ASR transcripts
    wers: list[float] | None
    speaker_embeddings: torch.Tensor | None
    dnsmos: list[Any] | None


def measure_clips(clips: list[Clip], scorers: Scorers) -> Measured:
    """Run every configured evaluation model once over ``clips``."""
    waves, rates = [c.wave for c in clips], [c.sample_rate for c in clips]
    hyps = scorers.asr.transcribe(waves, rates) if scorers.asr is not None else None
    wers = None
    if hyps is not None:
        from emoctl.metrics.wer import word_error_rate

        wers = word_error_rate(hyps, [c.prompt.text for c in clips])
    return Measured(clips, scorers.recognizer(waves, rates), hyps, wers,
                    scorers.speaker.embed(waves, rates) if scorers.speaker is not None else None,
                    scorers.dnsmos(waves, rates) if scorers.dnsmos is not None else None)


def score_clips(clips: list[Clip] | Measured, targets: list[str], scorers: Scorers, refs: References) -> list[dict]:
    """Per-clip metrics: SER hit and P(target), Emo-SIM (matched, prototype), WER, SpkSIM, DNSMOS OVRL.

    ``clips`` may be a :class:`Measured` from an earlier call, so that one set of clips is scored against
    several targets without running the evaluation models again.
    """
    import torch.nn.functional as F

    measured = clips if isinstance(clips, Measured) else measure_clips(clips, scorers)
    ser = measured.ser
    predicted = ser.predicted()
    rows = []
    for i, (clip, target) in enumerate(zip(measured.clips, targets)):
        emb = ser.embeddings[i]
        ref = refs.matched(clip.prompt.speaker, target, clip.prompt.text)
        row = {"utt_id": clip.prompt.utt_id, "text": clip.prompt.text, "speaker": clip.prompt.speaker,
               "condition": clip.prompt.emotion_key, "target": target, "predicted": predicted[i],
               "ser_hit": float(predicted[i] == target), "p_target": float(ser.prob_of(target)[i]),
               "emo_sim_matched": float(F.cosine_similarity(emb, ref, dim=0)) if ref is not None else math.nan,
               "emo_sim_prototype": float(F.cosine_similarity(emb, refs.prototype[target], dim=0)),
               "duration_s": len(clip.wave) / clip.sample_rate, "finished": clip.finished}
        if measured.wers is not None:
            row["hypothesis"], row["wer"] = measured.hypotheses[i], measured.wers[i]
        if measured.speaker_embeddings is not None:
            row["spk_sim"] = float(F.cosine_similarity(measured.speaker_embeddings[i],
                                                       refs.speaker_embedding[clip.prompt.speaker], dim=0))
        if measured.dnsmos is not None:
            row["dnsmos_ovrl"] = float(measured.dnsmos[i].ovrl)
        rows.append(row)
    return rows
