"""A small English grammar that writes the corpus's parallel sentences.

Why a grammar and not a fixed list: the number of sentences is a setting, and
the same seed must always give the same sentences.  The rules write plain,
emotion-neutral statements of 5 to 12 words (ESD speaks the same neutral text
in every emotion, so the emotion lives in the prosody alone).  The word lists
were picked to cover English's sounds: th (thin, Thursday, brother), sh/zh
(shiny, station, measured, treasure), ch/j (church, judge, jacket), ng
(singer, evening), v/z (violin, Zoe, museum), y/w (yellow, window), and a
spread of vowels.  Every word is common enough for an ASR model to know it.
"""
from __future__ import annotations

import random
from collections.abc import Callable

from emoctl.errors import ConfigError

__all__ = ["MAX_WORDS", "MIN_WORDS", "generate_sentences"]

MIN_WORDS, MAX_WORDS = 5, 12

NAMES = ("Maria", "Peter", "Susan", "James", "Olivia", "Thomas", "Judy", "George", "Zoe", "Victor", "Helen",
         "Arthur", "Nora", "Kevin", "Laura", "Edward", "Sophie", "Charles", "Vivian", "Martin", "Rachel", "Joseph",
         "Emma", "Oscar", "Julia", "Daniel", "Ruth", "Simon")
PEOPLE = ("teacher", "doctor", "farmer", "pilot", "singer", "baker", "nurse", "driver", "judge", "soldier",
          "fisherman", "neighbour", "student", "engineer", "artist", "waiter", "lawyer", "shepherd", "gardener",
          "journalist", "captain", "carpenter", "plumber", "dentist", "professor", "mechanic")
RELATIVES = ("brother", "sister", "mother", "father", "cousin", "uncle", "aunt", "grandmother", "grandfather")
PERSON_ADJECTIVES = ("young", "old", "tall", "quiet", "busy", "clever", "local", "famous", "new", "polite")
THINGS = ("chair", "basket", "jacket", "lamp", "bottle", "guitar", "mirror", "ticket", "package", "umbrella",
          "blanket", "violin", "notebook", "kettle", "bicycle", "camera", "suitcase", "treasure", "letter", "map",
          "pillow", "ladder", "hammer", "envelope", "telescope", "sweater", "bucket", "drawer", "clock", "radio",
          "painting", "shovel", "wallet", "helmet", "carpet", "compass")
THING_ADJECTIVES = ("red", "blue", "green", "yellow", "purple", "brown", "wooden", "heavy", "small", "large",
                    "empty", "shiny", "plastic", "leather", "silver", "golden", "square", "round", "smooth", "thick",
                    "thin", "cheap", "soft", "striped", "orange", "dusty", "woollen", "metal")
PAST_TRANSITIVE = ("carried", "found", "brought", "dropped", "moved", "cleaned", "bought", "sold", "borrowed",
                   "returned", "checked", "wrapped", "hid", "fixed", "measured", "painted", "chose", "needed",
                   "pushed", "packed", "delivered", "lost", "kept", "mended", "weighed", "noticed")
BASE_TRANSITIVE = ("carry", "bring", "move", "clean", "take", "leave", "keep", "check", "wrap", "put")
PAST_INTRANSITIVE = ("waited", "stood", "sat", "slept", "worked", "danced", "sang", "walked", "rested", "played",
                     "listened", "stayed", "lived", "jogged", "studied", "cooked")
PREPOSITIONS = ("near", "behind", "beside", "outside", "inside", "in front of", "across from", "next to")
PLACES = ("kitchen", "station", "river", "bridge", "market", "garden", "library", "harbour", "village",
          "museum", "school", "church", "office", "hotel", "valley", "forest", "theatre", "airport", "bakery",
          "hospital", "garage", "window", "fountain", "stadium", "cottage", "lighthouse", "factory", "chapel")
TIMES = ("this morning", "last Thursday", "after lunch", "before dinner", "every evening", "on Sunday",
         "at midnight", "yesterday", "in June", "during the storm", "all week", "at noon", "on Friday night",
         "last winter", "in the afternoon", "early today", "twice a month", "in September")


def _article(word: str) -> str:
    """'a' or 'an' for the lists above (none starts with a silent h or a 'you' sound)."""
    return "an" if word[0].lower() in "aeiou" else "a"


def _thing(rng: random.Random, *, definite: bool) -> str:
    words = [rng.choice(THING_ADJECTIVES), rng.choice(THINGS)] if rng.random() < 0.7 else [rng.choice(THINGS)]
    return " ".join(["the" if definite else _article(words[0]), *words])


def _person(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return rng.choice(NAMES)
    if kind < 0.6:
        return f"my {rng.choice(RELATIVES)}"
    adjective = f"{rng.choice(PERSON_ADJECTIVES)} " if rng.random() < 0.5 else ""
    return f"the {adjective}{rng.choice(PEOPLE)}"


def _place(rng: random.Random) -> str:
    return f"{rng.choice(PREPOSITIONS)} the {rng.choice(PLACES)}"


# Each rule writes one sentence shape; word counts stay within 5..12 and are checked below.
_RULES: tuple[Callable[[random.Random], str], ...] = (
    lambda r: f"{_person(r)} {r.choice(PAST_TRANSITIVE)} {_thing(r, definite=r.random() < 0.5)} {_place(r)}",
    lambda r: f"{_person(r)} {r.choice(PAST_TRANSITIVE)} {_thing(r, definite=True)} {r.choice(TIMES)}",
    lambda r: f"{_person(r)} {r.choice(PAST_INTRANSITIVE)} {_place(r)} {r.choice(TIMES)}",
    lambda r: f"{r.choice(NAMES)} said that {_thing(r, definite=True)} was {r.choice(THING_ADJECTIVES)}",
    lambda r: f"there was {_thing(r, definite=False)} {_place(r)}",
    lambda r: f"{r.choice(NAMES)} and {r.choice(NAMES)} {r.choice(PAST_TRANSITIVE)} {_thing(r, definite=True)}",
    lambda r: f"please {r.choice(BASE_TRANSITIVE)} {_thing(r, definite=True)} {_place(r)}",
    lambda r: f"the {r.choice(THINGS)} {_place(r)} is {r.choice(THING_ADJECTIVES)}",
    lambda r: f"{_person(r)} {r.choice(PAST_INTRANSITIVE)} {_place(r)} while {_person(r)} {r.choice(PAST_INTRANSITIVE)}",
    lambda r: f"we {r.choice(PAST_TRANSITIVE)} {_thing(r, definite=False)} for {_person(r)} {r.choice(TIMES)}",
)


def _finish(words: str) -> str:
    return words[0].upper() + words[1:] + "."


def generate_sentences(n: int = 300, seed: int = 0) -> list[str]:
    """``n`` distinct sentences of 5-12 words; the same ``(n, seed)`` always gives the same list.

    A larger ``n`` with the same seed extends the smaller list (the first
    ``n`` are a prefix), so corpora of different sizes share their sentences.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"generate_sentences(): n={n!r} must be a positive integer (the number of sentences).")
    rng = random.Random(f"emoctl-sentences-{seed}")
    sentences: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(sentences) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ConfigError(f"generate_sentences(): could not find {n} distinct sentences; the grammar in "
                              f"{__name__} is too small for that many, ask for fewer.")
        sentence = _finish(rng.choice(_RULES)(rng))
        key = sentence.lower()
        if key in seen or not MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
            continue
        seen.add(key)
        sentences.append(sentence)
    return sentences
