"""Emotion features of a Top-k SAE: which latents fire more in emotional than in neutral speech.

Data flow: ``indicators`` streams an activation store through the SAE and keeps,
per utterance, which latents fired (packed bits) plus per-emotion firing
statistics; ``pairs`` matches each emotional utterance with its neutral twin
(same ``pair_key``: text and speaker); ``stats`` turns the paired indicators
into Δ-scores, exact McNemar p-values, Benjamini-Hochberg q-values and
bootstrap CIs; ``feature_set`` is the JSON file steering reads; ``select`` is
the ``emoctl select`` tool that ties them together.
"""
from __future__ import annotations

from emoctl.selection.feature_set import FeatureSet, SelectedFeature
from emoctl.selection.indicators import FiringIndicators, collect_indicators
from emoctl.selection.pairs import EmotionPairs, pair_utterances
from emoctl.selection.stats import bootstrap_delta_ci, benjamini_hochberg, delta_scores, mcnemar_exact

__all__ = ["EmotionPairs", "FeatureSet", "FiringIndicators", "SelectedFeature", "benjamini_hochberg",
           "bootstrap_delta_ci", "collect_indicators", "delta_scores", "mcnemar_exact", "pair_utterances"]
