"""Paired comparisons between Table 1 methods: McNemar on per-clip SER correctness, bootstrap interval and
sign-flip p on Emo-SIM, matched by prompt id, pooled over emotions, BH across rows."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from emoctl.errors import ConfigError
from emoctl.evaluation.paired import paired_bootstrap, paired_comparisons, paired_markdown, sign_flip_p


def _rows(method: str, emotion: str, hits: list[int], sims: list[float], direction: str = "induction") -> list[dict]:
    return [{"direction": direction, "emotion": emotion, "method": method, "utt_id": f"{emotion}-{i}",
             "ser_hit": float(h), "emo_sim_matched": s} for i, (h, s) in enumerate(zip(hits, sims))]


def test_sign_flip_p_is_exact_for_few_clips_and_not_fooled_by_two_clips():
    # Two clips: four sign patterns, two as extreme as observed -> p = 0.5 (a re-centred bootstrap says < 0.001).
    assert sign_flip_p(np.array([0.30, 0.40])) == pytest.approx(0.5)
    # Enumerated by hand for five clips.
    diff = np.array([0.5, 0.2, -0.1, 0.3, 0.4])
    means = [abs(np.dot(s, diff)) / 5 for s in itertools.product([-1, 1], repeat=5)]
    assert sign_flip_p(diff) == pytest.approx(np.mean([m >= abs(diff.mean()) - 1e-12 for m in means]))
    # Many clips (Monte Carlo): a clear shift is significant, a symmetric null is not.
    rng = np.random.default_rng(1)
    assert sign_flip_p(rng.normal(0.3, 0.2, size=40), 2000, seed=0) < 0.001
    assert sign_flip_p(rng.normal(0.0, 0.2, size=40), 2000, seed=0) > 0.05


def test_paired_bootstrap_interval_covers_the_mean_and_shrinks_with_more_clips():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.1, 0.2, size=10), rng.normal(0.1, 0.2, size=400)
    lo_s, hi_s = paired_bootstrap(small)
    lo_l, hi_l = paired_bootstrap(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    with pytest.raises(ConfigError, match="non-finite"):
        paired_bootstrap(np.array([0.1, math.nan]))


def test_comparisons_pair_clips_by_prompt_and_pool_over_emotions():
    a_angry, b_angry = [1] * 8 + [0, 1], [0] * 8 + [0, 1]  # A right on 8 clips B missed
    a_sad, b_sad = [1, 0, 0, 0], [0, 1, 1, 0]
    rows = (_rows("sae_emotion", "Angry", a_angry, [0.9] * 10) + _rows("global", "Angry", b_angry, [0.5] * 10)
            + _rows("sae_emotion", "Sad", a_sad, [0.1, 0.2, 0.3, 0.4]) + _rows("global", "Sad", b_sad, [0.1] * 4))
    # Row order must not matter: shuffle B's clips; a clip that only one method has is left out.
    rows = rows[:10] + rows[10:20][::-1] + rows[20:]
    rows.append({"direction": "induction", "emotion": "Sad", "method": "sae_emotion", "utt_id": "extra",
                 "ser_hit": 1.0, "emo_sim_matched": 0.9})
    out = paired_comparisons(rows, [("sae_emotion", "global"), ("sae_emotion", "random_sae")], n_bootstrap=500)
    by = {r["emotion"]: r for r in out}
    assert set(by) == {"Angry", "Sad", "all"}  # random_sae has no clips: no rows
    angry, sad, pooled = by["Angry"], by["Sad"], by["all"]
    assert (angry["n"], angry["a_only"], angry["b_only"]) == (10, 8, 0)
    assert angry["ser_p"] == pytest.approx(binomtest(8, 8, 0.5).pvalue)
    assert (sad["n"], sad["a_only"], sad["b_only"]) == (4, 1, 2)
    assert (pooled["n"], pooled["a_only"], pooled["b_only"]) == (14, 9, 2)
    assert pooled["ser_p"] == pytest.approx(binomtest(9, 11, 0.5).pvalue)
    assert angry["emo_sim_diff"] == pytest.approx(0.4) and sad["emo_sim_diff"] == pytest.approx(0.15)
    assert pooled["emo_sim_diff"] == pytest.approx((0.4 * 10 + 0.15 * 4) / 14)
    # BH over the three rows of each metric.
    p = sorted(r["ser_p"] for r in out)
    assert min(r["ser_q"] for r in out) == pytest.approx(min(1.0, min(p[0] * 3, p[1] * 3 / 2, p[2])))
    text = "\n".join(paired_markdown(out, {"sae_emotion": "SAE-Emotion", "global": "Global steering"}))
    assert "| induction | SAE-Emotion vs Global steering | all | 14 | " in text
    assert text.index("### Pooled over emotions") < text.index("### Per emotion")
