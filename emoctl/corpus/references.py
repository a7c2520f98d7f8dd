"""Which recording a zero-shot backbone clones a speaker's voice from: one documented rule for every job.

IndexTTS2 and CosyVoice take the voice as a reference clip.  For an ESD speaker the reference is the
speaker's first Neutral clip of the training split (in utterance-id order), or its second when the first
speaks the very sentence being generated or taught (a reference must never be the target itself).  No
randomness is involved, so harvests, EmoShift training and reports agree on a speaker's voice.  Training
clips are never evaluation or test sentences, so held-out prompts always get the first clip.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from emoctl.corpus.esd import EsdUtterance
from emoctl.emotions import NEUTRAL
from emoctl.errors import ConfigError


class ReferenceClips:
    """The speakers' Neutral training clips, in order; ``for_text(speaker, text)`` applies the rule."""

    def __init__(self, utterances: Sequence[EsdUtterance], root: str | Path, neutral: str = NEUTRAL) -> None:
        self.root = Path(root)
        self._clips: dict[str, list[EsdUtterance]] = {}
        for utt in sorted(utterances, key=lambda u: u.utt_id):
            if utt.split == "train" and utt.emotion == neutral and utt.path is not None:
                self._clips.setdefault(utt.speaker, []).append(utt)

    def check(self, speakers: Sequence[str]) -> None:
        """Refuse speakers without two Neutral training clips on disk, naming them."""
        lacking = sorted(set(speakers) - {s for s, clips in self._clips.items() if len(clips) >= 2})
        if lacking:
            raise ConfigError(f"a reference clip needs two Neutral training clips on disk per speaker in "
                              f"{self.root}; speakers {lacking} lack them (a Hugging Face copy keeps audio as "
                              "bytes: save it as an ESD folder first).")

    def for_text(self, speaker: str, text: str) -> Path:
        first, second = self._clips[speaker][:2]
        chosen = second if first.text.strip() == text.strip() else first
        assert chosen.path is not None
        return chosen.path
