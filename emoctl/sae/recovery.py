"""How well an SAE's decoder recovers a known dictionary.

On synthetic data drawn from a sparse dictionary, a working SAE learns decoder
atoms that match the true atoms.  For each true atom we take the best cosine
over learned atoms (signs matter: activations are non-negative).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emoctl.errors import ConfigError


@dataclass(frozen=True)
class Recovery:
    """Best-match cosines of the true atoms, and the share above ``threshold``."""

    best_cosine: np.ndarray  # (n_true,)
    threshold: float

    @property
    def fraction_recovered(self) -> float:
        return float((self.best_cosine >= self.threshold).mean())

    def summary(self) -> str:
        q = np.quantile(self.best_cosine, [0.1, 0.5, 0.9])
        return (f"{self.fraction_recovered:.1%} of {len(self.best_cosine)} true atoms matched at cosine >= "
                f"{self.threshold} (best-match cosine p10 {q[0]:.3f}, median {q[1]:.3f}, p90 {q[2]:.3f})")


def dictionary_recovery(learned: torch.Tensor | np.ndarray, true: torch.Tensor | np.ndarray,
                        threshold: float = 0.9) -> Recovery:
    """Compare learned atoms (n_learned, d) with true atoms (n_true, d)."""
    learned_t = torch.as_tensor(np.asarray(learned), dtype=torch.float64)
    true_t = torch.as_tensor(np.asarray(true), dtype=torch.float64)
    if learned_t.shape[1] != true_t.shape[1]:
        raise ConfigError(f"learned atoms have width {learned_t.shape[1]} but true atoms {true_t.shape[1]}.")
    learned_t = learned_t / learned_t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    true_t = true_t / true_t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = (true_t @ learned_t.T).max(dim=1).values  # (n_true,)
    return Recovery(best.numpy(), threshold)
