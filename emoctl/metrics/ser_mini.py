"""The embedded speech-emotion recognizer: a small conv net over log-mels, trained on the eSpeak corpus.

Why it exists: SER accuracy and Emo-SIM must run in tests and CI, where
emotion2vec (a 300M-parameter download) is not available.  The checkpoint
(about 0.4 MB) ships inside the package at :data:`DEFAULT_MINI_SER_DIR`.

Pipeline, per clip::

    wave (any rate, mono) -> resample to 16 kHz -> |STFT|^2, 25 ms Hann window, 10 ms hop
    -> 64 mel bands (50 Hz - 8 kHz) -> log(mel + log_floor) -> (x - mean) / std per band
    -> 4 conv blocks (stride 2, 2, 1, 1; dilation 1, 1, 2, 4) -> masked mean and std over time
    -> Linear -> 128-d embedding (Emo-SIM) -> ReLU -> Linear -> 5 logits over ESD_EMOTIONS

Normalization choices, and why:

* The mean and std are *global* per mel band, measured once on the training
  split (stored with the weights), not per utterance.  Loudness is one of the
  cues that separate the corpus's emotions (Angry is louder than Happy, Sad
  is soft), and per-utterance mean subtraction would erase it.  The price is
  that the recognizer expects clips at the corpus's level (peak-normalized
  eSpeak, which the WORLD codec keeps within about 5% RMS).
* ``log_floor`` (1e-5 of the mel power) sits above WORLD's synthesis noise
  floor, so the silences of vocoded clips and the digital silence of eSpeak
  clips map to (nearly) the same value instead of a cue that tells them apart.

Batches of different lengths are padded, and every conv block zeroes the
frames past each clip's end, so a clip gets the same output alone or in a
batch; batch norm takes its statistics over valid frames only.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from emoctl.emotions import ESD_EMOTIONS
from emoctl.errors import ConfigError
from emoctl.io.fsio import atomic_folder
from emoctl.io.formats import read_versioned_json
from emoctl.metrics.ser import EmotionRecognizer, SERResult

__all__ = ["DEFAULT_MINI_SER_DIR", "LogMelConfig", "MiniSER", "MiniSERConfig", "MiniSERNet", "load_mini_ser",
           "parameter_count", "save_mini_ser", "validate_wave"]

DEFAULT_MINI_SER_DIR = Path(__file__).resolve().parents[1] / "assets" / "ser_mini"
"""The committed checkpoint (``emoctl/assets/ser_mini``), packaged with emoctl."""
FORMAT_NAME = "emoctl.mini_ser"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class LogMelConfig:
    """The log-mel front end; the training cache and the recognizer must use the same one."""

    sample_rate: int = 16000
    """Rate every clip is resampled to before the STFT."""
    n_fft: int = 400
    """FFT size and window length in samples (25 ms at 16 kHz)."""
    hop_length: int = 160
    """Frame hop in samples (10 ms at 16 kHz)."""
    n_mels: int = 64
    """Mel bands."""
    f_min: float = 50.0
    """Lowest mel band edge in Hz (below the lowest F0 of the corpus's voices)."""
    f_max: float = 8000.0
    """Highest mel band edge in Hz."""
    log_floor: float = 1e-5
    """Added to the mel power before the log: floors silence above WORLD's noise (see the module docstring)."""


@dataclass(frozen=True)
class MiniSERConfig:
    """Shape of the recognizer; stored beside its weights so a checkpoint rebuilds itself."""

    features: LogMelConfig = field(default_factory=LogMelConfig)
    """Log-mel front end."""
    channels: int = 128
    """Width of every conv block."""
    kernel_size: int = 5
    """Conv kernel size (odd)."""
    strides: tuple[int, ...] = (2, 2, 1, 1)
    """Stride of each conv block (their product is the frame step of the last block, in 10 ms frames)."""
    dilations: tuple[int, ...] = (1, 1, 2, 4)
    """Dilation of each conv block (receptive field of the last block: 109 frames, 1.1 s, at the defaults)."""
    embedding_dim: int = 128
    """Size of the utterance embedding used for Emo-SIM."""
    dropout: float = 0.2
    """Dropout before the classifier (training only)."""
    labels: tuple[str, ...] = ESD_EMOTIONS
    """Classes, in the order of the logits."""

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.dilations) or not self.strides:
            raise ConfigError(f"model.strides {self.strides} and model.dilations {self.dilations} must be "
                              "non-empty and of equal length (one entry per conv block).")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size must be odd and >= 1, got {self.kernel_size}.")
        if min(self.channels, self.embedding_dim, *self.strides, *self.dilations) < 1 or len(self.labels) < 2:
            raise ConfigError("model.channels, embedding_dim, strides and dilations must be >= 1, and there must "
                              f"be at least two labels; got {self}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MiniSERConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"mini SER config has unknown keys {unknown}; known: {sorted(known)}.")
        data = dict(data)
        data["features"] = LogMelConfig(**data.get("features", {}))
        for key in ("strides", "dilations", "labels"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


# --------------------------------------------------------------------------- front end
class LogMel(nn.Module):
    """(N,) samples at ``config.sample_rate`` -> (n_mels, T) log-mel, T = 1 + N // hop_length."""

    def __init__(self, config: LogMelConfig) -> None:
        super().__init__()
        import torchaudio

        self.config = config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length, f_min=config.f_min,
            f_max=config.f_max, n_mels=config.n_mels, power=2.0, center=True, norm="slaney", mel_scale="slaney")

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(wave) + self.config.log_floor)


def validate_wave(wave: Any, sample_rate: Any, *, name: str = "wave") -> torch.Tensor:
    """One clip as a 1-D float32 tensor; ``ConfigError`` naming the clip for anything unusable."""
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ConfigError(f"{name}: sample_rate must be a positive integer number of Hz, got {sample_rate!r}.")
    x = wave.detach().cpu() if isinstance(wave, torch.Tensor) else torch.from_numpy(np.asarray(wave))
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise ConfigError(f"{name}: expected mono audio (a 1-D array of samples), got shape {tuple(x.shape)}. "
                          "Mix down or pick one channel first, e.g. wave.mean(axis=-1) for (samples, channels).")
    if x.numel() == 0:
        raise ConfigError(f"{name}: the audio is empty (0 samples). Drop this clip or check how it was made.")
    if x.dtype in (torch.int16, torch.int32):
        x = x.to(torch.float32) / float(-torch.iinfo(x.dtype).min)
    elif not x.is_floating_point():
        raise ConfigError(f"{name}: expected float or int16/int32 PCM samples, got dtype {x.dtype}.")
    x = x.to(torch.float32)
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ConfigError(f"{name}: the audio has {int(bad.sum())} NaN or infinite samples (first at index "
                          f"{int(bad.nonzero()[0, 0])}). Fix the clip or the model that produced it.")
    return x


# --------------------------------------------------------------------------- network
class MaskedBatchNorm1d(nn.BatchNorm1d):
    """Batch norm over (B, C, T) whose training statistics count only valid (unpadded) frames."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x (B, C, T), mask (B, 1, T)
        if not self.training:
            return super().forward(x)
        n = mask.sum().clamp(min=2.0)
        mean = (x * mask).sum(dim=(0, 2)) / n                                    # (C,)
        var = (((x - mean[:, None]) ** 2) * mask).sum(dim=(0, 2)) / n             # (C,) biased
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        y = (x - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)
        return y * self.weight[:, None] + self.bias[:, None]


class ConvBlock(nn.Module):
    """Conv1d -> masked batch norm -> ReLU, with frames past each length set to zero."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, stride=stride, dilation=dilation, padding=self.padding,
                              bias=False)
        self.norm = MaskedBatchNorm1d(c_out)

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        c = self.conv
        span = c.dilation[0] * (c.kernel_size[0] - 1)
        return torch.div(lengths + 2 * self.padding - span - 1, c.stride[0], rounding_mode="floor") + 1

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(x)                                                           # (B, C, T')
        lengths = self.out_lengths(lengths).clamp(min=1)
        mask = (torch.arange(x.shape[-1], device=x.device) < lengths[:, None]).unsqueeze(1).to(x.dtype)
        return F.relu(self.norm(x, mask)) * mask, lengths


class MiniSERNet(nn.Module):
    """Normalized log-mels (B, n_mels, T) + lengths (B,) -> (logits (B, n_labels), embedding (B, D))."""

    def __init__(self, config: MiniSERConfig) -> None:
        super().__init__()
        self.config = config
        n_mels = config.features.n_mels
        self.register_buffer("feature_mean", torch.zeros(n_mels))
        self.register_buffer("feature_std", torch.ones(n_mels))
        widths = [n_mels] + [config.channels] * len(config.strides)
        self.blocks = nn.ModuleList(
            ConvBlock(widths[i], widths[i + 1], config.kernel_size, s, d)
            for i, (s, d) in enumerate(zip(config.strides, config.dilations)))
        self.embed = nn.Linear(2 * config.channels, config.embedding_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.classify = nn.Linear(config.embedding_dim, len(config.labels))

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-band statistics of the training log-mels (see the module docstring for why global)."""
        n_mels = self.config.features.n_mels
        if mean.shape != (n_mels,) or std.shape != (n_mels,) or not bool((std > 0).all()):
            raise ConfigError(f"feature statistics must be two ({n_mels},) tensors with std > 0, got shapes "
                              f"{tuple(mean.shape)} and {tuple(std.shape)}.")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)

    def forward(self, logmel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (torch.arange(logmel.shape[-1], device=logmel.device) < lengths[:, None]).unsqueeze(1)
        x = ((logmel - self.feature_mean[:, None]) / self.feature_std[:, None]) * mask     # (B, M, T)
        for block in self.blocks:
            x, lengths = block(x, lengths)                                                # (B, C, T')
        n = lengths.to(x.dtype)[:, None]                                                  # (B, 1)
        mean = x.sum(-1) / n                                                              # (B, C)
        valid = (torch.arange(x.shape[-1], device=x.device) < lengths[:, None]).unsqueeze(1)
        var = (((x - mean[..., None]) ** 2) * valid).sum(-1) / n
        pooled = torch.cat([mean, torch.sqrt(var + 1e-5)], dim=-1)                        # (B, 2C)
        embedding = self.embed(pooled)                                                    # (B, D)
        return self.classify(self.dropout(F.relu(embedding))), embedding


def pad_logmels(logmels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_mels, T_i) clips -> zero-padded (B, n_mels, T_max) and lengths (B,) int64."""
    lengths = torch.tensor([m.shape[-1] for m in logmels], dtype=torch.long)
    out = logmels[0].new_zeros(len(logmels), logmels[0].shape[0], int(lengths.max()))
    for i, m in enumerate(logmels):
        out[i, :, :m.shape[-1]] = m
    return out, lengths


# --------------------------------------------------------------------------- recognizer
class MiniSER(EmotionRecognizer):
    """The embedded recognizer behind the :class:`EmotionRecognizer` interface (CPU or GPU, eval mode)."""

    name = "mini-ser"

    def __init__(self, net: MiniSERNet, *, batch_size: int = 64, metadata: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.config = net.config
        self.labels = tuple(net.config.labels)
        self.frontend = LogMel(net.config.features)
        self.batch_size = batch_size
        self.metadata = metadata or {}

    @property
    def device(self) -> torch.device:
        return self.net.feature_mean.device

    def to(self, device: str | torch.device) -> MiniSER:
        self.net.to(device)
        self.frontend.to(device)
        return self

    def logmels(self, waves: Sequence[Any], sample_rate: int | Sequence[int]) -> list[torch.Tensor]:
        """Validated, resampled log-mels (n_mels, T_i) of each clip, on the recognizer's device."""
        import torchaudio

        if isinstance(waves, (np.ndarray, torch.Tensor)) and waves.ndim == 1:
            raise ConfigError("MiniSER takes a sequence of clips; wrap a single 1-D clip in a list: ser([wave], sr).")
        many = isinstance(sample_rate, (list, tuple, np.ndarray, torch.Tensor))
        rates = list(sample_rate) if many else [sample_rate] * len(waves)
        if len(rates) != len(waves):
            raise ConfigError(f"got {len(waves)} clips but {len(rates)} sample rates; give one rate, or one per clip.")
        if len(waves) == 0:
            raise ConfigError("MiniSER got no clips; pass a non-empty sequence of mono waveforms.")
        target = self.config.features.sample_rate
        out = []
        for i, (wave, rate) in enumerate(zip(waves, rates)):
            x = validate_wave(wave, rate, name=f"clip {i}").to(self.device)
            if int(rate) != target:
                x = torchaudio.functional.resample(x, int(rate), target)
            out.append(self.frontend(x))
        return out

    @torch.no_grad()
    def __call__(self, waves: Sequence[Any], sample_rate: int | Sequence[int]) -> SERResult:
        feats = self.logmels(waves, sample_rate)
        probs, embeddings = [], []
        for start in range(0, len(feats), self.batch_size):
            batch, lengths = pad_logmels(feats[start:start + self.batch_size])
            logits, embedding = self.net(batch, lengths.to(batch.device))
            probs.append(logits.float().softmax(-1).cpu())
            embeddings.append(embedding.float().cpu())
        return SERResult(probs=torch.cat(probs), embeddings=torch.cat(embeddings), labels=self.labels)


# --------------------------------------------------------------------------- persistence
def save_mini_ser(net: MiniSERNet, directory: str | os.PathLike, metadata: dict[str, Any] | None = None,
                  extra_files: dict[str, str] | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors``, ``training.json`` (from ``metadata``) and ``extra_files``
    (name -> text, e.g. a report) atomically.

    The folder is built under a temporary name beside ``directory`` and
    renamed into place (``emoctl.io.fsio.atomic_folder``), so a crash leaves either the old folder or the new one.
    """
    from safetensors.torch import save_file

    target = Path(directory)
    with atomic_folder(target) as staging:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE))
        config = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": net.config.to_dict()}
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if metadata is not None:
            (staging / "training.json").write_text(json.dumps(metadata, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return target


def load_mini_ser(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                  batch_size: int = 64) -> MiniSER:
    """The recognizer saved in ``path`` (default: the committed :data:`DEFAULT_MINI_SER_DIR`)."""
    from safetensors.torch import load_file

    directory = Path(path) if path is not None else DEFAULT_MINI_SER_DIR
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise ConfigError(f"No mini SER checkpoint in {directory}: expected {CONFIG_FILE} and {WEIGHTS_FILE}. "
                          "Train one with `make ser-mini` (emoctl fit --config recipes/ser_mini.yaml) or pass the "
                          "folder it exported.")
    config = read_versioned_json(config_path, FORMAT_NAME, FORMAT_VERSION, "retrain or re-export it")
    net = MiniSERNet(MiniSERConfig.from_dict(config["model"]))
    try:
        net.load_state_dict(load_file(str(weights_path)), strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{weights_path} does not fit the model in {config_path}: {err}") from err
    training = directory / "training.json"
    metadata = json.loads(training.read_text()) if training.is_file() else {}
    return MiniSER(net.to(device), batch_size=batch_size, metadata=metadata).to(device)


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def receptive_field_frames(config: MiniSERConfig) -> int:
    """Input frames (10 ms) seen by one output frame of the last conv block."""
    rf, step = 1, 1
    for s, d in zip(config.strides, config.dilations):
        rf += d * (config.kernel_size - 1) * step
        step *= s
    return rf

