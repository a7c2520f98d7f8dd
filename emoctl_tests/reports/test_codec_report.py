"""``emoctl inspect codec``: the committed codec's round trips keep the emotions' prosody, and the report says so.

Runs on the real corpus and the committed mini TTS codec, one clip per (speaker, emotion), with Whisper on one
clip per emotion.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from emoctl.backbones.loading import DEFAULT_MINI_TTS_DIR
from emoctl.backbones.mini_tts.codec import SpeechCodec
from emoctl.corpus.esd import read_wave
from emoctl.errors import ConfigError
from emoctl.probes import measure
from emoctl.commands.inspect import codec_roundtrip_report
from emoctl.reports.codec_roundtrip import TOLERANCE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report(corpus_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("codec_report")
    result = codec_roundtrip_report(corpus_root=str(corpus_root), out_dir=str(out), clips_per_cell=1,
                                    wer_clips_per_emotion=1, workers=1, progress=False)
    return result, out


def test_per_emotion_prosody_survives_the_committed_codec(report):
    result, _ = report
    assert result["clips"] == 50 and len(result["emotions"]) == 5
    for emotion, stats in result["per_emotion"].items():
        assert stats["clips"] == 10
        for probe, tolerance in TOLERANCE.items():
            assert abs(stats[f"rel_error_{probe}"]) <= tolerance, (emotion, probe, stats)
    order = result["order"]["f0_mean_hz"]
    assert order["original"] == order["roundtrip"]
    assert order["original"][0] == "Sad" and order["original"][-1] == "Surprise"  # the corpus's design


def test_report_rows_are_the_probes_of_the_actual_round_trip(report, corpus_root):
    result, out = report
    rows = list(csv.DictReader((out / "clips.csv").open()))
    assert len(rows) == 50
    row = rows[7]
    path = next(corpus_root.glob(f"{row['speaker']}/*/test/{row['utt_id']}.wav"))
    codec = SpeechCodec.load(DEFAULT_MINI_TTS_DIR / "codec")
    wave, rate = read_wave(path)
    vocoded, vocoded_rate = codec.decode(codec.encode(wave, rate))
    original, trip = measure([wave, vocoded], [rate, vocoded_rate])
    assert float(row["original_f0_mean_hz"]) == pytest.approx(original.f0_mean_hz, rel=1e-4)
    assert float(row["roundtrip_rms"]) == pytest.approx(trip.rms, rel=1e-4)
    assert float(row["roundtrip_duration_s"]) == pytest.approx(trip.duration_s, rel=1e-6)
    means = np.mean([float(r["roundtrip_f0_mean_hz"]) for r in rows if r["emotion"] == "Sad"])
    assert result["per_emotion"]["Sad"]["roundtrip_f0_mean_hz"] == pytest.approx(means, rel=1e-6)
    per_emotion = {r["emotion"]: r for r in csv.DictReader((out / "per_emotion.csv").open())}
    assert set(per_emotion) == set(result["emotions"])
    assert (out / "roundtrip.png").read_bytes()[:4] == b"\x89PNG"
    assert "| check | passed |" in (out / "summary.md").read_text()


def test_wer_is_measured_on_both_sides(report):
    wer = report[0]["wer"]
    assert wer["clips"] == 5 and wer["asr"].startswith("faster-whisper")
    assert 0.0 <= wer["original"] < 0.5  # Whisper understands eSpeak NG
    assert wer["roundtrip"] >= 0.0 and set(wer["roundtrip_per_emotion"]) == set(report[0]["emotions"])
    from emoctl.metrics.wer import word_error_rate

    per_clip = word_error_rate([t["roundtrip"] for t in wer["transcripts"]],
                               [t["reference"] for t in wer["transcripts"]])
    assert wer["roundtrip_median"] == pytest.approx(float(np.median(per_clip)))
    rows = list(csv.DictReader((report[1] / "transcripts.csv").open()))
    assert [r["original"] for r in rows] == [t["original"] for t in wer["transcripts"]] and len(rows) == 5
    json.dumps(report[0])  # the whole result is plain JSON-able data


def test_bad_arguments_name_the_problem(tmp_path, corpus_root):
    with pytest.raises(ConfigError, match="no finished corpus"):
        codec_roundtrip_report(corpus_root=str(tmp_path), out_dir=str(tmp_path / "o"), progress=False)
    with pytest.raises(ConfigError, match="clips_per_cell"):
        codec_roundtrip_report(corpus_root=str(corpus_root), out_dir=str(tmp_path / "o"), clips_per_cell=0,
                               progress=False)
    assert not (tmp_path / "o").exists()
