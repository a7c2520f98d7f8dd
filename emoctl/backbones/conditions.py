"""What a prompt asks of a backbone besides its text: a voice and an emotion condition, as data.

Real LLM-TTS systems are conditioned in different ways.  The mini TTS and ESD
know speakers and emotions by name; IndexTTS2 clones a voice from a reference
clip and takes its emotion from another clip or from an 8-dimensional emotion
vector with a weight; CosyVoice-300M-Instruct voices ``spk2info`` ids and
reads free instruct text.  Each kind is one small frozen dataclass here, and a
backbone declares which kinds it accepts (``Backbone.voice_kinds`` and
``Backbone.emotion_kinds``); :func:`check_condition` refuses the rest by name.

Every condition has a ``key``: a short, stable string that reports, caches and
pairing use to tell conditions apart (``"Angry"``, ``"vector[0,0.8,0,0,0,0,0,0]*0.6"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterable, Union

from emoctl.errors import ConfigError


# ----------------------------------------------------------------- voices
@dataclass(frozen=True)
class VoiceName:
    """A voice the backbone knows by name (an ESD speaker id, a CosyVoice ``spk2info`` id)."""

    name: str
    kind: ClassVar[str] = "voice_name"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"VoiceName needs a non-empty string, got {self.name!r}.")

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class VoiceClip:
    """A reference recording whose voice the backbone clones (IndexTTS2's ``spk_audio_prompt``).

    ``speaker`` names the corpus speaker the clip stands for (ESD's ``0011``), when it does: stores and reports
    then file the utterance under that speaker rather than under the clip's file name."""

    path: str
    speaker: str | None = None
    kind: ClassVar[str] = "voice_clip"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        if not self.path:
            raise ConfigError("VoiceClip needs the path of a reference recording, got an empty string.")

    @property
    def key(self) -> str:
        return f"clip:{Path(self.path).name}"


Voice = Union[VoiceName, VoiceClip]


# ------------------------------------------------------- emotion conditions
@dataclass(frozen=True)
class EmotionLabel:
    """An emotion the backbone knows by name (ESD's Neutral, Angry, Happy, Sad, Surprise for the mini TTS)."""

    name: str
    kind: ClassVar[str] = "label"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"EmotionLabel needs a non-empty string, got {self.name!r}.")

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class EmotionVector:
    """Mixture weights over the backbone's emotion axes, scaled by ``weight`` (IndexTTS2's ``emo_vector``)."""

    values: tuple[float, ...]
    weight: float = 1.0
    kind: ClassVar[str] = "vector"

    def __post_init__(self) -> None:
        values = tuple(float(v) for v in self.values)
        if not values or not all(math.isfinite(v) for v in values) or not math.isfinite(float(self.weight)):
            raise ConfigError(f"EmotionVector needs a non-empty list of finite numbers and a finite weight, got "
                              f"values={list(self.values)} weight={self.weight}.")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "weight", float(self.weight))

    @property
    def key(self) -> str:
        return "vector[" + ",".join(f"{v:g}" for v in self.values) + f"]*{self.weight:g}"


@dataclass(frozen=True)
class EmotionClip:
    """A recording whose emotion the backbone imitates, scaled by ``weight`` (IndexTTS2's ``emo_audio_prompt``)."""

    path: str
    weight: float = 1.0
    kind: ClassVar[str] = "clip"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        if not self.path or not math.isfinite(float(self.weight)):
            raise ConfigError(f"EmotionClip needs a path and a finite weight, got {self.path!r}, {self.weight}.")

    @property
    def key(self) -> str:
        return f"clip:{Path(self.path).name}*{self.weight:g}"


@dataclass(frozen=True)
class InstructText:
    """A free-text instruction (CosyVoice-Instruct's ``instruct_text``: "speak angrily, with a raised voice")."""

    text: str
    kind: ClassVar[str] = "instruct"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ConfigError(f"InstructText needs a non-empty instruction, got {self.text!r}.")

    @property
    def key(self) -> str:
        return f"instruct:{self.text}"


EmotionCondition = Union[EmotionLabel, EmotionVector, EmotionClip, InstructText]

VOICE_KINDS: dict[str, type] = {c.kind: c for c in (VoiceName, VoiceClip)}
EMOTION_KINDS: dict[str, type] = {c.kind: c for c in (EmotionLabel, EmotionVector, EmotionClip, InstructText)}


def as_voice(value: Voice | str) -> Voice:
    """A plain string names a voice (the mini TTS's and ESD's habit); condition objects pass through."""
    if isinstance(value, (VoiceName, VoiceClip)):
        return value
    if isinstance(value, str):
        return VoiceName(value)
    raise ConfigError(f"a prompt's voice must be a name (str), VoiceName or VoiceClip, got {type(value).__name__} "
                      f"{value!r}.")


def as_emotion(value: EmotionCondition | str) -> EmotionCondition:
    """A plain string is an emotion label; condition objects pass through."""
    if isinstance(value, (EmotionLabel, EmotionVector, EmotionClip, InstructText)):
        return value
    if isinstance(value, str):
        return EmotionLabel(value)
    raise ConfigError(f"a prompt's emotion must be a label (str), EmotionLabel, EmotionVector, EmotionClip or "
                      f"InstructText, got {type(value).__name__} {value!r}.")


def check_condition(condition: Voice | EmotionCondition, accepted: Iterable[str], backbone: str,
                    where: str = "") -> None:
    """Refuse a condition kind the backbone does not take, saying which kinds it does take."""
    accepted = tuple(accepted)
    if condition.kind in accepted:
        return
    what = "voice" if condition.kind in VOICE_KINDS else "emotion condition"
    names = {**{k: c.__name__ for k, c in VOICE_KINDS.items()}, **{k: c.__name__ for k, c in EMOTION_KINDS.items()}}
    raise ConfigError(f"{backbone} does not accept a {type(condition).__name__} {what}{where} ({condition.key!r}); "
                      f"it accepts {', '.join(names[k] for k in accepted) or 'none'}. Give the prompt one of those.")
