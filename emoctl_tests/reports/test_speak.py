"""``emoctl steer speak`` on the committed mini TTS: segments of two emotions for EmoShift (a per-step emotion
mix) and for SAE-Emotion (composed interventions), the audio written, each part cut at its decode steps and
scored, and one-paragraph errors for schedules that cannot be spoken as asked."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile

from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.evaluation.summary import format_estimate
from emoctl.reports.readme_tables import markdown_tables
from emoctl.reports.speak import SpeakSettings, run_speak
from emoctl.synthesis import SamplingConfig
from emoctl_tests.helpers.cli import assert_one_paragraph_error, parse_emoctl

pytestmark = pytest.mark.usefixtures("one_thread")

SEGMENTS = {"segments": [{"emotion": "Angry", "alpha": 2, "start_s": 0.4, "end_s": 1.0},
                         {"emotion": "Sad", "alpha": 2}]}
PROTOCOL = EvaluationProtocol(speakers=["0017", "0018"], n_texts=1, sampling=SamplingConfig(max_new_tokens=100))


@pytest.fixture(scope="module")
def spoken(corpus_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("speak")
    run_speak(SpeakSettings(schedule=SEGMENTS, corpus_root=str(corpus_root), out_dir=str(out), protocol=PROTOCOL,
                            progress=False))
    return out


def test_segments_become_parts_cut_at_their_steps_and_the_audio_is_written(spoken):
    info = json.loads((spoken / "speak_info.json").read_text())
    assert [(p["start"], p["end"], p["target"]) for p in info["parts"]] == [
        (0, 20, "Neutral"), (20, 50, "Angry"), (50, 100, "Sad")]   # 0.4 s and 1.0 s at 50 tokens/s
    assert info["tokens_kept_before_steering"] == 2 and info["first_steered_step"] == 20
    assert [p["alpha"] for p in info["parts"]] == [0.0, 2.0, 2.0]
    rows = list(csv.DictReader((spoken / "speak_clips.csv").open()))
    for row in rows:
        part = next(p for p in info["parts"] if p["label"] == row["direction"])
        assert float(row["start_s"]) == pytest.approx(part["start_s"])
        assert float(row["end_s"]) <= part["end_s"] + 1e-9 and row["target"] == part["target"]
        assert float(row["alpha"]) == (part["alpha"] if row["method"] == "scheduled" else 0.0)
    for setting in ("unsteered", "scheduled"):
        for speaker in ("0017", "0018"):
            wave, rate = soundfile.read(spoken / "audio" / f"speak-t00-{speaker}.{setting}.wav")
            assert rate == 16000 and wave.ndim == 1 and np.abs(wave).max() > 0.01
            assert wave.size >= max(float(r["end_s"]) for r in rows if r["speaker"] == speaker
                                    and r["method"] == setting) * rate - 1
    # before the first segment the scheduled clip is the unsteered clip (but for WORLD's last 32 ms)
    gap = {r["method"]: r for r in rows if r["direction"] == "gap before segments[0]" and r["speaker"] == "0017"}
    assert float(gap["scheduled"]["p_target"]) == pytest.approx(float(gap["unsteered"]["p_target"]), abs=2e-3)
    steered = [r for r in rows if r["direction"].startswith("segments[0]")]
    assert any(a["p_target"] != b["p_target"] for a, b in zip(steered[:2], steered[2:]))


def test_the_table_holds_the_csv_numbers(spoken):
    summary = {(r["direction"], r["method"]): {k: float(v) if k not in ("direction", "emotion", "method") else v
                                               for k, v in r.items()}
               for r in csv.DictReader((spoken / "speak.csv").open())}
    table = markdown_tables((spoken / "speak.md").read_text())[0]
    assert len(table) == 2 + 3
    for line in table[2:]:
        part, _, _, target, n, acc_u, acc_s, p_u, p_s, *_ = [c.strip() for c in line.strip("|").split("|")]
        assert target == summary[(part, "scheduled")]["emotion"] and int(n) == summary[(part, "scheduled")]["n"]
        assert (acc_u, acc_s) == (format_estimate(summary[(part, "unsteered")], "ser_hit", 2),
                                  format_estimate(summary[(part, "scheduled")], "ser_hit", 2))
        assert (p_u, p_s) == (format_estimate(summary[(part, "unsteered")], "p_target", 3),
                              format_estimate(summary[(part, "scheduled")], "p_target", 3))


def test_sae_emotion_speaks_a_ramp_in_three_parts(corpus_root, tmp_path):
    run_speak(SpeakSettings(schedule={"ramp": {"start_s": 0.4, "end_s": 1.0, "shape": "cosine"}}, method="sae_emotion",
                            emotion="Angry", alpha=8, corpus_root=str(corpus_root), out_dir=str(tmp_path / "o"),
                            protocol=PROTOCOL, progress=False))
    info = json.loads((tmp_path / "o" / "speak_info.json").read_text())
    assert [(p["start"], p["end"], p["target"]) for p in info["parts"]] == [
        (0, 20, "Neutral"), (20, 50, "Angry"), (50, 100, "Angry")]
    assert [p["alpha"] for p in info["parts"]] == [0.0, 8.0, 8.0]
    assert info["schedule"]["multipliers"][35] == pytest.approx(0.5)  # a cosine ramp is half way at mid-span
    assert info["tokens_kept_before_steering"] == 2 and info["hookpoint"] == "resid_pre.5"


def test_cocoemo_speaks_segments_of_two_emotions_at_its_layers(corpus_root, tmp_path):
    """CoCoEmo's committed directions (three attention outputs) under segments: the two emotions' multi-layer
    interventions compose, each on at its own steps."""
    run_speak(SpeakSettings(schedule=SEGMENTS, method="cocoemo", corpus_root=str(corpus_root),
                            out_dir=str(tmp_path / "o"), protocol=PROTOCOL, progress=False))
    info = json.loads((tmp_path / "o" / "speak_info.json").read_text())
    assert info["hookpoint"] == "attn_out.7,attn_out.6,attn_out.1"
    assert [(p["start"], p["end"], p["target"], p["alpha"]) for p in info["parts"]] == [
        (0, 20, "Neutral", 0.0), (20, 50, "Angry", 2.0), (50, 100, "Sad", 2.0)]
    assert info["tokens_kept_before_steering"] == 2  # both clips: unsteered tokens up to the first segment
    assert info["provenance"]["inputs"]["directions"]["path"] == "emoctl/assets/directions_mini"


PREFIX = "emoctl steer: error:"


@pytest.mark.parametrize("args, needle", [
    (["--schedule", json.dumps(SEGMENTS), "--emotion", "Angry"], "name their own emotion and alpha, so {'emotion'"),
    (["--schedule", '{"switch": {"at_s": 0.5}}'], "give emotion (not Neutral), got None"),
    (["--schedule", '{"switch": {"at_s": 0.5}}', "--emotion", "Angry"], "needs alpha (or intensity"),
    (["--schedule", '{"switch": {"at_s": 0.5}}', "--emotion", "Angry", "--alpha", "2", "--intensity", "0.5",
      "--calibration", "x"], "give α or an intensity, not both"),
    (["--schedule", '{"segments": [{"emotion": "Neutral", "alpha": 3}]}', "--method", "sae_emotion"],
     "a Neutral segment with alpha != 0 has no features to steer"),
    (["--schedule", '{"segments": [{"emotion": "Angry", "alpha": 2, "end_s": 1.0}, '
                    '{"emotion": "Sad", "alpha": 2, "start_s": 0.5}]}'], "segments overlap"),
    (["--schedule", '{"switch": {"at_s": 0.5}}', "--emotion", "Angry", "--alpha", "2", "--method", "random_sae"],
     "choose one of emoshift, sae_emotion, global, cocoemo"),
    (["--schedule", '{"switch": {"at_s": 30}}', "--emotion", "Angry", "--alpha", "2"], "past the token cap"),
])
def test_a_schedule_that_cannot_be_spoken_gets_one_paragraph(tmp_path, args, needle):
    result = parse_emoctl("steer", "speak", "--out_dir", str(tmp_path / "o"), *args)
    assert_one_paragraph_error(result, needle, prefix=PREFIX)
    assert not (tmp_path / "o").exists()
