"""Recordings on their way into a backbone's own audio front ends (speech tokenizers, speaker encoders).

Every adapter resamples with torchaudio (what upstream systems use), refuses a recording that is not mono,
finite and non-empty by name, and builds its lazily loaded models without touching the caller's RNG.
"""
from __future__ import annotations

import numpy as np
import torch

from emoctl.errors import ConfigError


def resample(wave: np.ndarray, rate: int, target: int) -> torch.Tensor:
    """(1, T') float32 at ``target`` Hz, with torchaudio's resampler (upstream's)."""
    import torchaudio

    x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(1, -1)
    if rate == target:
        return x
    return torchaudio.transforms.Resample(rate, target)(x)


def mono_recording(wave: np.ndarray, rate: int, what: str, max_seconds: float | None = None) -> np.ndarray:
    """A mono, finite, non-empty float32 recording (cut to ``max_seconds`` when given); refused loudly otherwise."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise ConfigError(f"{what}: expected a non-empty mono recording (1-D samples), got shape {wave.shape}.")
    if not np.isfinite(wave).all():
        raise ConfigError(f"{what}: the recording has NaN or Inf samples.")
    if rate <= 0:
        raise ConfigError(f"{what}: sample rate must be positive, got {rate}.")
    return wave if max_seconds is None else wave[:int(max_seconds * rate)]
