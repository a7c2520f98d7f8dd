"""The contract every TTS backbone implements.

emoctl's methods touch a backbone in a few places only:

* **hookpoints**, read for harvest and written for steering, through
  :attr:`Backbone.hooks`; every forward declares its phase (prefill, decode,
  teacher-forced) and, under beams, how many hooked rows belong to a prompt;
* **generate**: batched autoregressive speech tokens under one
  :class:`~emoctl.backbones.sampling.Sampling`, returning for every utterance
  the hooked-batch row that carried each of its decode steps
  (:attr:`Generation.decode_rows`), so a recorder stores exactly the states of
  the hypothesis that was returned, with beams or without;
* **teacher_forced**: one forward over prompts plus target tokens, giving
  speech-token logits (to train steering layers such as EmoShift);
* **encode_speech** and **vocode**: the backbone's own speech tokenizer and
  its vocoder, which gets the whole prompt (real vocoders need the reference
  clip or a speaker embedding, not a name).

A prompt's voice and emotion condition are data
(:mod:`emoctl.backbones.conditions`); each backbone declares the kinds it
accepts and :meth:`Backbone.check_prompts` refuses the rest with an error.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

from emoctl.backbones.conditions import (EmotionCondition, EmotionLabel, Voice, VoiceName, as_emotion, as_voice,
                                         check_condition)
from emoctl.backbones.hooks import HookManager
from emoctl.backbones.sampling import Sampling
from emoctl.errors import ConfigError


@runtime_checkable
class SpeechTokenizer(Protocol):
    """Audio to a backbone's speech tokens (the mini TTS's WORLD codec, CosyVoice's ONNX tokenizer, IndexTTS2's
    semantic codec), picklable so corpora tokenize in worker processes."""

    @property
    def digest(self) -> str:
        """Changes whenever the tokens would: token caches are keyed by it."""

    def encode(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        """(T,) int64 tokens of one mono recording."""


@dataclass(frozen=True)
class Prompt:
    """One utterance to synthesize: what to say, in which voice, under which emotion condition.

    ``voice`` and ``emotion`` take condition objects; a plain string is a name
    (``Prompt("Kids are talking.", "0011", "Angry")`` is a VoiceName and an EmotionLabel).
    """

    text: str
    voice: Voice
    emotion: EmotionCondition
    utt_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "voice", as_voice(self.voice))
        object.__setattr__(self, "emotion", as_emotion(self.emotion))

    @property
    def speaker(self) -> str:
        """What stores and reports label a row with: the voice's name, the corpus speaker a reference clip
        stands for, or else ``clip:<file name>``."""
        return getattr(self.voice, "speaker", None) or self.voice.key

    @property
    def emotion_key(self) -> str:
        """The emotion condition's key: its label, or a description of the vector, clip or instruction."""
        return self.emotion.key

    @property
    def emotion_label(self) -> str:
        """The emotion label; a ConfigError where the condition is not a label (vector, clip, instruct)."""
        if not isinstance(self.emotion, EmotionLabel):
            raise ConfigError(f"prompt {self.utt_id or self.text[:30]!r} is conditioned by {self.emotion.key!r}, "
                              "not by an emotion label, and this step needs a label.")
        return self.emotion.name

    def with_emotion(self, emotion: EmotionCondition | str, utt_id: str | None = None) -> Prompt:
        """The same text and voice under another emotion condition."""
        return Prompt(self.text, self.voice, emotion, self.utt_id if utt_id is None else utt_id)


@dataclass
class Generation:
    """Speech tokens generated for a batch of prompts, one 1-D tensor per prompt (stop token removed)."""

    tokens: list[torch.Tensor]
    prefill_lengths: list[int]  # prompt positions per utterance (the prefill phase)
    finished: list[bool] = field(default_factory=list)  # False where max_new_tokens cut it short
    decode_rows: list[torch.Tensor] = field(default_factory=list)
    """Per utterance, (n,) int64: the row of the hooked decode batch (B x beams rows) that ran each of its
    decode steps 0..n-1, following the returned hypothesis's beam ancestry.  n is the number of its tokens
    that were fed back: len(tokens) when it finished, one fewer when max_new_tokens cut it short."""
    beams: int = 1
    """Hooked rows per prompt (num_beams); prefill row of utterance b is b * beams."""
    decode_steps: list[torch.Tensor] = field(default_factory=list)
    """Per utterance, (n,) int64: the decode step that fed each of those tokens, where a loop runs steps that
    feed no new token (CosyVoice2 feeds its previous input again after an id it drops).  Empty: step i fed
    token i."""


def lockstep_decode_rows(lengths: Sequence[int], finished: Sequence[bool]) -> list[torch.Tensor]:
    """``Generation.decode_rows`` of a loop without beams, in which row b runs every step of utterance b."""
    return [torch.full((n if done else max(n - 1, 0),), b, dtype=torch.long)
            for b, (n, done) in enumerate(zip(lengths, finished))]


@dataclass
class TeacherForcedOutput:
    """Logits over the speech-token vocabulary at every target position, and the targets they predict."""

    logits: torch.Tensor  # (B, T, V)
    targets: torch.Tensor  # (B, T) int64; -100 where there is nothing to predict (padding)

    def loss(self) -> torch.Tensor:
        """Token-averaged cross-entropy, the training loss of the steering papers."""
        return nn.functional.cross_entropy(self.logits.flatten(0, 1).float(), self.targets.flatten(),
                                           ignore_index=-100)


class Backbone(nn.Module, ABC):
    """A frozen LLM-TTS seen through emoctl's touch points."""

    #: Family name used in errors and manifests ("mini_tts", "indextts2", "cosyvoice").
    kind: ClassVar[str] = "backbone"
    #: Condition kinds a prompt may carry (see emoctl.backbones.conditions).
    voice_kinds: ClassVar[tuple[str, ...]] = (VoiceName.kind,)
    emotion_kinds: ClassVar[tuple[str, ...]] = (EmotionLabel.kind,)
    #: How a corpus speaker (ESD's 0011) is voiced in reports and corpus-driven jobs: by name (the mini TTS
    #: knows ESD's speakers) or by a reference clip of the speaker (IndexTTS2, CosyVoice).
    corpus_voice_kind: ClassVar[str] = VoiceName.kind
    #: Sampling settings ``generate`` implements beyond max_new_tokens and seed.
    sampling_settings: ClassVar[tuple[str, ...]] = ("temperature",)

    hidden_size: int
    num_layers: int
    vocab_size: int
    sample_rate: int
    token_rate: float
    """Speech tokens per second of audio: decode step t speaks from t / token_rate s, so a schedule written in
    seconds (emoctl.steering.schedules) maps to decode steps by it."""
    hooks: HookManager

    @property
    def hookpoints(self) -> list[str]:
        """``resid_pre.0`` … ``resid_pre.{num_layers-1}`` (input of block L, counted from 0), ``attn_out.0`` …
        ``attn_out.{num_layers-1}`` (what block L's attention adds to the residual, before the add) and
        ``lm_out`` (the input of the speech-token head)."""
        return self.hooks.hookpoints

    @property
    @abstractmethod
    def backbone_id(self) -> str:
        """Name plus checkpoint digest, written into store manifests and reports.  Must be cheap: digest the
        checkpoint files once at load, never the weights on every read."""

    @property
    def speakers(self) -> list[str]:
        """Voice names this backbone knows (empty when it only clones reference clips)."""
        return []

    @property
    def emotions(self) -> list[str]:
        """Emotion labels it knows (empty when it takes no labels)."""
        return []

    @property
    def neutral_emotion(self) -> EmotionCondition | None:
        """The condition that asks for no emotion, the twin of every emotional prompt in a harvest."""
        return None

    # ----------------------------------------------------------- conditions
    def condition_for(self, emotion: str) -> EmotionCondition:
        """How this backbone is asked for one of the corpus's emotions (ESD's names: Neutral, Angry, ...).

        Reports and the prompt grid name emotions as the corpus does and ask the backbone for the condition.
        A backbone conditioned by labels takes the name as it is; an adapter conditioned by emotion vectors,
        reference clips or instruct text overrides this with its own mapping.
        """
        if EmotionLabel.kind in self.emotion_kinds and (not self.emotions or emotion in self.emotions):
            return EmotionLabel(emotion)
        known = f" (it knows {', '.join(self.emotions)})" if self.emotions else ""
        raise ConfigError(f"the {self.kind} backbone has no condition for emotion {emotion!r}{known}; it takes "
                          f"{', '.join(self.emotion_kinds)} conditions, and its adapter maps corpus emotions to "
                          "them in condition_for().")

    def check_prompts(self, prompts: Sequence[Prompt]) -> None:
        """Refuse an empty batch, a condition kind this backbone does not take, or an unknown name."""
        if not prompts:
            raise ConfigError("no prompts given: pass at least one Prompt(text, voice, emotion).")
        for prompt in prompts:
            if not isinstance(prompt, Prompt):
                raise ConfigError(f"expected Prompt objects, got {type(prompt).__name__} {prompt!r}; build one as "
                                  "Prompt(text, voice, emotion) (vocode takes the utterance's Prompt, not a name).")
            where = f" in utterance {prompt.utt_id}" if prompt.utt_id else ""
            check_condition(prompt.voice, self.voice_kinds, self.kind, where)
            check_condition(prompt.emotion, self.emotion_kinds, self.kind, where)
            if isinstance(prompt.voice, VoiceName) and self.speakers and prompt.voice.name not in self.speakers:
                raise ConfigError(f"unknown speaker {prompt.voice.name!r}{where}; this model voices: "
                                  f"{', '.join(self.speakers)}.")
            if isinstance(prompt.emotion, EmotionLabel) and self.emotions and prompt.emotion.name not in self.emotions:
                raise ConfigError(f"unknown emotion {prompt.emotion.name!r}{where}; this model knows: "
                                  f"{', '.join(self.emotions)}.")

    def sampling(self, sampling: Sampling | None = None, **overrides: object) -> Sampling:
        """``sampling`` (default ``Sampling()``) with ``overrides`` applied, checked against this backbone."""
        base = sampling if sampling is not None else Sampling()
        try:
            chosen = dataclasses.replace(base, **overrides) if overrides else base
        except TypeError as err:
            names = ", ".join(f.name for f in dataclasses.fields(Sampling))
            raise ConfigError(f"{err}; sampling settings are {names}.") from None
        chosen.check(self.sampling_settings, self.kind)
        return chosen

    def speech_token_cap(self, max_new_tokens: int) -> int:
        """Most speech tokens ``generate`` makes under ``max_new_tokens``: that, or a smaller position table's
        length.  A schedule's times past it would never be reached, so they are refused against it."""
        return int(max_new_tokens)

    # -------------------------------------------------------------- actions
    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling | None = None, **overrides: object
                 ) -> Generation:
        """Speech tokens for a batch, declaring each forward's phase (and beams) to :attr:`hooks`.

        ``overrides`` are Sampling fields (``generate(p, temperature=0, max_new_tokens=25)``)."""

    @abstractmethod
    def teacher_forced(self, prompts: Sequence[Prompt], targets: Sequence[torch.Tensor]) -> TeacherForcedOutput:
        """One forward pass over prompts plus target tokens (phase ``teacher_forced``)."""

    def teacher_forced_nll(self, prompts: Sequence[Prompt], speech: torch.Tensor, lengths: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position NLL (B, T') and its validity mask of ``speech[b, :lengths[b]]`` then stop.

        The generic path builds the full logits; a backbone with a cheaper exact form overrides it."""
        targets = [speech[b, :int(lengths[b])] for b in range(speech.shape[0])]
        out = self.teacher_forced(prompts, targets)
        nll = nn.functional.cross_entropy(out.logits.float().transpose(1, 2), out.targets, ignore_index=-100,
                                          reduction="none")
        return nll, out.targets != -100

    @property
    @abstractmethod
    def speech_tokenizer(self) -> SpeechTokenizer | None:
        """The tokenizer whose tokens this backbone speaks (None when this instance has none).

        A separate, picklable object: data modules tokenize corpora with it in worker processes and key their
        token caches by its digest, without holding the LM."""

    @property
    def tokenizer_digest(self) -> str | None:
        """Identity of the speech tokenizer (token caches are keyed by it); None when this instance has none."""
        tokenizer = self.speech_tokenizer
        return tokenizer.digest if tokenizer is not None else None

    def encode_speech(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        """The backbone's own speech tokens, (T,) int64, of one mono recording."""
        tokenizer = self.speech_tokenizer
        if tokenizer is None:
            raise ConfigError(f"this {self.kind} backbone has no speech tokenizer loaded, so it cannot tokenize "
                              "speech; load it from a complete checkpoint folder.")
        return tokenizer.encode(wave, sample_rate)

    @abstractmethod
    def vocode(self, tokens: torch.Tensor, prompt: Prompt) -> tuple[np.ndarray, int]:
        """Waveform (float32, mono) and sample rate for one utterance's speech tokens.

        Gets the prompt because real vocoders need its voice (a reference clip's features, a speaker
        embedding).  A vocoder that runs a second, conditioned LM pass (IndexTTS2's latent pass) declares it
        phase ``teacher_forced``, so generation-phase hooks do not fire there."""
