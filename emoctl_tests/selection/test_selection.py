"""Emotion-feature selection on a real store and a hand-built SAE with one planted anger latent."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom

from emoctl_tests.helpers.cli import run_emoctl
from emoctl.errors import ConfigError
from emoctl.sae import SAEConfig, TopKSAE, save_pretrained
from emoctl.selection import (
    FeatureSet, benjamini_hochberg, bootstrap_delta_ci, collect_indicators, delta_scores, mcnemar_exact,
    pair_utterances,
)
from emoctl.commands.select import select_features
from emoctl.selection.feature_set import feature_set_path
from emoctl.store import ActivationStore, ActivationWriter, StoreSpec, UtteranceMeta
from emoctl_tests.helpers.planted import D, D_SAE, EMOTIONS, K, PLANTED, planted_sae, write_store

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store_and_sae(tmp_path_factory):
    root = tmp_path_factory.mktemp("sel")
    sae, _ = planted_sae()
    save_pretrained(sae, root / "sae")
    return write_store(root / "store", n_texts=20), root / "sae", sae


def test_planted_anger_latent_scores_one_and_others_near_zero(store_and_sae):
    store_path, _, sae = store_and_sae
    store = ActivationStore(store_path)
    ind = collect_indicators(store, sae, chunk_rows=7, progress=False)  # 7-row chunks split utterances
    # Compare the packed matrix with a direct per-utterance computation.
    table = store.utterances
    for u in (0, 1, 2, 57, ind.num_utterances - 1):
        vals, idx = sae.encode(store.segment(table["utt_id"][u].as_py()).float())
        expected = np.zeros(D_SAE, bool)
        expected[idx[vals > 0].numpy()] = True
        np.testing.assert_array_equal(ind.dense([u])[0], expected)
    pairs = pair_utterances(ind.utt_id, ind.emotion, ind.pair_key)
    assert set(pairs) == {"Angry", "Happy"} and pairs["Angry"].n_pairs == 40 and pairs["Angry"].unpaired == 0
    angry = delta_scores(ind.dense(pairs["Angry"].emotional), ind.dense(pairs["Angry"].neutral_twin))
    happy = delta_scores(ind.dense(pairs["Happy"].emotional), ind.dense(pairs["Happy"].neutral_twin))
    assert angry.delta[PLANTED] == 1.0 and angry.emotion_only[PLANTED] == 40 and angry.neutral_only[PLANTED] == 0
    assert happy.delta[PLANTED] == 0.0 and happy.both[PLANTED] == 0
    others = np.delete(angry.delta, PLANTED)
    assert np.abs(others).max() < 0.35 and abs(others.mean()) < 0.1
    # Firing statistics: the planted latent fires on exactly the two planted rows of each angry utterance,
    # with value 10 - 2 = 8.
    assert ind.rows_fired[ind.emotion_row("Angry"), PLANTED] == 80
    assert ind.rows_fired[ind.emotion_row("Neutral"), PLANTED] == 0
    assert ind.mean_value_when_firing("Angry")[PLANTED] == pytest.approx(8.0)


def test_mcnemar_matches_the_binomial_by_hand():
    # b = 8, c = 1: two-sided exact p = 2 * P(X <= 1), X ~ Bin(9, 1/2) = 2 * (1 + 9) / 512.
    assert mcnemar_exact(8, 1) == pytest.approx(20 / 512, rel=1e-12)
    assert mcnemar_exact(1, 8) == pytest.approx(2 * binom.cdf(1, 9, 0.5), rel=1e-12)
    p = mcnemar_exact(np.array([8, 0, 5, 40]), np.array([1, 0, 5, 0]))
    np.testing.assert_allclose(p, [20 / 512, 1.0, 1.0, 2 * 0.5 ** 40], rtol=1e-12)


def test_benjamini_hochberg_by_hand():
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]))
    # sorted p: .01 .03 .04 .5 -> p*n/rank: .04 .06 .0533 .5 -> cumulative min from the top: .04 .0533 .0533 .5
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.5])


def test_bootstrap_ci_contains_delta_and_shrinks_with_more_pairs():
    rng = np.random.default_rng(3)
    widths = []
    for n in (50, 800):
        diff = rng.choice([-1, 0, 1], p=[0.1, 0.5, 0.4], size=(n, 2))
        diff[:, 1] = 0
        low, high = bootstrap_delta_ci(diff, n_bootstrap=2000, seed=0)
        delta = diff.mean(0)
        assert low[0] < delta[0] < high[0]
        assert low[1] == high[1] == 0.0  # no discordant pairs: a point interval
        widths.append(high[0] - low[0])
        # Close to the normal approximation of the mean's interval.
        assert widths[-1] == pytest.approx(2 * 1.96 * diff[:, 0].std() / math.sqrt(n), rel=0.15)
    assert widths[1] < widths[0] / 3  # 16x the pairs: about a quarter of the width
    again = bootstrap_delta_ci(diff, n_bootstrap=2000, seed=0)
    assert np.array_equal(again[0], low)  # seeded


def test_missing_neutral_and_unpaired_emotions_are_clear_errors():
    with pytest.raises(ConfigError, match="neutral emotion 'Neutral'"):
        pair_utterances(["a", "b"], ["Angry", "Sad"], ["k1", "k1"])
    with pytest.raises(ConfigError, match="'Sad'.*pair_key"):
        pair_utterances(["a", "b", "c"], ["Angry", "Neutral", "Sad"], ["k1", "k1", "k2"])
    with pytest.raises(ConfigError, match="Surprise"):
        pair_utterances(["a", "b"], ["Angry", "Neutral"], ["k1", "k1"], emotions=["Surprise"])


def test_sae_of_another_width_is_a_clear_error(store_and_sae):
    store_path, _, _ = store_and_sae
    other = TopKSAE(SAEConfig(d_in=D + 1, d_sae=D_SAE, k=K, hook_name="resid_pre.1"))
    with pytest.raises(ConfigError, match=f"d_in={D + 1}.*d_model={D}"):
        collect_indicators(ActivationStore(store_path), other, progress=False)


def test_select_picks_the_planted_latent_and_honours_alpha(store_and_sae, tmp_path):
    store_path, sae_path, _ = store_and_sae
    result = select_features(str(store_path), str(sae_path), str(tmp_path), m=3, alpha=0.01, n_bootstrap=500,
                             progress=False)
    angry = result["Angry"]
    assert angry.feature_ids == [PLANTED]  # the only latent with q < 0.01
    f = angry.features[0]
    assert (f.delta, f.ci_low, f.ci_high) == (1.0, 1.0, 1.0)
    assert f.p_value == pytest.approx(2 * 0.5 ** 40) and f.q_value <= f.p_value * D_SAE
    assert result["Happy"].feature_ids == [] and "only 0 of 3" in result["Happy"].selection["note"]
    assert FeatureSet.load(feature_set_path(tmp_path, "Angry")).features == angry.features


def test_select_end_to_end_through_the_cli(store_and_sae, tmp_path):
    store_path, sae_path, _ = store_and_sae
    out = tmp_path / "sel"
    config = tmp_path / "select.yaml"
    config.write_text(f"store: {store_path}\nsae: {sae_path}\nout_dir: {out}\nm: 6\nn_bootstrap: 300\n")
    result = run_emoctl("select", "--config", str(config), "--chunk_rows=16")
    assert result.returncode == 0, result.stderr
    for emotion in ("Angry", "Happy"):
        data = json.loads((out / f"features_{emotion}.json").read_text())
        assert data["format"] == "emoctl.feature_set" and len(data["feature_ids"]) <= 6
        png = (out / f"delta_hist_{emotion}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    angry = json.loads((out / "features_Angry.json").read_text())
    assert angry["feature_ids"][0] == PLANTED and angry["selection"]["n_pairs"] == 40
    assert angry["sae"]["d_sae"] == D_SAE and angry["store"]["hookpoint"] == "resid_pre.1"
    assert "| 1 | 5 | +1.000 |" in (out / "selection.md").read_text()
    assert (out / "selection.csv").read_text().splitlines()[0].startswith("emotion,score,rank,id,delta")
    assert not list(out.glob(".*tmp"))
    bad = run_emoctl("select", "--config", str(config), "--neutral=Calm")
    assert bad.returncode == 1 and "'Calm'" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------- per-step scores against the any-step indicator
RATE_D, RATE_K, STEPS = 64, 4, 150
PLANTED_RATES = {"Angry": (10, 11), "Happy": (20,)}  # latents that fire more often under their emotion
P_EMOTION, P_NEUTRAL = 0.73, 0.12  # per decode step


def write_rate_store(path: Path, n_texts: int = 12, speakers: int = 2, seed: int = 0) -> Path:
    """Rows of uniform(0, 1) background (each latent is in the top 4 on about 6% of steps, so in almost every
    150-step utterance) plus planted latents at 5.0 on a share of steps: P_EMOTION of their emotion's steps,
    P_NEUTRAL of every other utterance's.  Utterances are long enough that every planted latent fires
    somewhere in nearly every utterance of both conditions: the any-step indicator saturates."""
    rng = np.random.default_rng(seed)
    spec = StoreSpec(d_model=RATE_D, dtype="float32", hookpoint="resid_pre.1", layer=1, backbone="test")
    with ActivationWriter(path, spec, shard_rows=1000) as writer:
        for t in range(n_texts):
            for s in range(speakers):
                for emotion in EMOTIONS:
                    n = STEPS + int(rng.integers(-20, 20))
                    rows = rng.uniform(0, 1, size=(n, RATE_D)).astype(np.float32)
                    for owner, latents in PLANTED_RATES.items():
                        rate = P_EMOTION if emotion == owner else P_NEUTRAL
                        for latent in latents:
                            rows[rng.random(n) < rate, latent] = 5.0
                    spk = f"{11 + s:04d}"
                    writer.append(UtteranceMeta(f"{spk}_{emotion}_{t:03d}", f"t{t:03d}", spk, emotion,
                                                condition=f"prompt={emotion}"), rows)
    return path


def identity_sae() -> TopKSAE:
    sae = TopKSAE(SAEConfig(d_in=RATE_D, d_sae=RATE_D, k=RATE_K, hook_name="resid_pre.1", aux_coef=0.0))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(RATE_D))
        sae.W_dec.copy_(torch.eye(RATE_D))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_rate_and_mass_scores_find_planted_latents_that_the_any_step_score_misses(tmp_path):
    store = write_rate_store(tmp_path / "store")
    save_pretrained(identity_sae(), tmp_path / "sae")
    chosen = {}
    for score in ("any_step", "rate", "mass"):
        chosen[score] = select_features(str(store), str(tmp_path / "sae"), str(tmp_path / score), m=3, score=score,
                                        n_bootstrap=200, n_stability=100, progress=False)
    report = {score: {e: [(f.id, round(f.delta, 3), round(f.delta_any_step, 3)) for f in fs.features]
                      for e, fs in sets.items()} for score, sets in chosen.items()}
    print(report)
    for emotion, latents in PLANTED_RATES.items():
        for score in ("rate", "mass"):
            fs = chosen[score][emotion]
            assert fs.feature_ids[:len(latents)] == sorted(latents, key=lambda i: -next(
                f.delta for f in fs.features if f.id == i)), report
            for f in fs.features[:len(latents)]:
                assert f.p_value < 1e-4 and f.stability == 1.0 and f.delta_any_step <= 0.05, report
            assert fs.selection["score"] == score and fs.selection["test"] == "Wilcoxon signed-rank"
        rate = chosen["rate"][emotion].features[0]
        assert rate.delta == pytest.approx(P_EMOTION - P_NEUTRAL, abs=0.08), report
        # the seed's indicator saturates: the planted latents fire in (nearly) every utterance of both conditions
        assert not set(latents) & set(chosen["any_step"][emotion].feature_ids), report
        held = chosen["rate"][emotion].selection["held_out"]["features"]
        assert {h["id"] for h in held[:len(latents)]} == set(latents)
        assert all(h["delta_held_out"] > 0.4 for h in held[:len(latents)]), held
    md = (tmp_path / "rate" / "selection.md").read_text(encoding="utf-8")
    assert "Wilcoxon signed-rank" in md and "Δ held out" in md and "stability" in md
    # The CSVs carry the same numbers: stability per selected latent, the split-half Δ per half-selected latent.
    import csv

    summary = list(csv.DictReader((tmp_path / "rate" / "selection.csv").open()))
    assert {float(r["stability"]) for r in summary if int(r["id"]) in PLANTED_RATES["Angry"]} == {1.0}
    held_rows = list(csv.DictReader((tmp_path / "rate" / "selection_held_out.csv").open()))
    angry = [r for r in held_rows if r["emotion"] == "Angry"]
    expected = chosen["rate"]["Angry"].selection["held_out"]["features"]
    assert [int(r["id"]) for r in angry] == [h["id"] for h in expected]
    assert [float(r["delta_held_out"]) for r in angry] == pytest.approx([h["delta_held_out"] for h in expected])
    assert {r["score"] for r in held_rows} == {"rate"}
    assert [r["in_full_selection"] for r in angry[:2]] == ["True", "True"]
