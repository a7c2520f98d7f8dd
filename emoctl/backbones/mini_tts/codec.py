"""The mini TTS's discrete speech codec: WORLD analysis, k-means tokens, WORLD vocoder.

Why WORLD: emotion in speech lives largely in F0, loudness and timing, and a
codec that loses them makes emotion control unmeasurable. WORLD separates F0
from the spectral envelope, so both can be quantised on their own and put
back exactly where they were. (k-means over log-mels with Griffin-Lim lost up
to 50% of F0 and the order of emotions by F0.)

One token per 20 ms frame (50 Hz, as IndexTTS2's semantic tokens)::

    token = env_code * n_f0_bins + f0_bin          # in [0, n_env_codes * n_f0_bins)

* ``env_code`` in ``[0, n_env_codes)``: the nearest k-means centroid of the
  frame's spectral envelope, described by its log power (sum over frequency)
  and coefficients 1.. of its *coded* envelope (``pyworld.code_spectral_envelope``,
  a mel-cepstrum whose coefficients are each ~1 RMS of natural-log power, so
  Euclidean distance is log-spectral distance). Log power gets weight
  ``energy_weight`` (4) in the distance: loudness is a main carrier of emotion,
  and with plain coefficient 0 (mean log power over mel bands) at weight 1
  k-means spent its codes on spectral shape and loud and quiet clips came back
  -15% and +25% in RMS.
* ``f0_bin`` in ``[0, n_f0_bins)``: **0 means unvoiced**; bins
  ``1 .. n_f0_bins-1`` split ``[f0_lo, f0_hi]`` into equal steps of log-F0,
  where ``f0_lo, f0_hi`` are the 0.5th and 99.5th percentiles of voiced F0 in
  the fitting data (clipped to ``f0_range``). F0 outside that range goes to
  the first or last voiced bin; a bin decodes to its centre.

Decoding turns each code back into a coded envelope whose coefficient 0 gives
the centroid's shape the code's mean frame power. That is the centroid's log
power plus a per-code ``log_gain``: the log of the mean power of the code's
training frames minus their mean log power (Jensen's gap, about half the
variance of log power within the code: 0.02 on average, up to 0.1, for 256
codes on the eSpeak corpus). The aperiodicity is the mean coded aperiodicity
(``pyworld.code_aperiodicity``, one band at 16 kHz) of the code's voiced
training frames, so tokens carry none. All three are interpolated to 5 ms and
synthesised with WORLD.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from emoctl.backbones.mini_tts.kmeans import kmeans, nearest_centroid
from emoctl.errors import ConfigError
from emoctl.io.formats import read_versioned_json

SAMPLE_RATE = 16000
FRAME_PERIOD_MS = 20.0
DIO_FRAME_PERIOD_MS = 5.0     # DIO's voicing decision depends on its frame period; see analyze()
SYNTH_UPSAMPLE = 4            # synthesise at 5 ms frames: smooth F0 and envelope between tokens
N_CODED_DIMS = 40             # dimensions of the coded (mel-cepstral) spectral envelope
ENERGY_WEIGHT = 4.0           # weight of log frame power in the k-means distance
SPECTRUM_FLOOR = 1e-10        # envelope floor: else codes get spent on depths of digital silence
F0_PERCENTILES = (0.5, 99.5)  # voiced F0 range covered by the voiced bins
FORMAT_NAME = "emoctl.speech_codec"
FORMAT_VERSION = 1
CONFIG_FILE = "codec.json"
TENSOR_FILE = "codec.safetensors"


def _pyworld():
    """Import pyworld quietly (0.3.5 imports the deprecated pkg_resources)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pyworld
    return pyworld


class WorldFrames(NamedTuple):
    """WORLD parameters of one utterance at 20 ms frames."""
    f0: np.ndarray                   # (T,) Hz, 0 where unvoiced
    coded_envelope: np.ndarray       # (T, D) coded spectral envelope
    power: np.ndarray                # (T,) frame power: sum over frequency of the (floored) envelope
    coded_aperiodicity: np.ndarray | None  # (T, A) dB per band (A=1 at 16 kHz); None when not asked for


def as_mono_float(wave: Any, sample_rate: Any, *, name: str = "wave") -> np.ndarray:
    """Check one waveform and return it as contiguous float64; raise ``ConfigError`` if unusable.

    Integer PCM is scaled to [-1, 1); the codec does not mix down stereo
    because which channel holds the speech is the caller's decision.
    """
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ConfigError(f"{name}: sample_rate must be a positive integer number of Hz, got {sample_rate!r}.")
    x = np.asarray(wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else wave)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise ConfigError(f"{name}: expected mono audio (a 1-D array of samples), got shape {x.shape}. "
                          "Mix down or pick one channel first, e.g. wave.mean(axis=-1) for (samples, channels).")
    if x.size == 0:
        raise ConfigError(f"{name}: the audio is empty (0 samples). Drop this clip or check how it was read.")
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64) / float(-np.iinfo(x.dtype).min)
    elif not np.issubdtype(x.dtype, np.floating):
        raise ConfigError(f"{name}: expected float or integer PCM samples, got dtype {x.dtype}.")
    x = np.ascontiguousarray(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        raise ConfigError(f"{name}: the audio has {int(bad.sum())} NaN or infinite samples (first at index "
                          f"{int(np.argmax(bad))}). Fix the clip or its decoding before tokenizing it.")
    return x


def resample(x: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample with soxr (a librosa dependency), high quality."""
    if sample_rate == target_rate:
        return x
    import soxr
    return np.ascontiguousarray(soxr.resample(x, sample_rate, target_rate, quality="HQ"), dtype=np.float64)


def analyze(x: np.ndarray, *, f0_range: tuple[float, float], fft_size: int, n_coded_dims: int = N_CODED_DIMS,
            aperiodicity: bool = False) -> WorldFrames:
    """WORLD analysis of a 16 kHz float64 waveform at 20 ms frames.

    F0 by DIO refined by StoneMask (Harvest is ~10x slower for little gain on
    clean speech). DIO runs at 5 ms and every 4th frame is kept: its voicing
    post-processing counts frames, and at 20 ms it marked a third fewer
    frames voiced (0.41 vs 0.60 of an utterance), which the vocoder then
    lost. Envelope by CheapTrick; aperiodicity by D4C only when asked
    (fitting needs it, encoding does not).
    """
    pw = _pyworld()
    step = int(FRAME_PERIOD_MS // DIO_FRAME_PERIOD_MS)
    f0, times = pw.dio(x, SAMPLE_RATE, f0_floor=f0_range[0], f0_ceil=f0_range[1], frame_period=DIO_FRAME_PERIOD_MS)
    f0, times = np.ascontiguousarray(f0[::step]), np.ascontiguousarray(times[::step])   # (T,) at 20 ms
    f0 = pw.stonemask(x, f0, times, SAMPLE_RATE)
    f0[(f0 < f0_range[0]) | (f0 > f0_range[1])] = 0.0                   # stonemask can leave the range
    envelope = pw.cheaptrick(x, f0, times, SAMPLE_RATE, fft_size=fft_size)  # (T, F) power
    envelope = np.maximum(envelope, SPECTRUM_FLOOR)
    coded = pw.code_spectral_envelope(envelope, SAMPLE_RATE, n_coded_dims)
    ap = None
    if aperiodicity:   # D4C's output is exactly its coded bands, interpolated: code_aperiodicity is lossless
        ap = pw.code_aperiodicity(pw.d4c(x, f0, times, SAMPLE_RATE, fft_size=fft_size), SAMPLE_RATE)
    return WorldFrames(f0, coded, envelope.sum(1), ap)


def _envelope_features(coded: np.ndarray, power: np.ndarray) -> np.ndarray:
    """(T, D) float32 k-means features: the coded envelope with coefficient 0 replaced by log frame power."""
    features = coded.astype(np.float32)
    features[:, 0] = np.log(power)
    return features


def _distance_weights(n_coded_dims: int, energy_weight: float) -> torch.Tensor:
    """(D,) per-coefficient weights of the envelope distance: ``energy_weight`` on log power, 1 elsewhere."""
    weights = torch.ones(n_coded_dims)
    weights[0] = energy_weight
    return weights


def _upsample_linear(frames: np.ndarray, factor: int) -> np.ndarray:
    """(T, F) -> ((T-1)*factor+1, F), linear between frames."""
    pos = np.arange((frames.shape[0] - 1) * factor + 1) / factor        # (T',)
    lo = np.minimum(np.floor(pos).astype(np.int64), frames.shape[0] - 1)
    hi = np.minimum(lo + 1, frames.shape[0] - 1)
    w = (pos - lo)[:, None]
    return (1.0 - w) * frames[lo] + w * frames[hi]


def _upsample_f0(f0: np.ndarray, factor: int) -> np.ndarray:
    """(T,) -> ((T-1)*factor+1,): voicing from the nearest frame, log-F0 linear inside voiced runs."""
    pos = np.arange((f0.shape[0] - 1) * factor + 1) / factor
    lo = np.minimum(np.floor(pos).astype(np.int64), f0.shape[0] - 1)
    hi = np.minimum(lo + 1, f0.shape[0] - 1)
    near = np.rint(pos).astype(np.int64)
    w = pos - lo
    voiced = f0 > 0
    log_f0 = np.log(np.where(voiced, f0, 1.0))
    both = voiced[lo] & voiced[hi]
    value = np.where(both, (1.0 - w) * log_f0[lo] + w * log_f0[hi], log_f0[near])
    return np.where(voiced[near], np.exp(value), 0.0)


@dataclass
class Analyzer:
    """Picklable analysis job for worker processes: validate, resample, then ``analysis`` (a module function)."""
    f0_range: tuple[float, float]
    fft_size: int
    n_coded_dims: int
    aperiodicity: bool
    analysis: Callable[..., Any] = analyze

    def __call__(self, item: tuple[np.ndarray, int]) -> Any:
        wave, sample_rate = item
        x = resample(as_mono_float(wave, sample_rate), sample_rate)
        return self.analysis(x, f0_range=self.f0_range, fft_size=self.fft_size, n_coded_dims=self.n_coded_dims,
                             aperiodicity=self.aperiodicity)


def map_in_workers(fn, items: Iterable, *, workers: int, total: int | None, desc: str, progress: bool):
    """``map(fn, items)`` in order, over ``workers`` forked processes when > 1, with a progress bar.

    Workers run numpy/pyworld code (plus single-threaded torch), which is
    safe to fork; forking avoids re-importing torch in every worker.
    """
    bar_kwargs = dict(total=total, desc=desc, disable=not progress, unit="utt")
    if workers <= 1:
        yield from tqdm(map(fn, items), **bar_kwargs)
        return
    import multiprocessing as mp
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(1,)) as pool:
        yield from tqdm(pool.map(fn, items, chunksize=4), **bar_kwargs)


def fft_size_for(f0_range: tuple[float, float]) -> int:
    """CheapTrick's FFT size for the lowest F0 of ``f0_range`` (a codec's analysis window)."""
    if not 0 < f0_range[0] < f0_range[1]:
        raise ConfigError(f"f0_range must be (low, high) Hz with 0 < low < high, got {f0_range}.")
    return int(_pyworld().get_cheaptrick_fft_size(SAMPLE_RATE, float(f0_range[0])))


def analyze_for_fit(waves: Iterable[tuple[np.ndarray, int]], *, f0_range: tuple[float, float] = (50.0, 600.0),
                    n_coded_dims: int = N_CODED_DIMS, workers: int = 1, progress: bool = True) -> list[WorldFrames]:
    """WORLD frames, aperiodicity included, of ``(wave, sample_rate)`` pairs (:meth:`SpeechCodec.fit_frames`' input)."""
    job = Analyzer((float(f0_range[0]), float(f0_range[1])), fft_size_for(f0_range), n_coded_dims,
                    aperiodicity=True)
    total = len(waves) if hasattr(waves, "__len__") else None
    return list(map_in_workers(job, waves, workers=workers, total=total, desc="WORLD analysis", progress=progress))


def f0_to_bin(f0: np.ndarray, log_lo: float, log_step: float, n_f0_bins: int) -> np.ndarray:
    """Hz -> F0 bin: 0 for unvoiced (f0 <= 0), else 1..n_f0_bins-1 in steps of ``log_step`` from ``log_lo``, clamped."""
    f0 = np.asarray(f0, dtype=np.float64)
    safe = np.where(f0 > 0, f0, 1.0)
    b = 1 + np.floor((np.log(safe) - log_lo) / log_step).astype(np.int64)
    return np.where(f0 > 0, np.clip(b, 1, n_f0_bins - 1), 0)


def bin_to_f0(f0_bin: np.ndarray, log_lo: float, log_step: float) -> np.ndarray:
    """F0 bin -> Hz at the bin's centre in log-F0; 0 for bin 0 (unvoiced)."""
    b = np.asarray(f0_bin, dtype=np.int64)
    return np.where(b > 0, np.exp(log_lo + (b - 0.5) * log_step), 0.0)


def aperiodicity_table(codes: np.ndarray, voiced: np.ndarray, ap: np.ndarray, n_codes: int) -> np.ndarray:
    """(K, A) mean coded aperiodicity of the voiced frames of each code; codes never voiced get the global mean.

    Unvoiced frames need none: WORLD synthesises them as pure noise.
    """
    table = np.zeros((n_codes, ap.shape[1]))                                               # (K, A)
    counts = np.bincount(codes[voiced], minlength=n_codes)
    np.add.at(table, codes[voiced], ap[voiced])
    global_mean = ap[voiced].mean(0)
    table = np.where(counts[:, None] > 0, table / np.maximum(counts, 1)[:, None], global_mean)
    return table.astype(np.float32)


def _analysis_settings() -> dict[str, float]:
    """Fixed analysis and synthesis constants: part of a saved codec and of its digest."""
    return {"frame_period_ms": FRAME_PERIOD_MS, "dio_frame_period_ms": DIO_FRAME_PERIOD_MS,
            "spectrum_floor": SPECTRUM_FLOOR, "synth_upsample": SYNTH_UPSAMPLE}


class SpeechCodec:
    """WORLD + k-means speech tokenizer and vocoder at 16 kHz and 50 tokens per second.

    Build one with :meth:`fit` (or :meth:`load`); see the module docstring
    for how a token is made.
    """

    sample_rate: int = SAMPLE_RATE
    frame_rate: float = 1000.0 / FRAME_PERIOD_MS

    def __init__(self, env_centroids: torch.Tensor, log_gain: torch.Tensor, aperiodicity_table: torch.Tensor, *,
                 n_f0_bins: int, f0_range: tuple[float, float], f0_lo: float, f0_hi: float, fft_size: int,
                 energy_weight: float = ENERGY_WEIGHT) -> None:
        if n_f0_bins < 2:
            raise ConfigError(f"n_f0_bins must be >= 2 (bin 0 is unvoiced), got {n_f0_bins}.")
        if not 0 < f0_lo < f0_hi:
            raise ConfigError(f"voiced F0 bin range must satisfy 0 < f0_lo < f0_hi, got ({f0_lo}, {f0_hi}).")
        self.env_centroids = env_centroids.float().contiguous()   # (K, D) [log power, coded coefficients 1..]
        self.log_gain = log_gain.float().contiguous()             # (K,) Jensen gap: log mean - mean log power
        self.aperiodicity_table = aperiodicity_table.float().contiguous()  # (K, A) coded, dB
        self.n_env_codes = int(env_centroids.shape[0])
        self.n_coded_dims = int(env_centroids.shape[1])
        self.n_f0_bins = int(n_f0_bins)
        self.vocab_size = self.n_env_codes * self.n_f0_bins
        self.f0_range = (float(f0_range[0]), float(f0_range[1]))
        self.f0_lo, self.f0_hi = float(f0_lo), float(f0_hi)
        self.fft_size = int(fft_size)
        self.energy_weight = float(energy_weight)
        self._weights = _distance_weights(self.n_coded_dims, self.energy_weight).numpy()      # (D,)
        self._weighted_centroids = (self.env_centroids.numpy() * self._weights).astype(np.float32)  # (K, D)
        self._centroid_sq = (self._weighted_centroids ** 2).sum(1)                            # (K,)
        self._decode_c0 = self._coefficient_0(self.env_centroids.double().numpy(), self.fft_size) + \
            self.log_gain.double().numpy()                                # (K,)
        self._digest: str | None = None
        # voiced bin b (1-based) spans [lo + (b-1)*step, lo + b*step) in log-F0
        self._log_lo = math.log(self.f0_lo)
        self._log_step = (math.log(self.f0_hi) - self._log_lo) / (self.n_f0_bins - 1)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, waves: Iterable[tuple[np.ndarray, int]], *, n_env_codes: int = 256, n_f0_bins: int = 32,
            f0_range: tuple[float, float] = (50.0, 600.0), seed: int = 0, progress: bool = True,
            workers: int = 1, n_coded_dims: int = N_CODED_DIMS, energy_weight: float = ENERGY_WEIGHT,
            max_kmeans_frames: int = 200_000, kmeans_iters: int = 50) -> SpeechCodec:
        """Fit the envelope codebook, F0 bins, log-gains and aperiodicity table on ``(wave, sample_rate)`` pairs.

        ``workers`` > 1 runs WORLD analysis in that many processes. k-means
        sees at most ``max_kmeans_frames`` frames (a seeded subset).
        """
        if n_env_codes < 1:
            raise ConfigError(f"n_env_codes must be >= 1, got {n_env_codes}.")
        analyses = analyze_for_fit(waves, f0_range=f0_range, n_coded_dims=n_coded_dims, workers=workers,
                                   progress=progress)
        return cls.fit_frames(analyses, n_env_codes=n_env_codes, n_f0_bins=n_f0_bins, f0_range=f0_range, seed=seed,
                              progress=progress, n_coded_dims=n_coded_dims, energy_weight=energy_weight,
                              max_kmeans_frames=max_kmeans_frames, kmeans_iters=kmeans_iters)

    @classmethod
    def fit_frames(cls, analyses: list[WorldFrames], *, n_env_codes: int = 256, n_f0_bins: int = 32,
                   f0_range: tuple[float, float] = (50.0, 600.0), seed: int = 0, progress: bool = True,
                   n_coded_dims: int = N_CODED_DIMS, energy_weight: float = ENERGY_WEIGHT,
                   max_kmeans_frames: int = 200_000, kmeans_iters: int = 50) -> SpeechCodec:
        """:meth:`fit` on WORLD frames already made by :func:`analyze_for_fit` with the same ``f0_range``.

        The frames are also what :meth:`encode_frames` reads, so a caller that
        fits and then tokenizes the same clips can encode them without a second
        analysis.
        """
        if n_env_codes < 1:
            raise ConfigError(f"n_env_codes must be >= 1, got {n_env_codes}.")
        fft_size = fft_size_for(f0_range)
        if not analyses:
            raise ConfigError("SpeechCodec.fit got no audio: the iterable of (wave, sample_rate) was empty.")
        coded = np.concatenate([a.coded_envelope for a in analyses])                           # (N, D)
        f0 = np.concatenate([a.f0 for a in analyses])                                          # (N,)
        ap = np.concatenate([a.coded_aperiodicity for a in analyses])                          # (N, A)
        if coded.shape[0] < n_env_codes:
            raise ConfigError(f"SpeechCodec.fit got {coded.shape[0]} frames, fewer than n_env_codes="
                              f"{n_env_codes}; give it more audio or fewer codes.")
        voiced = f0 > 0
        if voiced.sum() < 2:
            raise ConfigError("SpeechCodec.fit found no voiced frames in its audio, so it cannot place F0 "
                              f"bins; check the clips hold speech and f0_range={f0_range} covers its pitch.")
        f0_lo, f0_hi = np.percentile(f0[voiced], F0_PERCENTILES)
        f0_lo, f0_hi = max(float(f0_lo), f0_range[0]), min(float(f0_hi), f0_range[1])

        power = np.concatenate([a.power for a in analyses])                                    # (N,)
        weights = _distance_weights(n_coded_dims, energy_weight)                               # (D,)
        features = torch.from_numpy(_envelope_features(coded, power)) * weights                # (N, D)
        weighted = kmeans(features, n_env_codes, n_iter=kmeans_iters, seed=seed,
                          max_points=max_kmeans_frames, progress=progress).centroids           # (K, D)
        codes, _ = nearest_centroid(features, weighted)                                        # (N,)
        centroids = weighted / weights
        codes = codes.numpy()
        log_gain = cls._log_gain(codes, power, centroids.double().numpy())
        ap_table = aperiodicity_table(codes, voiced, ap, n_env_codes)
        return cls(centroids, torch.from_numpy(log_gain), torch.from_numpy(ap_table), n_f0_bins=n_f0_bins,
                   f0_range=f0_range, f0_lo=f0_lo, f0_hi=f0_hi, fft_size=fft_size, energy_weight=energy_weight)

    @staticmethod
    def _log_gain(codes: np.ndarray, power: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        """(K,) log of a code's mean frame power over exp(its mean log power): the Jensen gap; 0 if unused."""
        counts = np.bincount(codes, minlength=len(centroids))
        mean_power = np.bincount(codes, weights=power, minlength=len(centroids)) / np.maximum(counts, 1)
        gap = np.log(np.maximum(mean_power, 1e-30)) - centroids[:, 0]
        return np.where(counts > 0, gap, 0.0).astype(np.float32)

    @staticmethod
    def _coefficient_0(centroids: np.ndarray, fft_size: int) -> np.ndarray:
        """(K,) the coded envelope's coefficient 0 that gives each centroid's shape its log power."""
        pw = _pyworld()
        shape = centroids.copy()
        shape[:, 0] = 0.0
        shape_power = pw.decode_spectral_envelope(np.ascontiguousarray(shape), SAMPLE_RATE, fft_size).sum(1)
        return centroids[:, 0] - np.log(shape_power)

    # ------------------------------------------------------------------ tokens
    def f0_to_bin(self, f0: np.ndarray) -> np.ndarray:
        """Hz -> bin: 0 for unvoiced (f0 <= 0), else 1..n_f0_bins-1 by log-F0, clamped."""
        return f0_to_bin(f0, self._log_lo, self._log_step, self.n_f0_bins)

    def bin_to_f0(self, f0_bin: np.ndarray) -> np.ndarray:
        """bin -> Hz at the bin's centre in log-F0; 0 for bin 0 (unvoiced)."""
        return bin_to_f0(f0_bin, self._log_lo, self._log_step)

    def split(self, tokens: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens -> (env_code, f0_bin), same shape, int64."""
        t = torch.as_tensor(tokens, dtype=torch.int64)
        return t // self.n_f0_bins, t % self.n_f0_bins

    def join(self, env_code: torch.Tensor | np.ndarray, f0_bin: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(env_code, f0_bin) -> tokens, int64."""
        env = torch.as_tensor(env_code, dtype=torch.int64)
        return env * self.n_f0_bins + torch.as_tensor(f0_bin, dtype=torch.int64)

    def encode_frames(self, frames: WorldFrames) -> np.ndarray:
        """WORLD frames -> (T,) int64 tokens.

        Nearest centroid in numpy: a clip is ~100 x 256 distances, where
        torch's thread pool costs more than it saves (15x on a busy machine).
        """
        x = _envelope_features(frames.coded_envelope, frames.power) * self._weights       # (T, D)
        codes = np.argmin(self._centroid_sq - 2.0 * x @ self._weighted_centroids.T, axis=1)   # |x|^2 is common
        return codes.astype(np.int64) * self.n_f0_bins + self.f0_to_bin(frames.f0)

    def analyze(self, wave: np.ndarray, sample_rate: int, *, aperiodicity: bool = False,
                name: str = "wave") -> WorldFrames:
        """Validate, resample to 16 kHz and run WORLD analysis with this codec's settings.

        ``name`` (e.g. the file path) is what error messages call the audio.
        """
        x = resample(as_mono_float(wave, sample_rate, name=name), int(sample_rate))
        return analyze(x, f0_range=self.f0_range, fft_size=self.fft_size, n_coded_dims=self.n_coded_dims,
                       aperiodicity=aperiodicity)

    def encode(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Waveform -> (T,) int64 tokens, T = floor(seconds * 50) + 1."""
        return torch.from_numpy(self.encode_frames(self.analyze(wave, sample_rate)))

    def coded_envelope(self, env_code: torch.Tensor | np.ndarray) -> np.ndarray:
        """(T,) env codes -> (T, D) coded envelopes as decoded: centroid shape at the code's mean frame power."""
        env = np.asarray(env_code, dtype=np.int64)
        coded = self.env_centroids.double().numpy()[env]                  # (T, D)
        coded[:, 0] = self._decode_c0[env]
        return coded

    def decode(self, tokens: torch.Tensor | np.ndarray) -> tuple[np.ndarray, int]:
        """(T,) tokens -> (float32 mono waveform of about T/50 s, 16000)."""
        t = torch.as_tensor(tokens).detach().cpu()
        if t.ndim != 1 or t.numel() == 0 or t.is_floating_point():
            raise ConfigError(f"decode expects a non-empty 1-D integer tensor of tokens, got dtype {t.dtype} "
                              f"and shape {tuple(t.shape)}.")
        if int(t.min()) < 0 or int(t.max()) >= self.vocab_size:
            raise ConfigError(f"decode got tokens outside [0, {self.vocab_size}): min {int(t.min())}, max "
                              f"{int(t.max())}. Strip special tokens (start/stop) before decoding.")
        env, f0_bin = self.split(t)
        coded = self.coded_envelope(env)                                  # (T, D)
        ap = self.aperiodicity_table[env].double().numpy()                # (T, A)
        f0 = self.bin_to_f0(f0_bin.numpy())                               # (T,)
        if t.numel() == 1:                                                # WORLD needs two frames
            coded, ap, f0 = np.repeat(coded, 2, 0), np.repeat(ap, 2, 0), np.repeat(f0, 2)
        pw = _pyworld()
        envelope = pw.decode_spectral_envelope(np.ascontiguousarray(_upsample_linear(coded, SYNTH_UPSAMPLE)),
                                               SAMPLE_RATE, self.fft_size)  # (T', F)
        ap = pw.decode_aperiodicity(np.ascontiguousarray(_upsample_linear(ap, SYNTH_UPSAMPLE)), SAMPLE_RATE,
                                    self.fft_size)                        # (T', F)
        wave = pw.synthesize(_upsample_f0(f0, SYNTH_UPSAMPLE), envelope, ap, SAMPLE_RATE,
                             frame_period=FRAME_PERIOD_MS / SYNTH_UPSAMPLE)
        return wave.astype(np.float32), SAMPLE_RATE

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "analysis": _analysis_settings(),
                "sample_rate": self.sample_rate,
                "frame_rate": self.frame_rate, "n_env_codes": self.n_env_codes, "n_f0_bins": self.n_f0_bins,
                "n_coded_dims": self.n_coded_dims, "f0_range": list(self.f0_range), "f0_lo": self.f0_lo,
                "f0_hi": self.f0_hi, "fft_size": self.fft_size, "energy_weight": self.energy_weight}

    @property
    def digest(self) -> str:
        """16 hex digits of SHA-256 over the settings and tables: changes whenever tokens could."""
        if self._digest is None:
            h = hashlib.sha256(json.dumps(self._config(), sort_keys=True).encode())
            h.update(self.env_centroids.numpy().tobytes())
            h.update(self.log_gain.numpy().tobytes())
            h.update(self.aperiodicity_table.numpy().tobytes())
            self._digest = h.hexdigest()[:16]
        return self._digest

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``codec.json`` (settings + digest) and ``codec.safetensors`` (tables) into ``directory``."""
        from safetensors.torch import save_file
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"env_centroids": self.env_centroids, "log_gain": self.log_gain,
                   "aperiodicity_table": self.aperiodicity_table},
                  str(directory / TENSOR_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps({**self._config(), "digest": self.digest}, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SpeechCodec:
        """Read a codec written by :meth:`save`; the stored digest must match the tables."""
        from safetensors.torch import load_file
        directory = Path(directory)
        config_path, tensor_path = directory / CONFIG_FILE, directory / TENSOR_FILE
        if not config_path.is_file() or not tensor_path.is_file():
            raise ConfigError(f"No speech codec in {directory}: expected {CONFIG_FILE} and {TENSOR_FILE} there. "
                              "Fit one with SpeechCodec.fit(...) and save it with codec.save(directory).")
        config = read_versioned_json(config_path, FORMAT_NAME, FORMAT_VERSION, "refit the codec")
        if config.get("analysis") != _analysis_settings():
            raise ConfigError(f"{config_path} was fitted with analysis settings {config.get('analysis')}, but this "
                              f"version of emoctl analyses audio with {_analysis_settings()}, so its tokens would "
                              "not match; refit the codec.")
        tensors = load_file(str(tensor_path))
        codec = cls(tensors["env_centroids"], tensors["log_gain"], tensors["aperiodicity_table"],
                    n_f0_bins=config["n_f0_bins"], f0_range=tuple(config["f0_range"]), f0_lo=config["f0_lo"],
                    f0_hi=config["f0_hi"], fft_size=config["fft_size"], energy_weight=config["energy_weight"])
        if codec.digest != config.get("digest"):
            raise ConfigError(f"{tensor_path} does not match the digest in {config_path} ({codec.digest} != "
                              f"{config.get('digest')}): the files were changed or mixed up; refit the codec.")
        return codec

    def __repr__(self) -> str:
        return (f"SpeechCodec(n_env_codes={self.n_env_codes}, n_f0_bins={self.n_f0_bins}, "
                f"f0_bins=[{self.f0_lo:.1f}, {self.f0_hi:.1f}] Hz, digest={self.digest})")
