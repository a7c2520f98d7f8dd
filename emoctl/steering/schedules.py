"""Schedules users write: how steering strength changes over one utterance, as checked data.

Every intervention multiplies its α at decode step t by a schedule (:data:`emoctl.steering.base.Schedule`).
From Python that can be any callable; recipes and ``--schedule`` give a plain mapping with one key naming
the kind, parsed here into frozen dataclasses and checked before anything is generated::

    {"switch": {"at_s": 0.5}}                                      # 0 before 0.5 s, 1 from then on
    {"switch": {"at_step": 25, "before": 1, "after": 0}}           # the reverse, at decode step 25
    {"ramp": {"start_s": 0.2, "end_s": 1.0, "shape": "cosine"}}    # 0 -> 1 between 0.2 s and 1.0 s
    {"segments": [{"emotion": "Neutral", "alpha": 0, "end_s": 0.5},
                  {"emotion": "Angry", "alpha": 3}]}               # each segment its own emotion and α

A time is a key ending in ``_step`` (decode steps) or ``_s`` (seconds of audio).  Decode step t feeds speech
token t, which starts t / token_rate seconds into the clip, so a time in seconds maps to the first step at or
after it: ``ceil(seconds * token_rate)`` (:attr:`Backbone.token_rate`).  :meth:`resolve` turns a schedule
into what interventions take, one multiplier per decode step up to the backbone's token cap
(:meth:`Backbone.speech_token_cap`), and refuses a time past that cap, since it would never be reached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence, Union

import yaml

from emoctl.backbones.base import Backbone
from emoctl.errors import ConfigError, first_line

Shape = Literal["linear", "cosine"]
SHAPES: tuple[str, ...] = ("linear", "cosine")
UNITS = {"step": "decode steps", "s": "seconds"}
KINDS = ("switch", "ramp", "segments")
_FIX = ("Write a schedule as one of {\"switch\": {\"at_s\": 0.5}}, {\"ramp\": {\"start_s\": 0.2, \"end_s\": 1.0}} or "
        "{\"segments\": [{\"emotion\": \"Angry\", \"alpha\": 3, \"start_s\": 0.5}]} (docs/commands.md, Schedules).")


def _refuse(where: str, message: str) -> ConfigError:
    return ConfigError(f"schedule {where}: {message}")


# ------------------------------------------------------------------- times
@dataclass(frozen=True)
class Time:
    """A point in an utterance as written: ``value`` in decode steps or seconds, and the key it came from."""

    value: float
    unit: Literal["step", "s"]
    key: str
    """The key as written (``at_s``), named by every error about this time."""

    def step(self, token_rate: float) -> int:
        """The decode step it falls on: itself, or the first step whose token starts at or after it."""
        if self.unit == "step":
            return int(self.value)
        return math.ceil(round(self.value * token_rate, 9))  # round: 0.3 * 50 is 15.000000000000002, not 16

    def describe(self) -> str:
        return f"{self.key}={self.value:g}"


def _time(fields: Mapping[str, Any], name: str, where: str, required: bool) -> Time | None:
    """The time ``name`` (``at``, ``start``, ``end``) of ``fields``, given as ``<name>_step`` or ``<name>_s``."""
    given = [k for k in fields if k == name or k.startswith(f"{name}_")]
    for key in given:
        unit = key[len(name) + 1:]
        if unit not in UNITS:
            raise _refuse(where, f"unknown unit in {key}={fields[key]!r}; a time is {name}_step (decode steps) or "
                                 f"{name}_s (seconds of audio).")
    if len(given) > 1:
        raise _refuse(where, f"{' and '.join(f'{k}={fields[k]!r}' for k in given)} give the same time twice; keep "
                             "one of them.")
    if not given:
        if required:
            raise _refuse(where, f"needs a time {name}_step (decode steps) or {name}_s (seconds of audio), got keys "
                                 f"{sorted(fields)}.")
        return None
    key = given[0]
    unit = key[len(name) + 1:]
    value = fields[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _refuse(where, f"{key}={value!r} must be a finite number.")
    if value < 0:
        raise _refuse(where, f"{key}={value!r} is negative; times count from the start of the utterance (0).")
    if unit == "step" and value != int(value):
        raise _refuse(where, f"{key}={value!r} must be a whole decode step; give seconds as {name}_s.")
    return Time(float(value), unit, key)  # type: ignore[arg-type]


def _number(fields: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = fields.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _refuse(where, f"{key}={value!r} must be a finite number.")
    return float(value)


def _only(fields: Any, allowed: Sequence[str], where: str) -> Mapping[str, Any]:
    """``fields`` as a mapping whose keys are all ``allowed`` (a time key's unit is checked by :func:`_time`)."""
    if not isinstance(fields, Mapping):
        raise _refuse(where, f"must be a mapping of settings, got {fields!r}. {_FIX}")
    bases = {k.split("_")[0] for k in allowed if k.endswith("_*")}
    plain = {k for k in allowed if not k.endswith("_*")}
    unknown = [k for k in fields if k not in plain and k.split("_")[0] not in bases]
    if unknown:
        shown = [f"{k[:-2]}_step or {k[:-2]}_s" if k.endswith("_*") else k for k in allowed]
        raise _refuse(where, f"unknown key(s) {', '.join(f'{k}={fields[k]!r}' for k in unknown)}; it takes "
                             f"{', '.join(shown)}.")
    return fields


# --------------------------------------------------------------- resolved
@dataclass(frozen=True)
class StepSchedule:
    """A schedule resolved for one backbone and budget: α's multiplier at each decode step 0 .. cap-1."""

    kind: str
    spec: dict[str, Any]
    token_rate: float
    cap: int
    multipliers: tuple[float, ...]

    @property
    def schedule(self) -> list[float]:
        """What :class:`~emoctl.steering.base.Intervention` takes (its last entry holds for later steps)."""
        return list(self.multipliers)

    def record(self) -> dict[str, Any]:
        """The schedule as a result's info file states it: as written, and per decode step."""
        return {"kind": self.kind, "spec": self.spec, "token_rate": self.token_rate, "cap": self.cap,
                "multipliers": list(self.multipliers)}


@dataclass(frozen=True)
class ResolvedSegment:
    """One segment on decode steps: ``emotion`` at ``alpha`` over steps ``start`` .. ``end - 1``."""

    emotion: str
    alpha: float
    start: int
    end: int
    cap: int

    @property
    def schedule(self) -> list[float]:
        """1 inside the segment, 0 elsewhere: the segment's intervention runs at ``alpha`` only there."""
        return [1.0 if self.start <= t < self.end else 0.0 for t in range(self.cap)]


@dataclass(frozen=True)
class SegmentPlan:
    """Segments resolved for one backbone and budget, composed as one intervention per segment (their schedules
    are complementary) or, for EmoShift, as one emotion mix per decode step."""

    spec: dict[str, Any]
    token_rate: float
    cap: int
    segments: tuple[ResolvedSegment, ...]
    kind: str = "segments"

    def interventions(self, build: Callable[[str, float, list[float]], Any]) -> list[Any]:
        """``build(emotion, alpha, schedule)`` per segment with a non-zero α (an α of 0 changes nothing)."""
        return [build(s.emotion, s.alpha, s.schedule) for s in self.segments if s.alpha != 0]

    def step_mixes(self) -> list[dict[str, float]]:
        """Per decode step, the emotion mix EmoShift applies: ``{emotion: alpha}`` in a segment, ``{}`` (no
        change) outside every segment."""
        mixes: list[dict[str, float]] = [{} for _ in range(self.cap)]
        for s in self.segments:
            for t in range(s.start, s.end):
                mixes[t] = {s.emotion: s.alpha} if s.alpha != 0 else {}
        return mixes

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, "token_rate": self.token_rate, "cap": self.cap,
                "segments": [{"emotion": s.emotion, "alpha": s.alpha, "start_step": s.start, "end_step": s.end,
                              "multipliers": s.schedule} for s in self.segments]}


Resolved = Union[StepSchedule, SegmentPlan]


def _check_cap(token_rate: float, cap: int) -> None:
    if isinstance(token_rate, bool) or not math.isfinite(token_rate) or token_rate <= 0:
        raise ConfigError(f"schedule: token_rate={token_rate!r} must be a positive number of speech tokens per "
                          "second (the backbone's token_rate).")
    if cap < 1:
        raise ConfigError(f"schedule: the token cap {cap} must be >= 1 (max_new_tokens).")


def _within(time: Time, step: int, cap: int, where: str, inclusive: bool, token_rate: float) -> None:
    """Refuse a time the generation never reaches: step cap (or later) for a start, past cap for an end."""
    if step > cap or (step == cap and not inclusive):
        seconds = f" ({step} decode steps at {token_rate:g} tokens/s)" if time.unit == "s" else ""
        raise _refuse(where, f"{time.describe()}{seconds} is past the token cap: generation runs at most {cap} "
                             f"decode steps (steps 0 .. {cap - 1}, {cap / token_rate:g} s), the smaller of "
                             "max_new_tokens and the backbone's position table. Move it earlier or raise "
                             "max_new_tokens.")


# ------------------------------------------------------------------ kinds
@dataclass(frozen=True)
class Switch:
    """Multiplier ``before`` until ``at``, ``after`` from ``at`` on (Neutral -> emotion: 0 then 1)."""

    at: Time
    before: float = 0.0
    after: float = 1.0

    @classmethod
    def parse(cls, fields: Any) -> Switch:
        where = "switch"
        fields = _only(fields, ("at_*", "before", "after"), where)
        at = _time(fields, "at", where, required=True)
        return cls(at, _number(fields, "before", 0.0, where), _number(fields, "after", 1.0, where))

    def resolve(self, token_rate: float, cap: int, spec: dict[str, Any]) -> StepSchedule:
        _check_cap(token_rate, cap)
        at = self.at.step(token_rate)
        _within(self.at, at, cap, "switch", inclusive=False, token_rate=token_rate)
        return StepSchedule("switch", spec, token_rate, cap,
                            tuple(self.before if t < at else self.after for t in range(cap)))


@dataclass(frozen=True)
class Ramp:
    """``start_value`` until ``start``, then linearly or by a half cosine to ``end_value`` at ``end``."""

    start: Time
    end: Time
    shape: Shape = "linear"
    start_value: float = 0.0
    end_value: float = 1.0

    @classmethod
    def parse(cls, fields: Any) -> Ramp:
        where = "ramp"
        fields = _only(fields, ("start_*", "end_*", "shape", "from", "to"), where)
        start = _time(fields, "start", where, required=True)
        end = _time(fields, "end", where, required=True)
        shape = fields.get("shape", "linear")
        if shape not in SHAPES:
            raise _refuse(where, f"unknown shape={shape!r}; a ramp is {' or '.join(SHAPES)}.")
        return cls(start, end, shape, _number(fields, "from", 0.0, where), _number(fields, "to", 1.0, where))

    def at(self, t: int, start: int, end: int) -> float:
        """The closed form at decode step t for a ramp over steps ``start`` .. ``end``."""
        u = min(max((t - start) / (end - start), 0.0), 1.0)
        if self.shape == "cosine":
            u = (1.0 - math.cos(math.pi * u)) / 2.0
        return self.start_value + (self.end_value - self.start_value) * u

    def resolve(self, token_rate: float, cap: int, spec: dict[str, Any]) -> StepSchedule:
        _check_cap(token_rate, cap)
        start, end = self.start.step(token_rate), self.end.step(token_rate)
        _within(self.start, start, cap, "ramp", inclusive=False, token_rate=token_rate)
        _within(self.end, end, cap, "ramp", inclusive=True, token_rate=token_rate)
        if end <= start:
            raise _refuse("ramp", f"{self.end.describe()} (step {end}) must come after {self.start.describe()} "
                                  f"(step {start}); a ramp needs at least one step to rise over.")
        return StepSchedule("ramp", spec, token_rate, cap, tuple(self.at(t, start, end) for t in range(cap)))


@dataclass(frozen=True)
class Segment:
    """``emotion`` at ``alpha`` from ``start`` (default: where the previous segment ends, or 0) to ``end``
    (default: where the next one starts, or the token cap)."""

    emotion: str
    alpha: float
    start: Time | None = None
    end: Time | None = None

    @classmethod
    def parse(cls, fields: Any, index: int) -> Segment:
        where = f"segments[{index}]"
        fields = _only(fields, ("emotion", "alpha", "start_*", "end_*"), where)
        emotion = fields.get("emotion")
        if not isinstance(emotion, str) or not emotion:
            raise _refuse(where, f"emotion={emotion!r} must name an emotion (Neutral, Angry, ...).")
        if "alpha" not in fields:
            raise _refuse(where, f"needs alpha, the {emotion} segment's strength (0: unsteered).")
        return cls(emotion, _number(fields, "alpha", 0.0, where), _time(fields, "start", where, required=False),
                   _time(fields, "end", where, required=False))


@dataclass(frozen=True)
class Segments:
    """Segments in order, none overlapping; steps outside every segment are unsteered."""

    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, items: Any) -> Segments:
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
            raise _refuse("segments", f"must be a non-empty list of {{emotion, alpha, start_s/end_s}} mappings, "
                                      f"got {items!r}.")
        return cls(tuple(Segment.parse(item, i) for i, item in enumerate(items)))

    def resolve(self, token_rate: float, cap: int, spec: dict[str, Any]) -> SegmentPlan:
        _check_cap(token_rate, cap)
        starts = [s.start.step(token_rate) if s.start is not None else None for s in self.segments]
        ends = [s.end.step(token_rate) if s.end is not None else None for s in self.segments]
        given = [(i, start) for i, start in enumerate(starts) if start is not None]
        for (i, a), (j, b) in zip(given, given[1:]):
            if b < a:
                later, earlier = self.segments[j].start.describe(), self.segments[i].start.describe()
                raise _refuse(f"segments[{j}]", f"starts at step {b} ({later}), before segments[{i}] starts at step "
                                                f"{a} ({earlier}): segments are out of order. List them in time order.")
        resolved: list[ResolvedSegment] = []
        previous_end = 0
        for i, segment in enumerate(self.segments):
            where = f"segments[{i}]"
            start = starts[i] if starts[i] is not None else previous_end
            following = next((x for x in starts[i + 1:i + 2] if x is not None), None)
            end = ends[i] if ends[i] is not None else (following if following is not None else cap)
            if segment.start is not None:
                _within(segment.start, start, cap, where, inclusive=False, token_rate=token_rate)
            elif start >= cap:
                raise _refuse(where, f"starts where segments[{i - 1}] ends, at step {start}, which is past the token "
                                     f"cap of {cap} decode steps; shorten the earlier segments or raise "
                                     "max_new_tokens.")
            if segment.end is not None:
                _within(segment.end, end, cap, where, inclusive=True, token_rate=token_rate)
            if i > 0 and start < previous_end:
                raise _refuse(where, f"starts at step {start} ({_said(segment.start, 'start')}) before "
                                     f"segments[{i - 1}] ends at step {previous_end}: segments overlap or are out of "
                                     "order. List them in time order, each starting at or after the previous end.")
            if end <= start:
                raise _refuse(where, f"ends at step {end} ({_said(segment.end, 'end')}), not after its start at step "
                                     f"{start} ({_said(segment.start, 'start')}); a segment needs at least one step.")
            resolved.append(ResolvedSegment(segment.emotion, segment.alpha, start, end, cap))
            previous_end = end
        return SegmentPlan(spec, token_rate, cap, tuple(resolved))


def _said(time: Time | None, name: str) -> str:
    return time.describe() if time is not None else f"{name} by default"


UserSchedule = Union[Switch, Ramp, Segments]


@dataclass(frozen=True)
class ScheduleSpec:
    """A parsed schedule and the mapping it was written as (recorded with every result it steered)."""

    kind: str
    body: UserSchedule
    spec: dict[str, Any]

    def resolve(self, token_rate: float, cap: int) -> Resolved:
        """Per-step multipliers (or segments) for a backbone speaking ``token_rate`` tokens a second and at most
        ``cap`` decode steps."""
        return self.body.resolve(token_rate, cap, self.spec)

    def resolve_for(self, backbone: Backbone, max_new_tokens: int) -> Resolved:
        """:meth:`resolve` with the backbone's token rate and its cap under ``max_new_tokens``."""
        return self.resolve(backbone.token_rate, backbone.speech_token_cap(max_new_tokens))


def parse_schedule(value: Mapping[str, Any] | str) -> ScheduleSpec:
    """A schedule from a mapping (a recipe's ``schedule:``) or its JSON/YAML text (``--schedule '{...}'``)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"schedule {value!r} is neither JSON nor YAML ({first_line(err)}). {_FIX}") from None
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ConfigError(f"schedule={value!r} must be a mapping with exactly one key, the kind ({', '.join(KINDS)}). "
                          f"{_FIX}")
    (kind, body), = value.items()
    parsers: dict[str, Callable[[Any], UserSchedule]] = {"switch": Switch.parse, "ramp": Ramp.parse,
                                                         "segments": Segments.parse}
    if kind not in parsers:
        raise ConfigError(f"schedule: unknown kind {kind!r} (in {dict(value)!r}); a schedule is one of "
                          f"{', '.join(KINDS)}. {_FIX}")
    return ScheduleSpec(kind, parsers[kind](body), _plain(dict(value)))


def _plain(value: Any) -> Any:
    """The spec as JSON-ready plain data (YAML may give tuples or other mappings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def parse_step_schedule(value: Mapping[str, Any] | str | None, command: str) -> ScheduleSpec | None:
    """A switch or ramp for a command that steers toward one emotion per clip (None: constant α); segments,
    which name their own emotions, are refused there rather than ignored."""
    if value is None:
        return None
    spec = parse_schedule(value)
    if isinstance(spec.body, Segments):
        raise ConfigError(f"{command} steers each clip toward one emotion and scores it against that emotion, so "
                          f"schedule {spec.spec!r} with segments of their own emotions has no target to score; give "
                          "a switch or a ramp here (it shapes α over time); `emoctl steer speak` speaks segments and "
                          "scores each part against its own emotion.")
    return spec
