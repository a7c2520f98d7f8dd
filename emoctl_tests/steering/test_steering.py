"""Steering interventions on a tiny random MiniTTS: exact changes, α = 0 bit-identity, baselines, composition."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emoctl.backbones import Phase
from emoctl.backbones.loading import BackboneSpec
from emoctl.errors import ConfigError
from emoctl.sae import SAEConfig, TopKSAE
from emoctl.steering import (
    DirectionSteering, SAEFeatureSteering, global_steering, mean_difference_directions, random_feature_steering,
    sae_direction, steer,
)
from emoctl.store import ActivationStore, ActivationWriter, StoreSpec, UtteranceMeta
from emoctl_tests.helpers.tiny_tts import PROMPTS, random_tts
from emoctl_tests.helpers.tiny_tts import same_tokens as same, steered_tokens as generate

HOOK = "resid_pre.1"
D, D_SAE, K = 32, 64, 4
ALWAYS, NEVER = 3, 7  # latents whose encoder bias keeps them always in / always out of the top-k


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tts():
    return random_tts()


@pytest.fixture(scope="module")
def sae() -> TopKSAE:
    torch.manual_seed(1)
    model = TopKSAE(SAEConfig(d_in=D, d_sae=D_SAE, k=K, hook_name=HOOK, aux_coef=0.0))
    with torch.no_grad():
        model.b_enc[ALWAYS] = 1e3
        model.b_enc[NEVER] = -1e3
    return model.eval()


def hooked_inputs(tts, interventions, phases=(Phase.TEACHER_FORCED,)):
    """The hookpoint's input before and after steering, in one teacher-forced pass: (B, T, d) each."""
    seen = {}
    targets = [torch.arange(5) % tts.stop_token, torch.arange(3) % tts.stop_token]
    before = tts.hooks.add_reader(HOOK, lambda x, ctx: seen.__setitem__("before", x.clone()), phases=phases)
    handle = steer(tts, *interventions)
    after = tts.hooks.add_reader(HOOK, lambda x, ctx: seen.__setitem__("after", x.clone()), phases=phases)
    try:
        with torch.no_grad():
            tts.teacher_forced(PROMPTS[:2], targets)
    finally:
        for h in (before, handle, after):
            h.remove()
    return seen["before"], seen["after"]




def test_alpha_zero_leaves_generation_bit_identical_and_removal_unhooks(tts, sae):
    base = generate(tts)
    block = tts.lm.gpt.h[1]
    for mode in ("sae", "closed_form"):
        assert same(generate(tts, [SAEFeatureSteering(sae, [ALWAYS, NEVER], alpha=0.0, mode=mode)]), base)
        assert not same(generate(tts, [SAEFeatureSteering(sae, [ALWAYS, NEVER], alpha=30.0, mode=mode)]), base)
    assert not block._forward_pre_hooks and not tts.hooks.has_hooks()
    assert same(generate(tts), base)


def test_per_row_alpha_steers_only_its_rows(tts, sae):
    greedy = {"temperature": 0.0}
    base = generate(tts, **greedy)
    steered = generate(tts, [SAEFeatureSteering(sae, [NEVER], alpha=[0.0, 40.0, 0.0, 40.0])], **greedy)
    assert torch.equal(steered[0], base[0]) and torch.equal(steered[2], base[2])
    assert not torch.equal(steered[1], base[1]) and not torch.equal(steered[3], base[3])
    with pytest.raises(ConfigError, match="alpha has 3 entries but hookpoint resid_pre.1 runs 4 rows"):
        generate(tts, [SAEFeatureSteering(sae, [NEVER], alpha=[1.0, 2.0, 3.0])])


def test_schedule_gates_decode_steps(tts, sae):
    outs: dict[str, list[torch.Tensor]] = {"base": [], "steered": []}
    for key, schedule in (("base", [0.0]), ("steered", [0.0, 0.0, 1.0])):
        reader = tts.hooks.add_reader("lm_out", lambda x, ctx, key=key: outs[key].append(x.clone()))
        generate(tts, [SAEFeatureSteering(sae, [ALWAYS], alpha=50.0, schedule=schedule)], temperature=0.0)
        reader.remove()
    assert torch.equal(outs["base"][0], outs["steered"][0]) and torch.equal(outs["base"][1], outs["steered"][1])
    assert not torch.allclose(outs["base"][2], outs["steered"][2])


def test_error_preserving_change_is_exactly_alpha_times_atoms_when_no_other_latent_changes(tts, sae):
    alpha = 2.5
    x, y = hooked_inputs(tts, [SAEFeatureSteering(sae, [ALWAYS], alpha=alpha, phases=[Phase.TEACHER_FORCED])])
    _, idx = sae.encode(x)
    assert bool((idx == ALWAYS).any(-1).all())  # the steered latent is in every position's code already
    expected = alpha * sae.W_dec[ALWAYS].detach()
    torch.testing.assert_close(y - x, expected.expand_as(x), rtol=0, atol=1e-5)
    # The reconstruction error of x is not injected: the change has no component from x - x_hat.
    closed_x, closed_y = hooked_inputs(tts, [SAEFeatureSteering(sae, [ALWAYS], alpha=alpha, mode="closed_form",
                                                                phases=[Phase.TEACHER_FORCED])])
    torch.testing.assert_close(closed_y - closed_x, y - x, rtol=0, atol=1e-5)


def test_error_preserving_differs_from_closed_form_when_topk_membership_changes(tts, sae):
    alpha = 2.5
    x, y = hooked_inputs(tts, [SAEFeatureSteering(sae, [NEVER], alpha=alpha, phases=[Phase.TEACHER_FORCED])])
    vals, idx = sae.encode(x)  # (B, T, k)
    assert not bool((idx == NEVER).any())
    # NEVER enters the code with value alpha, so the smallest active latent of each position leaves it.
    smallest = vals.argmin(-1, keepdim=True)
    dropped_val = vals.gather(-1, smallest).squeeze(-1)  # (B, T)
    dropped_atom = sae.W_dec.detach()[idx.gather(-1, smallest).squeeze(-1)]  # (B, T, d)
    expected = alpha * sae.W_dec[NEVER].detach() - dropped_val[..., None] * dropped_atom
    torch.testing.assert_close(y - x, expected, rtol=0, atol=1e-5)
    closed = alpha * sae.W_dec[NEVER].detach()
    assert float((y - x - closed).norm(dim=-1).min()) > 1e-3  # every position differs from the closed form


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Neutral rows around 0, Angry rows shifted by +1 on the first 8 dimensions."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("steer") / "store"
    with ActivationWriter(path, StoreSpec(d_model=D, dtype="float32", hookpoint=HOOK)) as writer:
        for t in range(12):
            for emotion in ("Neutral", "Angry"):
                rows = rng.normal(size=(int(rng.integers(2, 6)), D)).astype(np.float32)
                if emotion == "Angry":
                    rows[:, :8] += 1.0
                writer.append(UtteranceMeta(f"{emotion}_{t}", f"t{t}", "0011", emotion), rows)
    return ActivationStore(path)


def test_mean_difference_is_the_row_mean_difference(store):
    directions = mean_difference_directions(store, chunk_rows=5, progress=False)
    rows = store.rows(np.arange(store.num_rows)).double()
    labels = np.repeat(store.utterances["emotion"].to_numpy(zero_copy_only=False), store.utterances["num_rows"])
    expected = rows[torch.from_numpy(labels == "Angry")].mean(0) - rows[torch.from_numpy(labels == "Neutral")].mean(0)
    torch.testing.assert_close(directions["Angry"], expected, rtol=0, atol=1e-12)
    assert list(directions) == ["Angry"]


def test_baselines_move_the_residual_as_far_as_the_sae_direction(tts, sae, store):
    features, alpha = [ALWAYS, 11, 20], -1.5
    mean_diff = mean_difference_directions(store, progress=False)["Angry"]
    tf = [Phase.TEACHER_FORCED]
    reference = abs(alpha) * float(sae_direction(sae, features).norm())
    methods = [SAEFeatureSteering(sae, features, alpha, mode="closed_form", phases=tf),
               global_steering(mean_diff, sae, features, alpha, phases=tf),
               random_feature_steering(sae, features, alpha, seed=3, phases=tf)]
    assert set(methods[2].features).isdisjoint(features) and len(methods[2].features) == 3
    for method in methods:
        x, y = hooked_inputs(tts, [method])
        torch.testing.assert_close((y - x).norm(dim=-1), torch.full(x.shape[:2], reference), rtol=1e-5, atol=0)
    # The global direction points along the mean difference.
    cosine = torch.nn.functional.cosine_similarity(methods[1].vector.double(), mean_diff, dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-6)


def test_composition_adds_the_changes_of_the_same_input(tts, sae):
    tf = [Phase.TEACHER_FORCED]
    a = SAEFeatureSteering(sae, [NEVER, 9], alpha=3.0, phases=tf)          # error-preserving, membership changes
    b = SAEFeatureSteering(sae, [ALWAYS], alpha=-2.0, mode="closed_form", phases=tf)
    c = DirectionSteering(torch.linspace(-1, 1, D), alpha=0.5, hookpoint=HOOK, phases=tf)
    x, y = hooked_inputs(tts, [a, b, c])
    parts = [hooked_inputs(tts, [i]) for i in (a, b, c)]
    for px, _ in parts:
        assert torch.equal(px, x)
    torch.testing.assert_close(y - x, sum(py - px for px, py in parts), rtol=0, atol=1e-5)


def test_bad_inputs_are_clear_errors(tts, sae, store, tmp_path):
    with pytest.raises(ConfigError, match=r"feature ids \[64\] are out of range.*d_sae=64"):
        SAEFeatureSteering(sae, [1, 64], alpha=1.0)
    narrow = TopKSAE(SAEConfig(d_in=16, d_sae=32, k=4, hook_name=HOOK))
    with pytest.raises(ConfigError, match=f"width 16.*{HOOK}.*width {D}"):
        steer(tts, SAEFeatureSteering(narrow, [0], alpha=1.0))
    with pytest.raises(ConfigError, match="resid_pre.9"):
        steer(tts, SAEFeatureSteering(sae, [0], alpha=1.0, hookpoint="resid_pre.9"))
    assert not tts.hooks.has_hooks()
    with pytest.raises(ConfigError, match="finite"):
        SAEFeatureSteering(sae, [0], alpha=float("nan"))
    path = tmp_path / "no_neutral"
    with ActivationWriter(path, StoreSpec(d_model=D, dtype="float32")) as writer:
        writer.append(UtteranceMeta("a", "t", "0011", "Angry"), np.ones((2, D), np.float32))
    with pytest.raises(ConfigError, match="no 'Neutral' rows"):
        mean_difference_directions(ActivationStore(path), progress=False)


def test_attribute_reports_zero_shift_at_alpha_zero_and_a_shift_when_steered(tmp_path, sae):
    import csv

    from emoctl.io.provenance import digest_path
    from emoctl.sae import save_pretrained
    from emoctl.selection import FeatureSet, SelectedFeature
    from emoctl.commands.attribute import PROBES, attribute_features
    from emoctl_tests.helpers.tiny_tts import random_codec

    backbone = random_tts(codec=random_codec()).float()
    backbone.save(tmp_path / "tts")
    save_pretrained(sae, tmp_path / "sae")
    stats = dict(delta=1.0, ci_low=1.0, ci_high=1.0, p_value=1e-9, q_value=1e-8, emotion_only=9, neutral_only=0,
                 both=0, neither=0, utt_fire_rate_emotion=1.0, utt_fire_rate_neutral=0.0, row_fire_rate_emotion=0.5,
                 row_fire_rate_neutral=0.0, mean_act_emotion=2.0, mean_act_neutral=None)
    digest = {"digest": digest_path(tmp_path / "sae")}  # the SAE the sets index, as `emoctl select` records it
    for emotion, ids in (("Angry", [NEVER, ALWAYS]), ("Sad", [ALWAYS])):
        FeatureSet(emotion, "Neutral", [SelectedFeature(id=i, **stats) for i in ids], sae=digest).save(
            tmp_path / "sel" / f"features_{emotion}.json")
    rows = attribute_features(str(tmp_path / "sae"), str(tmp_path / "sel"), str(tmp_path / "out"),
                              backbone=BackboneSpec(path=str(tmp_path / "tts")), alphas={"Angry": 60.0, "Sad": 0.0}, texts=["hi there", "no.", "a red cup"],
                              max_new_tokens=20, batch_size=4, n_bootstrap=200, progress=False)
    assert [(r["emotion"], r["feature"]) for r in rows[::len(PROBES)]] == [("Angry", NEVER), ("Angry", ALWAYS),
                                                                           ("Sad", ALWAYS)]
    sad = [r for r in rows if r["emotion"] == "Sad"]
    # α = 0: the very same audio (F0 pairs of unvoiced random-codec clips are dropped as NaN)
    assert all(r["mean_before"] == r["mean_after"] and r["n"] + r["n_dropped"] == 6 for r in sad)
    assert all(r["n"] == 6 for r in sad if r["probe"] != "f0_mean_hz")
    angry_duration = [r for r in rows if r["emotion"] == "Angry" and r["probe"] == "duration_s"]
    assert any(r["mean_diff"] != 0.0 for r in rows if r["emotion"] == "Angry")
    assert all(r["ci_low"] <= r["mean_diff"] <= r["ci_high"] for r in angry_duration)
    out = tmp_path / "out"
    with open(out / "attribution.csv") as f:
        assert len(list(csv.DictReader(f))) == 3 * len(PROBES)
    assert "| 7 |" in (out / "attribution.md").read_text()
    assert (out / "attribution.png").read_bytes()[:4] == b"\x89PNG"
    # The first table lists every feature; α = 0 moves nothing, so no Sad shift is bold (its interval is [0, 0]).
    from emoctl.reports.readme_tables import markdown_tables

    summary = markdown_tables((out / "attribution.md").read_text())[0]
    assert [line.split(" | ")[:2] for line in summary[2:]] == [["| Angry", str(NEVER)], ["| Angry", str(ALWAYS)],
                                                               ["| Sad", str(ALWAYS)]]
    assert "**" not in summary[4] and "+0 [+0, +0]" in summary[4]
    record = json.loads((out / "attribution_info.json").read_text())["provenance"]
    assert set(record["inputs"]) == {"backbone", "sae", "feature_sets"}


@pytest.mark.parametrize("bad, needle", [({"m": -1}, "m=-1"), ({"n_texts": 0}, "n_texts=0"),
                                         ({"n_bootstrap": 0}, "n_bootstrap=0"), ({"top_k": 0}, "top_k=0"),
                                         ({"alphas": {"Angry": float("nan")}}, "alphas=")])
def test_attribute_refuses_nonsense_values_before_loading_anything(bad, needle, tmp_path):
    from emoctl.commands.attribute import attribute_features

    with pytest.raises(ConfigError, match=needle):
        attribute_features(str(tmp_path / "no_sae"), str(tmp_path / "no_sel"), str(tmp_path / "out"), **bad)
    assert not (tmp_path / "out").exists()


def test_bench_sae_refuses_an_empty_batch():
    from emoctl.bench.sae import bench_sae

    with pytest.raises(ConfigError, match="batch_size=0"):
        bench_sae(batch_size=0)
