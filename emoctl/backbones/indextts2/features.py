"""w2v-BERT 2.0 semantic features of a recording, as IndexTTS2 computes them (``IndexTTS2.get_emb``).

Everything IndexTTS2 hears goes through these features: the speaker and emotion
conditioners of the GPT read them, and the MaskGCT semantic codec quantizes them
into the GPT's speech tokens.  Upstream takes ``hidden_states[17]`` of
``Wav2Vec2BertModel`` and standardizes it with the release's
``wav2vec2bert_stats.pt``; recordings are cut to 15 s (as upstream does) and
resampled to 16 kHz.

The object is picklable and loads its models on first use, so data-module
workers can hold one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoctl.backbones.audio_input import mono_recording, resample
from emoctl.numerics import private_rng
from emoctl.backbones.checkpoint_files import load_torch_file
from emoctl.errors import ConfigError, first_line

W2V_SAMPLE_RATE = 16000
MAX_REFERENCE_SECONDS = 15.0  # upstream's _load_and_cut_audio
HIDDEN_STATE = 17
__all__ = ["SemanticFeatures", "SpeakerStyle", "check_wave", "private_rng", "resample"]


W2V_FIX = ("The folder must hold config.json, model.safetensors and preprocessor_config.json of "
           "facebook/w2v-bert-2.0; copy them there again.")


def _check_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"cannot read the w2v-BERT file {path} as JSON: {first_line(err)}. {W2V_FIX}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the w2v-BERT file {path} holds {type(data).__name__}, not a JSON object. {W2V_FIX}")
    return data


def check_w2v_folder(folder: Path) -> None:
    """config.json and preprocessor_config.json are JSON objects (config.json of a w2v-BERT model with at least
    HIDDEN_STATE layers), and model.safetensors has a whole safetensors header whose tensors fit the file."""
    from safetensors import safe_open

    config = _check_json(folder / "config.json")
    _check_json(folder / "preprocessor_config.json")
    if config.get("model_type") != "wav2vec2-bert":
        raise ConfigError(f"{folder / 'config.json'} describes model_type {config.get('model_type')!r}, not "
                          f"'wav2vec2-bert'. {W2V_FIX}")
    layers = config.get("num_hidden_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < HIDDEN_STATE:
        raise ConfigError(f"{folder / 'config.json'}: num_hidden_layers = {layers!r}; IndexTTS2 reads hidden state "
                          f"{HIDDEN_STATE}, so it must be an integer of at least {HIDDEN_STATE}. {W2V_FIX}")
    weights = folder / "model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as f:
            names = list(f.keys())
    except Exception as err:  # SafetensorError for a truncated or foreign file, OSError when unreadable
        raise ConfigError(f"cannot read the w2v-BERT weights {weights} as safetensors: {first_line(err)}. "
                          f"{W2V_FIX}") from None
    if not names:
        raise ConfigError(f"the w2v-BERT weights {weights} hold no tensors. {W2V_FIX}")


def check_wave(wave: np.ndarray, rate: int, what: str) -> np.ndarray:
    """A mono, finite, non-empty float recording, cut to upstream's 15 s; refused loudly otherwise."""
    return mono_recording(wave, rate, what, MAX_REFERENCE_SECONDS)


class SemanticFeatures:
    """``features(wave, rate)`` -> (1, T, 1024) standardized w2v-BERT features (about 50 frames a second)."""

    def __init__(self, w2v_dir: str | Path, stats_path: str | Path, device: str | torch.device = "cpu") -> None:
        self.w2v_dir, self.stats_path, self.device = str(w2v_dir), str(stats_path), torch.device(device)
        self._loaded: tuple[Any, Any, torch.Tensor, torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None}

    def to(self, device: str | torch.device) -> SemanticFeatures:
        self.device = torch.device(device)
        if self._loaded is not None:
            extractor, model, mean, std = self._loaded
            self._loaded = (extractor, model.to(self.device), mean.to(self.device), std.to(self.device))
        return self

    def check_files(self) -> None:
        """Refuse a w2v-BERT folder whose JSON files or safetensors header are damaged, naming the file, without
        loading the weights (a header read: milliseconds, where the model itself takes seconds)."""
        check_w2v_folder(Path(self.w2v_dir))

    def _models(self) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
        if self._loaded is None:
            from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

            self.check_files()
            try:
                extractor = SeamlessM4TFeatureExtractor.from_pretrained(self.w2v_dir, local_files_only=True)
                with private_rng():
                    model = Wav2Vec2BertModel.from_pretrained(self.w2v_dir, local_files_only=True,
                                                              use_safetensors=True)
            except Exception as err:  # transformers raises OSError, ValueError or safetensors' own error
                raise ConfigError(f"cannot load w2v-BERT from {self.w2v_dir}: {first_line(err)}. {W2V_FIX}") from None
            model = model.eval().to(self.device)
            if model.config.num_hidden_layers < HIDDEN_STATE:
                raise ConfigError(f"{self.w2v_dir} holds a w2v-BERT of {model.config.num_hidden_layers} layers; "
                                  f"IndexTTS2 reads hidden state {HIDDEN_STATE}, so it needs at least that many.")
            cannot = f"cannot read the w2v-BERT statistics {self.stats_path} ({{'mean', 'var'}} tensors)"
            fix = "Copy wav2vec2bert_stats.pt again from the release."
            stats = load_torch_file(self.stats_path, cannot, fix)
            try:
                mean, std = stats["mean"].float(), torch.sqrt(stats["var"].float())
            except Exception as err:  # another layout
                raise ConfigError(f"{cannot}: {first_line(err)}. {fix}") from None
            self._loaded = (extractor, model.requires_grad_(False), mean.to(self.device), std.to(self.device))
        return self._loaded

    @torch.no_grad()
    def __call__(self, wave: np.ndarray, rate: int) -> torch.Tensor:
        extractor, model, mean, std = self._models()
        audio = resample(check_wave(wave, rate, "w2v-BERT input"), rate, W2V_SAMPLE_RATE)
        inputs = extractor(audio, sampling_rate=W2V_SAMPLE_RATE, return_tensors="pt")
        out = model(input_features=inputs["input_features"].to(self.device),
                    attention_mask=inputs["attention_mask"].to(self.device), output_hidden_states=True)
        return (out.hidden_states[HIDDEN_STATE] - mean) / std  # (1, T, 1024)


class SpeakerStyle:
    """``style(wave, rate)`` -> (1, 192) CAMPPlus speaker embedding, as upstream computes s2mel's ``style``.

    The GPT adapter needs it too: for an emotion vector, upstream picks, per emotion, the row of the release's
    emotion table (``feat2.pt``) whose speaker style (``feat1.pt``) is nearest this voice's style."""

    def __init__(self, campplus_path: str | Path, device: str | torch.device = "cpu") -> None:
        self.campplus_path, self.device = str(campplus_path), torch.device(device)
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}

    def to(self, device: str | torch.device) -> SpeakerStyle:
        self.device = torch.device(device)
        if self._model is not None:
            self._model = self._model.to(self.device)
        return self

    @property
    def campplus(self) -> Any:
        """Upstream's CAMPPlus with the release's weights (loaded on first use, weights only)."""
        if self._model is None:
            from indextts.s2mel.modules.campplus.DTDNN import CAMPPlus

            with private_rng():
                model = CAMPPlus(feat_dim=80, embedding_size=192)
            cannot = f"cannot load the CAMPPlus speaker encoder {self.campplus_path}"
            fix = "It must be campplus_cn_common.bin of funasr/campplus; copy that file there again."
            state = load_torch_file(self.campplus_path, cannot, fix)
            try:
                model.load_state_dict(state)
            except Exception as err:  # other keys or shapes
                raise ConfigError(f"{cannot}: {first_line(err)}. {fix}") from None
            self._model = model.eval().requires_grad_(False).to(self.device)
        return self._model

    @torch.no_grad()
    def from_16k(self, audio_16k: torch.Tensor) -> torch.Tensor:
        """(1, 192) style of (1, T) audio at 16 kHz: mean-normalized Kaldi fbank into CAMPPlus, as upstream."""
        import torchaudio

        feat = torchaudio.compliance.kaldi.fbank(audio_16k.to(self.device), num_mel_bins=80, dither=0,
                                                 sample_frequency=W2V_SAMPLE_RATE)
        feat = feat - feat.mean(dim=0, keepdim=True)
        return self.campplus(feat.unsqueeze(0))

    def __call__(self, wave: np.ndarray, rate: int) -> torch.Tensor:
        return self.from_16k(resample(check_wave(wave, rate, "CAMPPlus input"), rate, W2V_SAMPLE_RATE))
