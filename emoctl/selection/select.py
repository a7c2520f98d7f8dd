"""The SAE seed's emotion features (``emoctl select``: :mod:`emoctl.commands.select`), with paired tests,
bootstrap intervals, a held-out Δ and the ranking's stability.

For each emotion e and latent i, Δ_i^(e) is the mean over (e, neutral) pairs of the difference of a
per-utterance value (see :mod:`emoctl.selection.stats`), by one of three scores:

* ``any_step`` (the seed's, the default): 1 if the latent fires at any decode step; exact McNemar test.  It
  saturates: a latent that fires somewhere in most utterances of both conditions scores Δ near 0 however
  much more often it fires under the emotion.
* ``rate``: the share of the utterance's decode steps on which the latent fires; Wilcoxon signed-rank test.
* ``mass``: the latent's summed activation per decode step; Wilcoxon signed-rank test.

The top ``m`` latents by Δ (Δ > 0, and optionally q < alpha) form e's feature set.  Beside it: the pairs are
split by text (seeded), latents are selected on one half and their Δ is measured on the other (winner's curse
shows as a drop), and each selected latent's share of bootstrap resamples in which it stays in the top m.
"""
from __future__ import annotations

import math
import re

import numpy as np

from emoctl.selection.feature_set import FeatureSet, SelectedFeature
from emoctl.selection.indicators import FiringIndicators
from emoctl.selection.pairs import EmotionPairs
from emoctl.selection.stats import (benjamini_hochberg, bootstrap_delta_ci, delta_scores, mcnemar_exact,
                                   top_m_stability, wilcoxon_signed_rank)

SCORES = ("any_step", "rate", "mass")
TESTS = {"any_step": "exact McNemar", "rate": "Wilcoxon signed-rank", "mass": "Wilcoxon signed-rank"}
__all__ = ["SCORES", "TESTS", "held_out_split", "paired_differences", "rank_latents", "safe_name", "select_one"]


def paired_differences(ind: FiringIndicators, pairs: EmotionPairs, score: str, emo_bits: np.ndarray,
                       neu_bits: np.ndarray) -> np.ndarray:
    """(n_pairs, d_sae) emotional minus neutral values of ``score`` (int8 for any_step, from the pairs' already
    unpacked indicators; float32 otherwise)."""
    if score == "any_step":
        return emo_bits.astype(np.int8) - neu_bits.astype(np.int8)
    return ind.per_step(pairs.emotional, score) - ind.per_step(pairs.neutral_twin, score)


def rank_latents(diff: np.ndarray, score: str, m: int, alpha: float | None, correction: str
                 ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """The top-m latents of paired differences by Δ (Δ > 0, q < alpha when set), with Δ, p and q of all."""
    delta = diff.mean(axis=0, dtype=np.float64)
    if score == "any_step":
        p = mcnemar_exact((diff > 0).sum(0), (diff < 0).sum(0))
    else:
        p = wilcoxon_signed_rank(diff)
    q = benjamini_hochberg(p) if correction == "bh" else p
    eligible = delta > 0
    if alpha is not None:
        eligible &= q < alpha
    ranked = np.lexsort((np.arange(delta.size), p, -delta))  # Δ descending; ties: smaller p, then lower id
    return [int(i) for i in ranked if eligible[i]][:m], delta, p, q


def _held_out(ind: FiringIndicators, pairs: EmotionPairs, diff: np.ndarray, score: str, m: int,
              alpha: float | None, correction: str, seed: int) -> dict:
    """Select on the pairs of a seeded half of the texts, measure Δ on the other half."""
    mask = held_out_split(ind, pairs, seed)
    if mask is None:
        return {"note": "only 1 text: no held-out half."}
    chosen, delta_a, _, _ = rank_latents(diff[mask], score, m, alpha, correction)
    delta_b = diff[~mask][:, chosen].mean(axis=0, dtype=np.float64) if chosen else np.empty(0)
    texts = _pair_texts(ind, pairs)
    return {"seed": seed, "texts_select": int(np.unique(texts[mask]).size),
            "texts_held_out": int(np.unique(texts[~mask]).size),
            "pairs_select": int(mask.sum()), "pairs_held_out": int((~mask).sum()),
            "features": [{"id": i, "delta_select": float(delta_a[i]), "delta_held_out": float(d)}
                         for i, d in zip(chosen, delta_b)]}


def _pair_texts(ind: FiringIndicators, pairs: EmotionPairs) -> np.ndarray:
    return (ind.text_id if ind.text_id is not None else ind.pair_key)[pairs.emotional].astype(str)


def held_out_split(ind: FiringIndicators, pairs: EmotionPairs, seed: int) -> np.ndarray | None:
    """(n_pairs,) bool: True for the pairs of a seeded half of the texts (where latents are selected), False for
    the held-out half (where their Δ is measured); None when there is a single text."""
    texts = _pair_texts(ind, pairs)
    unique = np.unique(texts)
    if unique.size < 2:
        return None
    order = np.random.default_rng(seed).permutation(unique.size)
    return np.isin(texts, unique[order[:unique.size // 2]])


def select_one(ind: FiringIndicators, pairs: EmotionPairs, m: int, alpha: float | None, correction: str,
                n_bootstrap: int, confidence: float, seed: int, provenance: dict, score: str = "any_step",
                n_stability: int = 200) -> tuple[FeatureSet, np.ndarray]:
    emo_bits, neu_bits = ind.dense(pairs.emotional), ind.dense(pairs.neutral_twin)  # (n_pairs, d_sae) each
    counts = delta_scores(emo_bits, neu_bits)
    diff = paired_differences(ind, pairs, score, emo_bits, neu_bits)
    chosen, delta, p, q = rank_latents(diff, score, m, alpha, correction)
    if chosen:
        low, high = bootstrap_delta_ci(diff[:, chosen], n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
        stability = top_m_stability(diff, chosen, m, n_bootstrap=n_stability, seed=seed)
    else:
        low = high = stability = np.empty(0)
    n = counts.n_pairs
    mean_e, mean_n = ind.mean_value_when_firing(pairs.emotion), ind.mean_value_when_firing(pairs.neutral)
    rate_e, rate_n = ind.row_firing_rate(pairs.emotion), ind.row_firing_rate(pairs.neutral)
    features = [SelectedFeature(
        id=i, delta=float(delta[i]), ci_low=float(lo), ci_high=float(hi), p_value=float(p[i]), q_value=float(q[i]),
        emotion_only=int(counts.emotion_only[i]), neutral_only=int(counts.neutral_only[i]), both=int(counts.both[i]),
        neither=int(counts.neither[i]), utt_fire_rate_emotion=float(counts.emotion_only[i] + counts.both[i]) / n,
        utt_fire_rate_neutral=float(counts.neutral_only[i] + counts.both[i]) / n,
        row_fire_rate_emotion=float(rate_e[i]), row_fire_rate_neutral=float(rate_n[i]),
        mean_act_emotion=_float(mean_e[i]), mean_act_neutral=_float(mean_n[i]),
        delta_any_step=float(counts.delta[i]), stability=float(st),
    ) for i, lo, hi, st in zip(chosen, low, high, stability)]
    selection = {"score": score, "test": TESTS[score], "m": m, "alpha": alpha, "correction": correction,
                 "n_pairs": n, "unpaired": pairs.unpaired,
                 "ranking": "delta descending among delta > 0" + (f" and q < {alpha}" if alpha is not None else ""),
                 "bootstrap": {"n": n_bootstrap, "confidence": confidence, "seed": seed, "method": "percentile"},
                 "stability": {"n": n_stability, "seed": seed, "rule": f"top {m} by delta among delta > 0"},
                 "held_out": _held_out(ind, pairs, diff, score, m, alpha, correction, seed)}
    if len(chosen) < m:
        selection["note"] = f"only {len(chosen)} of {m} latents qualified."
    return FeatureSet(pairs.emotion, pairs.neutral, features, selection=selection, **provenance), delta


def _float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None  # JSON has no NaN


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
