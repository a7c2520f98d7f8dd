"""emotion2vec (plus_large, plus_base, base_finetuned) as an :class:`EmotionRecognizer`, from a local folder.

The model loads through funasr ``AutoModel(model=local_dir, disable_update=True)``
and is never downloaded: the folder (``config.yaml``, ``model.pt``, ``tokens.txt``)
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

Loading.  The folder is checked before funasr reads it (:func:`~emoctl.metrics.emotion2vec_folder.check_folder`:
files, an Emotion2vec config, a feature-encoder spec funasr may evaluate safely), funasr is told the caller's
thread count (it would set 4 for the whole process), and the loaded weights are compared with ``model.pt``
key by key: funasr only warns about missing or mis-shaped keys and would run with random weights.
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
        from emoctl.metrics.emotion2vec_folder import check_folder

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ConfigError(f"emotion2vec model folder {self.model_dir} does not exist. Copy a local "
                              f"emotion2vec_plus_large (or plus_base) folder there (config.yaml, model.pt, "
                              f"tokens.txt); emoctl never downloads models.")
        if importlib.util.find_spec("funasr") is None:
            raise ConfigError(f"Emotion2Vec({self.model_dir}) loads the model through funasr, which is not "
                              f"installed: `pip install funasr==1.4.16` (`make install` does it).")
        check_folder(self.model_dir)
        self.device = device
        self.name = self.model_dir.name

    @cached_property
    def model(self) -> Any:
        from funasr import AutoModel

        threads = torch.get_num_threads()
        model = AutoModel(model=str(self.model_dir), disable_update=True, device=self.device, ncpu=threads)
        torch.set_num_threads(threads)
        self._check_weights(model.model)
        return model

    def _check_weights(self, module: torch.nn.Module) -> None:
        """Every tensor of model.pt loaded into its parameter, and no parameter left at its random init."""
        path = self.model_dir / "model.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # damaged file
            raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
        state = state["model"] if isinstance(state, dict) and "model" in state else state
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        loaded = module.state_dict()
        missing = [k for k in loaded if k not in state]
        unfit = [k for k in loaded if k in state and (state[k].shape != loaded[k].shape or
                                                       not torch.equal(state[k].to(loaded[k]), loaded[k]))]
        if missing or unfit:
            raise ConfigError(f"{path} does not fit the model config.yaml describes: {len(missing)} parameter(s) "
                              f"missing (e.g. {missing[:3]}), {len(unfit)} of another shape or not loaded (e.g. "
                              f"{unfit[:3]}); funasr would run them with random weights. Use the config.yaml "
                              "released with this model.pt.")

    def frame_features(self, wave: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(frames at 50 Hz, D) features of one clip, the frames the utterance embedding averages."""
        clip = prepare_clips([wave], sample_rate, target_rate=self.sample_rate)[0]
        result = self.model.generate(clip, fs=self.sample_rate, granularity="frame", extract_embedding=True,
                                     disable_pbar=True)[0]
        return torch.as_tensor(np.asarray(result["feats"], dtype=np.float32))

    @torch.no_grad()
    def __call__(self, waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int | Sequence[int]) -> SERResult:
        clips = prepare_clips(waves, sample_rate, target_rate=self.sample_rate)
        probs, embeddings, classes = [], [], None
        for clip in clips:
            result = self.model.generate(clip, fs=self.sample_rate, granularity="frame", extract_embedding=True,
                                         disable_pbar=True)[0]
            classes = classes or list(result["labels"])
            probs.append(torch.as_tensor(np.asarray(result["scores"], dtype=np.float32)))  # (9,)
            feats = torch.as_tensor(np.asarray(result["feats"], dtype=np.float32))  # (T, D) or (D,)
            embeddings.append(feats.mean(dim=0) if feats.ndim == 2 else feats)
        return SERResult(probs=map_to_esd(torch.stack(probs), classes), embeddings=torch.stack(embeddings),
                         labels=ESD_EMOTIONS)
