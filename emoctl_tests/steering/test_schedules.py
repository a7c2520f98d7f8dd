"""Schedules users write (switch, ramp, segments) on the tiny random and the committed mini TTS: closed forms,
bit-identity before a switch, the steered change after it, segments summing, and one-paragraph errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

from emoctl.backbones import Phase, Prompt
from emoctl.backbones.loading import load_backbone
from emoctl.emosteer import EmoSteer, EmoSteerConfig
from emoctl.emosteer.steer import EmoSteerShift, shift_for
from emoctl.errors import ConfigError
from emoctl.sae import SAEConfig, TopKSAE
from emoctl.steering import DirectionSteering, SAEFeatureSteering, sae_direction, steer
from emoctl.steering.schedules import SegmentPlan, StepSchedule, parse_schedule, parse_step_schedule
from emoctl_tests.helpers.cli import assert_one_paragraph_error, parse_emoctl, run_emoctl
from emoctl_tests.helpers.tiny_tts import EMOTIONS, PROMPTS, random_tts

pytestmark = pytest.mark.usefixtures("one_thread")

HOOK = "resid_pre.1"
D = 32
SAMPLING = {"max_new_tokens": 40, "seed": 11, "temperature": 1.0}


@pytest.fixture(scope="module")
def tts():
    return random_tts()


def unit(seed: int, d: int = D) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def traced(tts, interventions, hook=HOOK):
    """Generate PROMPTS under ``interventions``, keeping the hookpoint's input and output at every decode step."""
    seen: dict[str, list[torch.Tensor]] = {"in": [], "out": [], "step": []}
    before = tts.hooks.add_reader(hook, lambda x, ctx: (seen["in"].append(x.clone()), seen["step"].append(ctx.step)),
                                  phases=(Phase.DECODE,))
    handle = steer(tts, *interventions) if interventions else None
    after = tts.hooks.add_reader(hook, lambda x, ctx: seen["out"].append(x.clone()), phases=(Phase.DECODE,))
    try:
        with torch.no_grad():
            out = tts.generate(PROMPTS, **SAMPLING)
    finally:
        for h in (before, handle, after):
            if h is not None:
                h.remove()
    assert seen["step"] == list(range(len(seen["step"])))
    return out, seen


# ------------------------------------------------------------- closed forms
def test_seconds_map_to_the_first_decode_step_at_or_after_them_for_the_token_rate():
    for rate in (50.0, 25.0, 86.0):
        for k in range(200):  # k / rate in floating point is not always k / rate: 0.3 * 50 = 15.000000000000002
            spec = parse_schedule({"switch": {"at_s": k / rate}})
            steps = spec.resolve(rate, 200).multipliers
            assert steps.index(1.0) == k if k else steps[0] == 1.0
    assert parse_schedule({"switch": {"at_s": 0.5}}).resolve(50.0, 40).multipliers.index(1.0) == 25
    assert parse_schedule({"switch": {"at_s": 0.51}}).resolve(50.0, 40).multipliers.index(1.0) == 26
    assert parse_schedule({"switch": {"at_s": 0.3}}).resolve(50.0, 40).multipliers.index(1.0) == 15


def test_a_switch_is_before_then_after_and_its_reverse():
    forward = parse_schedule('{"switch": {"at_step": 4}}').resolve(50.0, 10)
    assert forward.multipliers == (0.0,) * 4 + (1.0,) * 6 and forward.kind == "switch"
    back = parse_schedule("switch: {at_step: 4, before: 1, after: 0}").resolve(50.0, 10)
    assert back.multipliers == (1.0,) * 4 + (0.0,) * 6
    assert json.loads(json.dumps(back.record()))["spec"] == {"switch": {"at_step": 4, "before": 1, "after": 0}}


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_a_ramp_is_its_closed_form_at_every_step(shape):
    steps = parse_schedule({"ramp": {"start_step": 3, "end_s": 0.2, "shape": shape, "from": -1, "to": 2}}
                           ).resolve(50.0, 16).multipliers  # end_s 0.2 at 50/s: step 10
    for t, value in enumerate(steps):
        u = min(max((t - 3) / 7, 0.0), 1.0)
        if shape == "cosine":
            u = 0.5 - 0.5 * math.cos(math.pi * u)
        assert value == pytest.approx(-1 + 3 * u, abs=1e-12), (t, value)
    assert steps[3] == -1 and steps[10] == steps[15] == 2


def test_segments_fill_their_defaults_and_give_complementary_schedules_and_a_step_mix():
    plan = parse_schedule({"segments": [{"emotion": "Neutral", "alpha": 0, "end_s": 0.1},
                                        {"emotion": "Angry", "alpha": 3, "end_step": 8},
                                        {"emotion": "Sad", "alpha": -2, "start_step": 10}]}).resolve(50.0, 12)
    assert isinstance(plan, SegmentPlan)
    assert [(s.emotion, s.start, s.end) for s in plan.segments] == [("Neutral", 0, 5), ("Angry", 5, 8), ("Sad", 10, 12)]
    masks = torch.tensor([s.schedule for s in plan.segments])
    assert bool((masks.sum(0) <= 1).all()) and masks[:, 8:10].sum() == 0  # complementary; a gap is unsteered
    mixes = plan.step_mixes()
    assert mixes[:5] == [{}] * 5 and mixes[5:8] == [{"Angry": 3.0}] * 3 and mixes[8:10] == [{}, {}]
    assert mixes[10:] == [{"Sad": -2.0}] * 2
    built = plan.interventions(lambda emotion, alpha, schedule: (emotion, alpha, schedule))
    assert [b[:2] for b in built] == [("Angry", 3.0), ("Sad", -2.0)]  # α 0 changes nothing: no intervention


# ------------------------------------------------------ on the tiny random TTS
def test_decode_steps_before_a_switch_are_bit_identical_and_after_it_carry_the_constant_alpha_change(tts):
    v = unit(0)
    base, plain = traced(tts, [])
    switch_step = 3
    steps = parse_schedule({"switch": {"at_s": switch_step / tts.token_rate}}).resolve(tts.token_rate, 40)
    out, seen = traced(tts, [DirectionSteering(v, 4.0, HOOK, schedule=steps.schedule)])
    _, constant = traced(tts, [DirectionSteering(v, 4.0, HOOK)])
    for t in range(switch_step):  # hooked states and every token they led to equal unsteered generation
        assert torch.equal(seen["in"][t], plain["in"][t]) and torch.equal(seen["out"][t], plain["out"][t])
    for b, (a, u) in enumerate(zip(out.tokens, base.tokens)):
        n = min(switch_step + 1, len(u))  # the prefill's token and one per unsteered decode step
        assert torch.equal(a[:n], u[:n]), b
    for t in range(switch_step, len(seen["in"])):
        assert torch.allclose(seen["out"][t] - seen["in"][t], 4.0 * v.expand_as(seen["in"][t]), atol=1e-5)
    assert torch.allclose(constant["out"][0] - constant["in"][0], seen["out"][switch_step] - seen["in"][switch_step],
                          atol=1e-5)  # the same change as constant-α steering, once it is on
    assert any(not torch.equal(a, u) for a, u in zip(out.tokens, base.tokens)), "the switch changed nothing"


def test_a_ramp_scales_the_change_by_its_multiplier_at_each_step(tts):
    v = unit(1)
    steps = parse_schedule({"ramp": {"start_step": 1, "end_step": 5, "shape": "cosine"}}).resolve(tts.token_rate, 40)
    _, seen = traced(tts, [DirectionSteering(v, 2.0, HOOK, schedule=steps.schedule)])
    for t in range(len(seen["in"])):
        change = seen["out"][t] - seen["in"][t]
        assert torch.allclose(change, 2.0 * steps.multipliers[t] * v.expand_as(change), atol=1e-5), t
    assert torch.equal(seen["out"][0], seen["in"][0])  # multiplier 0: untouched bits


def test_segments_of_sae_features_and_directions_compose_to_the_sum_of_their_changes(tts):
    torch.manual_seed(1)
    sae = TopKSAE(SAEConfig(d_in=D, d_sae=64, k=4, hook_name=HOOK, aux_coef=0.0)).eval()
    angry, sad = [3, 5], [7]
    plan = parse_schedule({"segments": [{"emotion": "Angry", "alpha": 5, "end_step": 2},
                                        {"emotion": "Sad", "alpha": -3, "start_step": 2, "end_step": 4},
                                        {"emotion": "Neutral", "alpha": 1.5, "start_step": 4}]}).resolve(
        tts.token_rate, 40)
    features = {"Angry": angry, "Sad": sad}
    neutral = unit(2)

    def build(emotion, alpha, schedule):
        if emotion == "Neutral":  # the global mean-difference method: a dense direction
            return DirectionSteering(neutral, alpha, HOOK, schedule=schedule)
        return SAEFeatureSteering(sae, features[emotion], alpha, mode="closed_form", schedule=schedule)

    _, seen = traced(tts, plan.interventions(build))
    per_step = {"Angry": 5 * sae_direction(sae, angry), "Sad": -3 * sae_direction(sae, sad), "Neutral": 1.5 * neutral}
    for t in range(len(seen["in"])):
        segment = next(s for s in plan.segments if s.start <= t < s.end)
        change = seen["out"][t] - seen["in"][t]
        assert torch.allclose(change, per_step[segment.emotion].expand_as(change), atol=1e-4), t


def layer(seed: int = 0) -> EmoSteer:
    torch.manual_seed(seed)
    model = EmoSteer(EmoSteerConfig(hidden_size=D, emotions=list(EMOTIONS)))
    with torch.no_grad():
        model.weight.normal_(0.0, 20.0)
    return model.eval()


def test_emoshift_takes_a_schedule_and_segments_as_a_per_step_emotion_mix(tts):
    steer_layer = layer()
    eps = steer_layer.config.epsilon
    switch = parse_schedule({"switch": {"at_step": 3}}).resolve(tts.token_rate, 40)
    shift = shift_for(steer_layer, ["Angry"] * len(PROMPTS), 2.0, switch)
    base, plain = traced(tts, [], hook="lm_out")
    out, seen = traced(tts, [shift], hook="lm_out")
    for t in range(3):
        assert torch.equal(seen["out"][t], plain["out"][t])
    for t in range(3, len(seen["in"])):
        x = seen["in"][t]
        expected = eps * steer_layer.shift(x, steer_layer.coefficients(["Angry"] * x.shape[0], 2.0))
        assert torch.allclose(seen["out"][t] - x, expected, atol=1e-5), t
    plan = parse_schedule({"segments": [{"emotion": "Angry", "alpha": 2, "end_step": 2},
                                        {"emotion": "Sad", "alpha": 3, "start_step": 4}]}).resolve(tts.token_rate, 40)
    _, mixed = traced(tts, [shift_for(steer_layer, None, 1.0, plan)], hook="lm_out")
    for t in range(len(mixed["in"])):
        x, mix = mixed["in"][t], plan.step_mixes()[t]
        expected = eps * steer_layer.shift(x, steer_layer.coefficients([mix] * x.shape[0], 1.0))
        assert torch.allclose(mixed["out"][t] - x, expected, atol=1e-5), t
        if not mix:
            assert torch.equal(mixed["out"][t], x)
    with pytest.raises(ConfigError, match="emotions=None with segments"):
        shift_for(steer_layer, ["Angry"], 1.0, plan)
    with pytest.raises(ConfigError, match="not both"):
        EmoSteerShift(steer_layer, ["Angry"], step_mixes=[{"Sad": 1.0}])


# --------------------------------------------------- the committed mini TTS
@pytest.fixture(scope="module")
def mini():
    return load_backbone("mini_tts")


def test_the_committed_mini_tts_speaks_50_tokens_a_second_and_caps_at_its_position_table(mini):
    assert mini.token_rate == 50.0 == mini.codec.frame_rate
    cap = mini.lm.config.max_speech_tokens
    assert mini.speech_token_cap(10 ** 6) == cap and mini.speech_token_cap(300) == 300
    spec = parse_schedule({"switch": {"at_s": cap / 50.0}})
    with pytest.raises(ConfigError, match=rf"at_s=20 \({cap} decode steps at 50 tokens/s\) is past the token cap"):
        spec.resolve_for(mini, 10 ** 6)
    assert spec.resolve(50.0, cap + 1).multipliers[-1] == 1.0


def test_neutral_to_angry_at_half_a_second_with_the_committed_emoshift_layer(mini):
    """The shipped layer switched on at 0.5 s: the first 26 tokens (prefill's and 25 decode steps') are those of
    unsteered generation, and the rest follow the layer."""
    steer_layer = EmoSteer.load("emoctl/assets/emoshift_mini")
    prompts = [Prompt("The birch canoe slid on the smooth planks.", s, "Neutral") for s in mini.speakers[:2]]
    steps = parse_schedule({"switch": {"at_s": 0.5}}).resolve_for(mini, 300)
    assert steps.multipliers.index(1.0) == 25
    base = mini.generate(prompts, temperature=0, max_new_tokens=300)
    shift = shift_for(steer_layer, ["Angry"] * len(prompts), 3.0, steps)
    with steer(mini, shift):
        switched = mini.generate(prompts, temperature=0, max_new_tokens=300)
    with steer(mini, shift_for(steer_layer, ["Angry"] * len(prompts), 3.0, None)):
        constant = mini.generate(prompts, temperature=0, max_new_tokens=300)
    for a, u, c in zip(switched.tokens, base.tokens, constant.tokens):
        assert len(u) > 40 and torch.equal(a[:26], u[:26])
        assert not torch.equal(c[:26], u[:26])  # steering from the start changes the first half second
    assert any(not torch.equal(a, u) for a, u in zip(switched.tokens, base.tokens))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("schedule, needles", [
    ({"switch": {"at_s": 0.9}}, ["at_s=0.9", "past the token cap", "40 decode steps", "max_new_tokens"]),
    ({"segments": [{"emotion": "Angry", "alpha": 1, "start_step": 30, "end_step": 41}]},
     ["segments[0]", "end_step=41", "past the token cap"]),
    ({"segments": [{"emotion": "Angry", "alpha": 1, "end_step": 10}, {"emotion": "Sad", "alpha": 1, "start_step": 6}]},
     ["segments[1]", "start_step=6", "before segments[0] ends at step 10", "overlap"]),
    ({"segments": [{"emotion": "Angry", "alpha": 1, "start_step": 9}, {"emotion": "Sad", "alpha": 1, "start_s": 0.1}]},
     ["segments[1]", "start_s=0.1", "out of order"]),
    ({"switch": {"at_s": 0.1, "after": float("nan")}}, ["after=nan", "finite"]),
    ({"segments": [{"emotion": "Angry", "alpha": float("inf")}]}, ["segments[0]", "alpha=inf", "finite"]),
    ({"switch": {"at_ms": 500}}, ["at_ms=500", "unknown unit", "at_step", "at_s"]),
    ({"ramp": {"start_s": 0, "end_s": 0.4, "shape": "cubic"}}, ["shape='cubic'", "linear or cosine"]),
    ({"swich": {"at_s": 0.5}}, ["unknown kind 'swich'", "switch, ramp, segments"]),
    ({"switch": {"at_s": -0.5}}, ["at_s=-0.5", "negative"]),
    ({"switch": {"at_step": 2.5}}, ["at_step=2.5", "whole decode step"]),
    ({"ramp": {"start_step": 5, "end_step": 5}}, ["end_step=5", "must come after start_step=5"]),
    ({"switch": {"at_s": 0.5, "at_step": 3}}, ["at_s=0.5 and at_step=3", "keep one"]),
    ({"switch": {"at_s": 0.5, "when": 3}}, ["when=3", "unknown key"]),
    ("{switch: [", ["neither JSON nor YAML"]),
])
def test_a_bad_schedule_gets_one_paragraph_naming_the_value(schedule, needles):
    with pytest.raises(ConfigError) as caught:
        parse_schedule(schedule).resolve(50.0, 40)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("schedule")
    for needle in needles:
        assert needle in message, message


def test_commands_that_score_one_emotion_refuse_segments_rather_than_ignore_their_emotions():
    with pytest.raises(ConfigError, match="emoctl attribute steers each clip toward one emotion"):
        parse_step_schedule({"segments": [{"emotion": "Angry", "alpha": 2}]}, "emoctl attribute")
    assert parse_step_schedule(None, "emoctl attribute") is None
    assert isinstance(parse_step_schedule('{"switch": {"at_s": 0.5}}', "x").resolve(50.0, 30), StepSchedule)


def test_steer_emoshift_refuses_a_bad_schedule_before_generating_anything(tmp_path):
    layer_dir = "emoctl/assets/emoshift_mini"
    refused = run_emoctl("steer", "emoshift", "--layer", layer_dir, "--out_dir", str(tmp_path / "a"),
                         "--schedule", '{"switch": {"at_s": 30}}')
    assert_one_paragraph_error(refused, "at_s=30 (1500 decode steps at 50 tokens/s) is past the token cap",
                               "600 decode steps")
    for schedule, needle in (('{"switch": {"at_ms": 5}}', "unknown unit in at_ms=5"),
                             ("switch: {at_s: .nan}", "at_s=nan must be a finite number"),
                             ('{"segments": [{"emotion": "Sad", "alpha": 2}]}', "give a switch or a ramp")):
        assert_one_paragraph_error(parse_emoctl("steer", "emoshift", "--layer", layer_dir, "--out_dir",
                                                str(tmp_path / "b"), "--schedule", schedule), needle)
    assert_one_paragraph_error(parse_emoctl("attribute", "--sae", "emoctl/assets/sae_mini", "--selection",
                                            "emoctl/assets/select_mini", "--out_dir", str(tmp_path / "c"),
                                            "--schedule", '{"ramp": {"start_s": 1, "end_s": 0.5}}'),
                               "end_s=0.5 (step 25) must come after start_s=1 (step 50)")


@pytest.mark.slow
def test_steer_emoshift_records_the_resolved_schedule_it_steered_by(tmp_path):
    """The sweep's info file says how it was steered: the schedule as written and per decode step."""
    result = run_emoctl("steer", "emoshift", "--layer", "emoctl/assets/emoshift_mini", "--out_dir", str(tmp_path),
                        "--alphas", "[3.0]", "--emotions", "[Angry]", "--protocol.speakers", '["0017"]',
                        "--protocol.n_texts", "1", "--protocol.reference_clips", "1",
                        "--protocol.sampling.max_new_tokens", "120", "--progress", "false",
                        "--schedule", '{"ramp": {"start_s": 0.2, "end_step": 30, "shape": "cosine"}}')
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "emoshift_sweep_info.json").read_text())
    expected = parse_schedule({"ramp": {"start_s": 0.2, "end_step": 30, "shape": "cosine"}}).resolve(50.0, 120)
    assert info["schedule"] == json.loads(json.dumps(expected.record()))
    assert info["schedule"]["multipliers"][10] == 0.0 and info["schedule"]["multipliers"][30] == 1.0
    assert info["provenance"]["protocol"]["schedule"] == {"ramp": {"start_s": 0.2, "end_step": 30, "shape": "cosine"}}
