"""Where EmoShift and SFT get their backbone from: one function, so the integrator can swap it.

``emoctl/backbones/loading.py::load_backbone(kind, path)`` is being written
elsewhere; until it lands this is the single place that knows how to turn a
recipe's ``backbone_kind`` and ``backbone_path`` into a :class:`Backbone`.
"""
from __future__ import annotations

from emoctl.backbones.base import Backbone
from emoctl.errors import ConfigError

KINDS = ("mini_tts",)


def load_backbone(kind: str, path: str) -> Backbone:
    """The backbone of ``kind`` saved at ``path``, on CPU, frozen, in eval mode."""
    if kind == "mini_tts":
        from emoctl.backbones.mini_tts import MiniTTS

        return MiniTTS.load(path)
    raise ConfigError(f"model.backbone_kind={kind!r} has no loader yet; available: {', '.join(KINDS)}. "
                      "(The CosyVoice and IndexTTS2 adapters come with emoctl.backbones.loading.)")
