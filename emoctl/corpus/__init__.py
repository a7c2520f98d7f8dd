"""An ESD-shaped emotional speech corpus, synthesized offline with eSpeak NG.

``synthesize`` speaks one sentence; ``build_corpus`` writes 10+ speakers x 5
emotions x N parallel sentences in the layout of ESD (the Emotional Speech
Dataset), so code written for ESD reads it unchanged, and records the prosody
of every utterance in ``corpus.json`` as ground truth.
"""
from __future__ import annotations

from emoctl.corpus.build import build_corpus, plan_corpus, split_sizes
from emoctl.corpus.emotions import EMOTIONS, PROFILES, utterance_prosody
from emoctl.corpus.espeak import synthesize
from emoctl.corpus.sentences import generate_sentences
from emoctl.corpus.voices import SPEAKERS, Speaker

__all__ = ["EMOTIONS", "PROFILES", "SPEAKERS", "Speaker", "build_corpus", "generate_sentences", "plan_corpus",
           "split_sizes", "synthesize", "utterance_prosody"]
