"""CosyVoice's two ONNX front ends: the speech tokenizer (audio to the LLM's 50 Hz tokens) and CAMPPlus (audio
to the 192-d x-vector that conditions the flow).

Both run through onnxruntime exactly as upstream's ``CosyVoiceFrontEnd`` feeds them: the tokenizer gets the
128-bin Whisper log-mel of 16 kHz audio and its frame count (inputs taken by position, as upstream does);
CAMPPlus gets 80-bin Kaldi fbank with the mean removed.  The objects are picklable (the ONNX session opens on
first use), so data-module workers tokenize corpora with them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoctl.backbones.audio_input import mono_recording, resample
from emoctl.errors import ConfigError, first_line

FRONT_END_RATE = 16000
MAX_TOKENIZER_SECONDS = 30.0  # upstream refuses longer audio (the tokenizer's Whisper encoder window)


def _session(path: str, device: torch.device) -> Any:
    """An onnxruntime session with upstream's options (one intra-op thread: data workers run many)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return onnxruntime.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise ConfigError(f"cannot open {path} with onnxruntime: {first_line(err)}. Copy it again from the "
                          "CosyVoice-300M-Instruct release.") from None


class OnnxSpeechTokenizer:
    """``speech_tokenizer_v1.onnx``: a recording to CosyVoice-300M's speech tokens (50 per second)."""

    def __init__(self, path: str | Path, digest: str, vocab_size: int, device: str | torch.device = "cpu") -> None:
        self.path, self._digest, self.vocab_size = str(path), digest, int(vocab_size)
        self.device = torch.device(device)
        self._session: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None}

    @property
    def digest(self) -> str:
        return self._digest

    def features(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        """(1, 128, frames) Whisper log-mel of the recording at 16 kHz, upstream's tokenizer input."""
        import whisper

        audio = resample(mono_recording(wave, sample_rate, "speech tokenizer input"), sample_rate, FRONT_END_RATE)
        if audio.shape[1] > MAX_TOKENIZER_SECONDS * FRONT_END_RATE:
            raise ConfigError(f"the CosyVoice speech tokenizer takes at most {MAX_TOKENIZER_SECONDS:g} s of audio, "
                              f"got {audio.shape[1] / FRONT_END_RATE:.1f} s; split the recording.")
        return whisper.log_mel_spectrogram(audio, n_mels=128)

    def encode(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        if self._session is None:
            self._session = _session(self.path, self.device)
        feats = self.features(wave, sample_rate)
        inputs = self._session.get_inputs()
        out = self._session.run(None, {inputs[0].name: feats.numpy(),
                                       inputs[1].name: np.array([feats.shape[2]], dtype=np.int32)})[0]
        tokens = torch.as_tensor(np.asarray(out).reshape(-1).astype(np.int64))
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ConfigError(f"{self.path} produced tokens in [{int(tokens.min())}, {int(tokens.max())}], outside "
                              f"the LLM's {self.vocab_size} speech tokens: tokenizer and llm.pt are not a pair.")
        return tokens


class CampPlus:
    """``campplus.onnx``: a recording to its (1, 192) x-vector, as upstream's ``_extract_spk_embedding``."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        self.path, self.device = str(path), torch.device(device)
        self._session: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None}

    def __call__(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        import torchaudio.compliance.kaldi as kaldi

        if self._session is None:
            self._session = _session(self.path, torch.device("cpu"))  # upstream runs CAMPPlus on the CPU
        audio = resample(mono_recording(wave, sample_rate, "CAMPPlus input"), sample_rate, FRONT_END_RATE)
        feat = kaldi.fbank(audio, num_mel_bins=80, dither=0, sample_frequency=FRONT_END_RATE)
        feat = feat - feat.mean(dim=0, keepdim=True)
        inputs = self._session.get_inputs()
        out = self._session.run(None, {inputs[0].name: feat.unsqueeze(0).numpy()})[0]
        embedding = torch.as_tensor(np.asarray(out, dtype=np.float32).reshape(1, -1))
        if not bool(torch.isfinite(embedding).all()):
            raise ConfigError(f"{self.path} gave a non-finite x-vector; the file is damaged.")
        return embedding
