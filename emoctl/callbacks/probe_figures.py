"""Figures the probe callback logs: F0 contours and log-mel spectrograms of a few probe clips."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from emoctl.probes import measure


def f0_contour_figure(clips: Sequence[tuple[Any, np.ndarray, int]]):
    """One F0 contour per clip (label: target emotion), over time in seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    profiles = measure([w for _, w, _ in clips], [r for _, _, r in clips]) if clips else []
    for (item, _, _), profile in zip(clips, profiles):
        ax.plot(profile.frame_times_s, profile.f0_hz, label=f"{item.target} ({item.prompt.speaker})", lw=1.2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("F0 (Hz)")
    ax.set_title("F0 contours of probe clips")
    if clips:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def spectrogram_figure(clips: Sequence[tuple[Any, np.ndarray, int]]):
    """Log-mel spectrograms (80 bands, 16 kHz analysis), one panel per clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torchaudio

    n = max(len(clips), 1)
    fig, axes = plt.subplots(n, 1, figsize=(7, 1.8 * n), dpi=100, squeeze=False)
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, hop_length=160, n_mels=80)
    for ax, (item, wave, rate) in zip(axes[:, 0], clips):
        x = torch.as_tensor(wave, dtype=torch.float32)
        if rate != 16000:
            x = torchaudio.functional.resample(x, rate, 16000)
        spec = torch.log10(mel(x) + 1e-6).numpy()  # (80, frames)
        ax.imshow(spec, origin="lower", aspect="auto", extent=(0, x.numel() / 16000, 0, 80), cmap="magma")
        ax.set_ylabel("mel")
        ax.set_title(f"{item.target}: {item.prompt.text[:60]}", fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    return fig
