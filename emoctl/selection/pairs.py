"""Matching each emotional utterance with its neutral twin: same ``pair_key`` (text and speaker).

The Δ-score is a paired statistic, so only utterances whose twin exists count.
When a key holds several utterances of one emotion (several seeds or
conditions), they are paired with the key's neutral utterances in ``utt_id``
order, one to one, and the surplus is reported as unpaired.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from emoctl.errors import ConfigError


@dataclass(frozen=True)
class EmotionPairs:
    """The (emotional, neutral) utterance pairs of one emotion, as indices into the utterance table."""

    emotion: str
    neutral: str
    emotional: np.ndarray
    """(n_pairs,) int64 utterance indices with ``emotion``."""
    neutral_twin: np.ndarray
    """(n_pairs,) int64 utterance indices with ``neutral``, same pair_key as ``emotional``."""
    unpaired: int
    """Utterances of ``emotion`` left without a neutral twin."""

    @property
    def n_pairs(self) -> int:
        return int(self.emotional.size)


def pair_utterances(utt_id: Sequence[str], emotion: Sequence[str], pair_key: Sequence[str], neutral: str = "Neutral",
                    emotions: Sequence[str] | None = None, source: str = "the store") -> dict[str, EmotionPairs]:
    """Pairs for each emotion in ``emotions`` (default: every label except ``neutral``)."""
    present = sorted(set(map(str, emotion)))
    if neutral not in present:
        raise ConfigError(
            f"{source} has no utterances with the neutral emotion {neutral!r} (it has {', '.join(present)}), so no "
            "Δ-score can be paired. Harvest neutral renditions of the same texts and speakers, or set `neutral` "
            "to the label your store uses."
        )
    wanted = [e for e in present if e != neutral] if emotions is None else list(emotions)
    missing = [e for e in wanted if e not in present]
    if missing or not wanted:
        raise ConfigError(f"emotions {missing or wanted} are not (or not only non-neutral) labels of {source}; "
                          f"it has {', '.join(present)}.")
    groups: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for i, (uid, emo, key) in enumerate(zip(utt_id, emotion, pair_key)):
        groups[(str(key), str(emo))].append((str(uid), i))
    result = {}
    for emo in wanted:
        if emo == neutral:
            raise ConfigError(f"emotion {emo!r} is the neutral reference itself; leave it out of `emotions`.")
        left, right, unpaired = [], [], 0
        for (key, label), members in groups.items():
            if label != emo:
                continue
            twins = sorted(groups.get((key, neutral), []))
            members = sorted(members)
            n = min(len(members), len(twins))
            left += [i for _, i in members[:n]]
            right += [i for _, i in twins[:n]]
            unpaired += len(members) - n
        if not left:
            raise ConfigError(
                f"no utterance of emotion {emo!r} in {source} shares a pair_key with a {neutral!r} one, so its "
                "Δ-score has no pairs. Harvest both emotions for the same texts and speakers (same pair_key)."
            )
        order = np.argsort(np.asarray(left))
        result[emo] = EmotionPairs(emo, neutral, np.asarray(left, dtype=np.int64)[order],
                                   np.asarray(right, dtype=np.int64)[order], unpaired)
    return result
