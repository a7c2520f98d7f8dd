"""SAE feature steering: raise (α > 0) or lower (α < 0) chosen latents of a Top-k SAE.

Two modes:

``"sae"`` (error-preserving).  Encode x to its Top-k code z (active set A,
|A| = k).  The steered code z' is defined as

    z'_j = z_j + α   for j in F   (also when j is not in A, where z_j = 0),
    the F latents always stay in the code, and the code keeps the Top-k budget:
    the remaining k - |F| slots go to the largest latents of z outside F;
    latents of A pushed out of those slots get 0.

The write-back is the change of the reconstruction only,
``x + (decode(z') - decode(z))``, so the SAE's reconstruction error x - x̂
stays in the residual.  By linearity of the decoder this change is

    α · Σ_{j∈F} d_j  -  Σ_{l dropped} z_l d_l,

which is computed directly (no b_pre round trip).  When every j in F is
already in A, nothing is dropped and the change is exactly α Σ_{j∈F} d_j; when
steering brings a latent of F into the code, the smallest other latents leave
it and the change differs from the closed form.

``"closed_form"``: ``x + α · Σ_{j∈F} d_j`` with no encoding at all (the
SAE seed's approximation; cheap, and linear in α).

``scale`` multiplies α (used by the random-features baseline to match the
norm of another feature set's direction).
"""
from __future__ import annotations

import math
from typing import Iterable, Literal, Sequence

import torch
from torch import Tensor

from emoctl.backbones.hooks import HookContext, Phase
from emoctl.errors import ConfigError
from emoctl.sae.sparse_ops import sparse_decode
from emoctl.sae.topk_sae import TopKSAE
from emoctl.steering.base import Alpha, Intervention, Schedule

SAEMode = Literal["sae", "closed_form"]

LATENT_ALPHA_LIMIT = 1000.0
"""The largest |α| (latent units) a command accepts. The reports steer with α from 4 to 40 (Table 1's sweep 4
and 8, the attribution 40, README's example 30-40). On the mini TTS, one latent at α = 1000 still speaks, with
larger shifts than at 40; at 1e5 and 1e8 the shifts are identical (the stream is saturated, so α means nothing
more), and 1e30 makes the logits infinite, which sampling reports only as a failed probability tensor."""

LATENT_ALPHA_RULE = (f"finite, |α| <= {LATENT_ALPHA_LIMIT:g} latent units; the reports steer with α from 4 to 40, "
                     "Table 1's sweep at 4 and 8 and the attribution at 40")
"""What a refusal of α says is right."""


def latent_alpha_ok(alpha: float) -> bool:
    """Whether α is a strength a latent can be steered by: finite and within :data:`LATENT_ALPHA_LIMIT`."""
    return math.isfinite(alpha) and abs(alpha) <= LATENT_ALPHA_LIMIT


class SAEFeatureSteering(Intervention):
    """Add α to SAE latents ``features`` at the SAE's hookpoint (see the module docstring for the definition)."""

    def __init__(self, sae: TopKSAE, features: Sequence[int], alpha: Alpha, *, mode: SAEMode = "sae",
                 hookpoint: str | None = None, schedule: Schedule = None, scale: float = 1.0,
                 phases: Iterable[Phase | str] | None = (Phase.DECODE,), name: str = "") -> None:
        d_sae, k = sae.cfg.d_sae, sae.cfg.k
        ids = [int(f) for f in features]
        if not ids:
            raise ConfigError("SAEFeatureSteering: no features given; pass the feature_ids of a feature-set file.")
        bad = [f for f in ids if not 0 <= f < d_sae]
        if bad:
            raise ConfigError(f"SAEFeatureSteering: feature ids {bad} are out of range for this SAE with d_sae="
                              f"{d_sae} (valid: 0 .. {d_sae - 1}). Was the feature set selected with another SAE?")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"SAEFeatureSteering: feature ids {ids} contain duplicates.")
        if mode not in ("sae", "closed_form"):
            raise ConfigError(f"SAEFeatureSteering: mode={mode!r} must be 'sae' or 'closed_form'.")
        if mode == "sae" and len(ids) > k:
            raise ConfigError(f"SAEFeatureSteering: {len(ids)} features cannot all stay in a Top-k code with k={k}; "
                              "select at most k features or use mode='closed_form'.")
        super().__init__(hookpoint or sae.cfg.hook_name, alpha, schedule, phases,
                         name or f"sae[{mode}]{ids}")
        self.sae, self.features, self.mode, self.scale = sae, ids, mode, float(scale)
        self._feature_idx = torch.tensor(ids, dtype=torch.long)
        self._direction = sae.W_dec.detach()[self._feature_idx].sum(0)  # (d,) Σ_{j∈F} d_j

    @property
    def dimension(self) -> int:
        return self.sae.cfg.d_in

    @property
    def direction(self) -> Tensor:
        """Σ_{j∈F} d_j, the closed-form step per unit of α (before ``scale``)."""
        return self._direction

    def delta(self, x: Tensor, alpha: Tensor, ctx: HookContext) -> Tensor:
        step = (alpha * self.scale).to(torch.float32)  # (B,)
        direction = self._direction.to(device=x.device, dtype=torch.float32)
        closed = step.view(-1, *([1] * (x.ndim - 1))) * direction  # (B, 1.., d) broadcast over positions
        if self.mode == "closed_form":
            return closed.expand_as(x)
        return closed + self._dropped_change(x, step)

    def _dropped_change(self, x: Tensor, step: Tensor) -> Tensor:
        """-Σ_{l dropped} z_l d_l for every position: (B, T, d)."""
        sae = self.sae
        if sae.W_dec.device != x.device:
            sae.to(x.device)  # once: the SAE follows the backbone's device
        k, m = sae.cfg.k, len(self.features)
        flat = x.reshape(-1, x.shape[-1]).to(sae.W_dec.dtype)  # (N, d)
        vals, idx = sae.encode(flat)  # (N, k)
        feats = self._feature_idx.to(idx.device)
        in_f = (idx[:, :, None] == feats).any(-1)  # (N, k) slot holds a steered latent
        others = vals.masked_fill(in_f, float("-inf"))
        keep = others.topk(k - m, dim=1).indices if k > m else idx.new_empty(idx.shape[0], 0)  # (N, k - m)
        kept = torch.zeros_like(in_f).scatter_(1, keep, True)
        dropped = ~in_f & ~kept  # (N, k) latents of A pushed out by F
        weight = torch.where(dropped, vals, torch.zeros_like(vals))  # (N, k)
        change = -sparse_decode(weight, idx, sae.W_dec.detach())  # (N, d)
        rows = step.repeat_interleave(flat.shape[0] // step.shape[0]) != 0  # α = 0 rows: no edit at all
        change = change * rows[:, None]
        return change.view(x.shape).to(torch.float32)
