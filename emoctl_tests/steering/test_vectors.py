"""Mean-difference directions at several hookpoints: the means, the file (safetensors, no pickle), and
MultiLayerSteering, which must equal one DirectionSteering per hookpoint and compose with others."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from emoctl.errors import ConfigError, NonFiniteError
from emoctl.harvest.pooled import PairedStates
from emoctl.steering import DirectionSteering, MultiLayerSteering, SteeringVectors, steer, vector_steering
from emoctl.steering.vectors import mean_difference_vectors
from emoctl_tests.helpers.tiny_tts import random_tts
from emoctl_tests.helpers.tiny_tts import same_tokens as same, steered_tokens as generate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tts():
    return random_tts()


def paired(d: int = 4) -> PairedStates:
    emotional = {"attn_out.0": torch.tensor([[1.0] * d, [3.0] * d, [10.0] * d]),
                 "attn_out.2": torch.tensor([[0.0] * d, [2.0] * d, [-4.0] * d])}
    neutral = {"attn_out.0": torch.tensor([[0.0] * d, [1.0] * d, [4.0] * d]),
               "attn_out.2": torch.tensor([[1.0] * d, [1.0] * d, [1.0] * d])}
    return PairedStates(["Angry", "Angry", "Sad"], emotional, neutral, "last")


def test_each_emotions_mean_difference_uses_its_own_pairs_only():
    vectors = mean_difference_vectors(paired())
    assert vectors.emotions == ["Angry", "Sad"] and vectors.hookpoints == ["attn_out.0", "attn_out.2"]
    torch.testing.assert_close(vectors.for_emotion("Angry")["attn_out.0"], torch.full((4,), 1.5))  # (1+3)/2 − 1/2
    torch.testing.assert_close(vectors.for_emotion("Sad")["attn_out.0"], torch.full((4,), 6.0))
    torch.testing.assert_close(vectors.for_emotion("Sad")["attn_out.2"], torch.full((4,), -5.0))
    assert vectors.metadata["pairs"] == {"Angry": 2, "Sad": 1}
    with pytest.raises(ConfigError, match="no pairs of \\['Happy'\\]"):
        mean_difference_vectors(paired(), emotions=["Happy"])


def test_the_file_round_trips_and_never_unpickles(tmp_path):
    vectors = mean_difference_vectors(paired(), metadata={"backbone": "mini-tts@x"})
    vectors.save(tmp_path / "v")
    back = SteeringVectors.load(tmp_path / "v")
    assert back.metadata["backbone"] == "mini-tts@x"
    for e in vectors.emotions:
        for h in vectors.hookpoints:
            assert torch.equal(back.for_emotion(e)[h], vectors.for_emotion(e)[h])

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "v" / "vectors.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ConfigError, match="vectors.safetensors is not a readable safetensors file"):
        SteeringVectors.load(tmp_path / "v")
    assert not marker.exists()

    vectors.save(tmp_path / "w")
    record = json.loads((tmp_path / "w" / "vectors.json").read_text())
    record["hookpoints"] = ["attn_out.0"]
    (tmp_path / "w" / "vectors.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="do not match the emotions"):
        SteeringVectors.load(tmp_path / "w")
    with pytest.raises(ConfigError, match="vectors.json is missing"):
        SteeringVectors.load(tmp_path / "nowhere")
    with pytest.raises(NonFiniteError, match="Angry@attn_out.0 \\(1 of 2\\)"):
        SteeringVectors({"Angry": {"attn_out.0": torch.tensor([float("nan"), 1.0])}}).save(tmp_path / "nan")
    assert not (tmp_path / "nan").exists()


def test_multi_layer_steering_is_one_direction_per_hookpoint_with_one_alpha(tts):
    g = torch.Generator().manual_seed(0)
    v0, v2 = torch.randn(tts.hidden_size, generator=g), torch.randn(tts.hidden_size, generator=g)
    base = generate(tts)
    multi = MultiLayerSteering({"attn_out.0": v0, "attn_out.2": v2}, alpha=1.5)
    assert multi.hookpoints == ["attn_out.0", "attn_out.2"]
    separate = generate(tts, [DirectionSteering(v0, 1.5, "attn_out.0"), DirectionSteering(v2, 1.5, "attn_out.2")])
    assert same(generate(tts, [multi]), separate) and not same(separate, base)
    multi.alpha = 0.0  # one α reaches every part
    assert same(generate(tts, [multi]), base)
    multi.schedule = [0.0]  # one schedule reaches every part too: off at every step
    assert same(generate(tts, [multi]), base)
    multi.schedule = None
    multi.alpha = [0.0, 1.5, 0.0, 1.5]  # per row too
    steered = generate(tts, [multi])
    assert torch.equal(steered[0], base[0]) and torch.equal(steered[1], separate[1])
    # Composes with another intervention on one of its hookpoints: the changes add.
    multi.alpha = 1.0
    added = generate(tts, [multi, DirectionSteering(v0, 0.5, "attn_out.0")])
    together = [DirectionSteering(v0, 1.5, "attn_out.0"), DirectionSteering(v2, 1.0, "attn_out.2")]
    assert same(added, generate(tts, together))
    assert not tts.hooks.has_hooks()


def test_vector_steering_refuses_what_it_cannot_steer(tts):
    vectors = SteeringVectors({"Angry": {"attn_out.0": torch.ones(tts.hidden_size)}})
    with pytest.raises(ConfigError, match="no direction for 'Sad'; they hold Angry"):
        vector_steering(vectors, "Sad", 1.0)
    with pytest.raises(ConfigError, match="no direction at \\['attn_out.1'\\]"):
        vector_steering(vectors, "Angry", 1.0, hookpoints=["attn_out.1"])
    wide = vector_steering(SteeringVectors({"Angry": {"attn_out.0": torch.ones(tts.hidden_size + 1)}}), "Angry", 1.0)
    with pytest.raises(ConfigError, match="edits vectors of width"):
        steer(tts, wide)
    assert not tts.hooks.has_hooks()
