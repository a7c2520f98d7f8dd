"""eSpeak NG binding and the ESD-shaped corpus built with it."""
from __future__ import annotations

import numpy as np
import pytest

from emoctl.corpus.espeak import SAMPLE_RATE, synthesize
from emoctl.errors import ConfigError

SENTENCE = "The quick brown fox jumps over the lazy dog."


def median_f0(samples: np.ndarray, sample_rate: int) -> float:
    """Median F0 (Hz) over voiced frames, by pyworld's DIO + StoneMask."""
    import pyworld

    x = samples.astype(np.float64)
    f0, times = pyworld.dio(x, sample_rate, f0_floor=50.0, f0_ceil=500.0)
    f0 = pyworld.stonemask(x, f0, times, sample_rate)
    return float(np.median(f0[f0 > 0]))


# ---------------------------------------------------------------- synthesize

def test_synthesize_gives_speech_of_plausible_duration():
    samples, sample_rate = synthesize(SENTENCE)
    assert sample_rate == SAMPLE_RATE == 22050
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert np.abs(samples).max() <= 1.0
    rms = float(np.sqrt(np.mean(samples ** 2)))
    assert rms > 0.02, rms
    seconds = len(samples) / sample_rate
    assert 1.5 < seconds < 5.0, seconds  # 9 words at 175 words per minute


def test_synthesize_is_deterministic_whatever_came_before():
    first, _ = synthesize(SENTENCE, "en-us+m3", pitch=40)
    synthesize("Something else, spoken by another voice.", "en+f4", rate=300, pitch=90, pitch_range=90)
    synthesize(SENTENCE, "en-us+klatt2")
    again, _ = synthesize(SENTENCE, "en-us+m3", pitch=40)
    assert np.array_equal(first, again)


@pytest.mark.parametrize("voice", ["en-gb", "xx-nonexistent", "en-us+m99", ""])
def test_unknown_voice_is_a_config_error(voice):
    synthesize(SENTENCE, "en+f2")  # a good voice first: the bad one must not fall back to it
    with pytest.raises(ConfigError, match="voice"):
        synthesize(SENTENCE, voice)


@pytest.mark.parametrize("kwargs", [{"text": ""}, {"text": "   "}, {"pitch": 101}, {"rate": 20}, {"volume": -1},
                                    {"pitch_range": 1.5}])
def test_bad_arguments_are_config_errors(kwargs):
    kwargs = {"text": SENTENCE, **kwargs}
    with pytest.raises(ConfigError):
        synthesize(**kwargs)


def test_knobs_move_pitch_rate_and_volume():
    low, sr = synthesize(SENTENCE, pitch=20)
    high, _ = synthesize(SENTENCE, pitch=80)
    assert median_f0(high, sr) > 1.25 * median_f0(low, sr)
    slow, _ = synthesize(SENTENCE, rate=120)
    fast, _ = synthesize(SENTENCE, rate=260)
    assert len(slow) > 1.5 * len(fast)
    soft, _ = synthesize(SENTENCE, volume=40)
    loud, _ = synthesize(SENTENCE, volume=160)
    assert np.sqrt(np.mean(loud ** 2)) > 2.0 * np.sqrt(np.mean(soft ** 2))
