"""One gate for every clip a metric sees: shape, sample rate and content checked before any model runs.

Why one shared helper: each evaluation library fails differently on bad audio
(resemblyzer divides by a zero norm and returns NaN, the DNSMOS ONNX graph
accepts anything and prints a plausible score, CTranslate2 raises deep inside
its C++ feature code).  Checking once, here, turns every such case into a
:class:`~emoctl.errors.ConfigError` that names the clip and says what to do:

* shape: a 1-D array, or (1, n) / (n, 1) which is squeezed; anything with more
  than one channel is refused (mix down first: metrics must not guess how);
* sample rate: an integer in [8000, 192000] Hz (a 1 kHz "clip" is a bug);
* content: at least 0.1 s long, every sample finite, and not silent.

Silence is a clip whose samples never depart from the clip's own mean by more than
:data:`SILENCE_PEAK` (one 16-bit step): all zeros, and also a constant DC offset
(a vocoder stuck at one value), which holds no sound either, however far from zero.
The mean is removed only for this test; the samples are scored as they are.

Integer samples (int16/int32 PCM) are scaled to [-1, 1]; everything comes back
as float32.  Resampling to a model's rate uses librosa's soxr backend.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from emoctl.errors import ConfigError

__all__ = ["MAX_SAMPLE_RATE", "MIN_DURATION_S", "MIN_SAMPLE_RATE", "SILENCE_PEAK", "is_silent", "prepare_clip",
           "prepare_clips", "resample"]

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MIN_DURATION_S = 0.1
"""Shortest clip scored; shorter ones hold no word and no speaker information."""
SILENCE_PEAK = 2.0 ** -15
"""Largest departure from the clip's mean (full scale 1.0) that still counts as silence: one 16-bit step."""


def is_silent(array: np.ndarray) -> bool:
    """True when no sample of the (n,) clip departs from the clip's mean by more than :data:`SILENCE_PEAK`."""
    centered = array.astype(np.float64) - float(np.mean(array, dtype=np.float64))
    return float(np.max(np.abs(centered))) <= SILENCE_PEAK


def prepare_clip(wave: np.ndarray | torch.Tensor, sample_rate: int, *, name: str = "clip",
                 target_rate: int | None = None) -> np.ndarray:
    """Validate one mono clip and return it as (n,) float32, resampled to ``target_rate`` if given.

    ``name`` (a file path or index) is put in every error message.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise ConfigError(f"{name}: sample rate must be an integer number of Hz, got {sample_rate!r}.")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ConfigError(f"{name}: sample rate {sample_rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]; "
                          f"pass the rate the audio was recorded or generated at (e.g. 16000, 22050, 24000).")
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    array = np.asarray(wave)
    if array.dtype.kind not in "fiu":
        raise ConfigError(f"{name}: audio must be numeric samples, got dtype {array.dtype}.")
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ConfigError(f"{name}: expected mono audio of shape (n,), got shape {tuple(array.shape)}; "
                          f"mix multi-channel audio down to one channel before scoring.")
    if array.dtype.kind in "iu":
        array = array.astype(np.float64) / float(2 ** (8 * array.dtype.itemsize - 1))
    array = array.astype(np.float32, copy=False)
    if array.size < MIN_DURATION_S * sample_rate:
        raise ConfigError(f"{name}: {array.size} samples ({array.size / sample_rate:.3f} s at {sample_rate} Hz) is "
                          f"shorter than the {MIN_DURATION_S} s minimum; the clip is empty or truncated.")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ConfigError(f"{name}: {bad} of {array.size} samples are NaN or infinite; the generator or vocoder "
                          f"produced invalid audio.")
    if not np.any(array):
        raise ConfigError(f"{name}: every sample is zero (silence); there is no speech to score.")
    if is_silent(array):
        mean = float(np.mean(array, dtype=np.float64))
        raise ConfigError(f"{name}: every sample is within one 16-bit step of the clip's mean {mean:.4g} (a "
                          f"constant DC offset: silence); there is no speech to score.")
    if target_rate is not None and target_rate != sample_rate:
        array = resample(array, sample_rate, target_rate)
    return array


def prepare_clips(waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int | Sequence[int], *,
                  names: Sequence[str] | None = None, target_rate: int | None = None) -> list[np.ndarray]:
    """:func:`prepare_clip` over a batch; ``sample_rate`` is one rate or one per clip."""
    if isinstance(waves, (np.ndarray, torch.Tensor)) and np.ndim(waves) == 1:
        raise ConfigError("metrics take a list of clips; wrap a single (n,) clip in a list: [wave].")
    rates = [sample_rate] * len(waves) if isinstance(sample_rate, (int, np.integer)) else list(sample_rate)
    if len(rates) != len(waves):
        raise ConfigError(f"{len(waves)} clips but {len(rates)} sample rates; give one rate or one per clip.")
    labels = list(names) if names is not None else [f"clip {i}" for i in range(len(waves))]
    if len(labels) != len(waves):
        raise ConfigError(f"{len(waves)} clips but {len(labels)} names.")
    return [prepare_clip(w, r, name=n, target_rate=target_rate) for w, r, n in zip(waves, rates, labels)]


def resample(wave: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """(n,) float32 at ``source_rate`` -> (m,) float32 at ``target_rate``."""
    if source_rate == target_rate:
        return wave
    import librosa

    return librosa.resample(wave, orig_sr=source_rate, target_sr=target_rate, res_type="soxr_hq").astype(np.float32)
