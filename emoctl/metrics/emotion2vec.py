"""emotion2vec (plus_large, plus_base, base_finetuned) as an :class:`EmotionRecognizer`, from a local folder.

The model is funasr's own ``Emotion2vec`` class, built by emoctl from the folder's checked
config (see Loading below), and is never downloaded: the folder (``config.yaml``, ``model.pt``, ``tokens.txt``)
must already be on disk.  funasr is an optional dependency; without it, or
without the folder, construction raises a ``ConfigError`` saying which.

Class mapping.  emotion2vec scores 9 classes: angry, disgusted, fearful, happy,
neutral, other, sad, surprised, unknown.  Five of them are ESD's emotions
(angry->Angry, happy->Happy, neutral->Neutral, sad->Sad, surprised->Surprise);
disgusted, fearful, other and unknown have no ESD counterpart and are dropped.
The five kept probabilities are renormalized to sum to 1, i.e. the result is
P(emotion | the clip is one of ESD's five), which is what a five-way SER
accuracy needs.  A row whose five kept probabilities are all zero (the model
is certain of a dropped class) becomes uniform, 0.2 each, so it can never
count as a correct prediction by accident.

Utterance embedding.  The mean over emotion2vec's 50 Hz frame features
(granularity="frame"), the representation both papers' Emo-SIM uses.

Loading.  Nothing of the folder but data reaches funasr: :func:`~emoctl.metrics.emotion2vec_folder.read_folder`
reads config.yaml, tokens.txt and configuration.json as data and refuses any key that asks for code or names
another file, :func:`~emoctl.metrics.emotion2vec_folder.read_weights` reads model.pt weights-only, and this
class builds funasr's own ``Emotion2vec`` module from the checked ``model_conf`` and loads those weights itself
(every parameter must be in model.pt at its shape: funasr would only warn and run with random weights).
funasr's ``AutoModel`` is never called: it imports ``remote_code`` files and follows the paths of
``configuration.json``.  Inference is funasr's own ``Emotion2vec.inference``, so the scores are the ones
``AutoModel(...).generate`` gives on the same folder.
"""
from __future__ import annotations

import importlib.util
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from emoctl.errors import ConfigError
from emoctl.metrics.audio import prepare_clips
from emoctl.metrics.ser import ESD_EMOTIONS, EmotionRecognizer, SERResult
from emoctl.metrics.emotion2vec_folder import read_folder, read_weights

__all__ = ["EMOTION2VEC_CLASSES", "EMOTION2VEC_TO_ESD", "Emotion2Vec", "map_to_esd"]

EMOTION2VEC_CLASSES: tuple[str, ...] = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad",
                                        "surprised", "unknown")
"""emotion2vec's 9 classes, in its output order."""

EMOTION2VEC_TO_ESD: dict[str, str] = {"angry": "Angry", "happy": "Happy", "neutral": "Neutral", "sad": "Sad",
                                      "surprised": "Surprise"}
"""The emotion2vec classes that have an ESD counterpart; the other four are dropped."""


def map_to_esd(probs: torch.Tensor, classes: Sequence[str] = EMOTION2VEC_CLASSES) -> torch.Tensor:
    """(N, 9) emotion2vec probabilities -> (N, 5) over :data:`ESD_EMOTIONS`, renormalized over the mapped classes.

    ``classes`` names the columns of ``probs`` (emotion2vec labels, optionally
    with funasr's Chinese prefix, e.g. "生气/angry").
    """
    names = [c.rsplit("/", 1)[-1].strip().lower() for c in classes]
    if probs.ndim != 2 or probs.shape[1] != len(names):
        raise ConfigError(f"map_to_esd: expected probabilities of shape (N, {len(names)}), got {tuple(probs.shape)}.")
    missing = [c for c in EMOTION2VEC_TO_ESD if c not in names]
    if missing:
        raise ConfigError(f"map_to_esd: the recognizer's classes {names} lack {missing}; is this an emotion2vec "
                          f"9-class model (plus_large, plus_base, base_finetuned)?")
    columns = [names.index(source) for target in ESD_EMOTIONS
               for source, mapped in EMOTION2VEC_TO_ESD.items() if mapped == target]
    kept = probs[:, columns].clamp_min(0).double()  # (N, 5) in ESD order
    total = kept.sum(dim=1, keepdim=True)  # (N, 1)
    uniform = torch.full_like(kept, 1.0 / len(ESD_EMOTIONS))
    return torch.where(total > 0, kept / total.clamp_min(1e-300), uniform).float()


class Emotion2Vec(EmotionRecognizer):
    """emotion2vec through funasr from a local model folder; probabilities over ESD's five emotions."""

    sample_rate = 16000

    def __init__(self, model_dir: str | Path, *, device: str = "cpu") -> None:

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ConfigError(f"emotion2vec model folder {self.model_dir} does not exist. Copy a local "
                              f"emotion2vec_plus_large (or plus_base) folder there (config.yaml, model.pt, "
                              f"tokens.txt); emoctl never downloads models.")
        if importlib.util.find_spec("funasr") is None:
            raise ConfigError(f"Emotion2Vec({self.model_dir}) builds the model with funasr's Emotion2vec class, "
                              f"and funasr is not installed: `pip install funasr==1.4.16` (`make install` does it).")
        self.folder = read_folder(self.model_dir)
        self._state = read_weights(self.folder.weights)  # memory-mapped: cheap until the model is built
        self.device = device
        self.name = self.model_dir.name

    @cached_property
    def model(self) -> torch.nn.Module:
        """funasr's Emotion2vec module, built from the checked model_conf, with model.pt's weights."""
        from funasr.models.emotion2vec.model import Emotion2vec

        module = Emotion2vec(model_conf=self.folder.model_conf, vocab_size=len(self.folder.labels))
        self._load_weights(module)
        return module.to(self.device).eval()

    @cached_property
    def tokenizer(self) -> Any:
        """funasr's CharTokenizer over tokens.txt's labels (inference reads its token_list as the class names)."""
        from funasr.tokenizer.char_tokenizer import CharTokenizer

        return CharTokenizer(token_list=list(self.folder.labels), unk_symbol=self.folder.unk_symbol,
                             split_with_space=self.folder.split_with_space)

    def _load_weights(self, module: torch.nn.Module) -> None:
        """Every parameter of the module from model.pt at its shape, or a ConfigError naming what does not fit."""
        state, path = self._state, self.folder.weights
        expected = module.state_dict()
        missing = [k for k in expected if k not in state]
        unfit = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unfit:
            raise ConfigError(f"{path} does not fit the model config.yaml describes: {len(missing)} parameter(s) "
                              f"missing (e.g. {missing[:3]}), {len(unfit)} of another shape (e.g. "
                              f"{unfit[:3]}); funasr would run them with random weights. Use the config.yaml "
                              "released with this model.pt.")
        module.load_state_dict({k: state[k] for k in expected}, strict=True)
        self._state = {}  # the parameters hold the weights now

    @torch.no_grad()
    def _recognize(self, clip: np.ndarray) -> dict[str, Any]:
        """funasr's result for one validated 16 kHz clip: labels, nine scores and the (T, D) frame features."""
        results, _ = self.model.inference([clip], key=["clip"], tokenizer=self.tokenizer, frontend=None,
                                          device=self.device, fs=self.sample_rate, granularity="frame",
                                          extract_embedding=True)
        return results[0]

    def frame_features(self, wave: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(frames at 50 Hz, D) features of one clip, the frames the utterance embedding averages."""
        clip = prepare_clips([wave], sample_rate, target_rate=self.sample_rate)[0]
        return torch.as_tensor(np.asarray(self._recognize(clip)["feats"], dtype=np.float32))

    @torch.no_grad()
    def __call__(self, waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int | Sequence[int]) -> SERResult:
        clips = prepare_clips(waves, sample_rate, target_rate=self.sample_rate)
        probs, embeddings, classes = [], [], None
        for clip in clips:
            result = self._recognize(clip)
            classes = classes or list(result["labels"])
            probs.append(torch.as_tensor(np.asarray(result["scores"], dtype=np.float32)))  # (9,)
            feats = torch.as_tensor(np.asarray(result["feats"], dtype=np.float32))  # (T, D)
            embeddings.append(feats.mean(dim=0) if feats.ndim == 2 else feats)
        return SERResult(probs=map_to_esd(torch.stack(probs), classes), embeddings=torch.stack(embeddings),
                         labels=ESD_EMOTIONS)
