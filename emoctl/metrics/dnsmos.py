"""DNSMOS: non-intrusive MOS estimates of speech quality (Reddy et al., ICASSP 2021/2022).

Four numbers per clip, each on a 1-5 scale:

* P.835 SIG (speech signal distortion), BAK (background noise), OVRL (overall),
  from ``sig_bak_ovr.onnx`` with the standard third-order polynomial calibration;
* P.808 MOS from ``model_v8.onnx`` on a 120-band log-mel spectrogram.

The ONNX graphs are the ones bundled in the PyPI package ``speechmos``, run
here through onnxruntime directly (one session each, one intra-op thread by
default so parallel workers do not oversubscribe the cores).  The scoring
follows Microsoft's reference script: 16 kHz audio; a clip shorter than the
9.01 s model window is doubled until it fills one window; longer clips are
scored on 9.01 s windows every 1 s and the window scores are averaged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from emoctl.errors import ConfigError
from emoctl.metrics.audio import prepare_clips

__all__ = ["DNSMOS", "DNSMOSScore", "load_dnsmos"]

SAMPLE_RATE = 16000
WINDOW_S = 9.01
HOP_S = 1.0

# Calibration of the raw P.835 outputs to MOS (the non-personalized model), highest power first.
_POLY_SIG = np.poly1d([-0.08397278, 1.22083953, 0.0052439])
_POLY_BAK = np.poly1d([-0.13166888, 1.60915514, -0.39604546])
_POLY_OVRL = np.poly1d([-0.06766283, 1.11546468, 0.04602535])


@dataclass(frozen=True)
class DNSMOSScore:
    """The four DNSMOS estimates of one clip."""

    sig: float
    bak: float
    ovrl: float
    p808: float

    def to_row(self) -> dict[str, float]:
        return asdict(self)


def _models_dir() -> Path:
    try:
        import speechmos
    except ImportError as err:
        raise ConfigError("DNSMOS uses the ONNX models bundled in the PyPI package speechmos: `pip install speechmos "
                          "onnxruntime` (or `pip install -e '.[metrics]'`).") from err
    return Path(speechmos.__file__).parent / "dnsmos_models"


class DNSMOS:
    """Scores clips with the bundled DNSMOS P.835 and P.808 models."""

    name = "dnsmos-p835+p808"

    def __init__(self, models_dir: str | Path | None = None, *, threads: int = 1) -> None:
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.threads = threads

    @cached_property
    def _sessions(self) -> tuple[Any, Any]:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ConfigError("DNSMOS needs onnxruntime: `pip install onnxruntime`.") from err
        directory = self.models_dir if self.models_dir is not None else _models_dir()
        paths = [directory / "sig_bak_ovr.onnx", directory / "model_v8.onnx"]
        for path in paths:
            if not path.is_file():
                raise ConfigError(f"DNSMOS model {path} is missing; reinstall speechmos or pass the folder holding "
                                  f"sig_bak_ovr.onnx and model_v8.onnx.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        return tuple(ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths)

    def __call__(self, waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int | Sequence[int], *,
                 names: Sequence[str] | None = None) -> list[DNSMOSScore]:
        """One :class:`DNSMOSScore` per validated mono clip."""
        clips = prepare_clips(waves, sample_rate, names=names, target_rate=SAMPLE_RATE)
        return [self._score(clip) for clip in clips]

    def _score(self, wave: np.ndarray) -> DNSMOSScore:
        primary, p808 = self._sessions
        window = int(WINDOW_S * SAMPLE_RATE)
        while wave.size < window:  # doubling, as the reference script does (so scores match it)
            wave = np.concatenate([wave, wave])
        n_windows = int(np.floor(wave.size / SAMPLE_RATE) - WINDOW_S) + 1  # whole seconds first, as the reference
        rows = []
        for index in range(n_windows):
            start = int(index * HOP_S * SAMPLE_RATE)
            segment = wave[start:start + window]
            if segment.size < window:
                continue
            raw = primary.run(None, {"input_1": segment[None, :].astype(np.float32)})[0][0]  # (3,) sig, bak, ovrl
            mel = _p808_features(segment[:-160])[None]  # (1, frames, 120)
            p808_mos = float(p808.run(None, {"input_1": mel})[0][0][0])
            rows.append((_POLY_SIG(raw[0]), _POLY_BAK(raw[1]), _POLY_OVRL(raw[2]), p808_mos))
        sig, bak, ovrl, mos = np.mean(np.asarray(rows, dtype=np.float64), axis=0)
        return DNSMOSScore(float(sig), float(bak), float(ovrl), float(mos))


def _p808_features(segment: np.ndarray) -> np.ndarray:
    """(frames, 120) float32 log-mel input of the P.808 model, as its training script computed it."""
    import librosa

    mel = librosa.feature.melspectrogram(y=segment, sr=SAMPLE_RATE, n_fft=321, hop_length=160, n_mels=120)
    return ((librosa.power_to_db(mel, ref=np.max) + 40) / 40).T.astype(np.float32)


@lru_cache(maxsize=2)
def load_dnsmos(models_dir: str | None = None, threads: int = 1) -> DNSMOS:
    """One scorer per (folder, threads) per process (the ONNX sessions load on first use)."""
    return DNSMOS(models_dir, threads=threads)
