"""Every latent's statistics in one table: firing, and the Δ of each emotion under each score.

``emoctl select`` reports only the latents it selects; a feature browser needs
the same numbers for all of them, so that a latent that just missed a set, or a
dead one, can be looked up too.  The Δ, p-values (BH across latents), bootstrap
intervals and the held-out Δ are those of :mod:`emoctl.selection.select`,
computed for every column instead of the top m.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emoctl.selection.indicators import FiringIndicators
from emoctl.selection.pairs import EmotionPairs
from emoctl.selection.select import SCORES, held_out_split, paired_differences, rank_latents
from emoctl.selection.stats import bootstrap_delta_ci


@dataclass
class LatentTable:
    """Column name -> (d_sae,) array; ``delta.<score>.<emotion>`` and its ``ci_low``/``ci_high``/``q``/
    ``held_out`` siblings, plus the firing columns and ``top_emotion``."""

    columns: dict[str, np.ndarray]
    emotions: list[str]
    scores: list[str]
    n_pairs: dict[str, int] = field(default_factory=dict)

    @property
    def d_sae(self) -> int:
        return int(self.columns["id"].size)

    def row(self, latent: int) -> dict[str, float | int | str | bool | None]:
        """One latent's values, JSON-ready (NaN as None)."""
        out: dict[str, float | int | str | bool | None] = {}
        for name, values in self.columns.items():
            value = values[latent].item() if hasattr(values[latent], "item") else values[latent]
            out[name] = None if isinstance(value, float) and not np.isfinite(value) else value
        return out


def firing_rate_per_utterance(ind: FiringIndicators, block: int = 4096) -> np.ndarray:
    """(d_sae,) share of utterances in which each latent fired at least once (unpacked in blocks)."""
    total = np.zeros(ind.d_sae, dtype=np.int64)
    for a in range(0, ind.num_utterances, block):
        total += ind.dense(np.arange(a, min(a + block, ind.num_utterances))).sum(axis=0)
    return total / max(ind.num_utterances, 1)


def latent_table(ind: FiringIndicators, pairs: dict[str, EmotionPairs], scores: tuple[str, ...] = SCORES,
                 n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0, correction: str = "bh"
                 ) -> LatentTable:
    """The statistics of every latent (``ind`` collected with ``per_step=True`` when a score needs it)."""
    d = ind.d_sae
    rows_fired = ind.rows_fired.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_act = np.where(rows_fired > 0, ind.value_sum.sum(axis=0) / rows_fired, np.nan)
    columns: dict[str, np.ndarray] = {
        "id": np.arange(d),
        "fire_rate_step": rows_fired / max(int(ind.rows_total.sum()), 1),
        "fire_rate_utterance": firing_rate_per_utterance(ind),
        "mean_act": mean_act,
        "dead": rows_fired == 0,
    }
    for emotion, p in pairs.items():
        emo_bits, neu_bits = ind.dense(p.emotional), ind.dense(p.neutral_twin)
        split = held_out_split(ind, p, seed)
        for score in scores:
            diff = paired_differences(ind, p, score, emo_bits, neu_bits)
            _, delta, _, q = rank_latents(diff, score, 0, None, correction)
            low, high = bootstrap_delta_ci(diff, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
            key = f"{score}.{emotion}"
            columns[f"delta.{key}"] = delta
            columns[f"ci_low.{key}"], columns[f"ci_high.{key}"], columns[f"q.{key}"] = low, high, q
            columns[f"held_out.{key}"] = (diff[~split].mean(axis=0, dtype=np.float64) if split is not None
                                          else np.full(d, np.nan))
    first = scores[0]
    emotions = list(pairs)
    by_emotion = np.stack([columns[f"delta.{first}.{e}"] for e in emotions])  # (n_emotions, d)
    columns["top_emotion"] = np.asarray(emotions, dtype=object)[by_emotion.argmax(axis=0)]
    columns[f"top_delta.{first}"] = by_emotion.max(axis=0)
    return LatentTable(columns, emotions, list(scores), {e: p.n_pairs for e, p in pairs.items()})
