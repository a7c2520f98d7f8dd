"""Choosing a backbone by name: ``load_backbone(kind, path, device)`` and its recipe form ``BackboneSpec``.

Recipes name a backbone as ``{kind, path, device}`` rather than by class path
because every backbone needs its own checkpoint folder and an error that says
which files belong in it.  The embedded mini TTS loads today; the IndexTTS2 and
CosyVoice adapters are announced with the checkpoint files they will read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from emoctl.backbones.base import Backbone
from emoctl.errors import ConfigError

DEFAULT_MINI_TTS_DIR = Path(__file__).resolve().parents[1] / "assets" / "mini_tts"
"""Where the trained mini TTS checkpoint is committed (``MiniTTS.save`` layout)."""

BackboneKind = Literal["mini_tts", "indextts2", "cosyvoice"]

# Files the adapters to come will read, from the upstream repositories (see REFERENCE.md).
_PLANNED: dict[str, tuple[str, tuple[str, ...]]] = {
    "indextts2": ("IndexTTS2 (github index-tts/index-tts)",
                  ("config.yaml", "bpe.model", "gpt.pth", "s2mel.pth", "wav2vec2bert_stats.pt", "feat1.pt",
                   "feat2.pt", "qwen0.6bemo4-merge/")),
    "cosyvoice": ("CosyVoice-300M-Instruct (github FunAudioLLM/CosyVoice)",
                  ("cosyvoice.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v1.onnx",
                   "spk2info.pt")),
}


@dataclass
class BackboneSpec:
    """Which TTS backbone to load, as a recipe names it."""

    kind: BackboneKind = "mini_tts"
    """Backbone family: mini_tts (embedded), indextts2 or cosyvoice (adapters to come)."""
    path: str | None = None
    """Checkpoint folder; None means the committed default (emoctl/assets/mini_tts for mini_tts)."""
    device: str = "cpu"
    """Device the backbone is loaded onto (a Lightning trainer moves it to its own device anyway)."""

    def load(self) -> Backbone:
        return load_backbone(self.kind, self.path, self.device)


def load_backbone(kind: str = "mini_tts", path: str | None = None, device: str | torch.device = "cpu") -> Backbone:
    """A frozen backbone in eval mode, ready for ``generate`` and hooks."""
    if kind == "mini_tts":
        return _load_mini_tts(path, device)
    if kind in _PLANNED:
        name, files = _PLANNED[kind]
        raise ConfigError(
            f"backbone kind {kind!r}: the {name} adapter is not part of emoctl yet (it comes in a later release); "
            f"its checkpoint folder will need {', '.join(files)}. Use kind: mini_tts for now."
        )
    raise ConfigError(f"unknown backbone kind {kind!r}; choose one of: mini_tts, {', '.join(_PLANNED)}.")


def _load_mini_tts(path: str | None, device: str | torch.device) -> Backbone:
    from emoctl.backbones.mini_tts import MiniTTS

    folder = Path(path) if path is not None else DEFAULT_MINI_TTS_DIR
    if path is None and not (folder / "config.json").is_file():
        raise ConfigError(
            f"the default mini TTS checkpoint {folder} is missing (it is committed once trained). Train it with "
            "`emoctl fit --config recipes/mini_tts.yaml` and copy its export (runs/mini_tts/<version>/mini_tts) "
            "there, or set backbone.path to a MiniTTS checkpoint folder."
        )
    return MiniTTS.load(folder, device=device)
