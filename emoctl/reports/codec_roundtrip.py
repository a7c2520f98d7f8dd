"""Does the speech codec keep what emotions change?  Tokenize -> vocode round trips of the corpus test split.

The mini TTS can only be as emotional as its tokens: if encoding a clip into
speech tokens and vocoding it back flattened pitch or loudness, no LM trained on
those tokens could express an emotion.  This report measures, per emotion, the
mean F0, RMS and duration of every test clip before and after the round trip,
checks them against the issue's tolerances (F0 within 5%, RMS within 20%,
duration within 5%, the order of emotions by F0 and by RMS unchanged), and puts
the round trip's WER with the bundled ASR (faster-whisper tiny.en) beside the
original audio's on a seeded subset (Whisper is the slow part on a CPU).

Output (``out_dir``): ``summary.md``, ``per_emotion.csv``, ``clips.csv``,
``transcripts.csv`` (the WER subset) and ``roundtrip.png``, each written atomically.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoctl.corpus.esd import read_wave
from emoctl.io.fsio import atomic_write_bytes, save_figure_atomically
from emoctl.metrics.wer import FasterWhisperASR, corpus_wer, word_error_rate

PROBES = ("f0_mean_hz", "rms", "duration_s")
TOLERANCE = {"f0_mean_hz": 0.05, "rms": 0.20, "duration_s": 0.05}
"""Largest allowed |round trip / original - 1| of an emotion's mean, per probe."""
ORDERED_PROBES = ("f0_mean_hz", "rms")
"""Probes whose ranking of the emotions must survive the round trip."""


@dataclass
class RoundTrip:
    """Picklable job: one sound file -> (original wave, round-trip wave, sample rates)."""

    codec: object  # SpeechCodec

    def __call__(self, path: Path) -> tuple[np.ndarray, int, np.ndarray, int]:
        wave, rate = read_wave(path)
        tokens = self.codec.encode(wave, rate)
        out, out_rate = self.codec.decode(tokens)
        return wave, rate, out, out_rate


def _clip_sentence_index(utt_id: str) -> int:
    """ESD numbering: ids 1-350 Neutral, 351-700 Angry, ...; the same sentence has the same id mod 350."""
    return (int(utt_id.split("_")[1]) - 1) % 350


def wer_subset(clips, pairs, sentences, emotions, per_emotion: int, seed: int, progress: bool) -> dict:
    """Pooled WER of the original and the round-trip audio on the same seeded subset, overall and per emotion."""
    from tqdm import tqdm


    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for e in emotions:
        members = [i for i, c in enumerate(clips) if c.emotion == e]
        chosen += sorted(rng.choice(members, size=min(per_emotion, len(members)), replace=False).tolist())
    asr = FasterWhisperASR()
    refs = [sentences[_clip_sentence_index(clips[i].utt_id)] for i in chosen]
    hyps: dict[str, list[str]] = {"original": [], "roundtrip": []}
    for i in tqdm(chosen, desc="whisper (original + round trip)", disable=not progress, unit="clip"):
        wave, rate, out, out_rate = pairs[i]
        hyps["original"] += asr.transcribe([wave], rate)
        hyps["roundtrip"] += asr.transcribe([out], out_rate)
    report = {"asr": asr.name, "clips": len(chosen)}
    for kind in ("original", "roundtrip"):
        report[kind] = corpus_wer(hyps[kind], refs)
        report[f"{kind}_per_emotion"] = {
            e: corpus_wer([h for h, i in zip(hyps[kind], chosen) if clips[i].emotion == e],
                          [r for r, i in zip(refs, chosen) if clips[i].emotion == e]) for e in emotions}
        # The pooled WER is dominated by the odd clip where Whisper loops on a phrase; the median is not.
        per_clip = np.asarray(word_error_rate(hyps[kind], refs))
        report[f"{kind}_median"] = float(np.median(per_clip))
        report[f"{kind}_median_per_emotion"] = {
            e: float(np.median([w for w, i in zip(per_clip, chosen) if clips[i].emotion == e])) for e in emotions}
    report["transcripts"] = [{"utt_id": clips[i].utt_id, "reference": r, "original": a, "roundtrip": b}
                             for i, r, a, b in zip(chosen, refs, hyps["original"], hyps["roundtrip"])]
    return report


def _summary_markdown(result: dict) -> str:
    pe, emotions = result["per_emotion"], result["emotions"]
    lines = ["# Speech codec round trip: tokenize -> vocode", "",
             f"Codec `{result['codec']}` (digest {result['codec_digest']}), corpus `{result['corpus']}`, "
             f"{result['split']} split, {result['clips']} clips. Per-emotion means of each clip's probe, "
             "original -> round trip (relative change).", "",
             "| emotion | clips | mean F0 (Hz) | RMS | duration (s) |", "|---|---|---|---|---|"]
    for e in emotions:
        cells = [f"{pe[e][f'original_{p}']:.4g} -> {pe[e][f'roundtrip_{p}']:.4g} ({pe[e][f'rel_error_{p}']:+.1%})"
                 for p in PROBES]
        lines.append(f"| {e} | {pe[e]['clips']} | " + " | ".join(cells) + " |")
    lines += ["", "Tolerances: F0 within 5%, RMS within 20%, duration within 5% of the original, per emotion.", "",
              "| check | passed |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} |" for name, ok in result["checks"].items()]
    for p in ORDERED_PROBES:
        lines += ["", f"Emotions by {p}, low to high: original {' < '.join(result['order'][p]['original'])}; "
                      f"round trip {' < '.join(result['order'][p]['roundtrip'])}."]
    wer = result["wer"]
    if wer is not None:
        lines += ["", f"## WER ({wer['asr']}, {wer['clips']} clips, the same ones before and after)", "",
                  "Pooled WER (all errors / all reference words) and the median of the clips' WERs; the pooled "
                  "figure is dominated by the odd clip on which Whisper loops. Transcripts are in "
                  "`transcripts.csv`.", "",
                  "| emotion | original, pooled | round trip, pooled | original, median | round trip, median |",
                  "|---|---|---|---|---|"]
        lines += [f"| {e} | {wer['original_per_emotion'][e]:.3f} | {wer['roundtrip_per_emotion'][e]:.3f} | "
                  f"{wer['original_median_per_emotion'][e]:.3f} | {wer['roundtrip_median_per_emotion'][e]:.3f} |"
                  for e in emotions]
        lines.append(f"| **all** | **{wer['original']:.3f}** | **{wer['roundtrip']:.3f}** | "
                     f"**{wer['original_median']:.3f}** | **{wer['roundtrip_median']:.3f}** |")
    return "\n".join(lines) + "\n"


def _figure(result: dict):
    """Per-emotion bars of each probe, original beside round trip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    emotions, pe = result["emotions"], result["per_emotion"]
    titles = {"f0_mean_hz": "mean F0 (Hz)", "rms": "RMS", "duration_s": "duration (s)"}
    fig, axes = plt.subplots(1, len(PROBES), figsize=(11, 3.2), dpi=110)
    x = np.arange(len(emotions))
    for ax, p in zip(axes, PROBES):
        ax.bar(x - 0.2, [pe[e][f"original_{p}"] for e in emotions], 0.4, label="original")
        ax.bar(x + 0.2, [pe[e][f"roundtrip_{p}"] for e in emotions], 0.4, label="round trip")
        ax.set_xticks(x, emotions, rotation=30)
        ax.set_title(f"{titles[p]} (tol. {TOLERANCE[p]:.0%})")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Codec round trip, {result['split']} split, {result['clips']} clips")
    fig.tight_layout()
    return fig


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_codec_outputs(out: Path, result: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = _summary_markdown(result)
    atomic_write_bytes(out / "summary.md", summary.encode())
    atomic_write_bytes(out / "clips.csv", _csv(rows).encode())
    atomic_write_bytes(out / "per_emotion.csv",
                       _csv([{"emotion": e, **v} for e, v in result["per_emotion"].items()]).encode())
    save_figure_atomically(_figure(result), out / "roundtrip.png")
    if result["wer"] is not None:
        atomic_write_bytes(out / "transcripts.csv", _csv(result["wer"]["transcripts"]).encode())
    print(summary)
    print(f"written to {out}/ (summary.md, per_emotion.csv, clips.csv, transcripts.csv, roundtrip.png)")
