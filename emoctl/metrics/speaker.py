"""Speaker similarity (SpkSIM): does the generated clip still sound like its speaker?

SpkSIM of a clip = cosine between its speaker embedding and the mean embedding
of that speaker's reference clips (the centroid is what speaker-verification
scoring uses: averaging several references makes the score less dependent on
one reference's text and prosody).

Encoders share :class:`SpeakerEncoder` so another model plugs in:

* :class:`ResemblyzerEncoder`: the GE2E LSTM bundled in the PyPI package
  ``resemblyzer`` (256-d, 16 kHz; volume normalized and long silences cut with
  webrtcvad before embedding).  Offline, what tests and CI use.  Measured on
  eSpeak NG voices it separates voices modestly (same voice 0.82, different
  voices 0.63; see REFERENCE.md).
* :class:`WavLMSpeakerEncoder`: a local transformers ``WavLMForXVector``
  folder (e.g. wavlm-base-plus-sv), the stronger choice when one is at hand.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from emoctl.errors import ConfigError
from emoctl.metrics.audio import MIN_DURATION_S, prepare_clips

__all__ = ["ResemblyzerEncoder", "SPEAKER_ENCODERS", "SpeakerEncoder", "WavLMSpeakerEncoder", "cosine_to_centroid",
           "load_speaker_encoder", "speaker_similarity"]

SPEAKER_ENCODERS = ("resemblyzer", "wavlm")


class SpeakerEncoder(ABC):
    """Waveforms in, unit-norm speaker embeddings out."""

    name: str
    sample_rate: int = 16000

    def embed(self, waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int | Sequence[int], *,
              names: Sequence[str] | None = None) -> torch.Tensor:
        """(N, D) float32 unit-norm embeddings of N validated mono clips."""
        clips = prepare_clips(waves, sample_rate, names=names, target_rate=self.sample_rate)
        rows = [self._embed(clip) for clip in clips]  # each (D,)
        return F.normalize(torch.stack(rows).float(), dim=1)

    @abstractmethod
    def _embed(self, wave: np.ndarray) -> torch.Tensor:
        """(D,) embedding of one (n,) float32 clip at ``self.sample_rate``."""


class ResemblyzerEncoder(SpeakerEncoder):
    """resemblyzer's bundled GE2E voice encoder."""

    name = "resemblyzer-ge2e"

    @cached_property
    def model(self) -> Any:
        try:
            with warnings.catch_warnings():  # resemblyzer 0.1.4 imports a deprecated scipy.ndimage namespace
                warnings.simplefilter("ignore", DeprecationWarning)
                from resemblyzer import VoiceEncoder
        except ImportError as err:
            raise ConfigError("ResemblyzerEncoder needs the PyPI packages resemblyzer and a webrtcvad build: "
                              "`pip install webrtcvad-wheels resemblyzer` (or `pip install -e '.[metrics]'`).") from err
        return VoiceEncoder(device="cpu", verbose=False)

    def _embed(self, wave: np.ndarray) -> torch.Tensor:
        from resemblyzer import preprocess_wav

        model = self.model
        trimmed = preprocess_wav(wave)  # already 16 kHz: volume normalization + webrtcvad silence trimming
        if trimmed.size < MIN_DURATION_S * self.sample_rate:  # the VAD found (almost) no voice: keep the whole clip
            trimmed = wave
        return torch.from_numpy(np.asarray(model.embed_utterance(trimmed.astype(np.float32))))


class WavLMSpeakerEncoder(SpeakerEncoder):
    """x-vectors from a local transformers ``WavLMForXVector`` folder (config.json + weights)."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(f"WavLM speaker model folder {self.model_dir} has no config.json; pass a local "
                              f"WavLMForXVector folder (e.g. a saved microsoft/wavlm-base-plus-sv).")
        self.name = f"wavlm-xvector:{self.model_dir.name}"

    @cached_property
    def _parts(self) -> tuple[Any, Any]:
        from transformers import AutoFeatureExtractor, WavLMForXVector

        extractor = AutoFeatureExtractor.from_pretrained(self.model_dir, local_files_only=True)
        model = WavLMForXVector.from_pretrained(self.model_dir, local_files_only=True).eval()
        return extractor, model

    @torch.no_grad()
    def _embed(self, wave: np.ndarray) -> torch.Tensor:
        extractor, model = self._parts
        inputs = extractor(wave, sampling_rate=self.sample_rate, return_tensors="pt")
        return model(**inputs).embeddings[0]  # (D,)


def cosine_to_centroid(embeddings: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """(N,) cosine of each row of ``embeddings`` (N, D) to the mean of ``references`` (M, D)."""
    if references.ndim != 2 or references.shape[0] == 0:
        raise ConfigError(f"speaker similarity needs at least one reference embedding, got shape "
                          f"{tuple(references.shape)}.")
    centroid = references.mean(dim=0, keepdim=True)  # (1, D)
    return F.cosine_similarity(embeddings, centroid, dim=1)


def speaker_similarity(encoder: SpeakerEncoder, generated: Sequence[np.ndarray | torch.Tensor],
                       references: Sequence[np.ndarray | torch.Tensor], sample_rate: int | Sequence[int],
                       reference_rate: int | Sequence[int] | None = None) -> torch.Tensor:
    """(N,) SpkSIM of each generated clip against the centroid of one speaker's reference clips."""
    generated_emb = encoder.embed(generated, sample_rate, names=[f"generated clip {i}" for i in range(len(generated))])
    reference_emb = encoder.embed(references, sample_rate if reference_rate is None else reference_rate,
                                  names=[f"reference clip {i}" for i in range(len(references))])
    return cosine_to_centroid(generated_emb, reference_emb)


@lru_cache(maxsize=4)
def load_speaker_encoder(kind: str = "resemblyzer", model_dir: str | None = None) -> SpeakerEncoder:
    """One encoder per (kind, model_dir) per process; weights load on first use."""
    if kind == "resemblyzer":
        if model_dir is not None:
            raise ConfigError("speaker=resemblyzer uses its bundled GE2E weights; drop speaker_model_dir.")
        return ResemblyzerEncoder()
    if kind == "wavlm":
        if model_dir is None:
            raise ConfigError("speaker=wavlm needs speaker_model_dir=PATH of a local WavLMForXVector folder.")
        return WavLMSpeakerEncoder(model_dir)
    raise ConfigError(f"unknown speaker encoder {kind!r}; choose one of {', '.join(SPEAKER_ENCODERS)}.")
