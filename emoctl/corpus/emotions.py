"""ESD's five emotions as eSpeak NG prosody, with per-utterance jitter.

eSpeak has no emotion model, so each emotion is a point in the four prosody
knobs that the speech literature ties to it (Scherer 2003; Banse & Scherer
1996; Juslin & Laukka 2003):

============  ===========  ===========  ==========  ========  =========================================
emotion       pitch shift  pitch range  rate scale  volume    why
============  ===========  ===========  ==========  ========  =========================================
Neutral           0            45          1.00        100     the voice's own settings
Angry            +6            62          1.10        145     loud and fast; raised, moderately wide F0
Happy           +14            78          1.05        118     high, wide, lively F0; slightly fast
Sad             -12            22          0.80         72     low, flat, slow and soft
Surprise        +20            92          0.97        124     highest and widest F0, near-normal rate
============  ===========  ===========  ==========  ========  =========================================

Pitch shift is in eSpeak's 0-100 pitch units (added to 50 + the speaker's
offset; 10 units ~ 15% in F0), range in eSpeak's 0-100 units (50 = the
voice's own), rate scales the speaker's words per minute, volume is eSpeak's
0-200 amplitude (100 = normal).

Why jitter: real actors never hit the same prosody twice, and the emotions
overlap (hot anger and joy are both high and loud; surprise and joy both wide).
Every knob of every utterance gets Gaussian noise (``JITTER``), drawn from a
generator keyed by (seed, speaker, emotion, sentence), so an utterance's
prosody does not depend on build order or on the number of workers.  With
these numbers no single knob separates the five classes (Angry/Happy/Surprise
overlap in pitch, Happy/Surprise in range, Neutral/Angry/Surprise in rate), so
a classifier needs several cues together, as with real speech.

How much jitter: enough that the classes overlap, little enough that a
recognizer that hears one clip can tell them apart about as well as SER
models do on acted speech (around 90%).  The Bayes classifier on the *true*
knobs (``emoctl corpus ceiling``) bounds every recognizer; an audio one loses
a little more, mostly on rate, which a single clip cannot give away (it needs
the sentence's normal length).  With the first, wider jitter (pitch 5, range 9,
rate 0.06, volume 14) that bound was 92.8% with all four knobs and 89.5%
without rate, and the embedded SER stopped at 88.5%; with the values below it
is 96.5% (Happy/Surprise still the confusable pair).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from emoctl.corpus.espeak import KNOB_LIMITS
from emoctl.corpus.voices import Speaker
from emoctl.emotions import ESD_EMOTIONS as EMOTIONS
from emoctl.errors import ConfigError

__all__ = ["EMOTIONS", "JITTER", "PROFILES", "EmotionProfile", "utterance_prosody"]


@dataclass(frozen=True)
class EmotionProfile:
    """The mean prosody of one emotion (see the module table for the rationale)."""

    pitch_shift: float
    """Added to 50 + the speaker's pitch offset, in eSpeak pitch units (0-100 scale)."""
    pitch_range: float
    """eSpeak pitch range, 0 (monotone) to 100 (twice the voice's own); 50 = the voice's own."""
    rate_scale: float
    """Multiplies the speaker's words per minute."""
    volume: float
    """eSpeak amplitude, 0-200; 100 = normal."""


PROFILES: dict[str, EmotionProfile] = {
    "Neutral": EmotionProfile(pitch_shift=0, pitch_range=45, rate_scale=1.00, volume=100),
    "Angry": EmotionProfile(pitch_shift=+6, pitch_range=62, rate_scale=1.10, volume=145),
    "Happy": EmotionProfile(pitch_shift=+14, pitch_range=78, rate_scale=1.05, volume=118),
    "Sad": EmotionProfile(pitch_shift=-12, pitch_range=22, rate_scale=0.80, volume=72),
    "Surprise": EmotionProfile(pitch_shift=+20, pitch_range=92, rate_scale=0.97, volume=124),
}

JITTER = EmotionProfile(pitch_shift=4.0, pitch_range=7.0, rate_scale=0.05, volume=11.0)
"""Standard deviation of the per-utterance Gaussian noise on each knob (same units as the profiles)."""


def utterance_prosody(speaker: Speaker, emotion: str, sentence_index: int, seed: int) -> dict[str, int]:
    """The eSpeak knobs (rate, pitch, pitch_range, volume) of one utterance, as integers within eSpeak's limits.

    Deterministic in its arguments; independent of any other utterance.
    """
    if emotion not in PROFILES:
        raise ConfigError(f"Unknown emotion {emotion!r}; the corpus has {', '.join(EMOTIONS)}.")
    profile = PROFILES[emotion]
    key = [seed, int(speaker.speaker_id), EMOTIONS.index(emotion), sentence_index]
    noise = np.random.default_rng(key).standard_normal(4)  # (4,) pitch, range, rate, volume
    jitter = asdict(JITTER)
    knobs = {
        "pitch": 50 + speaker.pitch_offset + profile.pitch_shift + jitter["pitch_shift"] * noise[0],
        "pitch_range": profile.pitch_range + jitter["pitch_range"] * noise[1],
        "rate": speaker.rate_wpm * (profile.rate_scale + jitter["rate_scale"] * noise[2]),
        "volume": profile.volume + jitter["volume"] * noise[3],
    }
    return {name: int(np.clip(round(value), *KNOB_LIMITS[name])) for name, value in knobs.items()}
