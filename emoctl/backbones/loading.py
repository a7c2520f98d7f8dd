"""The one place a backbone is named and loaded: a registry of kinds, ``load_backbone`` and ``BackboneSpec``.

Recipes, reports, tools and training modules name a backbone as
``{kind, path, device}`` (:class:`BackboneSpec`) rather than by class path,
because every backbone needs its own checkpoint folder and an error that says
which files belong in it.  A backbone family joins by registering a loader::

    register_backbone("my_tts", load_my_tts, files=("config.yaml", "model.pt"),
                      description="MyTTS (github me/my-tts)")

after which ``load_backbone("my_tts", "/models/my-tts")``, every recipe's
``backbone: {kind: my_tts, path: ...}`` and every report accept it.  The
embedded mini TTS, IndexTTS2 and CosyVoice-300M-Instruct load today.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from emoctl.backbones.base import Backbone
from emoctl.errors import ConfigError
from emoctl.backbones.cosyvoice2 import load_cosyvoice2
from emoctl.backbones.cosyvoice_instruct import load_cosyvoice
from emoctl.backbones.indextts2.backbone import load_indextts2
from emoctl.backbones.mini_tts import MiniTTS

DEFAULT_MINI_TTS_DIR = Path(__file__).resolve().parents[1] / "assets" / "mini_tts"
"""Where the trained mini TTS checkpoint is committed (``MiniTTS.save`` layout)."""

Loader = Callable[..., Backbone]
"""``loader(path, device, **options)``: a frozen backbone in eval mode; path None means the kind's default, if
any; ``options`` are the kind's own settings (``BackboneSpec.options``), refused by name where unknown."""


@dataclass(frozen=True)
class BackboneEntry:
    """What the registry knows of a backbone family."""

    description: str
    files: tuple[str, ...]
    loader: Loader | None  # None: announced, not part of emoctl yet


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(kind: str, loader: Loader | None, *, files: tuple[str, ...], description: str) -> None:
    """Make ``kind`` loadable everywhere a backbone is named (replaces an earlier entry of that kind)."""
    _REGISTRY[kind] = BackboneEntry(description, tuple(files), loader)


def backbone_kinds() -> list[str]:
    return list(_REGISTRY)


@dataclass
class BackboneSpec:
    """Which TTS backbone to load, as a recipe names it."""

    kind: str = "mini_tts"
    """Backbone family: mini_tts (embedded), indextts2, cosyvoice, or a registered kind."""
    path: str | None = None
    """Checkpoint folder; None means the committed default (emoctl/assets/mini_tts for mini_tts)."""
    device: str = "cpu"
    """Device the backbone is loaded onto (a Lightning trainer moves it to its own device anyway)."""
    options: dict[str, Any] | None = None
    """The kind's own settings (cosyvoice: ``instructions``, the instruct text per corpus emotion)."""

    def load(self) -> Backbone:
        return load_backbone(self.kind, self.path, self.device, **(self.options or {}))


# Training modules keep a BackboneSpec in their hyperparameters; resuming loads checkpoints with
# torch.load(weights_only=True), which refuses classes it was not told are safe.
torch.serialization.add_safe_globals([BackboneSpec])


def load_backbone(kind: str = "mini_tts", path: str | None = None, device: str | torch.device = "cpu",
                  **options: Any) -> Backbone:
    """A frozen backbone in eval mode on ``device``, ready for ``generate`` and hooks; ``options`` go to the
    kind's loader (see :class:`BackboneSpec`)."""
    entry = _REGISTRY.get(kind)
    if entry is None:
        raise ConfigError(f"unknown backbone kind {kind!r}; choose one of: {', '.join(_REGISTRY)}.")
    if entry.loader is None:
        raise ConfigError(
            f"backbone kind {kind!r}: the {entry.description} adapter is not part of emoctl yet (it comes in a later "
            f"release); its checkpoint folder will need {', '.join(entry.files)}. Use kind: mini_tts for now."
        )
    backbone = entry.loader(None if path is None else str(path), torch.device(device), **options)
    return backbone.to(device).eval().requires_grad_(False)


def refuse_options(kind: str, options: dict[str, Any], known: tuple[str, ...] = ()) -> None:
    """A loader's check that every backbone option is one it reads (none are ignored silently)."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"it takes {', '.join(known)}" if known else "it takes none"
        raise ConfigError(f"backbone.options {unknown} mean nothing to the {kind} backbone; {takes}.")


def _load_mini_tts(path: str | None, device: torch.device, **options: Any) -> Backbone:

    refuse_options("mini_tts", options)
    folder = Path(path) if path is not None else DEFAULT_MINI_TTS_DIR
    if path is None and not (folder / "config.json").is_file():
        raise ConfigError(
            f"the default mini TTS checkpoint {folder} is missing (it is committed once trained). Train it with "
            "`emoctl fit --config recipes/mini_tts.yaml` and copy its export (runs/mini_tts/<version>/mini_tts) "
            "there, or set backbone.path to a MiniTTS checkpoint folder."
        )
    return MiniTTS.load(folder, device=device)


register_backbone("mini_tts", _load_mini_tts, files=("config.json", "model.safetensors", "codec/"),
                  description="embedded mini TTS (emoctl/assets/mini_tts)")


def _load_indextts2(path: str | None, device: torch.device, **options: Any) -> Backbone:

    refuse_options("indextts2", options)
    return load_indextts2(path, device)


register_backbone("indextts2", _load_indextts2, description="IndexTTS2 (github index-tts/index-tts)",
                  files=("config.yaml", "bpe.model", "gpt.pth", "s2mel.pth", "wav2vec2bert_stats.pt", "feat1.pt",
                         "feat2.pt", "hf_cache/"))
def _load_cosyvoice(path: str | None, device: torch.device, **options: Any) -> Backbone:

    refuse_options("cosyvoice", options, ("instructions",))
    return load_cosyvoice(path, device, **options)


register_backbone("cosyvoice", _load_cosyvoice, description="CosyVoice-300M-Instruct (github FunAudioLLM/CosyVoice)",
                  files=("cosyvoice.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx",
                         "speech_tokenizer_v1.onnx", "spk2info.pt"))


def _load_cosyvoice2(path: str | None, device: torch.device, **options: Any) -> Backbone:

    refuse_options("cosyvoice2", options, ("instructions",))
    return load_cosyvoice2(path, device, **options)


register_backbone("cosyvoice2", _load_cosyvoice2, description="CosyVoice2-0.5B (github FunAudioLLM/CosyVoice)",
                  files=("cosyvoice2.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx",
                         "speech_tokenizer_v2.onnx", "CosyVoice-BlankEN/"))
