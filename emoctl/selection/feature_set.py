"""The feature-set file: one emotion's selected SAE latents, written by ``emoctl select``, read by steering.

A JSON document (``format: emoctl.feature_set``, ``version: 1``) with the SAE and
store it came from, the selection settings, and one record per selected latent
(Δ-score with its bootstrap CI, McNemar p and BH q, cell counts and firing
statistics).  It is replaced atomically, so a crash never leaves half a file.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from emoctl.errors import ConfigError
from emoctl.io.fsio import atomic_write_bytes
from emoctl.io.formats import read_versioned_json
from emoctl.io.provenance import digest_path

FORMAT_NAME = "emoctl.feature_set"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SelectedFeature:
    """One latent chosen for an emotion."""

    id: int
    """Latent index in the SAE (0 .. d_sae - 1)."""
    delta: float
    """Δ of the selecting score (``selection.score``): mean over pairs of the emotional minus the neutral
    utterance's value (any_step: 1(fires at any step); rate: share of steps it fires on; mass: summed
    activation per step)."""
    ci_low: float
    """Lower end of the bootstrap percentile interval of Δ."""
    ci_high: float
    p_value: float
    """Exact two-sided McNemar p-value."""
    q_value: float
    """Benjamini-Hochberg adjusted p-value over all latents of this emotion."""
    emotion_only: int
    """Pairs where it fired in the emotional utterance only (b)."""
    neutral_only: int
    """Pairs where it fired in the neutral twin only (c)."""
    both: int
    neither: int
    utt_fire_rate_emotion: float
    """Share of the paired emotional utterances where it fired."""
    utt_fire_rate_neutral: float
    row_fire_rate_emotion: float
    """Share of the emotion's rows (decode steps) where it fired."""
    row_fire_rate_neutral: float
    mean_act_emotion: float | None
    """Mean latent value over the emotion's rows where it fired (None if it never fired there)."""
    mean_act_neutral: float | None
    delta_any_step: float | None = None
    """The seed's any-step Δ of this latent, whatever score selected it (saturation shows as a small value)."""
    stability: float | None = None
    """Share of bootstrap resamples of the pairs in which it lands in the top m by the selecting score."""


@dataclass
class FeatureSet:
    """One emotion's selected latents and where they came from."""

    emotion: str
    neutral: str
    features: list[SelectedFeature]
    sae: dict[str, Any] = field(default_factory=dict)
    """path, d_in, d_sae, k, hook_name of the SAE."""
    store: dict[str, Any] = field(default_factory=dict)
    """path, hookpoint, backbone, num_rows, num_utterances of the activation store."""
    selection: dict[str, Any] = field(default_factory=dict)
    """m, alpha, correction, n_pairs, unpaired, bootstrap settings, and any shortfall note."""
    path: Path | None = field(default=None, compare=False, repr=False)
    """The file it was read from (None for a set built in memory); named in messages, never written."""

    @property
    def feature_ids(self) -> list[int]:
        return [f.id for f in self.features]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "emotion": self.emotion, "neutral": self.neutral,
                "feature_ids": self.feature_ids, "features": [asdict(f) for f in self.features],
                "sae": self.sae, "store": self.store, "selection": self.selection}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        """Read a feature-set file strictly: a hand edit that would steer other latents than the file says
        (an id 3.7 or ``true``, ``feature_ids`` that disagree with ``features``, a duplicate, an ``emotion`` that
        is not the one its file name files it under) is refused, naming the file and the entry."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no feature-set file at {path}; `emoctl select` writes features_<emotion>.json.")
        return _parse(read_versioned_json(path, FORMAT_NAME, FORMAT_VERSION, "rerun `emoctl select`"), path)


def feature_file_name(emotion: str) -> str:
    """The file name ``emoctl select`` gives an emotion's feature set: ``features_<emotion>.json`` (characters
    outside ``[A-Za-z0-9_.-]`` become ``_``, so an emotion name never names another folder)."""
    return f"features_{re.sub(r'[^A-Za-z0-9_.-]', '_', emotion)}.json"


def feature_set_path(out_dir: str | Path, emotion: str) -> Path:
    """Where ``emoctl select`` writes an emotion's feature set: ``<out_dir>/features_<emotion>.json``."""
    return Path(out_dir) / feature_file_name(emotion)


_INT_FIELDS = frozenset({"id", "emotion_only", "neutral_only", "both", "neither"})
_OPTIONAL_FIELDS = frozenset(f.name for f in fields(SelectedFeature) if "None" in str(f.type))
_REQUIRED_FIELDS = tuple(f.name for f in fields(SelectedFeature) if f.default is MISSING)


def _is_int(value: Any) -> bool:
    """A JSON integer: ``true`` is not 1 and ``3.0`` is not 3 here, since a latent id must be what was written."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _parse(raw: dict[str, Any], path: Path) -> FeatureSet:
    """The checked :class:`FeatureSet` of a decoded file (see :meth:`FeatureSet.load`)."""
    fix = "rerun `emoctl select`, or undo the edit"
    for key in ("emotion", "neutral"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{path}: `{key}` must be a non-empty string (an emotion name), got "
                              f"{json.dumps(raw.get(key))}; {fix}.")
    emotion = raw["emotion"]
    if path.name.startswith("features_") and path.name != feature_file_name(emotion):
        raise ConfigError(f"{path} says emotion {emotion!r}, but its name files it under another emotion "
                          f"({emotion!r} would be {feature_file_name(emotion)}): the latents would steer the wrong "
                          f"emotion, or replace that emotion's own set. Put back the emotion its file name says, "
                          f"or {fix}.")
    for key in ("sae", "store", "selection"):
        if not isinstance(raw.get(key, {}), dict):
            raise ConfigError(f"{path}: `{key}` must be an object, got {json.dumps(raw[key])}; {fix}.")
    sae = raw.get("sae", {})
    if "digest" in sae and not isinstance(sae["digest"], str):
        raise ConfigError(f"{path}: `sae.digest` must be a string, got {json.dumps(sae['digest'])}; {fix}.")
    d_sae = sae.get("d_sae")
    if d_sae is not None and not (_is_int(d_sae) and d_sae >= 1):
        raise ConfigError(f"{path}: `sae.d_sae` must be a positive integer, got {json.dumps(d_sae)}; {fix}.")
    entries = raw.get("features")
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: `features` must be a list of latent records, got {json.dumps(entries)}; {fix}.")
    features = [_parse_feature(entry, i, path, d_sae) for i, entry in enumerate(entries)]
    ids = [f.id for f in features]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ConfigError(f"{path}: latent(s) {repeated} appear more than once in `features`; each latent is "
                          f"selected once, so a repeat would be steered twice. Remove the repeat, or {fix}.")
    listed = raw.get("feature_ids")
    if not isinstance(listed, list) or not all(_is_int(i) for i in listed) or listed != ids:
        raise ConfigError(f"{path}: `feature_ids` {json.dumps(listed)} and the ids of `features` {ids} disagree; "
                          "steering reads the ids of `features`, so an edit of one alone would steer what the file "
                          f"does not say. Make both the same list of integers, or {fix}.")
    return FeatureSet(emotion, raw["neutral"], features, dict(sae), dict(raw.get("store", {})),
                      dict(raw.get("selection", {})), path=path)


def _parse_feature(entry: Any, i: int, path: Path, d_sae: int | None) -> SelectedFeature:
    """One record of ``features``, each field of the type :class:`SelectedFeature` declares."""
    where = f"{path}: features[{i}]"
    fix = "rerun `emoctl select`, or undo the edit"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object with the latent's `id` and statistics, got "
                          f"{json.dumps(entry)}; {fix}.")
    missing = [name for name in _REQUIRED_FIELDS if name not in entry]
    unknown = sorted(set(entry) - {f.name for f in fields(SelectedFeature)})
    if missing or unknown:
        said = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                           f"unknown {unknown}" if unknown else "") if part)
        raise ConfigError(f"{where} has the wrong keys ({said}); {fix}.")
    fid = entry["id"]
    if not _is_int(fid) or fid < 0 or (d_sae is not None and fid >= d_sae):
        span = f"0 .. {d_sae - 1}" if d_sae is not None else "0 or more"
        raise ConfigError(f"{where}: the latent id {json.dumps(fid)} is not a latent of the SAE: an id must be a "
                          f"JSON integer in {span} (a fraction or true would steer another latent than the file "
                          f"says); {fix}.")
    for name, value in entry.items():
        if name == "id" or (value is None and name in _OPTIONAL_FIELDS):
            continue
        ok = (_is_int(value) and value >= 0) if name in _INT_FIELDS else _is_number(value)
        if not ok:
            kind = "a count (integer >= 0)" if name in _INT_FIELDS else "a finite number"
            raise ConfigError(f"{where}: `{name}` must be {kind}"
                              + (" or null" if name in _OPTIONAL_FIELDS else "") + f", got {json.dumps(value)}; "
                              f"{fix}.")
    return SelectedFeature(**entry)


UNVERIFIED_FLAG = "--allow_unverified_features true"
"""How a command is told to apply feature sets that record no SAE digest."""


def check_selected_with(feature_sets: dict[str, FeatureSet] | list[FeatureSet], sae: str | Path, folder: str | Path,
                        *, allow_unverified: bool = False, d_sae: int | None = None) -> None:
    """Refuse feature sets selected on another SAE than ``sae``: their latent ids would index the wrong
    dictionary and steer something else without a word. A set that records no digest cannot be checked, so it is
    refused too unless ``allow_unverified`` (an SAE of the same shape would take its ids silently). With
    ``d_sae`` (the SAE's width), ids outside it are refused as well."""
    sets = list(feature_sets.values()) if isinstance(feature_sets, dict) else list(feature_sets)
    digest = None
    for fs in sets:
        where = fs.path or f"the {fs.emotion} feature set in {folder}"
        if d_sae is not None:
            outside = [i for i in fs.feature_ids if not 0 <= i < d_sae]
            if outside:
                raise ConfigError(f"{where} names latents {outside}, outside --sae {sae} (d_sae {d_sae}, latents "
                                  f"0 .. {d_sae - 1}): it was selected on another SAE. Pass the SAE it was selected "
                                  f"on, or rerun `emoctl select --sae {sae}`.")
        recorded = fs.sae.get("digest")
        if recorded is None:
            if allow_unverified:
                continue
            raise ConfigError(f"{where} records no SAE digest, so nothing shows it was selected on --sae {sae}: on "
                              "another SAE of the same shape its latent ids would steer other features without a "
                              f"word. Rerun `emoctl select --sae {sae}`, or pass {UNVERIFIED_FLAG} to apply it "
                              "unverified.")
        digest = digest or digest_path(sae)
        if recorded != digest:
            raise ConfigError(f"the {fs.emotion} feature set in {folder} was selected on the SAE {fs.sae.get('path')} "
                              f"(digest {recorded[:12]}), but --sae {sae} has digest {digest[:12]}: its latent ids "
                              "would index another dictionary. Pass the SAE it was selected on, or rerun "
                              f"`emoctl select --sae {sae}`.")


def load_feature_sets(selection: str | Path, emotions: Sequence[str], sae: str | Path, d_sae: int, *,
                      allow_unverified: bool = False) -> dict[str, FeatureSet]:
    """Each emotion's ``features_<emotion>.json`` of ``selection``, checked to be selected on the SAE in ``sae``
    (:func:`check_selected_with`); a missing emotion is refused with the command that makes it."""
    missing = [e for e in emotions if not feature_set_path(selection, e).is_file()]
    if missing:
        raise ConfigError(f"selection folder {selection} has no feature set for {missing} (features_<emotion>.json); "
                          f"run `emoctl select --out_dir {selection}` with the same SAE, or leave them out of "
                          "emotions.")
    sets = {e: FeatureSet.load(feature_set_path(selection, e)) for e in dict.fromkeys(emotions)}
    check_selected_with(sets, sae, selection, allow_unverified=allow_unverified, d_sae=d_sae)
    return sets
