"""A speech codec whose 20 ms tokens carry four 5 ms spectral envelopes: RVQ codes and a context decoder.

Why: the words live in fast spectral detail (bursts, formant transitions) that one
envelope per 20 ms loses. WORLD at 5 ms with 40 coded dimensions gives Whisper tiny.en a
median WER of about 0.42 on the corpus's test clips (originals 0.33), while any
single envelope per 20 ms frame, even unquantized, gives 0.50 or more, and the
k-means token of :class:`~emoctl.backbones.mini_tts.codec.SpeechCodec` 1.2. So each
token here holds its frame's four 5 ms sub-frames, quantized finely enough to keep
them (docs/backbones/mini_tts.md measures the options)::

    token row = (c_1, ..., c_L, f0_bin)                  # one row per 20 ms, int64

* ``c_l`` in ``[0, n_codes)``: residual vector quantization (RVQ) of the
  token's vector, the four sub-frames' features stacked (4 x D). A sub-frame's
  features are its log power (weight ``energy_weight`` in the distance, as in
  ``SpeechCodec``) and coefficients 1.. of its coded envelope. Level 1 is the
  nearest centroid of the vector, level l the nearest centroid of what levels
  1..l-1 left. Each level's codebook is k-means on the previous residuals.
* ``f0_bin``: exactly ``SpeechCodec``'s F0 bins (0 = unvoiced), from the same
  DIO + StoneMask track at 20 ms.

Decoding sums the levels' centroids and passes the sequence through a small
1-D convolutional *context decoder* (residual blocks over neighbouring tokens,
trained with MSE to give back the analysed sub-frames): it recovers part of the
quantization error from context (6 levels of 1024 codes: WER 0.50 by lookup,
0.44 decoded). Sub-frames become coded envelopes whose coefficient 0 gives each
its decoded log power; the aperiodicity is the mean of the voiced training
frames of each level-1 code; F0 is interpolated to 5 ms; WORLD synthesises.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from emoctl.backbones.mini_tts.codec import FORMAT_NAME as SPEECH_CODEC_FORMAT, SpeechCodec
from emoctl.backbones.mini_tts.codec import (F0_PERCENTILES, SAMPLE_RATE, SPECTRUM_FLOOR, Analyzer, _pyworld,
                                             _upsample_f0, _upsample_linear, aperiodicity_table, as_mono_float,
                                             bin_to_f0, f0_to_bin, fft_size_for, map_in_workers, resample)
from emoctl.backbones.mini_tts.kmeans import _torch_threads, kmeans, nearest_centroid
from emoctl.errors import ConfigError
from emoctl.io.formats import read_versioned_json
from emoctl.io.fsio import atomic_write_bytes

TOKEN_MS = 20.0
SUBFRAME_MS = 5.0
SUBFRAMES = int(TOKEN_MS // SUBFRAME_MS)   # sub-frames per token
N_CODED_DIMS = 40
ENERGY_WEIGHT = 4.0
FORMAT_NAME = "emoctl.subframe_codec"
FORMAT_VERSION = 1
CONFIG_FILE = "codec.json"
TENSOR_FILE = "codec.safetensors"


class SubframeFrames(NamedTuple):
    """WORLD analysis of one utterance: envelope features at 5 ms, F0 at 20 ms."""
    features: np.ndarray              # (T5, D) float32: [log power, coded coefficients 1..]
    f0: np.ndarray                    # (T,) Hz at 20 ms, 0 where unvoiced; T = (T5 - 1) // 4 + 1
    aperiodicity: np.ndarray | None   # (T,) coded aperiodicity at 20 ms, (T, A); None when not asked for


def analyze_subframes(x: np.ndarray, *, f0_range: tuple[float, float], fft_size: int,
                      n_coded_dims: int = N_CODED_DIMS, aperiodicity: bool = False) -> SubframeFrames:
    """WORLD analysis of a 16 kHz float64 waveform: DIO + StoneMask F0, CheapTrick envelopes, all at 5 ms.

    F0 is kept at every 4th frame (20 ms); DIO runs at 5 ms, as in ``SpeechCodec``,
    so the 20 ms track, and the F0 bins, are the ones that codec makes.
    """
    pw = _pyworld()
    f0, times = pw.dio(x, SAMPLE_RATE, f0_floor=f0_range[0], f0_ceil=f0_range[1], frame_period=SUBFRAME_MS)
    f0 = pw.stonemask(x, f0, times, SAMPLE_RATE)
    f0[(f0 < f0_range[0]) | (f0 > f0_range[1])] = 0.0
    envelope = np.maximum(pw.cheaptrick(x, f0, times, SAMPLE_RATE, fft_size=fft_size), SPECTRUM_FLOOR)
    features = pw.code_spectral_envelope(envelope, SAMPLE_RATE, n_coded_dims).astype(np.float32)
    features[:, 0] = np.log(envelope.sum(1))
    ap = None
    if aperiodicity:
        ap = pw.code_aperiodicity(pw.d4c(x, f0, times, SAMPLE_RATE, fft_size=fft_size), SAMPLE_RATE)[::SUBFRAMES]
    return SubframeFrames(features, np.ascontiguousarray(f0[::SUBFRAMES]), ap)


def stack_subframes(features: np.ndarray) -> np.ndarray:
    """(T5, D) -> (T, 4 D): token t holds sub-frames 4t .. 4t+3; the last token repeats the last sub-frame."""
    n_tokens = (features.shape[0] - 1) // SUBFRAMES + 1
    pad = n_tokens * SUBFRAMES - features.shape[0]
    if pad > 0:
        features = np.concatenate([features, np.repeat(features[-1:], pad, 0)])
    return np.ascontiguousarray(features.reshape(n_tokens, SUBFRAMES * features.shape[1]))


class ContextDecoder(nn.Module):
    """Token sequence (B, T, 4 D) of RVQ reconstructions -> (B, T, 4 D) sub-frame features.

    Residual 1-D convolutions over neighbouring tokens (dilations 1, 2, 3, ...); the
    output layer starts at zero, so an untrained decoder is the lookup decoder.
    """

    def __init__(self, dim: int, channels: int = 256, n_blocks: int = 4) -> None:
        super().__init__()
        self.dim, self.channels, self.n_blocks = dim, channels, n_blocks
        self.inp = nn.Conv1d(dim, channels, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GELU(), nn.Conv1d(channels, channels, 3, padding=1 + i % 3, dilation=1 + i % 3))
            for i in range(n_blocks))
        self.out = nn.Conv1d(channels, dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.transpose(1, 2))
        for block in self.blocks:
            h = h + block(h)
        return x + self.out(h).transpose(1, 2)


@dataclass(frozen=True)
class DecoderTraining:
    """How the context decoder is fitted: Adam with one-cycle learning rate on random token windows."""
    steps: int = 1500
    batch_size: int = 32
    window: int = 48
    lr: float = 1e-3


class SubframeCodec:
    """WORLD + RVQ speech tokenizer and vocoder at 16 kHz, 50 token rows per second.

    Build one with :meth:`fit` (or :meth:`load`); the module docstring says what a row holds.
    """

    sample_rate: int = SAMPLE_RATE
    frame_rate: float = 1000.0 / TOKEN_MS

    def __init__(self, codebooks: torch.Tensor, decoder: ContextDecoder, aperiodicity_table: torch.Tensor, *,
                 n_f0_bins: int, f0_range: tuple[float, float], f0_lo: float, f0_hi: float, fft_size: int,
                 energy_weight: float = ENERGY_WEIGHT) -> None:
        if codebooks.ndim != 3 or codebooks.shape[2] % SUBFRAMES:
            raise ConfigError(f"codebooks must be (levels, codes, {SUBFRAMES} x dims), got {tuple(codebooks.shape)}.")
        if n_f0_bins < 2:
            raise ConfigError(f"n_f0_bins must be >= 2 (bin 0 is unvoiced), got {n_f0_bins}.")
        if not 0 < f0_lo < f0_hi:
            raise ConfigError(f"voiced F0 bin range must satisfy 0 < f0_lo < f0_hi, got ({f0_lo}, {f0_hi}).")
        self.codebooks = codebooks.float().contiguous()          # (L, K, 4 D), in weighted feature units
        self.n_levels, self.n_codes = int(codebooks.shape[0]), int(codebooks.shape[1])
        self.n_coded_dims = int(codebooks.shape[2]) // SUBFRAMES
        self.decoder = decoder.eval()
        self.aperiodicity_table = aperiodicity_table.float().contiguous()  # (K, A) by level-1 code
        self.n_f0_bins = int(n_f0_bins)
        self.f0_range = (float(f0_range[0]), float(f0_range[1]))
        self.f0_lo, self.f0_hi = float(f0_lo), float(f0_hi)
        self.fft_size = int(fft_size)
        self.energy_weight = float(energy_weight)
        self.weights = _feature_weights(self.n_coded_dims, self.energy_weight)   # (4 D,)
        self._log_lo = math.log(self.f0_lo)
        self._log_step = (math.log(self.f0_hi) - self._log_lo) / (self.n_f0_bins - 1)
        self._digest: str | None = None

    @property
    def row_width(self) -> int:
        """Columns of a token row: the RVQ levels, then the F0 bin."""
        return self.n_levels + 1

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, waves: Sequence[tuple[np.ndarray, int]], *, n_codes: int = 1024, n_levels: int = 6,
            n_f0_bins: int = 32, f0_range: tuple[float, float] = (50.0, 600.0), seed: int = 0, workers: int = 1,
            progress: bool = True, n_coded_dims: int = N_CODED_DIMS, energy_weight: float = ENERGY_WEIGHT,
            max_kmeans_rows: int = 120_000, kmeans_iters: int = 25,
            training: DecoderTraining = DecoderTraining()) -> SubframeCodec:
        """Fit F0 bins, RVQ codebooks, aperiodicity table and context decoder on ``(wave, sample_rate)`` pairs."""
        fft_size = fft_size_for(f0_range)
        job = Analyzer((float(f0_range[0]), float(f0_range[1])), fft_size, n_coded_dims, aperiodicity=True,
                       analysis=analyze_subframes)
        analyses = list(map_in_workers(job, waves, workers=workers, total=len(waves), desc="WORLD analysis (5 ms)",
                                       progress=progress))
        return cls.fit_frames(analyses, n_codes=n_codes, n_levels=n_levels, n_f0_bins=n_f0_bins, f0_range=f0_range,
                              seed=seed, progress=progress, energy_weight=energy_weight,
                              max_kmeans_rows=max_kmeans_rows, kmeans_iters=kmeans_iters, training=training)

    @classmethod
    def fit_frames(cls, analyses: Sequence[SubframeFrames], *, n_codes: int = 1024, n_levels: int = 6,
                   n_f0_bins: int = 32, f0_range: tuple[float, float] = (50.0, 600.0), seed: int = 0,
                   progress: bool = True, energy_weight: float = ENERGY_WEIGHT, max_kmeans_rows: int = 120_000,
                   kmeans_iters: int = 25, training: DecoderTraining = DecoderTraining()) -> SubframeCodec:
        """:meth:`fit` on frames made by :func:`analyze_subframes` with ``aperiodicity=True``."""
        if not analyses:
            raise ConfigError("SubframeCodec.fit got no audio: the sequence of (wave, sample_rate) was empty.")
        if n_codes < 1 or n_levels < 1:
            raise ConfigError(f"n_codes and n_levels must be >= 1, got {n_codes} and {n_levels}.")
        if any(a.aperiodicity is None for a in analyses):
            raise ConfigError("SubframeCodec.fit_frames needs frames analysed with aperiodicity=True.")
        n_coded_dims = int(analyses[0].features.shape[1])
        weights = _feature_weights(n_coded_dims, energy_weight)
        stacked = [stack_subframes(a.features) * weights for a in analyses]                  # (T_i, 4 D) each
        rows = torch.from_numpy(np.concatenate(stacked))                                       # (N, 4 D)
        if rows.shape[0] < n_codes:
            raise ConfigError(f"SubframeCodec.fit got {rows.shape[0]} tokens of audio, fewer than n_codes="
                              f"{n_codes}; give it more audio or fewer codes.")
        f0 = np.concatenate([a.f0 for a in analyses])
        voiced = f0 > 0
        if voiced.sum() < 2:
            raise ConfigError("SubframeCodec.fit found no voiced frames in its audio, so it cannot place F0 bins; "
                              f"check the clips hold speech and f0_range={f0_range} covers its pitch.")
        f0_lo, f0_hi = np.percentile(f0[voiced], F0_PERCENTILES)
        f0_lo, f0_hi = max(float(f0_lo), f0_range[0]), min(float(f0_hi), f0_range[1])

        books, residual = [], rows.clone()
        for level in tqdm(range(n_levels), desc="RVQ levels", disable=not progress):
            centroids = kmeans(residual, n_codes, n_iter=kmeans_iters, seed=seed + level,
                               max_points=max_kmeans_rows, num_threads=2).centroids             # (K, 4 D)
            index, _ = nearest_centroid(residual, centroids)
            residual -= centroids[index]
            books.append(centroids)
            if level == 0:
                first_codes = index.numpy()
        codebooks = torch.stack(books)                                                          # (L, K, 4 D)
        ap = np.concatenate([a.aperiodicity for a in analyses])                                 # (N, A)
        ap_table = aperiodicity_table(first_codes, voiced, ap, n_codes)
        decoder = ContextDecoder(codebooks.shape[2])
        codec = cls(codebooks, decoder, torch.from_numpy(ap_table), n_f0_bins=n_f0_bins, f0_range=f0_range,
                    f0_lo=f0_lo, f0_hi=f0_hi, fft_size=fft_size_for(f0_range), energy_weight=energy_weight)
        targets = [torch.from_numpy(s) for s in stacked]
        inputs = [codec.lookup(codec.quantize(s)) for s in stacked]
        codec._train_decoder(inputs, targets, training, seed, progress)
        return codec

    def _train_decoder(self, inputs: list[torch.Tensor], targets: list[torch.Tensor], training: DecoderTraining,
                       seed: int, progress: bool) -> None:
        """Fit the context decoder on random windows of the fitting utterances (seeded: one machine, one result)."""
        decoder = self.decoder.train()
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in decoder.modules():
                if isinstance(module, nn.Conv1d) and module is not decoder.out:
                    module.reset_parameters()
        optimizer = torch.optim.AdamW(decoder.parameters(), training.lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, training.lr, total_steps=training.steps,
                                                       pct_start=0.05)
        long_enough = [i for i, x in enumerate(inputs) if x.shape[0] > training.window]
        if not long_enough:
            raise ConfigError(f"SubframeCodec.fit: no utterance is longer than the decoder's training window of "
                              f"{training.window} tokens ({training.window * TOKEN_MS / 1000:.2f} s); give it longer "
                              "clips or a shorter DecoderTraining.window.")
        with _torch_threads(2):
            for _ in tqdm(range(training.steps), desc="context decoder", disable=not progress):
                picks = torch.randint(len(long_enough), (training.batch_size,), generator=gen).tolist()
                xs, ys = [], []
                for p in picks:
                    i = long_enough[p]
                    start = int(torch.randint(inputs[i].shape[0] - training.window, (1,), generator=gen))
                    xs.append(inputs[i][start:start + training.window])
                    ys.append(targets[i][start:start + training.window])
                loss = (decoder(torch.stack(xs)) - torch.stack(ys)).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
        self.decoder = decoder.eval()
        self._digest = None

    # ------------------------------------------------------------------ tokens
    def quantize(self, stacked: np.ndarray) -> torch.Tensor:
        """(T, 4 D) weighted token vectors -> (T, L) int64 RVQ codes."""
        residual = torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32)).clone()
        codes = torch.empty(residual.shape[0], self.n_levels, dtype=torch.int64)
        for level in range(self.n_levels):
            index, _ = nearest_centroid(residual, self.codebooks[level])
            codes[:, level] = index
            residual -= self.codebooks[level][index]
        return codes

    def lookup(self, codes: torch.Tensor, n_levels: int | None = None) -> torch.Tensor:
        """(T, L) codes -> (T, 4 D) sum of the first ``n_levels`` levels' centroids (all by default)."""
        levels = self.n_levels if n_levels is None else n_levels
        out = torch.zeros(codes.shape[0], self.codebooks.shape[2])
        for level in range(levels):
            out += self.codebooks[level][codes[:, level]]
        return out

    def f0_to_bin(self, f0: np.ndarray) -> np.ndarray:
        """Hz -> bin: 0 for unvoiced (f0 <= 0), else 1..n_f0_bins-1 by log-F0, clamped (``SpeechCodec``'s bins)."""
        return f0_to_bin(f0, self._log_lo, self._log_step, self.n_f0_bins)

    def bin_to_f0(self, f0_bin: np.ndarray) -> np.ndarray:
        """bin -> Hz at the bin's centre in log-F0; 0 for bin 0 (unvoiced)."""
        return bin_to_f0(f0_bin, self._log_lo, self._log_step)

    def analyze(self, wave: np.ndarray, sample_rate: int, *, aperiodicity: bool = False,
                name: str = "wave") -> SubframeFrames:
        """Validate, resample to 16 kHz and analyse with this codec's settings (``name`` labels errors)."""
        x = resample(as_mono_float(wave, sample_rate, name=name), int(sample_rate))
        return analyze_subframes(x, f0_range=self.f0_range, fft_size=self.fft_size, n_coded_dims=self.n_coded_dims,
                                 aperiodicity=aperiodicity)

    def encode_frames(self, frames: SubframeFrames) -> torch.Tensor:
        """Analysed frames -> (T, L + 1) int64 token rows."""
        codes = self.quantize(stack_subframes(frames.features) * self.weights)
        f0_bin = torch.from_numpy(self.f0_to_bin(frames.f0))
        return torch.cat([codes, f0_bin[:, None]], dim=1)

    def encode(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Waveform -> (T, L + 1) int64 token rows, T = floor(seconds * 50) + 1."""
        return self.encode_frames(self.analyze(wave, sample_rate))

    def _check_rows(self, tokens: Any) -> torch.Tensor:
        t = torch.as_tensor(tokens).detach().cpu()
        if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] != self.row_width or t.is_floating_point():
            raise ConfigError(f"decode expects a non-empty (T, {self.row_width}) integer tensor of token rows "
                              f"({self.n_levels} RVQ codes and an F0 bin per 20 ms), got dtype {t.dtype} and shape "
                              f"{tuple(t.shape)}.")
        codes, f0_bin = t[:, :-1], t[:, -1]
        if int(codes.min()) < 0 or int(codes.max()) >= self.n_codes:
            raise ConfigError(f"decode got RVQ codes outside [0, {self.n_codes}): min {int(codes.min())}, max "
                              f"{int(codes.max())}. Strip special tokens (start/stop) before decoding.")
        if int(f0_bin.min()) < 0 or int(f0_bin.max()) >= self.n_f0_bins:
            raise ConfigError(f"decode got F0 bins outside [0, {self.n_f0_bins}): min {int(f0_bin.min())}, max "
                              f"{int(f0_bin.max())}.")
        return t.long()

    @torch.no_grad()
    def subframe_features(self, tokens: Any) -> np.ndarray:
        """(T, L + 1) token rows -> (4 (T - 1) + 1, D) decoded sub-frame features (unweighted)."""
        t = self._check_rows(tokens)
        decoded = self.decoder(self.lookup(t[:, :-1])[None])[0] / torch.from_numpy(self.weights)   # (T, 4 D)
        features = decoded.reshape(-1, self.n_coded_dims).double().numpy()
        return features[:(t.shape[0] - 1) * SUBFRAMES + 1]

    def decode(self, tokens: Any) -> tuple[np.ndarray, int]:
        """(T, L + 1) token rows -> (float32 mono waveform of about T/50 s, 16000)."""
        t = self._check_rows(tokens)
        features = self.subframe_features(t)                                    # (T5, D)
        f0 = self.bin_to_f0(t[:, -1].numpy())                                   # (T,)
        ap = self.aperiodicity_table[t[:, 0]].double().numpy()                  # (T, A)
        if t.shape[0] == 1:                                                     # WORLD needs two frames
            features, f0, ap = np.repeat(features, 2, 0), np.repeat(f0, 2), np.repeat(ap, 2, 0)
        pw = _pyworld()
        shape = features.copy()
        shape[:, 0] = 0.0
        shape_power = pw.decode_spectral_envelope(np.ascontiguousarray(shape), SAMPLE_RATE, self.fft_size).sum(1)
        coded = features.copy()
        coded[:, 0] = features[:, 0] - np.log(shape_power)                      # coefficient 0 for the log power
        envelope = pw.decode_spectral_envelope(np.ascontiguousarray(coded), SAMPLE_RATE, self.fft_size)
        n = envelope.shape[0]
        f0_5ms = _fit_length(_upsample_f0(f0, SUBFRAMES), n)
        ap_5ms = pw.decode_aperiodicity(np.ascontiguousarray(_fit_length(_upsample_linear(ap, SUBFRAMES), n)),
                                        SAMPLE_RATE, self.fft_size)
        wave = pw.synthesize(f0_5ms, envelope, ap_5ms, SAMPLE_RATE, frame_period=SUBFRAME_MS)
        return wave.astype(np.float32), SAMPLE_RATE

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "sample_rate": self.sample_rate,
                "frame_rate": self.frame_rate, "subframe_ms": SUBFRAME_MS, "spectrum_floor": SPECTRUM_FLOOR,
                "n_levels": self.n_levels, "n_codes": self.n_codes, "n_coded_dims": self.n_coded_dims,
                "n_f0_bins": self.n_f0_bins, "f0_range": list(self.f0_range), "f0_lo": self.f0_lo,
                "f0_hi": self.f0_hi, "fft_size": self.fft_size, "energy_weight": self.energy_weight,
                "decoder": {"channels": self.decoder.channels, "n_blocks": self.decoder.n_blocks}}

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"codebooks": self.codebooks, "aperiodicity_table": self.aperiodicity_table}
        tensors.update({f"decoder.{k}": v.detach().contiguous() for k, v in self.decoder.state_dict().items()})
        return tensors

    @property
    def digest(self) -> str:
        """16 hex digits of SHA-256 over the settings, codebooks and decoder: changes whenever tokens or audio could."""
        if self._digest is None:
            h = hashlib.sha256(json.dumps(self._config(), sort_keys=True).encode())
            for name, tensor in sorted(self._tensors().items()):
                h.update(name.encode())
                h.update(tensor.float().numpy().tobytes())
            self._digest = h.hexdigest()[:16]
        return self._digest

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``codec.json`` (settings + digest) and ``codec.safetensors`` (codebooks, table, decoder)."""
        from safetensors.torch import save as save_bytes
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / TENSOR_FILE, save_bytes(self._tensors()))
        text = json.dumps({**self._config(), "digest": self.digest}, indent=2) + "\n"
        atomic_write_bytes(directory / CONFIG_FILE, text.encode())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SubframeCodec:
        """Read a codec written by :meth:`save`; the stored digest must match the tensors."""
        from safetensors.torch import load_file
        directory = Path(directory)
        config_path, tensor_path = directory / CONFIG_FILE, directory / TENSOR_FILE
        if not config_path.is_file() or not tensor_path.is_file():
            raise ConfigError(f"No sub-frame codec in {directory}: expected {CONFIG_FILE} and {TENSOR_FILE} there. "
                              "Fit one with SubframeCodec.fit(...) and save it with codec.save(directory).")
        config = read_versioned_json(config_path, FORMAT_NAME, FORMAT_VERSION, "refit the codec")
        if (config.get("subframe_ms"), config.get("spectrum_floor")) != (SUBFRAME_MS, SPECTRUM_FLOOR):
            raise ConfigError(f"{config_path} was fitted with sub-frames of {config.get('subframe_ms')} ms and "
                              f"spectrum floor {config.get('spectrum_floor')}, but this version of emoctl analyses "
                              f"audio at {SUBFRAME_MS} ms with floor {SPECTRUM_FLOOR}; refit the codec.")
        tensors = load_file(str(tensor_path))
        codebooks = tensors.pop("codebooks")
        decoder = ContextDecoder(int(codebooks.shape[2]), **config["decoder"])
        state = {k.removeprefix("decoder."): v for k, v in tensors.items() if k.startswith("decoder.")}
        try:
            decoder.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"{tensor_path}: the context decoder's tensors do not fit its settings in "
                              f"{config_path} ({str(err).splitlines()[0]}); refit the codec.") from None
        codec = cls(codebooks, decoder, tensors["aperiodicity_table"], n_f0_bins=config["n_f0_bins"],
                    f0_range=tuple(config["f0_range"]), f0_lo=config["f0_lo"], f0_hi=config["f0_hi"],
                    fft_size=config["fft_size"], energy_weight=config["energy_weight"])
        if codec.digest != config.get("digest"):
            raise ConfigError(f"{tensor_path} does not match the digest in {config_path} ({codec.digest} != "
                              f"{config.get('digest')}): the files were changed or mixed up; refit the codec.")
        return codec

    def __repr__(self) -> str:
        return (f"SubframeCodec(levels={self.n_levels} x {self.n_codes} codes, n_f0_bins={self.n_f0_bins}, "
                f"f0_bins=[{self.f0_lo:.1f}, {self.f0_hi:.1f}] Hz, digest={self.digest})")


def _feature_weights(n_coded_dims: int, energy_weight: float) -> np.ndarray:
    """(4 D,) float32 distance weights: ``energy_weight`` on each sub-frame's log power, 1 elsewhere."""
    weights = np.ones(SUBFRAMES * n_coded_dims, dtype=np.float32)
    weights[::n_coded_dims] = energy_weight
    return weights


def _fit_length(frames: np.ndarray, n: int) -> np.ndarray:
    """Cut or edge-pad a (T, ...) array to n frames."""
    if frames.shape[0] >= n:
        return np.ascontiguousarray(frames[:n])
    return np.concatenate([frames, np.repeat(frames[-1:], n - frames.shape[0], 0)])


def load_codec(directory: str | os.PathLike) -> Any:
    """The codec saved in ``directory``, a ``SpeechCodec`` or a ``SubframeCodec`` by its ``codec.json`` format."""
    config_path = Path(directory) / CONFIG_FILE
    try:
        name = json.loads(config_path.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        name = None  # the loaders below name what is missing or malformed
    if name == FORMAT_NAME:
        return SubframeCodec.load(directory)
    if name in (SPEECH_CODEC_FORMAT, None):
        return SpeechCodec.load(directory)
    raise ConfigError(f"{config_path} holds a codec of format {name!r}; emoctl reads {SPEECH_CODEC_FORMAT!r} and "
                      f"{FORMAT_NAME!r}. Point at a folder a codec's save() wrote.")
