"""``emoctl bench probes``: emoctl's F0 tracker against librosa.pyin and torchcrepe "tiny" on eSpeak NG speech.

Every row is measured in the same run on the same clips: eSpeak NG sentences
from the corpus grammar (seed 7, not the sentences the tracker was tuned on),
spoken by a cycle of voices at pitch settings spread over eSpeak's 0-100
scale, cut to ``seconds``.  The reference is ``librosa.pyin`` with the same
range (50-550 Hz), 10 ms hop and a 64 ms frame at 16 kHz, run on the same
16 kHz audio as our tracker, so frame ``t`` is the same instant in both.

Rows:

1. ``librosa.pyin`` at 16 kHz (the accuracy reference and the speed baseline);
2. ``librosa.pyin`` on the 22.05 kHz clips with librosa's default 2048-sample
   frame and a 10 ms hop, the setting behind "3.6 s for a 3 s clip", timed on
   two clips only;
3. emoctl ``measure`` on the whole batch (every probe, resampling included);
4. emoctl ``measure`` one clip per call (what a loop over clips pays);
5. torchcrepe "tiny" (Viterbi decoding, voiced where periodicity > 0.21), on
   two clips when it runs on CPU, where it is slow.

Errors are relative F0 differences on frames that both trackers call voiced;
voicing agreement is the share of frames where both make the same call.  A
last line gives the F0 error on pure tones and harmonic complexes.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torchaudio
from tqdm.auto import tqdm

from emoctl.bench.rounds import resolve_device, sync
from emoctl.corpus.espeak import synthesize
from emoctl.corpus.sentences import generate_sentences
from emoctl.errors import ConfigError
from emoctl.probes.acoustic import measure

ANALYSIS_RATE = 16000
HOP = 160  # 10 ms at 16 kHz
FMIN, FMAX = 50.0, 550.0
VOICES = ("en-us+m3", "en+f2", "en-us+m1", "en+f4", "en-us+m7", "en+f1", "en+m5", "en-us+f3", "en+m2", "en-us+m6")
PITCHES = (50, 70, 30, 45, 80, 60, 35, 25, 65, 90)
TONES_HZ = (80.0, 110.0, 150.0, 220.0, 300.0, 400.0)


def bench_probes(n_utterances: int = 8, seconds: float = 3.0, device: str = "auto", with_crepe: bool = True
                 ) -> list[dict]:
    """Time and compare the F0 trackers; print a Markdown table and return its rows.

    Args:
        n_utterances: eSpeak NG clips to measure.
        seconds: Length each clip is cut to (shorter sentences stay shorter).
        device: "cpu", "cuda", or "auto" (CUDA when available) for emoctl and CREPE.
        with_crepe: Add the torchcrepe "tiny" row (needs the ``torchcrepe`` package).
    """
    if n_utterances < 1 or seconds <= 0:
        raise ConfigError(f"bench_probes: n_utterances={n_utterances} must be >= 1 and seconds={seconds} > 0.")
    dev = resolve_device(device, "bench probes")
    clips, native_rate = _speech(n_utterances, seconds)
    clips16 = [torchaudio.functional.resample(torch.from_numpy(c), native_rate, ANALYSIS_RATE).numpy() for c in clips]
    audio_seconds = sum(c.size for c in clips) / native_rate

    import librosa

    librosa.pyin(np.zeros(4096, np.float32) + 1e-3, fmin=FMIN, fmax=FMAX, sr=ANALYSIS_RATE, frame_length=1024,
                 hop_length=HOP)  # compile numba kernels before timing
    reference, pyin_seconds = [], 0.0
    for clip in tqdm(clips16, desc="librosa.pyin", leave=False):
        start = time.perf_counter()
        f0, voiced, _ = librosa.pyin(clip, fmin=FMIN, fmax=FMAX, sr=ANALYSIS_RATE, frame_length=1024, hop_length=HOP)
        pyin_seconds += time.perf_counter() - start
        reference.append(np.where(voiced, f0, np.nan))
    pyin_per_clip = pyin_seconds / len(clips)

    rows = [_row("librosa.pyin (16 kHz, 1024 frame)", len(clips), pyin_per_clip, pyin_per_clip, reference, reference)]
    default_clips = clips[:2]
    start = time.perf_counter()
    for clip in tqdm(default_clips, desc="librosa.pyin defaults", leave=False):
        librosa.pyin(clip, fmin=FMIN, fmax=FMAX, sr=native_rate, hop_length=round(native_rate / 100))
    rows.append(_row(f"librosa.pyin ({native_rate / 1000:g} kHz, 2048 frame)", len(default_clips),
                     (time.perf_counter() - start) / len(default_clips), pyin_per_clip, None, reference))

    batch_inputs = [torch.from_numpy(c).to(dev) for c in clips]
    measure(batch_inputs, native_rate)  # warm-up: kernels, resampler cache, CUDA context
    elapsed, profiles = _timed(lambda: measure(batch_inputs, native_rate), dev)
    ours = [p.f0_hz for p in profiles]
    rows.append(_row(f"emoctl measure, batch of {len(clips)} ({dev.type})", len(clips), elapsed / len(clips),
                     pyin_per_clip, ours, reference))
    elapsed, _ = _timed(lambda: [measure([c], native_rate) for c in batch_inputs], dev)
    rows.append(_row(f"emoctl measure, one clip per call ({dev.type})", len(clips), elapsed / len(clips),
                     pyin_per_clip, ours, reference))

    crepe = None
    if with_crepe:
        crepe_count = len(clips) if dev.type == "cuda" else min(2, len(clips))
        crepe_seconds, crepe = _crepe(clips16[:crepe_count], dev)
        rows.append(_row(f"torchcrepe tiny ({dev.type})", crepe_count, crepe_seconds / crepe_count, pyin_per_clip,
                         crepe, reference[:crepe_count]))
        for row, f0s in zip(rows, [reference, None, ours, ours]):
            row["median_rel_err_vs_crepe"] = (_agreement(f0s[: len(crepe)], crepe)[0] if f0s is not None
                                              else float("nan"))
        rows[-1]["median_rel_err_vs_crepe"] = 0.0

    _print_table(rows, len(clips), audio_seconds, dev, crepe is not None)
    print(_tone_line())
    return rows


def _speech(count: int, seconds: float) -> tuple[list[np.ndarray], int]:
    """``count`` eSpeak NG clips: grammar sentences in pairs, voices and pitch settings cycled, cut to ``seconds``."""
    sentences = generate_sentences(2 * count, seed=7)
    clips, rate = [], 0
    for i in tqdm(range(count), desc="eSpeak NG", leave=False):
        clip, rate = synthesize(f"{sentences[2 * i]} {sentences[2 * i + 1]}", VOICES[i % len(VOICES)],
                                pitch=PITCHES[i % len(PITCHES)])
        clips.append(clip[: int(seconds * rate)])
    return clips, rate


def _timed(function: Callable[[], object], device: torch.device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    result = function()
    sync(device)
    return time.perf_counter() - start, result


def _crepe(clips16: list[np.ndarray], device: torch.device) -> tuple[float, list[np.ndarray]]:
    import torchcrepe

    def run(clip: np.ndarray) -> np.ndarray:
        audio = torch.from_numpy(clip)[None].to(device)
        pitch, periodicity = torchcrepe.predict(audio, ANALYSIS_RATE, HOP, FMIN, FMAX, model="tiny",
                                                return_periodicity=True, batch_size=1024, device=device, pad=True)
        periodicity = torchcrepe.filter.median(periodicity, 3)
        return torchcrepe.threshold.At(0.21)(pitch, periodicity)[0].cpu().numpy()

    run(clips16[0][:ANALYSIS_RATE // 2])  # load the model
    start = time.perf_counter()
    f0s = [run(clip) for clip in tqdm(clips16, desc="torchcrepe tiny", leave=False)]
    sync(device)
    return time.perf_counter() - start, f0s


def _agreement(f0s: list[np.ndarray], references: list[np.ndarray]) -> tuple[float, float, float]:
    """(median, 95th percentile of the relative F0 error on co-voiced frames, voicing agreement), pooled."""
    errors, same = [], []
    for f0, reference in zip(f0s, references):
        n = min(f0.size, reference.size)  # equal for centred 10 ms frames; guards a one-frame edge case
        f0, reference = f0[:n], reference[:n]
        both = ~np.isnan(f0) & ~np.isnan(reference)
        errors.append(np.abs(f0[both] / reference[both] - 1))
        same.append(np.isnan(f0) == np.isnan(reference))
    pooled = np.concatenate(errors)
    if pooled.size == 0:
        return float("nan"), float("nan"), float(np.mean(np.concatenate(same)))
    return float(np.median(pooled)), float(np.percentile(pooled, 95)), float(np.mean(np.concatenate(same)))


def _row(method: str, clips: int, seconds_per_clip: float, pyin_per_clip: float, f0s: list[np.ndarray] | None,
         reference: list[np.ndarray]) -> dict:
    median, p95, agreement = _agreement(f0s, reference) if f0s is not None else (float("nan"),) * 3
    return {"method": method, "clips": clips, "seconds_per_utterance": seconds_per_clip,
            "speedup_vs_pyin": pyin_per_clip / seconds_per_clip, "median_rel_err_vs_pyin": median,
            "p95_rel_err_vs_pyin": p95, "voicing_agreement_vs_pyin": agreement}


def _print_table(rows: list[dict], count: int, audio_seconds: float, device: torch.device, with_crepe: bool) -> None:
    print(f"\nF0 trackers on {count} eSpeak NG clips ({audio_seconds / count:.2f} s each on average), "
          f"device {device}, {torch.get_num_threads()} torch threads; errors on co-voiced frames.\n")
    header = "| method | clips | s / utterance | speed-up vs pyin | median F0 err vs pyin | p95 F0 err vs pyin " \
             "| voicing agreement vs pyin |" + (" median F0 err vs CREPE |" if with_crepe else "")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        line = (f"| {row['method']} | {row['clips']} | {row['seconds_per_utterance']:.4f} | "
                f"{row['speedup_vs_pyin']:.1f}x | {_percent(row['median_rel_err_vs_pyin'])} | "
                f"{_percent(row['p95_rel_err_vs_pyin'])} | {_percent(row['voicing_agreement_vs_pyin'], 1)} |")
        if with_crepe:
            line += f" {_percent(row.get('median_rel_err_vs_crepe', float('nan')))} |"
        print(line)


def _percent(value: float, decimals: int = 2) -> str:
    return "-" if not np.isfinite(value) else f"{value * 100:.{decimals}f}%"


def _tone_line() -> str:
    """Worst relative error of the median F0 over pure tones and 8-harmonic complexes, for emoctl and pyin."""
    import librosa

    rate = 22050
    t = np.arange(rate) / rate
    signals = []
    for f0 in TONES_HZ:
        for n_harmonics in (1, 8):
            partials = sum(np.sin(2 * np.pi * k * f0 * t + 0.7 * k) / k for k in range(1, n_harmonics + 1))
            signals.append((f0, (0.5 * partials / np.abs(partials).max()).astype(np.float32)))
    ours = measure([s for _, s in signals], rate)
    ours_error = max(abs(p.f0_median_hz / f0 - 1) for (f0, _), p in zip(signals, ours))
    pyin_error = max(abs(np.nanmedian(librosa.pyin(s, fmin=FMIN, fmax=FMAX, sr=rate)[0]) / f0 - 1)
                     for f0, s in signals)
    return (f"\nTones {TONES_HZ[0]:g}-{TONES_HZ[-1]:g} Hz (pure and 8 harmonics, 1 s at {rate} Hz): worst median-F0 "
            f"error {ours_error * 100:.3f}% (emoctl), {pyin_error * 100:.3f}% (librosa.pyin).")
