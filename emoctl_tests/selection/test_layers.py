"""CoCoEmo's discriminability: the probes' accuracies on states whose separability is known, the ranking, the file."""
from __future__ import annotations

import json

import pytest
import torch

from emoctl.errors import ConfigError
from emoctl.harvest.pooled import PairedStates
from emoctl.selection.layers import Discriminability, accuracy, fit_classifier, layer_discriminability


def states(n: int, shift: dict[str, float], seed: int, d: int = 8) -> PairedStates:
    """Pairs of two emotions; at hookpoint h the emotional states are the neutral ones' distribution moved by
    ``shift[h]`` along dimension 0 (0: the same distribution)."""
    g = torch.Generator().manual_seed(seed)
    emotions = ["Angry"] * n + ["Sad"] * n
    emotional, neutral = {}, {}
    for h, s in shift.items():
        neutral[h] = torch.randn(2 * n, d, generator=g)
        moved = torch.randn(2 * n, d, generator=g)
        moved[:, 0] += s
        emotional[h] = moved
    return PairedStates(emotions, emotional, neutral, "last")


def test_centroid_probe_accuracy_by_hand():
    pos = torch.tensor([[2.0, 0.0], [4.0, 0.0]])  # mean (3, 0)
    neg = torch.tensor([[-2.0, 0.0], [0.0, 0.0]])  # mean (-1, 0); the boundary is x = 1
    predict = fit_classifier(pos, neg, "centroid")
    test_pos = torch.tensor([[1.5, 0.0], [0.5, 9.0], [1.0, 0.0]])  # right, wrong, on the boundary: emotional
    test_neg = torch.tensor([[0.9, 0.0], [3.0, 0.0]])  # right, wrong
    assert predict(test_pos).tolist() == [True, False, True]
    assert accuracy(predict, test_pos, test_neg) == pytest.approx(3 / 5)


def test_linear_probe_separates_what_is_separable_and_not_what_is_not():
    result = layer_discriminability(states(200, {"attn_out.0": 0.0, "attn_out.1": 6.0, "resid_pre.1": 1.0}, 0),
                                    states(200, {"attn_out.0": 0.0, "attn_out.1": 6.0, "resid_pre.1": 1.0}, 1),
                                    "linear")
    score = {s.hookpoint: s for s in result.scores}
    assert score["attn_out.1"].accuracy > 0.99
    assert 0.4 < score["attn_out.0"].accuracy < 0.6  # chance: both sides drawn from one distribution
    assert 0.62 < score["resid_pre.1"].accuracy < 0.76  # a 1-σ shift: the Bayes accuracy is Φ(0.5) = 0.69
    assert [s.hookpoint for s in result.ranked()] == ["attn_out.1", "resid_pre.1", "attn_out.0"]
    assert result.top(1, "attn_out") == ["attn_out.1"] and result.top(2) == ["attn_out.1", "resid_pre.1"]
    assert set(score["attn_out.1"].per_emotion) == {"Angry", "Sad"}
    assert score["attn_out.1"].n_train == score["attn_out.1"].n_eval == 800
    with pytest.raises(ConfigError, match="top 3 layers, but the discriminability file scores 2 hookpoints of "
                                          "family attn_out"):
        result.top(3, "attn_out")


def test_the_file_round_trips_and_refuses_what_is_not_one(tmp_path):
    result = layer_discriminability(states(20, {"attn_out.0": 3.0, "attn_out.1": 0.0}, 0),
                                    states(20, {"attn_out.0": 3.0, "attn_out.1": 0.0}, 1), "centroid",
                                    backbone="mini-tts@abc", source="generations")
    path = result.save(tmp_path / "d.json")
    back = Discriminability.load(path)
    assert back == result
    assert json.loads(path.read_text())["recommended"][0] == "attn_out.0"
    raw = json.loads(path.read_text())
    raw["scores"][0]["accuracy"] = 1.7
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="accuracies outside \\[0, 1\\] at \\['attn_out.0'\\]"):
        Discriminability.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "emoctl-feature-set", "version": 1}))
    with pytest.raises(ConfigError, match="not a version-1 emoctl-layer-discriminability file"):
        Discriminability.load(tmp_path / "other.json")
    with pytest.raises(ConfigError, match="write one with `emoctl inspect layers`"):
        Discriminability.load(tmp_path / "missing.json")
