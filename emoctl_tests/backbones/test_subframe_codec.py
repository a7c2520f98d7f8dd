"""The sub-frame codec: token rows, RVQ, the context decoder, prosody through a round trip, persistence, errors.

Fitted once per module on the same 36 short eSpeak NG clips as the ``SpeechCodec`` tests, at a small size
(3 levels of 32 codes, 150 decoder steps), and checked on sentences it never saw.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emoctl.backbones.mini_tts.codec import SpeechCodec
from emoctl.backbones.mini_tts.subframe_codec import (SUBFRAMES, DecoderTraining, SubframeCodec, load_codec,
                                                      stack_subframes)
from emoctl.corpus.espeak import synthesize
from emoctl.errors import ConfigError

TRAIN_SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Where are we going tomorrow morning?",
                   "Please put the books back on the shelf.", "It was a bright cold day in April.",
                   "We will meet at the station at noon.", "Nobody expected the train to be so late."]
TEST_SENTENCES = ["The children laughed at the clown's tricks.", "Dinner will be ready in ten minutes."]
VOICES = ["en-us+m3", "en+f2"]
PROSODY = [dict(pitch=30, pitch_range=25, volume=60, rate=150), dict(),
           dict(pitch=75, pitch_range=85, volume=160, rate=190)]
FIT = dict(n_codes=32, n_levels=3, seed=0, progress=False, training=DecoderTraining(steps=150, window=32))


def _clips(sentences: list[str]) -> list[tuple[np.ndarray, int]]:
    return [synthesize(s, v, **p) for s in sentences for v in VOICES for p in PROSODY]


def _rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))


def _features_error(codec: SubframeCodec, clips, n_levels: int | None = None, decoder: bool = True) -> float:
    """Mean squared error of the decoded weighted sub-frame features against the analysed ones."""
    errors = []
    for wave, rate in clips:
        stacked = stack_subframes(codec.analyze(wave, rate).features) * codec.weights
        approx = codec.lookup(codec.quantize(stacked), n_levels)
        if decoder:
            with torch.no_grad():
                approx = codec.decoder(approx[None])[0]
        errors.append(float((approx - torch.from_numpy(stacked)).pow(2).mean()))
    return float(np.mean(errors))


@pytest.fixture(scope="module")
def train_clips():
    return _clips(TRAIN_SENTENCES)


@pytest.fixture(scope="module")
def codec(train_clips):
    return SubframeCodec.fit(train_clips, **FIT)


@pytest.fixture(scope="module")
def test_clips():
    return _clips(TEST_SENTENCES)


def test_token_rows_are_50_per_second_with_levels_and_the_speech_codecs_f0_bins(codec, train_clips, test_clips):
    reference = SpeechCodec.fit(train_clips, n_env_codes=8, seed=0, progress=False)  # its F0 bins only
    for wave, rate in test_clips:
        rows = codec.encode(wave, rate)
        assert rows.dtype == torch.int64 and rows.shape == (int(len(wave) / rate * 50) + 1, codec.row_width)
        assert 0 <= int(rows[:, :-1].min()) and int(rows[:, :-1].max()) < codec.n_codes
        # the same F0 track and bin edges as the committed codec's tokens
        assert (codec.f0_lo, codec.f0_hi) == pytest.approx((reference.f0_lo, reference.f0_hi))
        torch.testing.assert_close(rows[:, -1], reference.split(reference.encode(wave, rate))[1])


def test_each_rvq_level_and_the_context_decoder_lower_the_error(codec, train_clips, test_clips):
    lookup = [_features_error(codec, test_clips, n, decoder=False) for n in range(1, codec.n_levels + 1)]
    assert all(a > b for a, b in zip(lookup, lookup[1:])), lookup
    # the decoder was fitted to undo the quantization error of the fitting clips
    assert _features_error(codec, train_clips) < 0.95 * _features_error(codec, train_clips, decoder=False)


def test_stack_subframes_keeps_order_and_pads_the_last_token():
    features = np.arange(9 * 2, dtype=np.float32).reshape(9, 2)       # 9 sub-frames -> 3 tokens
    stacked = stack_subframes(features)
    assert stacked.shape == (3, SUBFRAMES * 2)
    np.testing.assert_array_equal(stacked[1], features[4:8].reshape(-1))
    np.testing.assert_array_equal(stacked[2], np.concatenate([features[8]] * SUBFRAMES))


def test_round_trip_keeps_duration_loudness_and_voicing_on_held_out_clips(codec, test_clips):
    for wave, rate in test_clips:
        out, out_rate = codec.decode(codec.encode(wave, rate))
        assert out_rate == 16000 and np.isfinite(out).all()
        assert abs(len(out) / out_rate - len(wave) / rate) < 0.03
        assert _rms(out) == pytest.approx(_rms(wave), rel=0.35)
    quiet, _, loud = (codec.decode(codec.encode(*c))[0] for c in test_clips[:3])
    assert _rms(loud) > 1.5 * _rms(quiet)                             # the prosody settings' loudness order


def test_save_load_gives_identical_rows_and_audio_and_refuses_a_changed_file(codec, test_clips, tmp_path):
    codec.save(tmp_path / "c")
    again = load_codec(tmp_path / "c")
    assert isinstance(again, SubframeCodec) and again.digest == codec.digest
    wave, rate = test_clips[0]
    rows = codec.encode(wave, rate)
    torch.testing.assert_close(again.encode(wave, rate), rows)
    np.testing.assert_array_equal(again.decode(rows)[0], codec.decode(rows)[0])
    config = json.loads((tmp_path / "c" / "codec.json").read_text())
    config["f0_lo"] += 1.0
    (tmp_path / "c" / "codec.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="does not match the digest"):
        SubframeCodec.load(tmp_path / "c")


def test_load_codec_reads_both_formats_and_names_an_unknown_one(train_clips, tmp_path):
    SpeechCodec.fit(train_clips[:6], n_env_codes=8, seed=0, progress=False).save(tmp_path / "speech")
    assert isinstance(load_codec(tmp_path / "speech"), SpeechCodec)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "codec.json").write_text(json.dumps({"format": "something.else"}))
    with pytest.raises(ConfigError, match="something.else"):
        load_codec(tmp_path / "other")


def test_fit_is_deterministic_for_a_seed(train_clips, codec):
    assert SubframeCodec.fit(train_clips, **FIT).digest == codec.digest


def test_bad_rows_and_fit_inputs_are_config_errors(codec, train_clips):
    good = torch.zeros(5, codec.row_width, dtype=torch.long)
    for bad, message in [(good[:, :-1], "integer tensor of token rows"), (good.float(), "integer tensor"),
                         (good[:0], "non-empty"), (good + codec.n_codes, "RVQ codes outside"),
                         (torch.cat([good[:, :-1], good[:, -1:] + codec.n_f0_bins], 1), "F0 bins outside")]:
        with pytest.raises(ConfigError, match=message):
            codec.decode(bad)
    with pytest.raises(ConfigError, match="no audio"):
        SubframeCodec.fit_frames([])
    with pytest.raises(ConfigError, match="fewer than n_codes"):
        SubframeCodec.fit(train_clips[:1], n_codes=4096, n_levels=1, progress=False)
    with pytest.raises(ConfigError, match="training window"):
        SubframeCodec.fit(train_clips[:2], n_codes=8, n_levels=1, progress=False,
                          training=DecoderTraining(steps=2, window=10_000))
