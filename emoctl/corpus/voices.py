"""The corpus's speakers: eSpeak NG voice variants with their own base pitch and rate.

Why these voices: eSpeak's variants m1-m8 and f1-f5 are the only built-in
timbres that differ by sex and are deterministic (the Klatt ones are
synthetic-sounding and the named ones vary widely in quality).  Measured on one
sentence, the male variants sit at 83-103 Hz and the female ones at
174-205 Hz, so each speaker also gets a fixed base pitch offset and speaking
rate: without them, several male speakers would be near-identical.  The
``en-us`` and ``en`` (British-style) language voices give two accents, so up
to 20 speakers are distinct.  Speakers are named like ESD's English speakers,
"0011" onwards, alternating sex so that any prefix of the table is balanced.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from emoctl.errors import ConfigError

__all__ = ["SPEAKERS", "Speaker", "select_speakers"]


@dataclass(frozen=True)
class Speaker:
    """One speaker: a voice and the prosody it starts from before emotion and jitter."""

    speaker_id: str
    """ESD-style four-digit id, e.g. "0011"."""
    voice: str
    """eSpeak NG voice name: language + variant, e.g. "en-us+m3"."""
    sex: str
    """"M" or "F", from the eSpeak variant."""
    pitch_offset: int
    """Added to every emotion's pitch, in eSpeak's 0-100 pitch units (10 units ~ 15% in F0)."""
    rate_wpm: int
    """Neutral speaking rate in words per minute; emotions scale it."""

    def to_dict(self) -> dict:
        return asdict(self)


SPEAKERS: tuple[Speaker, ...] = (
    Speaker("0011", "en-us+m1", "M", -2, 170),
    Speaker("0012", "en-us+f1", "F", +4, 175),
    Speaker("0013", "en-us+m2", "M", +6, 180),
    Speaker("0014", "en-us+f2", "F", -4, 168),
    Speaker("0015", "en-us+m3", "M", -8, 176),
    Speaker("0016", "en-us+f3", "F", 0, 182),
    Speaker("0017", "en-us+m4", "M", +10, 165),
    Speaker("0018", "en-us+f4", "F", +8, 172),
    Speaker("0019", "en-us+m5", "M", +2, 186),
    Speaker("0020", "en-us+f5", "F", -8, 178),
    Speaker("0021", "en+m6", "M", -6, 174),
    Speaker("0022", "en+f1", "F", -2, 184),
    Speaker("0023", "en+m7", "M", +4, 168),
    Speaker("0024", "en+f2", "F", +6, 176),
    Speaker("0025", "en+m8", "M", +12, 180),
    Speaker("0026", "en+f3", "F", -6, 170),
    Speaker("0027", "en+m1", "M", +8, 178),
    Speaker("0028", "en+f4", "F", +2, 166),
    Speaker("0029", "en+m2", "M", -4, 172),
    Speaker("0030", "en+f5", "F", +10, 182),
)


def select_speakers(count: int) -> tuple[Speaker, ...]:
    """The first ``count`` speakers of the table (10 = ESD's English speakers 0011-0020)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(SPEAKERS):
        raise ConfigError(f"speakers={count!r} must be an integer from 1 to {len(SPEAKERS)} "
                          f"(the voices defined in {__name__}.SPEAKERS); add rows there for more.")
    return SPEAKERS[:count]
