"""``emoctl report schedules`` on the committed mini TTS, EmoShift layer, SAE and feature sets: the cut at the
switch, the unsteered start of a switched clip, the files and their tables, and one-paragraph errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emoctl.backbones.base import Prompt
from emoctl.backbones.conditions import VoiceName
from emoctl.errors import ConfigError
from emoctl.evaluation.emoshift_setup import SteeringSetup
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.evaluation.steered import synthesize_steered
from emoctl.evaluation.summary import format_estimate
from emoctl.reports.readme_tables import markdown_tables
from emoctl.reports.schedules import (SchedulesSettings, cut_sample, emoshift_method, run_schedules,
                                      sae_emotion_method, switch_step)
from emoctl.steering.schedules import parse_schedule
from emoctl.synthesis import SamplingConfig
from emoctl_tests.helpers.cli import RECIPES, assert_one_paragraph_error, parse_emoctl, run_emoctl

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER, SAE, SELECTION = "emoctl/assets/emoshift_mini", "emoctl/assets/sae_mini", "emoctl/assets/select_mini"
SAMPLING = SamplingConfig(max_new_tokens=100, batch_size=4)
TEXTS = ["The birch canoe slid on the smooth planks.", "Kids are talking by the door."]


@pytest.fixture(scope="module")
def setup() -> SteeringSetup:
    return SteeringSetup.load(LAYER)


def test_the_cut_is_the_switch_step_times_sample_rate_over_token_rate(setup):
    tts = setup.backbone
    steps = parse_schedule({"switch": {"at_s": 1.2}}).resolve_for(tts, 600)
    k = switch_step(steps)
    assert (k, tts.sample_rate, tts.token_rate) == (60, 16000, 50.0)
    assert cut_sample(k, tts.sample_rate, tts.token_rate) == 60 * 16000 // 50 == 19200
    for rate, tokens in ((16000, 50.0), (22050, 50.0), (24000, 25.0), (22050, 21.533203125)):  # 1024-sample hop
        for step in (1, 7, 60, 599):
            assert cut_sample(step, rate, tokens) == round(step * rate / tokens)
    with pytest.raises(ConfigError, match="not a whole number"):
        cut_sample(1, 16000, 30.0)  # 533.33 samples a token


@pytest.mark.parametrize("method", ["emoshift", "sae_emotion"])
def test_before_the_switch_a_switched_clip_is_the_unsteered_clip(setup, method):
    """Same prompts and seed: tokens 0 .. k (the prefill's and one per decode step before the switch) equal the
    unsteered clip's, the first steered token is k + 1 or later, and the audio is bit for bit the unsteered audio
    up to half a WORLD synthesis window (fft_size / 2 samples, 32 ms) before the cut, where the first steered
    token's pulses overlap-add into it; the emotion changes what comes after."""
    tts = setup.backbone
    prompts = [Prompt(t, VoiceName(s), tts.condition_for("Neutral"), f"p{i}-{s}")
               for i, t in enumerate(TEXTS) for s in ("0017", "0018")]
    steps = parse_schedule({"switch": {"at_s": 0.6}}).resolve_for(tts, SAMPLING.max_new_tokens)
    k = switch_step(steps)
    cut = cut_sample(k, tts.sample_rate, tts.token_rate)
    untouched = cut - tts.codec.fft_size // 2
    steering = (emoshift_method(setup, {"Angry": 2.0}) if method == "emoshift"
                else sae_emotion_method(tts, SAE, SELECTION, ["Angry"], {"Angry": 8.0}, allow_unverified=False))
    plain = synthesize_steered(tts, prompts, None, 3, SAMPLING)
    switched = synthesize_steered(tts, prompts, lambda b, start: steering.attach("Angry", steps, len(b)), 3, SAMPLING)
    whole = synthesize_steered(tts, prompts, lambda b, start: steering.attach("Angry", None, len(b)), 3, SAMPLING)
    for a, u in zip(switched, plain):
        assert len(u.tokens) > k + 1 and len(u.wave) > cut
        assert torch.equal(a.tokens[:k + 1], u.tokens[:k + 1])
        assert np.array_equal(a.wave[:untouched], u.wave[:untouched])  # bit for bit
    assert any(not torch.equal(a.tokens, u.tokens) for a, u in zip(switched, plain)), "the switch changed nothing"
    assert any(not torch.equal(w.tokens[:k + 1], u.tokens[:k + 1]) for w, u in zip(whole, plain))


def _csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _numbers(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def report(corpus_root, tmp_path_factory):
    """The report end to end on 4 clips per setting (2 sentences x 2 voices), 100 decode steps, switch at 0.6 s."""
    out = tmp_path_factory.mktemp("schedules")
    protocol = EvaluationProtocol(speakers=["0017", "0018"], n_texts=2, sampling=SAMPLING)
    settings = SchedulesSettings(corpus_root=str(corpus_root), out_dir=str(out), protocol=protocol,
                                 schedule={"switch": {"at_s": 0.6}}, n_bootstrap=200, progress=False)
    summary = run_schedules(settings)
    return out, summary


def test_the_report_writes_its_files_and_its_tables_hold_the_csv_numbers(report):
    out, summary = report
    for name in ("schedules.md", "schedules.csv", "schedules_clips.csv", "schedules_info.json", "schedules.png",
                 "schedules_paired_ser.csv", "schedules_paired_probes.csv", "schedules_over_time.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    info = json.loads((out / "schedules_info.json").read_text())
    assert info["switch_step"] == 30 and info["cut_sample"] == 30 * info["sample_rate"] / info["token_rate"]
    assert info["tokens_kept_before_switch"] == {"emoshift/Angry": 4, "sae_emotion/Angry": 4}
    assert info["provenance"]["protocol"]["schedule"] == {"switch": {"at_s": 0.6}}
    cells = {(r["direction"], r["emotion"], r["method"]): _numbers(r) for r in _csv(out / "schedules.csv")}
    assert len(cells) == len(summary)
    ser_table = markdown_tables((out / "schedules.md").read_text())[0]
    labels = {"EmoShift": "emoshift", "SAE-Emotion": "sae_emotion"}
    checked = 0
    for line in ser_table[2:]:
        method, emotion, segment, target, n, *values = [c.strip() for c in line.strip("|").split("|")][:8]
        key = (f"{labels[method]}/{segment}", emotion)
        assert target == ("Neutral" if segment == "before" else "Angry")
        assert int(n) == cells[(*key, "switched")]["n"]
        for setting, shown in zip(("unsteered", "switched", "whole"), values):
            assert shown == format_estimate(cells[(*key, setting)], "ser_hit"), (key, setting)
            checked += 1
    assert checked == 12  # 2 methods x 2 segments x 3 settings


def test_segments_are_cut_at_the_switch_and_the_switched_start_scores_as_the_unsteered_one(report):
    out, _ = report
    rows = [_numbers(r) for r in _csv(out / "schedules_clips.csv")]
    info = json.loads((out / "schedules_info.json").read_text())
    cut_s = info["cut_sample"] / info["sample_rate"]
    segments = [r for r in rows if r["segment"] in ("before", "after")]
    assert segments and all(r["end_s"] == cut_s for r in segments if r["segment"] == "before")
    assert all(r["start_s"] == cut_s for r in segments if r["segment"] == "after")
    by_key = {(r["direction"], r["method"], r["utt_id"]): r for r in segments}
    before = [r for r in segments if r["direction"] == "emoshift/before" and r["method"] == "switched"]
    assert len(before) == 4
    for r in before:  # the same tokens; the audio differs only in the last 32 ms (WORLD's overlap of token k + 1)
        plain = by_key[("emoshift/before", "unsteered", r["utt_id"])]
        assert r["predicted"] == plain["predicted"]
        for metric in ("p_target", "f0_mean_hz", "rms", "spectral_centroid_hz", "duration_s"):
            assert r[metric] == pytest.approx(plain[metric], rel=2e-3, abs=2e-3), metric
    assert any(abs(by_key[("emoshift/before", "whole", r["utt_id"])]["rms"] - r["rms"]) > 0.01 for r in before)
    windows = [r for r in rows if r["segment"] == "±0.2s"]
    assert windows and all(r["start_s"] == pytest.approx(0.4) and r["end_s"] == pytest.approx(0.8) for r in windows)


PREFIX = "emoctl report: error:"


def test_a_bad_recipe_value_gets_one_paragraph_before_anything_is_spoken(tmp_path):
    recipe = str(RECIPES / "evaluation" / "report_schedules_mini.yaml")
    out = ["--out_dir", str(tmp_path / "o")]
    refused = run_emoctl("report", "schedules", "--config", recipe, *out, "--schedule", '{"switch": {"at_s": 30}}')
    assert_one_paragraph_error(refused, "at_s=30 (1500 decode steps at 50 tokens/s) is past the token cap",
                               "600 decode steps", prefix=PREFIX)
    for args, needle in (
            (["--schedule", '{"ramp": {"start_s": 0.2, "end_s": 1.0}}'], "must be a switch"),
            (["--schedule", '{"switch": {"at_s": 1.0, "after": 0.5}}'], "give before and after as 0 and 1"),
            (["--schedule", '{"switch": {"at_s": 0.1}}'], "less than window_s=0.2 s from the start"),
            (["--schedule", '{"switch": {"at_ms": 5}}'], "unknown unit in at_ms=5"),
            (["--methods", '["cocoemo"]'], "name each of emoshift, sae_emotion, global"),
            (["--methods", '["global"]'], "method global needs store"),
            (["--intensity", "0.6"], "give α or an intensity, not both"),
            (["--alphas", "null", "--intensity", "0.6"], "needs --calibration"),
            (["--alphas", "null", "--intensity", "1.2", "--calibration", "x"], "strictly between 0 and 1"),
            (["--emotions", '["Neutral"]'], "other than Neutral"),
            (["--alphas", '{"emoshift": -1.0, "sae_emotion": 8.0}'], "bad: {'emoshift': -1.0}"),
            (["--alphas", '{"emoshift": 2.0, "sae_emotion": 5000}'], "steer latents too hard"),
            (["--emotions", '["Calm"]'], "emotions ['Calm'] have no matrix in this layer"),
    ):
        assert_one_paragraph_error(parse_emoctl("report", "schedules", "--config", recipe, *out, *args), needle,
                                   prefix=PREFIX)
