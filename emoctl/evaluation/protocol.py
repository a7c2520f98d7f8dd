"""The evaluation protocol: who speaks which held-out sentences, against how many references, sampled how.

Every report takes one :class:`EvaluationProtocol`, and the protocols behind
README's tables are YAML files under ``recipes/evaluation/`` (``emoctl report
table1 --config recipes/evaluation/report_table1_mini.yaml ...``), so changing
the held-out voices, the sentence window or the sampling of an evaluation is a
change of recipe, not of code, and a report says which protocol made it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from emoctl.backbones.base import Backbone
from emoctl.backbones.conditions import Voice, VoiceClip, VoiceName
from emoctl.emotions import NEUTRAL
from emoctl.errors import ConfigError
from emoctl.synthesis import SamplingConfig
from emoctl.corpus.esd import open_esd
from emoctl.corpus.references import ReferenceClips
from emoctl.evaluation.texts import split_sentences

SPLITS = ("test", "evaluation")


@dataclass
class EvaluationProtocol:
    """The numbers of one evaluation, shared by every report (values checked when it is built)."""

    speakers: list[str] | None = None
    """Voices to synthesize; None: the backbone's last ``held_out_speakers`` voices."""
    held_out_speakers: int = 4
    """How many of the backbone's last voices were held out of harvesting and training (used when speakers is None)."""
    split: str = "test"
    """Corpus split the sentences come from: "test" (held out of all training) or "evaluation"."""
    n_texts: int = 2
    """Sentences per (emotion, speaker) cell."""
    text_offset: int = 0
    """First sentence of the split used, so two reports on one split can use disjoint sentences."""
    reference_clips: int = 8
    """Corpus recordings per speaker averaged into the speaker-similarity reference."""
    seed: int = 0
    """Sampling seed, the same for every method, α or row of a report (batch b uses seed + b)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Temperature, top-k, beams, token cap and batch size of generation (its seed is ``seed`` above)."""

    def __post_init__(self) -> None:
        bad = []
        if self.held_out_speakers < 1:
            bad.append(f"held_out_speakers={self.held_out_speakers} (>= 1)")
        if self.split not in SPLITS:
            bad.append(f"split={self.split!r} (one of {', '.join(SPLITS)})")
        if self.n_texts < 1:
            bad.append(f"n_texts={self.n_texts} (>= 1)")
        if self.text_offset < 0:
            bad.append(f"text_offset={self.text_offset} (>= 0)")
        if self.reference_clips < 1:
            bad.append(f"reference_clips={self.reference_clips} (>= 1)")
        if self.speakers is not None and not self.speakers:
            bad.append("speakers=[] (name at least one, or null for the held-out voices)")
        if self.sampling.seed is not None:
            bad.append(f"sampling.seed={self.sampling.seed} (leave it unset; the protocol's seed seeds every batch)")
        if bad:
            raise ConfigError("invalid evaluation protocol: " + "; ".join(bad) + ".")

    def voices(self, backbone: Backbone, corpus_root: str | Path | None = None) -> list[str]:
        """The speakers to synthesize: voices the backbone knows by name, or, for a backbone that clones
        reference clips (IndexTTS2), speakers of the corpus (``voice_for`` gives their clips)."""
        if not clones_voices(backbone):
            speakers = list(self.speakers or backbone.speakers[-self.held_out_speakers:])
            unknown = [s for s in speakers if s not in backbone.speakers]
            if unknown:
                raise ConfigError(f"protocol.speakers {unknown} are not voices of this backbone; it voices "
                                  f"{backbone.speakers}.")
            return speakers
        if corpus_root is None:
            raise ConfigError("a backbone that clones reference clips needs the corpus to take them from.")
        found = sorted(p.name for p in Path(corpus_root).iterdir() if p.is_dir() and p.name.isdigit())
        speakers = list(self.speakers or found[-self.held_out_speakers:])
        unknown = [s for s in speakers if s not in found]
        if unknown:
            raise ConfigError(f"protocol.speakers {unknown} are not speakers of {corpus_root} (it has {found}).")
        return speakers

    def voice_for(self, backbone: Backbone, corpus_root: str | Path | None = None) -> Callable[[str, str], Voice]:
        """``voice(speaker, text)``: the speaker's name, or, for a backbone that clones reference clips, the
        speaker's reference clip in the corpus by emoctl's one rule (:mod:`emoctl.corpus.references`)."""
        if not clones_voices(backbone):
            return lambda speaker, text: VoiceName(speaker)

        speakers = self.voices(backbone, corpus_root)
        assert corpus_root is not None
        references = ReferenceClips(open_esd(corpus_root, speakers=speakers, emotions=[NEUTRAL]), corpus_root)
        references.check(speakers)
        return lambda speaker, text: VoiceClip(str(references.for_text(speaker, text)), speaker)

    def texts(self, corpus_root: str | Path) -> tuple[list[str], dict]:
        """The protocol's sentences (``n_texts`` of ``split`` from ``text_offset``) and the corpus record."""

        texts, record = split_sentences(Path(corpus_root), self.split, self.text_offset + self.n_texts)
        texts = texts[self.text_offset:]
        if not texts:
            raise ConfigError(f"protocol.text_offset={self.text_offset} leaves no {self.split} sentences in "
                              f"{corpus_root} (the split has {record['splits'][self.split]}); lower it.")
        return texts, record

    def describe(self) -> dict:
        """The protocol as plain data, for a report's ``_info.json``."""
        return asdict(self)


def clones_voices(backbone: Backbone) -> bool:
    """True where corpus speakers are voiced by their reference clips (IndexTTS2; CosyVoice, whose spk2info
    voices are not the corpus's speakers)."""
    return backbone.corpus_voice_kind == VoiceClip.kind and VoiceClip.kind in backbone.voice_kinds
