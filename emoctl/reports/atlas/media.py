"""The atlas's audio and pictures: Ogg Vorbis clips, a clip's spectrogram / F0 / activation figure, and the
small SVG charts the pages draw inline (bars, the decoder map, Δ histograms), so the site needs no script
library and works from ``file://``."""
from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from emoctl.io.fsio import atomic_write_bytes, save_figure_atomically
from emoctl.probes import measure

AUDIO_SUFFIX = ".ogg"
PALETTE = {"Angry": "#d62728", "Happy": "#e6a100", "Sad": "#1f77b4", "Surprise": "#9467bd", "Neutral": "#7f7f7f"}
"""Emotion colours, the same on every page and figure."""


def emotion_colour(emotion: str | None) -> str:
    return PALETTE.get(emotion or "", "#8c564b")


def write_audio(path: Path, wave: np.ndarray, sample_rate: int) -> int:
    """Write ``wave`` as Ogg Vorbis, atomically; returns the bytes written.  An empty clip gets 10 ms of silence,
    so every player on a page has something to load."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.size == 0:
        wave = np.zeros(max(sample_rate // 100, 1), np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sample_rate, format="OGG", subtype="VORBIS")
    atomic_write_bytes(path, buffer.getvalue())
    return len(buffer.getvalue())


def log_spectrogram(wave: np.ndarray, sample_rate: int, hop_s: float = 0.01, frame_s: float = 0.032
                    ) -> tuple[np.ndarray, float, float]:
    """(frequency bins, frames) log power in dB, its hop in seconds and its top frequency (Hz)."""
    hop, frame = max(int(sample_rate * hop_s), 1), max(int(sample_rate * frame_s), 16)
    padded = np.pad(np.asarray(wave, np.float32), (frame // 2, frame // 2))
    n = max(1 + (padded.size - frame) // hop, 1)
    if padded.size < frame:
        padded = np.pad(padded, (0, frame - padded.size))
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop][:n] * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return 10 * np.log10(power.T + 1e-10), hop / sample_rate, sample_rate / 2


def clip_figure(path: Path, wave: np.ndarray, sample_rate: int, activation: np.ndarray, token_rate: float,
                title: str) -> None:
    """Spectrogram with the F0 contour over it, and the latent's activation at each decode step under it, on
    one time axis (decode step t covers [t, t + 1) / token_rate seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    spec, hop_s, top_hz = log_spectrogram(wave, sample_rate)
    profile = measure([wave], [sample_rate])[0] if len(wave) else None
    seconds = max(len(wave) / sample_rate, len(activation) / token_rate, 1e-3)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 2.6), dpi=80, sharex=True,
                                      gridspec_kw={"height_ratios": [2.2, 1]})
    top.imshow(spec, origin="lower", aspect="auto", cmap="magma", extent=(0, spec.shape[1] * hop_s, 0, top_hz),
               vmin=spec.max() - 80, vmax=spec.max())
    top.set_ylim(0, min(top_hz, 4000))
    top.set_ylabel("Hz", fontsize=7)
    if profile is not None:  # F0 on its own axis (right), or a 100-300 Hz contour would hug the bottom
        f0_axis = top.twinx()
        f0_axis.plot(profile.frame_times_s, profile.f0_hz, color="#00e5ff", lw=1.4)
        f0_axis.set_ylim(50, 450)
        f0_axis.set_ylabel("F0 (Hz)", fontsize=7, color="#00a0b0")
        f0_axis.tick_params(labelsize=6)
    top.set_title(title, fontsize=8)
    steps = np.arange(len(activation) + 1) / token_rate
    bottom.stairs(activation, steps, fill=True, color="#2ca02c")
    bottom.set_ylabel("activation", fontsize=7)
    bottom.set_xlabel("seconds", fontsize=7)
    bottom.set_xlim(0, seconds)
    for ax in (top, bottom):
        ax.tick_params(labelsize=6)
    fig.tight_layout(pad=0.3)
    save_figure_atomically(fig, path)


# ------------------------------------------------------------------ inline SVG

def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def svg_bars(labels: Sequence[str], values: Sequence[float], colours: Sequence[str] | None = None,
             unit: str = "", width: int = 360, bar_height: int = 16) -> str:
    """A horizontal bar chart; NaN draws no bar."""
    values = [float(v) for v in values]
    finite = [abs(v) for v in values if np.isfinite(v)]
    scale = (width - 170) / max(max(finite, default=0.0), 1e-12)
    rows = []
    for i, (label, value) in enumerate(zip(labels, values)):
        y = 4 + i * (bar_height + 4)
        bar = max(value, 0.0) * scale if np.isfinite(value) else 0.0
        colour = colours[i] if colours else "#4c72b0"
        shown = f"{value:.3g}{unit}" if np.isfinite(value) else "–"
        rows.append(f'<text x="0" y="{y + bar_height - 4}" font-size="11">{_e(label)}</text>'
                    f'<rect x="90" y="{y}" width="{bar:.1f}" height="{bar_height}" fill="{colour}"/>'
                    f'<text x="{94 + bar:.1f}" y="{y + bar_height - 4}" font-size="10">{_e(shown)}</text>')
    height = 8 + len(labels) * (bar_height + 4)
    return f'<svg class="chart" width="{width}" height="{height}" role="img">{"".join(rows)}</svg>'


def svg_map(xy: np.ndarray, colours: Sequence[str], links: Sequence[str], titles: Sequence[str],
            size: int = 520) -> str:
    """A scatter of the decoder map; each point a link (``links[i]``) with a tooltip."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    pts = (xy - lo) / span * (size - 20) + 10
    dots = "".join(f'<a href="{_e(link)}"><circle cx="{x:.1f}" cy="{size - y:.1f}" r="3" fill="{c}">'
                   f'<title>{_e(t)}</title></circle></a>'
                   for (x, y), c, link, t in zip(pts, colours, links, titles))
    return (f'<svg id="decoder-map" class="chart" width="{size}" height="{size}" role="img">'
            f'<rect width="{size}" height="{size}" fill="#fafafa" stroke="#ccc"/>{dots}</svg>')


def svg_histogram(values: np.ndarray, edges: np.ndarray, links: Sequence[str], colour: str, label: str,
                  width: int = 320, height: int = 140) -> str:
    """A histogram whose bars link to the latents they count (``links[i]`` for bin i)."""
    counts = np.histogram(values, bins=edges)[0]
    # a log count axis: most latents sit near Δ = 0, the interesting ones are few
    scale = (height - 30) / max(np.log1p(counts.max(initial=0)), 1e-12)
    bw = (width - 40) / len(counts)
    bars = []
    for i, count in enumerate(counts):
        h = np.log1p(count) * scale
        x = 30 + i * bw
        bars.append(f'<a href="{_e(links[i])}"><rect x="{x:.1f}" y="{height - 20 - h:.1f}" width="{max(bw - 1, 1):.1f}" '
                    f'height="{h:.1f}" fill="{colour}"><title>{count} latents with Δ in [{edges[i]:.3g}, '
                    f'{edges[i + 1]:.3g})</title></rect></a>')
    axis = (f'<text x="30" y="{height - 5}" font-size="10">{edges[0]:.2g}</text>'
            f'<text x="{width - 40}" y="{height - 5}" font-size="10">{edges[-1]:.2g}</text>'
            f'<text x="{width / 2 - 30:.0f}" y="12" font-size="11">{_e(label)}</text>')
    return f'<svg class="chart" width="{width}" height="{height}" role="img">{"".join(bars)}{axis}</svg>'
