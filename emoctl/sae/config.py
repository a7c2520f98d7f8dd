"""``SAEConfig``: the shape and loss settings of a Top-k sparse autoencoder.

A plain dataclass so that recipes can set it (jsonargparse turns the docstring
under each field into ``--help`` text) and so that the export can write it
next to the weights and restore it exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from emoctl.errors import ConfigError


@dataclass
class SAEConfig:
    """Top-k SAE ``d_in -> d_sae -> d_in`` with the AuxK dead-latent loss (Gao et al., 2024)."""

    d_in: int = 1280
    """Width of the activations the SAE reads (IndexTTS2's GPT: 1280)."""

    d_sae: int = 4096
    """Number of latents (dictionary size)."""

    k: int = 32
    """Latents kept per token: the k largest ReLU'd pre-activations."""

    k_aux: int | None = None
    """Dead latents used per token by the AuxK loss; None means d_in // 2."""

    aux_coef: float = 1 / 32
    """Weight of the AuxK loss (a normalized MSE) in the total loss."""

    dead_tokens: int = 10_000_000
    """A latent that has not fired for this many training tokens is dead and joins the AuxK loss."""

    hook_name: str = "resid_pre.16"
    """Hookpoint whose activations the SAE reads (blocks counted from 0); written to the export."""

    def __post_init__(self) -> None:
        for key in ("d_in", "d_sae", "k", "dead_tokens"):
            _require_positive_int(key, getattr(self, key))
        if self.k > self.d_sae:
            raise ConfigError(
                f"SAEConfig.k={self.k} is larger than d_sae={self.d_sae}: a token cannot keep more latents "
                "than exist. Lower model.sae.k or raise model.sae.d_sae."
            )
        if self.k_aux is not None:
            _require_positive_int("k_aux", self.k_aux)
        if isinstance(self.aux_coef, bool) or not isinstance(self.aux_coef, (int, float)) \
                or not math.isfinite(self.aux_coef) or self.aux_coef < 0:
            raise ConfigError(
                f"SAEConfig.aux_coef={self.aux_coef!r} must be a finite number >= 0 (0 turns AuxK off; "
                "Gao et al. use 1/32). Fix model.sae.aux_coef."
            )
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise ConfigError(
                f"SAEConfig.hook_name={self.hook_name!r} must be a non-empty hookpoint name such as "
                "'resid_pre.16'. Fix model.sae.hook_name."
            )

    @property
    def resolved_k_aux(self) -> int:
        """k_aux with the default applied: d_in // 2 (at least 1), as in sparsify and SAELens."""
        return self.k_aux if self.k_aux is not None else max(self.d_in // 2, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the config") -> SAEConfig:
        """Build from a dict (e.g. a cfg.json section), naming unknown keys instead of a TypeError."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{source} has unknown SAE settings {unknown}; the known ones are {sorted(known)}. "
                "Remove the extra keys or upgrade emoctl."
            )
        return cls(**values)


def _require_positive_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"SAEConfig.{key}={value!r} must be a positive integer. Fix model.sae.{key}.")
