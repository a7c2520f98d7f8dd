"""Calibrated intensity: from a steering strength α to how much of an emotion the recognizer hears, and back.

``emoctl calibrate`` (:mod:`emoctl.reports.calibration`) speaks the same prompts at a grid of α per method and
emotion and measures P(target emotion) by the recognizer on every clip. This module turns those clips into one
:class:`Curve` per (method, emotion):

* at each α, the mean P(target) and the SER accuracy with percentile-bootstrap intervals over clips, beside the
  mean WER, SpkSIM and "finished" rate, so the usable range is visible;
* a **monotone fit** of P(target) over α (isotonic regression, weighted by clips; α = 0 is the unsteered clips);
* its inverse, :meth:`Curve.alpha_for`: the smallest α whose fitted P(target) reaches a requested **intensity**,
  interpolated linearly between grid points.

The curves are saved as one ``calibration.json`` (:class:`Calibration`), which every steering command reads for
``--intensity``: the intensity is a target probability, refused outside what the calibration reached, and the α
it gave is printed and recorded.

The intensity is the recognizer's reading, not a listener's. Recognizers are biased on synthetic speech (the mini
SER is trained on eSpeak NG clips and their codec round trips; emotion2vec on human speech), so an intensity
means "this recognizer's P(target) on this backbone", and it moves with either. A calibration names both and is
refused on another backbone.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import isotonic_regression

from emoctl.errors import ConfigError
from emoctl.evaluation.paired import paired_bootstrap
from emoctl.io.formats import read_versioned_json
from emoctl.io.fsio import atomic_write_bytes

FORMAT = "emoctl-calibration"
VERSION = 1
FILE_NAME = "calibration.json"
MEASURE = "p_target"
"""What an intensity is: the recognizer's mean probability of the target emotion over clips."""
BIAS_WARNING = ("the intensity is the recognizer's P(target) on this backbone, not a listener's judgement; "
                "recognizers are biased on synthetic speech")


def monotone_fit(values: Sequence[float], weights: Sequence[float]) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in weighted least squares (isotonic regression)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        raise ConfigError(f"a monotone fit needs finite values, got {values.tolist()}.")
    return np.asarray(isotonic_regression(values, weights=np.asarray(weights, dtype=np.float64),
                                          increasing=True).x, dtype=np.float64)


def mean_interval(values: Sequence[float], n_bootstrap: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95% interval of per-clip values (resampling clips)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = paired_bootstrap(values, n_bootstrap=n_bootstrap, seed=seed)  # the bootstrap of any clip means
    return float(values.mean()), low, high


@dataclass(frozen=True)
class CurvePoint:
    """One α of a curve: the clips' means (with bootstrap intervals where given) and the monotone fit there."""

    alpha: float
    n: int
    p_target: float
    p_target_low: float
    p_target_high: float
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    fit: float
    """The monotone fit of P(target) at this α."""
    wer: float
    spk_sim: float
    finished: float
    """Share of clips that ended with the stop token (not at the token cap)."""


@dataclass(frozen=True)
class Curve:
    """P(target) over α for one method and emotion, α ascending from 0 (unsteered)."""

    method: str
    emotion: str
    points: tuple[CurvePoint, ...]

    def __post_init__(self) -> None:
        alphas = [p.alpha for p in self.points]
        if not alphas or alphas[0] != 0 or any(b <= a for a, b in zip(alphas, alphas[1:])):
            raise ConfigError(f"calibration curve {self.method}/{self.emotion}: α must rise from 0 (unsteered) "
                              f"without repeats, got {alphas}.")
        fits = [p.fit for p in self.points]
        if not all(math.isfinite(f) for f in fits) or any(b < a for a, b in zip(fits, fits[1:])):
            raise ConfigError(f"calibration curve {self.method}/{self.emotion}: the fit {fits} must be finite and "
                              "non-decreasing; recalibrate.")

    @property
    def reached(self) -> tuple[float, float]:
        """The intensities the fit spans: P(target) unsteered and at its highest."""
        return self.points[0].fit, self.points[-1].fit

    @property
    def roughness(self) -> float:
        """Root mean square of P(target) around its monotone fit, weighted by clips (0: already monotone)."""
        n = np.array([p.n for p in self.points], dtype=np.float64)
        gap = np.array([p.p_target - p.fit for p in self.points])
        return float(np.sqrt((n * gap ** 2).sum() / n.sum()))

    @property
    def reversals(self) -> int:
        """Steps up the α grid where the measured P(target) falls (each one a place the raw curve is not monotone)."""
        return sum(int(b.p_target < a.p_target) for a, b in zip(self.points, self.points[1:]))

    def alpha_for(self, intensity: float) -> float:
        """The smallest α whose fitted P(target) is ``intensity`` (linear between grid points); refused outside
        :attr:`reached`."""
        low, high = self.reached
        if isinstance(intensity, bool) or not isinstance(intensity, (int, float)) or not math.isfinite(intensity):
            raise ConfigError(f"intensity={intensity!r} must be a finite probability of {self.emotion}.")
        if not low <= intensity <= high:
            top = next(p.alpha for p in self.points if p.fit == high)
            raise ConfigError(f"intensity {intensity:g} for {self.emotion} by {self.method} is outside what the "
                              f"calibration reached: P({self.emotion}) from {low:.3f} (unsteered) to {high:.3f} (α = "
                              f"{top:g}, the fit's top on α up to {self.points[-1].alpha:g}). Choose an intensity in "
                              f"[{low:.3f}, {high:.3f}], or calibrate with a wider alpha grid.")
        for a, b in zip(self.points, self.points[1:]):
            if a.fit >= intensity:
                return a.alpha
            if b.fit >= intensity:
                return a.alpha + (intensity - a.fit) / (b.fit - a.fit) * (b.alpha - a.alpha)
        return self.points[0].alpha  # one point only: the unsteered one, reached only at its own P(target)

    def usable_at(self, alpha: float) -> CurvePoint:
        """The grid point at or just above ``alpha``: its WER, SpkSIM and finished rate are what to expect."""
        return next((p for p in self.points if p.alpha >= alpha - 1e-12), self.points[-1])


def build_curve(method: str, emotion: str, rows_by_alpha: Mapping[float, Sequence[Mapping[str, Any]]],
                n_bootstrap: int = 2000, seed: int = 0) -> Curve:
    """A :class:`Curve` from per-clip rows (``p_target``, ``ser_hit``, ``wer``, ``spk_sim``, ``finished``) per α,
    which must include α = 0 (the unsteered clips)."""
    if 0.0 not in rows_by_alpha:
        raise ConfigError(f"calibration {method}/{emotion} has no unsteered clips (α = 0) to start its curve from.")
    alphas = sorted(rows_by_alpha)
    stats = []
    for alpha in alphas:
        rows = rows_by_alpha[alpha]
        if not rows:
            raise ConfigError(f"calibration {method}/{emotion}: no clips at α = {alpha:g}.")
        p = mean_interval([r["p_target"] for r in rows], n_bootstrap, seed)
        acc = mean_interval([r["ser_hit"] for r in rows], n_bootstrap, seed)
        stats.append((alpha, len(rows), p, acc, _mean(rows, "wer"), _mean(rows, "spk_sim"), _mean(rows, "finished")))
    fit = monotone_fit([s[2][0] for s in stats], [s[1] for s in stats])
    points = tuple(CurvePoint(alpha, n, *p, *acc, float(f), wer, spk, fin)
                   for (alpha, n, p, acc, wer, spk, fin), f in zip(stats, fit))
    return Curve(method, emotion, points)


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if key in r and math.isfinite(float(r[key]))]
    return float(np.mean(values)) if values else math.nan


@dataclass(frozen=True)
class Calibration:
    """Every curve of one ``emoctl calibrate`` run, and what they hold for: one backbone and one recognizer."""

    backbone_id: str
    recognizer: str
    curves: tuple[Curve, ...]
    made_with: Mapping[str, Any]
    """The run's provenance record (inputs by digest, protocol, seeds)."""

    def curve(self, method: str, emotion: str) -> Curve:
        for curve in self.curves:
            if curve.method == method and curve.emotion == emotion:
                return curve
        have = ", ".join(f"{c.method}/{c.emotion}" for c in self.curves)
        raise ConfigError(f"the calibration has no curve for {method}/{emotion} (it has {have}); run `emoctl "
                          f"calibrate` with that method and emotion.")

    def check_backbone(self, backbone_id: str, path: str | Path) -> None:
        """Refuse a calibration measured on another backbone (its α would mean something else there)."""
        if backbone_id != self.backbone_id:
            raise ConfigError(f"{path} calibrates backbone {self.backbone_id}, but steering runs on {backbone_id}; "
                              "an α's effect differs between backbones. Calibrate on this backbone with `emoctl "
                              "calibrate`.")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "measure": MEASURE, "warning": BIAS_WARNING,
                "backbone_id": self.backbone_id, "recognizer": self.recognizer, "made_with": dict(self.made_with),
                "curves": [{"method": c.method, "emotion": c.emotion, "points": [asdict(p) for p in c.points]}
                           for c in self.curves]}

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(Path(path), (json.dumps(_finite_or_null(self.to_json()), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """The calibration at ``path`` (a ``calibration.json`` or the report folder holding it), checked."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        remedy = "write one with `emoctl calibrate`"
        if not path.is_file():
            raise ConfigError(f"no calibration file at {path}; {remedy} (its out_dir holds {FILE_NAME}).")
        raw = read_versioned_json(path, FORMAT, VERSION, remedy)
        try:
            curves = tuple(Curve(c["method"], c["emotion"],
                                 tuple(CurvePoint(**{k: math.nan if v is None else v for k, v in p.items()})
                                       for p in c["points"])) for c in raw["curves"])
            return cls(str(raw["backbone_id"]), str(raw["recognizer"]), curves, raw.get("made_with", {}))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{path} is a damaged calibration file (missing or unexpected entry {err}); "
                              f"{remedy}.") from None


def _finite_or_null(value: Any) -> Any:
    """JSON has no NaN: a metric a run did not measure (WER without an ASR) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


@dataclass(frozen=True)
class IntensityChoice:
    """The α an intensity gave for one method and emotion, and what the curve expects there."""

    method: str
    emotion: str
    intensity: float
    alpha: float
    expected: CurvePoint
    """The grid point at or just above α (its WER, SpkSIM, finished rate)."""

    def describe(self) -> str:
        e = self.expected
        return (f"intensity {self.intensity:g} -> α = {self.alpha:.4g} for {self.emotion} by {self.method} "
                f"(at α {e.alpha:g} the calibration measured P(target) {e.p_target:.2f}, WER {e.wer:.2f}, "
                f"finished {e.finished:.2f})")


def alphas_for_intensity(calibration: str | Path, method: str, emotions: Sequence[str], intensity: float,
                         backbone_id: str) -> dict[str, IntensityChoice]:
    """Per emotion, the α that ``intensity`` gives for ``method`` by the calibration file at ``calibration``,
    which must be of ``backbone_id``; each choice is printed (the command says which α it used)."""
    check_intensity(intensity)
    loaded = Calibration.load(calibration)
    loaded.check_backbone(backbone_id, calibration)
    choices = {}
    for emotion in emotions:
        curve = loaded.curve(method, emotion)
        alpha = curve.alpha_for(float(intensity))
        choices[emotion] = IntensityChoice(method, emotion, float(intensity), alpha, curve.usable_at(alpha))
        print(choices[emotion].describe())
    return choices


def check_intensity(intensity: Any) -> None:
    """An intensity is a probability strictly between 0 and 1."""
    if isinstance(intensity, bool) or not isinstance(intensity, (int, float)) or not 0 < intensity < 1:
        raise ConfigError(f"intensity={intensity!r} must be a probability strictly between 0 and 1 (the "
                          f"recognizer's mean P(target) to reach; {BIAS_WARNING}).")


def check_alpha_or_intensity(alpha_given: bool, intensity: Any, calibration: Any, command: str) -> None:
    """One of α or (intensity, calibration): both, or an intensity without a calibration, is refused; so is an
    intensity (or any of a list) that is not a probability."""
    if intensity is None:
        if calibration is not None:
            raise ConfigError(f"{command}: calibration={calibration!r} is only read with an intensity; give "
                              "--intensity, or leave --calibration out.")
        return
    if alpha_given:
        raise ConfigError(f"{command}: give α or an intensity, not both (intensity={intensity!r} sets α from the "
                          "calibration).")
    if calibration is None:
        raise ConfigError(f"{command}: intensity={intensity!r} needs --calibration, the calibration.json (or its "
                          "folder) written by `emoctl calibrate` on this backbone.")
    for value in intensity if isinstance(intensity, (list, tuple)) else [intensity]:
        check_intensity(value)
