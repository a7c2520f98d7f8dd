"""An ESD-shaped emotional speech corpus, synthesized offline with eSpeak NG.

``synthesize`` speaks one sentence; ``build_corpus`` writes 10+ speakers x 5
emotions x N parallel sentences in the layout of ESD (the Emotional Speech
Dataset), so code written for ESD reads it unchanged.
"""
from __future__ import annotations

from emoctl.corpus.espeak import synthesize

__all__ = ["synthesize"]
