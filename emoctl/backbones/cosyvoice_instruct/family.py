"""What the two CosyVoice adapters (CosyVoice-300M-Instruct and CosyVoice2) share: emotion as instruct text, the
voice as a CAMPPlus x-vector that only the flow hears, the release's own sampler, the head's log-probabilities
and the vocoder call.  Each adapter sets the class attributes below and builds its own LLM, hooks and loop.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from emoctl.backbones.base import Backbone, Prompt
from emoctl.backbones.conditions import EmotionCondition, InstructText, VoiceClip
from emoctl.backbones.sampling import Sampling
from emoctl.errors import ConfigError, first_line

#: how ESD's emotions are asked for unless the recipe gives its own (backbone.options.instructions); both
#: CosyVoice adapters ask alike
DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "Neutral": "A speaker reads the sentence in a calm, neutral tone.",
    "Angry": "A speaker reads the sentence angrily, in a furious tone.",
    "Happy": "A speaker reads the sentence happily, in a cheerful tone.",
    "Sad": "A speaker reads the sentence sadly, in a sorrowful tone.",
    "Surprise": "A speaker reads the sentence in a surprised, astonished tone.",
}
_CACHE_SLOTS = 256  # x-vectors of reference clips kept per loaded backbone


class CosyVoiceFamily(Backbone):
    """A CosyVoice LLM conditioned by ``instruction<end-of-prompt marker>text``, voiced through the flow."""

    #: the marker the release's instruct front end appends to the instruction
    end_of_prompt: ClassVar[str] = "<endofprompt>"
    emotion_kinds: ClassVar[tuple[str, ...]] = (InstructText.kind,)
    corpus_voice_kind: ClassVar[str] = VoiceClip.kind
    sampling_settings: ClassVar[tuple[str, ...]] = ("temperature", "top_k", "top_p", "ras_window", "ras_tau")

    llm: Any
    stop_token: int
    instructions: dict[str, str]
    campplus: Any
    vocode_seed: int | None
    _tokenizer: Any

    def _init_conditions(self, instructions: Mapping[str, str] | None) -> None:
        self.instructions = self._check_instructions(instructions)
        self._xvectors: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._vocoder: Any = None
        self.vocode_seed = 0  # the flow and HiFT draw noise: a fixed seed makes audio repeatable

    @classmethod
    def _check_instructions(cls, instructions: Mapping[str, str] | None) -> dict[str, str]:
        chosen = dict(DEFAULT_INSTRUCTIONS if instructions is None else instructions)
        for emotion, text in chosen.items():
            if not isinstance(text, str) or not text.strip() or cls.end_of_prompt in text:
                raise ConfigError(f"backbone.options.instructions[{emotion!r}] must be a non-empty instruction "
                                  f"without {cls.end_of_prompt} (the adapter appends it), got {text!r}.")
        if "Neutral" not in chosen:
            raise ConfigError("backbone.options.instructions needs a Neutral instruction: it is the twin of "
                              "every emotional prompt and EmoShift's condition: neutral.")
        return chosen

    @staticmethod
    def _sampling_from(args: Mapping[str, Any]) -> Sampling:
        """The release's own sampling (its checked ``ras_sampling`` arguments), as a Sampling."""
        return Sampling(temperature=1.0, top_p=args["top_p"], top_k=args["top_k"], ras_window=args["win_size"],
                        ras_tau=args["tau_r"])

    # ------------------------------------------------------------ identity
    @property
    def device(self) -> torch.device:
        return self.llm.llm_decoder.weight.device

    @property
    def emotions(self) -> list[str]:
        """The corpus emotions it has an instruction for (EmoShift serves these unless told otherwise)."""
        return list(self.instructions)

    @property
    def neutral_emotion(self) -> EmotionCondition:
        return InstructText(self.instructions["Neutral"])

    def condition_for(self, emotion: str) -> EmotionCondition:
        """The instruction the loader was given for a corpus emotion."""
        if emotion not in self.instructions:
            raise ConfigError(f"the {self.kind} backbone has no instruction for emotion {emotion!r}; it has "
                              f"{', '.join(self.instructions)}. Add one under backbone.options.instructions.")
        return InstructText(self.instructions[emotion])

    @property
    def speech_tokenizer(self) -> Any:
        return self._tokenizer

    # ---------------------------------------------------------- conditions
    def check_prompts(self, prompts: Sequence[Prompt]) -> None:
        super().check_prompts(prompts)
        for prompt in prompts:
            if isinstance(prompt.voice, VoiceClip) and not os.path.isfile(prompt.voice.path):
                raise ConfigError(f"reference clip {prompt.voice.path} does not exist (prompt "
                                  f"{prompt.utt_id or prompt.text[:30]!r}).")

    def text_ids(self, text: str) -> list[int]:
        raise NotImplementedError

    def _prompt_ids(self, prompt: Prompt) -> tuple[list[int], int]:
        """``instruction`` + marker ids then the text's (encoded apart, as upstream does), and the number of text
        ids (upstream's length limits count only those)."""
        assert isinstance(prompt.emotion, InstructText)
        text = self.text_ids(prompt.text)
        return self.text_ids(prompt.emotion.text + self.end_of_prompt) + text, len(text)

    def clip_xvector(self, voice: VoiceClip) -> torch.Tensor:
        """(1, 192) CAMPPlus x-vector of a reference clip (kept per file)."""
        stat = os.stat(voice.path)
        key = (os.path.realpath(voice.path), stat.st_size, stat.st_mtime_ns)
        if key not in self._xvectors:
            import soundfile

            try:
                wave, rate = soundfile.read(voice.path, dtype="float32", always_2d=True)
            except Exception as err:
                raise ConfigError(f"cannot read reference clip {voice.path}: {first_line(err)}") from None
            self._xvectors[key] = self.campplus(wave.mean(axis=1), rate)
            while len(self._xvectors) > _CACHE_SLOTS:
                self._xvectors.popitem(last=False)
        return self._xvectors[key]

    def xvector(self, voice: Any) -> torch.Tensor:
        return self.clip_xvector(voice)

    # ----------------------------------------------------------- the head
    def _logp(self, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
        """Log-probabilities of the next id from the last position's state (``lm_out`` fires on (B, d))."""
        logits = self.llm.llm_decoder(hidden[:, -1])
        if temperature not in (0.0, 1.0):
            logits = logits / temperature
        return logits.float().log_softmax(dim=-1)

    # ------------------------------------------------------- teacher forcing
    def _prefixes(self, prompts: Sequence[Prompt]) -> tuple[list[torch.Tensor], list[int]]:
        raise NotImplementedError

    @torch.no_grad()
    def _teacher_forced_inputs(self, prompts: Sequence[Prompt], targets: Sequence[torch.Tensor]
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """``[prefix][targets]`` per row, prefixes left-padded to P: inputs (B, P + M, d), the (B, P + M) mask of
        real positions, the targets (B, M + 1) each row's tokens then stop (-100 after), and P."""
        self.check_prompts(prompts)
        if len(prompts) != len(targets):
            raise ConfigError(f"teacher_forced got {len(prompts)} prompts but {len(targets)} targets.")
        prefixes, _ = self._prefixes(prompts)
        speech = []
        for target in targets:
            target = torch.as_tensor(target, dtype=torch.long, device=self.device).reshape(-1)
            if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.stop_token):
                raise ConfigError(f"speech tokens must lie in [0, {self.stop_token}), got "
                                  f"[{int(target.min())}, {int(target.max())}].")
            speech.append(target)
        B, P, M = len(prompts), max(len(p) for p in prefixes), max(len(s) for s in speech)
        x = torch.zeros(B, P + M, self.hidden_size, device=self.device)
        valid = torch.zeros(B, P + M, dtype=torch.bool, device=self.device)
        out_targets = torch.full((B, M + 1), -100, dtype=torch.long, device=self.device)
        for b, (prefix, tokens) in enumerate(zip(prefixes, speech)):
            x[b, P - len(prefix):P], valid[b, P - len(prefix):P + len(tokens)] = prefix, True
            x[b, P:P + len(tokens)] = self.llm.speech_embedding(tokens)
            out_targets[b, :len(tokens)] = tokens
            out_targets[b, len(tokens)] = self.stop_token
        return x, valid, out_targets, P

    # --------------------------------------------------------------- vocoder
    @property
    def vocoder(self) -> Any:
        if self._vocoder is None:
            self._vocoder = self._build_vocoder()
        return self._vocoder

    def _build_vocoder(self) -> Any:
        raise NotImplementedError

    def vocode(self, tokens: torch.Tensor, prompt: Prompt) -> tuple[np.ndarray, int]:
        """Waveform at the release's rate: upstream's flow (conditioned on the voice's x-vector, no prompt speech,
        as in instruct mode) then HiFT."""
        self.check_prompts([prompt])
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        if tokens.numel() == 0:
            raise ConfigError("vocode needs at least one speech token.")
        audio = self.vocoder.synthesize(tokens.to(self.device), self.xvector(prompt.voice).to(self.device),
                                        seed=self.vocode_seed)
        return np.asarray(audio, dtype=np.float32), self.sample_rate
