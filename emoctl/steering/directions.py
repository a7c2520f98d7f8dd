"""Dense-direction steering ``x + α·v`` and the directions the SAE seed compares against.

* :func:`sae_direction`: Σ_{j∈F} d_j, the closed form of SAE feature steering.
* :func:`mean_difference_directions`: the global-steering baseline, mean of an
  emotion's rows minus mean of the neutral rows, streamed over a store.
* :func:`global_steering`, :func:`random_feature_steering`: the two baselines,
  each rescaled to the norm of the emotion's SAE direction, so that at equal α
  every method moves the residual by the same distance and only the direction
  differs.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from emoctl.backbones.hooks import HookContext, Phase
from emoctl.errors import ConfigError
from emoctl.sae.topk_sae import TopKSAE
from emoctl.steering.base import Alpha, Intervention, Schedule
from emoctl.steering.sae_features import SAEFeatureSteering, SAEMode
from emoctl.store import ActivationStore


class DirectionSteering(Intervention):
    """``x + α·v`` at every position of the gated passes."""

    def __init__(self, direction: Tensor | np.ndarray, alpha: Alpha, hookpoint: str, *, schedule: Schedule = None,
                 phases: Iterable[Phase | str] | None = (Phase.DECODE,), name: str = "") -> None:
        v = torch.as_tensor(np.asarray(direction) if not isinstance(direction, Tensor) else direction)
        if v.ndim != 1 or v.numel() == 0 or not bool(torch.isfinite(v).all()):
            raise ConfigError(f"DirectionSteering: the direction must be a finite 1-D vector, got shape {tuple(v.shape)}.")
        super().__init__(hookpoint, alpha, schedule, phases, name or "direction")
        self.vector = v.detach().to(torch.float32)

    @property
    def dimension(self) -> int:
        return self.vector.numel()

    def delta(self, x: Tensor, alpha: Tensor, ctx: HookContext) -> Tensor:
        step = alpha.to(torch.float32).view(-1, *([1] * (x.ndim - 1)))  # (B, 1.., 1)
        return (step * self.vector.to(x.device)).expand_as(x)


def sae_direction(sae: TopKSAE, features: Sequence[int]) -> Tensor:
    """Σ_{j∈F} d_j (d_in,) float32: the residual step of one unit of α on ``features``."""
    ids = torch.as_tensor(list(features), dtype=torch.long)
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= sae.cfg.d_sae:
        raise ConfigError(f"feature ids {list(features)} must be a non-empty list in 0 .. {sae.cfg.d_sae - 1}.")
    return sae.W_dec.detach()[ids].sum(0).float()


def norm_matched(direction: Tensor, reference: Tensor) -> Tensor:
    """``direction`` rescaled to the Euclidean norm of ``reference``."""
    norm = direction.double().norm()
    if not norm > 0:
        raise ConfigError("cannot norm-match a zero direction (the emotion's mean equals the neutral mean?).")
    return (direction.double() * (reference.double().norm() / norm)).float()


@torch.no_grad()
def mean_difference_directions(store: ActivationStore, neutral: str = "Neutral", emotions: Sequence[str] | None = None,
                               chunk_rows: int = 1 << 14, progress: bool = True) -> dict[str, Tensor]:
    """Per emotion: mean of its rows minus mean of the ``neutral`` rows, (d,) float64, one streamed pass.

    The store's rows are decode-phase activations (harvest reads the decode phase), so
    this is the dense decode-phase mean difference of the global-steering baseline.
    """
    table = store.utterances
    labels = np.asarray(table["emotion"].to_pylist(), dtype=object).astype(str)
    names, code = np.unique(labels, return_inverse=True)
    if neutral not in names:
        raise ConfigError(f"the store at {store.path} has no {neutral!r} rows (it has {', '.join(names)}), so there "
                          "is no neutral mean to subtract. Harvest neutral renditions or set `neutral`.")
    wanted = [e for e in names if e != neutral] if emotions is None else list(emotions)
    missing = [e for e in wanted if e not in names]
    if missing:
        raise ConfigError(f"emotions {missing} have no rows in the store at {store.path}; it has {', '.join(names)}.")
    row_code = np.repeat(code, table["num_rows"].to_numpy())  # (num_rows,) emotion of each row
    sums = torch.zeros(len(names), store.d_model, dtype=torch.float64)
    counts = np.bincount(row_code, minlength=len(names))
    offset = 0
    for chunk in store.iter_chunks(chunk_rows, progress=progress):
        n = chunk.shape[0]
        sums.index_add_(0, torch.from_numpy(row_code[offset:offset + n]), chunk.double())
        offset += n
    means = sums / torch.from_numpy(counts).clamp_min(1)[:, None]
    base = means[list(names).index(neutral)]
    return {e: means[list(names).index(e)] - base for e in wanted}


def store_mean_differences(store_dir: str, emotions: Sequence[str], neutral: str = "Neutral",
                           progress: bool = True) -> dict[str, Tensor]:
    """:func:`mean_difference_directions` of the store at ``store_dir``, after refusing an unfinished store and
    checking every shard (the global baseline's means come from every row of it)."""
    store = ActivationStore(store_dir)
    store.require_finished("estimate the global steering direction from")
    store.verify(progress=progress)
    return mean_difference_directions(store, neutral, emotions, progress=progress)


def global_steering(mean_difference: Tensor, sae: TopKSAE, features: Sequence[int], alpha: Alpha, *,
                    hookpoint: str | None = None, schedule: Schedule = None,
                    phases: Iterable[Phase | str] | None = (Phase.DECODE,)) -> DirectionSteering:
    """Global-steering baseline: the mean difference, rescaled to ‖Σ_{j∈F} d_j‖ of the emotion's features."""
    if mean_difference.numel() != sae.cfg.d_in:
        raise ConfigError(f"the mean difference has width {mean_difference.numel()} but the SAE reads d_in="
                          f"{sae.cfg.d_in}; compute it from the store the SAE was trained on.")
    return DirectionSteering(norm_matched(mean_difference, sae_direction(sae, features)), alpha,
                             hookpoint or sae.cfg.hook_name, schedule=schedule, phases=phases, name="global")


def random_feature_steering(sae: TopKSAE, features: Sequence[int], alpha: Alpha, *, m: int | None = None,
                            seed: int = 0, mode: SAEMode = "closed_form", hookpoint: str | None = None,
                            schedule: Schedule = None,
                            phases: Iterable[Phase | str] | None = (Phase.DECODE,)) -> SAEFeatureSteering:
    """Random-features baseline: ``m`` (default len(features)) latents drawn with ``seed`` outside ``features``,
    with α scaled so that ‖scale · Σ_{j∈R} d_j‖ = ‖Σ_{j∈F} d_j‖."""
    m = len(features) if m is None else m
    pool = np.setdiff1d(np.arange(sae.cfg.d_sae), np.asarray(list(features), dtype=np.int64))
    if not 1 <= m <= pool.size:
        raise ConfigError(f"random_feature_steering: m={m} must be in 1 .. {pool.size} (latents outside the set).")
    chosen = np.sort(np.random.default_rng(seed).choice(pool, size=m, replace=False)).tolist()
    reference, own = sae_direction(sae, features).double().norm(), sae_direction(sae, chosen).double().norm()
    if not own > 0:
        raise ConfigError("random_feature_steering: the random latents' decoder atoms sum to zero; change the seed.")
    return SAEFeatureSteering(sae, chosen, alpha, mode=mode, hookpoint=hookpoint, schedule=schedule,
                              scale=float(reference / own), phases=phases, name=f"random{chosen}")
