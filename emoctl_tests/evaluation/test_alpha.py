"""The one α rule that Table 1 and the EmoShift reports share."""
from __future__ import annotations

import math

from emoctl.evaluation.alpha import choose_alpha


def test_choose_alpha_takes_the_most_accurate_within_bound_ties_to_the_smallest():
    acc = {1.0: 0.5, 2.0: 0.8, 3.0: 0.8, 4.0: 0.9}
    wer = {1.0: 0.22, 2.0: 0.30, 3.0: 0.31, 4.0: 0.90}
    choice = choose_alpha(acc, wer, unsteered_wer=0.20, max_wer_increase=0.15)
    assert (choice.alpha, choice.accuracy, choice.within_bound) == (2.0, 0.8, True)
    assert choose_alpha(acc, wer, 0.20, 1.0).alpha == 4.0
    assert choose_alpha(acc, wer, 0.20, 0.05).alpha == 1.0


def test_choose_alpha_falls_back_to_the_smallest_swept_alpha_and_says_so():
    choice = choose_alpha({4.0: 0.9, 8.0: 1.0}, {4.0: 0.9, 8.0: 1.2}, unsteered_wer=0.1, max_wer_increase=0.15)
    assert choice.alpha == 4.0 and not choice.within_bound and choice.wer == 0.9
    # suppression sweeps negative α: "smallest" means the smallest step
    assert choose_alpha({-8.0: 0.5, -4.0: 0.5}, {-8.0: 0.1, -4.0: 0.1}, 0.1, 0.15).alpha == -4.0
    # without WER (no ASR) every α is within bound
    assert choose_alpha({4.0: 0.2, 8.0: 0.6}, {}, math.inf, 0.15).alpha == 8.0
