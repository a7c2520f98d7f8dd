"""Acoustic profile of each utterance: F0 statistics, RMS energy, spectral centroid, duration.

Why these probes: emotion steering should show in the audio the way emotion
does in speech (anger and happiness raise F0, energy and brightness; sadness
lowers them), so the validation callbacks compare these numbers before and
after steering.  ``measure`` takes a list of clips of any lengths and sample
rates, resamples them to one analysis rate (so a probe means the same thing
whatever the input rate), pads them into batches and runs every probe as a few
tensor ops on CPU or GPU.

All frame-wise probes share one grid: frames every ``hop_seconds``, centred on
``t * hop_seconds`` for ``t = 0 .. floor(length / hop)``.

Conventions for silence: an empty or all-zero clip gives NaN F0 statistics, a
voiced fraction of 0, a NaN spectral centroid, an RMS of 0 (NaN when empty) and
``rms_dbfs`` of -inf (NaN when empty).  ``rms_dbfs`` is ``20 log10(rms)``, dB
relative to the RMS of a full-scale square wave (a full-scale sine is -3.01).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor

from emoctl.errors import ConfigError
from emoctl.probes.pitch import PitchConfig, num_frames, track_f0

__all__ = ["MIN_SAMPLE_RATE", "AcousticProfile", "measure", "to_rows"]

MIN_SAMPLE_RATE = 8000
"""Lowest accepted input rate: below it the 50-550 Hz F0 range loses its harmonics."""


@dataclass
class AcousticProfile:
    """Probes of one utterance; ``to_row()`` gives the scalar part as a CSV-ready dict."""

    f0_mean_hz: float
    """Mean F0 over voiced frames (NaN when none is voiced)."""
    f0_median_hz: float
    """Median F0 over voiced frames."""
    f0_std_hz: float
    """Standard deviation of F0 over voiced frames (population, NaN when none)."""
    voiced_fraction: float
    """Voiced frames / frames; 0 for silence."""
    rms: float
    """Mean of the frame RMS values, in full-scale units (1.0 = square wave at full scale)."""
    rms_dbfs: float
    """``20 log10(rms)``; -inf for digital silence."""
    spectral_centroid_hz: float
    """Energy-weighted mean over frames of each frame's magnitude-weighted mean frequency."""
    duration_s: float
    """Length of the input clip in seconds, at its own sample rate."""
    f0_hz: np.ndarray = field(repr=False)
    """(F,) float32 F0 contour, NaN where unvoiced."""
    frame_times_s: np.ndarray = field(repr=False)
    """(F,) float32 time of each frame's centre."""

    def to_row(self) -> dict[str, float]:
        """The scalar probes (no contour) as a flat dict."""
        row = asdict(self)
        del row["f0_hz"], row["frame_times_s"]
        return row


def to_rows(profiles: Sequence[AcousticProfile]) -> list[dict[str, float]]:
    """``[p.to_row() for p in profiles]``, e.g. for ``csv.DictWriter``."""
    return [profile.to_row() for profile in profiles]


@torch.no_grad()
def measure(waveforms: Sequence[Tensor | np.ndarray], sample_rate: int | Sequence[int], *,
            device: str | torch.device | None = None, analysis_rate: int = 16000,
            pitch: PitchConfig = PitchConfig(), centroid_fft: int = 512, rms_frame_seconds: float = 0.025,
            batch_size: int = 64) -> list[AcousticProfile]:
    """Measure every probe on every clip; one ``AcousticProfile`` per input, in input order.

    Args:
        waveforms: Mono clips as (T,) or (1, T) float tensors or arrays, any lengths.
        sample_rate: One rate for all clips, or one per clip (Hz, at least 8000).
        device: Where to compute; default the first tensor's device, else CPU.
        analysis_rate: Every clip is resampled to this rate first, so the
            spectral centroid and RMS only see content below ``analysis_rate / 2``.
        pitch: F0 tracker settings (range, hop, voicing).
        centroid_fft: FFT size (Hann window) of the spectral centroid frames.
        rms_frame_seconds: Length of the RMS frames (rectangular window).
        batch_size: Clips per padded batch; clips are grouped by length to keep padding small.
    """
    clips = [_as_mono(waveform, index) for index, waveform in enumerate(waveforms)]
    rates = _rates(sample_rate, len(clips))
    if batch_size < 1:
        raise ConfigError(f"measure(): batch_size={batch_size} must be >= 1.")
    if device is None:
        device = next((w.device for w in waveforms if isinstance(w, Tensor)), torch.device("cpu"))
    device = torch.device(device)

    # Resampled clips, one by one for the kernel's sake, then batched by length.
    resampled = [_resample(clip.to(device), rate, analysis_rate) for clip, rate in zip(clips, rates)]
    order = sorted(range(len(clips)), key=lambda i: resampled[i].numel())
    profiles: list[AcousticProfile | None] = [None] * len(clips)
    for start in range(0, len(order), batch_size):
        members = order[start: start + batch_size]
        lengths = torch.tensor([resampled[i].numel() for i in members], device=device)
        audio = torch.zeros(len(members), max(int(lengths.max()), 1), device=device)  # (B, T)
        for row, i in enumerate(members):
            audio[row, : resampled[i].numel()] = resampled[i]
        batch = _measure_batch(audio, lengths, analysis_rate, pitch, centroid_fft, rms_frame_seconds)
        for row, i in enumerate(members):
            profiles[i] = _profile(batch, row, duration_s=clips[i].numel() / rates[i])
    return profiles  # type: ignore[return-value]


def _as_mono(waveform: Tensor | np.ndarray, index: int) -> Tensor:
    """(T,) float32 tensor, or ConfigError naming the clip."""
    tensor = torch.as_tensor(waveform)
    if not (tensor.is_floating_point()):
        raise ConfigError(
            f"waveforms[{index}] has dtype {tensor.dtype}; the probes take float samples in [-1, 1]. Convert "
            f"integer PCM first, e.g. x.astype(np.float32) / 32768 for int16.")
    if tensor.ndim == 2 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 1:
        raise ConfigError(
            f"waveforms[{index}] has shape {tuple(tensor.shape)}; the probes take mono audio as (T,) or (1, T). "
            f"Mix down first, e.g. x.mean(0) for (channels, T).")
    tensor = tensor.float()
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ConfigError(
            f"waveforms[{index}] has {bad} non-finite samples (NaN or Inf) of {tensor.numel()}; the generator "
            f"that made this clip failed. Drop the clip, or replace the samples with torch.nan_to_num(x) if "
            f"they are known to be few.")
    return tensor


def _rates(sample_rate: int | Sequence[int], count: int) -> list[int]:
    rates = [sample_rate] * count if isinstance(sample_rate, (int, np.integer)) else list(sample_rate)
    if len(rates) != count:
        raise ConfigError(f"measure(): got {count} waveforms but {len(rates)} sample rates; pass one rate for "
                          f"all clips or one per clip.")
    for index, rate in enumerate(rates):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate < MIN_SAMPLE_RATE:
            raise ConfigError(
                f"sample rate of waveforms[{index}] is {rate!r}; the probes need an integer rate of at least "
                f"{MIN_SAMPLE_RATE} Hz. Pass the clip's true rate (e.g. 16000, 22050, 24000).")
    return [int(rate) for rate in rates]


@lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new)  # builds its windowed-sinc kernel once


def _resample(clip: Tensor, orig: int, new: int) -> Tensor:
    if orig == new or clip.numel() == 0:
        return clip if orig == new else clip.new_zeros(0)
    return _resampler(orig, new).to(clip.device)(clip)


@dataclass
class _Batch:
    """Per-frame probes of a padded batch on the CPU, all (B, F) on the frame grid except the centroid."""

    f0: Tensor
    frame_mask: Tensor
    frame_rms: Tensor
    centroid: Tensor  # (B,) energy-weighted over frames
    hop_seconds: float


def _measure_batch(audio: Tensor, lengths: Tensor, rate: int, pitch: PitchConfig, centroid_fft: int,
                   rms_frame_seconds: float) -> _Batch:
    track = track_f0(audio, lengths, rate, pitch)  # (B, F)
    hop = round(pitch.hop_seconds * rate)
    n_frames = track.f0.shape[1]

    # RMS: rectangular frames of rms_frame_seconds centred on the frame times.
    width = max(1, round(rms_frame_seconds * rate))
    squares = F.pad(audio.square(), (width // 2, width))[:, None]  # (B, 1, T + pad)
    frame_power = F.avg_pool1d(squares, width, stride=hop)[:, 0, :n_frames]  # (B, F)
    frame_rms = frame_power.clamp_min(0.0).sqrt().masked_fill(~track.frame_mask, math.nan)

    # Spectral centroid: magnitude-weighted mean frequency per frame, frames weighted by energy.
    window = torch.hann_window(centroid_fft, device=audio.device)
    spectrum = torch.stft(audio, centroid_fft, hop_length=hop, window=window, center=True, pad_mode="constant",
                          return_complex=True).abs()  # (B, K, F')
    spectrum = spectrum[..., :n_frames] * track.frame_mask[:, None, :]
    freqs = torch.linspace(0.0, rate / 2, spectrum.shape[1], device=audio.device)  # (K,)
    magnitude_sum = spectrum.sum(1)  # (B, F)
    frame_centroid = (freqs[:, None] * spectrum).sum(1) / magnitude_sum.clamp_min(1e-20)  # (B, F)
    frame_energy = spectrum.square().sum(1)  # (B, F)
    centroid = (frame_energy * frame_centroid).sum(1) / frame_energy.sum(1)  # (B,), NaN for silence
    return _Batch(f0=track.f0.cpu(), frame_mask=track.frame_mask.cpu(), frame_rms=frame_rms.cpu(),
                  centroid=centroid.cpu(), hop_seconds=track.hop_seconds)


def _profile(batch: _Batch, row: int, duration_s: float) -> AcousticProfile:
    count = int(batch.frame_mask[row].sum())
    f0 = batch.f0[row, :count].cpu().numpy().astype(np.float32)  # (F,)
    voiced = f0[~np.isnan(f0)]
    rms = float(batch.frame_rms[row, :count].mean()) if count else math.nan
    with np.errstate(divide="ignore"):
        rms_dbfs = float(20.0 * np.log10(rms)) if count else math.nan
    return AcousticProfile(
        f0_mean_hz=float(voiced.mean()) if voiced.size else math.nan,
        f0_median_hz=float(np.median(voiced)) if voiced.size else math.nan,
        f0_std_hz=float(voiced.std()) if voiced.size else math.nan,
        voiced_fraction=voiced.size / count if count else 0.0,
        rms=rms,
        rms_dbfs=rms_dbfs,
        spectral_centroid_hz=float(batch.centroid[row]),
        duration_s=duration_s,
        f0_hz=f0,
        frame_times_s=(np.arange(count) * batch.hop_seconds).astype(np.float32),
    )
