"""The feature-set file: one emotion's selected SAE latents, written by ``emoctl select``, read by steering.

A JSON document (``format: emoctl.feature_set``, ``version: 1``) with the SAE and
store it came from, the selection settings, and one record per selected latent
(Δ-score with its bootstrap CI, McNemar p and BH q, cell counts and firing
statistics).  It is replaced atomically, so a crash never leaves half a file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emoctl.errors import ConfigError
from emoctl.store.fsio import atomic_write_bytes

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
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no feature-set file at {path}; `emoctl select` writes features_<emotion>.json.")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON ({err}); rerun `emoctl select`.") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} holds a JSON {type(raw).__name__}, not a {FORMAT_NAME} object; rerun "
                              f"`emoctl select`.")
        if raw.get("format") != FORMAT_NAME or raw.get("version") != FORMAT_VERSION:
            raise ConfigError(f"{path} is not a version-{FORMAT_VERSION} {FORMAT_NAME} file (format="
                              f"{raw.get('format')!r}, version={raw.get('version')!r}).")
        try:
            features = [SelectedFeature(**f) for f in raw["features"]]
            return cls(raw["emotion"], raw["neutral"], features, raw.get("sae", {}), raw.get("store", {}),
                       raw.get("selection", {}))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{path} has a missing or malformed entry ({err}); rerun `emoctl select`.") from None


def check_selected_with(feature_sets: dict[str, FeatureSet] | list[FeatureSet], sae: str | Path, folder: str | Path
                        ) -> None:
    """Refuse feature sets selected on another SAE than ``sae``: their latent ids would index the wrong
    dictionary and steer something else without a word. Sets written before digests were recorded pass."""
    from emoctl.reports.provenance import digest_path

    sets = list(feature_sets.values()) if isinstance(feature_sets, dict) else list(feature_sets)
    digest = None
    for fs in sets:
        recorded = fs.sae.get("digest")
        if recorded is None:
            continue
        digest = digest or digest_path(sae)
        if recorded != digest:
            raise ConfigError(f"the {fs.emotion} feature set in {folder} was selected on the SAE {fs.sae.get('path')} "
                              f"(digest {recorded[:12]}), but --sae {sae} has digest {digest[:12]}: its latent ids "
                              "would index another dictionary. Pass the SAE it was selected on, or rerun "
                              f"`emoctl select --sae {sae}`.")

