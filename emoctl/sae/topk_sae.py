"""``TopKSAE``: a Top-k sparse autoencoder with unit-norm decoder atoms and the AuxK loss.

    z     = TopK(ReLU(W_enc (x - b_pre) + b_enc))       k non-zeros per token
    x_hat = W_dec^T z + b_pre                            decoder atoms W_dec[j] have unit norm
    loss  = FVU(x, x_hat) + aux_coef * FVU(e, e_hat)     e = x - x_hat (detached)

where ``e_hat`` is the reconstruction of ``e`` by the top ``k_aux`` *dead*
latents (those that have not fired for ``dead_tokens`` tokens), without
``b_pre``; it trains only the dead latents (Gao et al., 2024, AuxK).

The model holds the math and the dead-latent counters; the optimizer, the
decoder-norm constraint around each step and the DDP reduction of the fired
mask belong to ``emoctl.sae.module.SAEModule``.  Weights are stored one row
per latent (``W_enc``, ``W_dec``: (d_sae, d_in)); the SAELens export writes
``W_enc`` transposed.  ``b_dec`` is the input bias b_pre (SAELens' name).

The training forward has no host sync: every shape is fixed by the config (AuxK
masks the live latents instead of gathering the dead ones, with dense (B, d_sae)
codes when k_aux is a large share of d_sae, sparse (B, k_aux) ones otherwise) and
the dead count is returned as a device tensor, so ``training_forward`` can compile
it, and on a GPU capture it in a CUDA graph.

``reference_forward`` is the same forward and loss written densely with
plain PyTorch; the fast path (``emoctl.sae.sparse_ops``) is tested against it.
``gathered_aux_forward`` computes AuxK on the gathered dead columns instead, whose
shapes depend on the data; the tests and ``emoctl bench sae`` compare against it.
"""
from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoctl.errors import ConfigError
from emoctl.sae.config import SAEConfig
from emoctl.sae.sparse_ops import aux_is_dense, sparse_decode, topk_encode

BPreInit = Literal["geometric_median", "mean", "zeros"]
MatmulDtype = Literal["float32", "bfloat16"]
AuxK = Literal["fixed_shape", "gathered"]


class SAEOutput(NamedTuple):
    """What :meth:`TopKSAE.forward` returns for a (B, d_in) batch."""

    x_hat: Tensor
    """(B, d_in) reconstruction."""

    top_vals: Tensor
    """(B, k) activations of the selected latents (ReLU'd, so some may be 0)."""

    top_idx: Tensor
    """(B, k) int64 indices of the selected latents, ascending within each row."""

    fvu: Tensor
    """Scalar: ||x - x_hat||^2 / ||x - mean_batch(x)||^2, the fraction of variance unexplained."""

    aux_fvu: Tensor
    """Scalar: the AuxK loss, FVU of the residual's reconstruction by dead latents; 0 without dead latents."""

    loss: Tensor
    """Scalar to minimize: fvu + aux_coef * aux_fvu."""

    n_dead: Tensor
    """0-dim int64 on the SAE's device: dead latents at this step (0 when AuxK is off). A tensor so that the
    step needs no host sync; reading it (``int()``, logging) syncs where it is read."""


class TopKSAE(nn.Module):
    """Top-k SAE ``d_in -> d_sae -> d_in``; see the module docstring for the math."""

    def __init__(self, cfg: SAEConfig | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else SAEConfig()
        factory = {"device": device, "dtype": dtype}
        self.W_enc = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, **factory))  # row j: latent j's encoder
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **factory))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, **factory))  # row j: latent j's atom
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **factory))  # b_pre
        # Tokens since each latent last fired; a buffer so checkpoints carry it and resume continues it.
        self.register_buffer("tokens_since_fired", torch.zeros(cfg.d_sae, dtype=torch.long, device=device))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random unit-norm atoms, W_enc a copy of them (not tied), zero biases and counters."""
        self.W_dec.normal_()
        self.normalize_decoder()
        self.W_enc.copy_(self.W_dec)
        self.b_enc.zero_()
        self.b_dec.zero_()
        self.tokens_since_fired.zero_()

    @property
    def b_pre(self) -> Tensor:
        """The input bias of the math (subtracted before encoding, added after decoding)."""
        return self.b_dec

    # ----------------------------------------------------------------- forward
    def forward(self, x: Tensor, aux_dense: bool | None = None) -> SAEOutput:
        """Training forward on (B, d_in) rows: codes, reconstruction and loss (AuxK when latents are dead).

        No host sync and no data-dependent shape: AuxK always takes each token's top ``k_aux`` of the
        dead-masked pre-activations, and its loss is selected to 0 on the device when no latent is dead.
        ``aux_dense`` picks AuxK's dense (B, d_sae) or sparse (B, k_aux) codes (the same loss); None lets
        :func:`~emoctl.sae.sparse_ops.aux_is_dense` pick the cheaper from the config.
        """
        self._check_rows(x)
        cfg = self.cfg
        aux_on = cfg.aux_coef > 0
        dead = self.dead_mask
        k_aux = min(cfg.resolved_k_aux, cfg.d_sae) if aux_on else 0
        dense = aux_is_dense(k_aux, cfg.d_sae) if aux_dense is None else aux_dense
        enc = topk_encode(x, self.b_dec, self.W_enc, self.b_enc, cfg.k, dead if aux_on else None, k_aux, dense)
        x_hat = sparse_decode(enc.top_vals, enc.top_idx, self.W_dec) + self.b_dec  # (B, d_in)
        fvu = fraction_of_variance_unexplained(x, x_hat)
        if aux_on:
            n_dead = dead.sum()
            # (B, d_in), no b_pre; the dense product is in bf16 under autocast
            e_hat = (enc.aux_vals @ self.W_dec).to(x_hat.dtype) if dense else \
                sparse_decode(enc.aux_vals, enc.aux_idx, self.W_dec)
            aux_fvu = fraction_of_variance_unexplained((x - x_hat).detach(), e_hat)
            # Without dead latents e_hat is 0 and the FVU above is 1: the loss is defined as 0 there.
            aux_fvu = torch.where(n_dead > 0, aux_fvu, torch.zeros_like(aux_fvu))
        else:
            n_dead = torch.zeros((), dtype=torch.long, device=x.device)
            aux_fvu = fvu.new_zeros(())
        loss = fvu + cfg.aux_coef * aux_fvu
        return SAEOutput(x_hat, enc.top_vals, enc.top_idx, fvu, aux_fvu, loss, n_dead)

    # --------------------------------------------------------------- inference
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Sparse codes of (..., d_in) activations: values and latent indices, each (..., k)."""
        self._check_rows(x, any_leading=True)
        lead = x.shape[:-1]
        enc = topk_encode(x.reshape(-1, self.cfg.d_in), self.b_dec, self.W_enc, self.b_enc, self.cfg.k)
        return enc.top_vals.view(*lead, self.cfg.k), enc.top_idx.view(*lead, self.cfg.k)

    def encode_dense(self, x: Tensor) -> Tensor:
        """Codes of (..., d_in) activations as a dense (..., d_sae) tensor (SAELens' ``encode``)."""
        vals, idx = self.encode(x)
        return vals.new_zeros(*vals.shape[:-1], self.cfg.d_sae).scatter_(-1, idx, vals)

    def decode(self, top_vals: Tensor, top_idx: Tensor) -> Tensor:
        """Reconstruction (..., d_in) from codes (..., k): ``sum_s vals[s] * W_dec[idx[s]] + b_pre``."""
        lead = top_vals.shape[:-1]
        flat = sparse_decode(top_vals.reshape(-1, top_vals.shape[-1]), top_idx.reshape(-1, top_idx.shape[-1]),
                             self.W_dec)
        return (flat + self.b_dec).view(*lead, self.cfg.d_in)

    def _check_rows(self, x: Tensor, any_leading: bool = False) -> None:
        if (x.ndim != 2 and not any_leading) or x.ndim < 1 or x.shape[-1] != self.cfg.d_in:
            want = "(..., d_in)" if any_leading else "(batch, d_in)"
            raise ConfigError(
                f"the SAE reads activations of shape {want} with d_in={self.cfg.d_in}, got {tuple(x.shape)}. "
                "Feed activations from the hookpoint the SAE was trained on, or set model.sae.d_in to their width."
            )

    # ------------------------------------------------------ dead-latent state
    @torch.no_grad()
    def fired_mask(self, top_idx: Tensor, top_vals: Tensor | None = None) -> Tensor:
        """(d_sae,) bool: latents selected in this batch (with a positive value, when values are given).

        Kept separate from :meth:`update_dead_counters` so DDP can OR the masks of all ranks in between.
        No host sync.
        """
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.int32, device=top_idx.device)
        hits = torch.ones_like(top_idx, dtype=torch.int32) if top_vals is None else (top_vals > 0).to(torch.int32)
        return fired.index_add_(0, top_idx.reshape(-1), hits.reshape(-1)) > 0

    @torch.no_grad()
    def update_dead_counters(self, fired: Tensor, n_tokens: int) -> None:
        """Advance every latent's counter by ``n_tokens`` and reset those that fired. No host sync."""
        self.tokens_since_fired.add_(int(n_tokens)).masked_fill_(fired.to(torch.bool), 0)

    @property
    def dead_mask(self) -> Tensor:
        """(d_sae,) bool: latents that have not fired for ``cfg.dead_tokens`` tokens."""
        return self.tokens_since_fired >= self.cfg.dead_tokens

    def dead_indices(self) -> Tensor:
        """(n_dead,) int64 indices of dead latents.

        Its size depends on data, so on a GPU it is a device-to-host sync; the training step does not use it.
        """
        return self.dead_mask.nonzero().squeeze(1)

    # --------------------------------------------------- decoder-norm constraint
    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project each atom's gradient onto the plane orthogonal to the atom: g_j -= (g_j.d_j / |d_j|^2) d_j.

        For unit atoms this is ``g_j - (g_j.d_j) d_j``: the first-order change keeps |d_j| = 1, so the
        renormalization after the step only corrects second-order drift.
        """
        grad = self.W_dec.grad
        if grad is None:
            return
        atoms = self.W_dec.detach()
        along = torch.linalg.vecdot(grad, atoms, dim=1) / atoms.norm(dim=1).square().clamp_min(1e-30)  # (d_sae,)
        grad.addcmul_(along.unsqueeze(1), atoms, value=-1.0)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder atom to unit norm (call after each optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # ---------------------------------------------------------- initialization
    @torch.no_grad()
    def init_b_pre(self, sample: Tensor, method: BPreInit = "geometric_median") -> None:
        """Set b_pre from a sample of activations (N, d_in), e.g. the first batch.

        The geometric median is the robust choice: a few outlier tokens (very large norms are
        common in residual streams) pull the mean but barely move the median.
        """
        if sample.ndim != 2 or sample.shape[1] != self.cfg.d_in:
            raise ConfigError(f"init_b_pre needs a sample of shape (N, d_in={self.cfg.d_in}), got {tuple(sample.shape)}.")
        if method == "geometric_median":
            value = geometric_median(sample)
        elif method == "mean":
            value = sample.float().mean(0)
        elif method == "zeros":
            value = torch.zeros(self.cfg.d_in)
        else:
            raise ConfigError(f"b_pre_init={method!r} is not one of 'geometric_median', 'mean', 'zeros'.")
        self.b_dec.copy_(value)


def fraction_of_variance_unexplained(target: Tensor, prediction: Tensor) -> Tensor:
    """||target - prediction||^2 / ||target - mean_batch(target)||^2 over a (B, d) batch."""
    total_variance = (target - target.mean(0)).pow(2).sum()
    return F.mse_loss(prediction, target, reduction="sum") / total_variance  # one fused pass each way


@torch.no_grad()
def geometric_median(points: Tensor, iters: int = 48, eps: float = 1e-8) -> Tensor:
    """Point minimizing the sum of Euclidean distances to the rows of ``points`` (N, d).

    Weiszfeld's iteration from the mean: a weighted mean with weights 1 / distance.
    """
    points = points.to(torch.promote_types(points.dtype, torch.float32))
    median = points.mean(0)
    for _ in range(iters):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(eps)  # (N,)
        median = (weights @ points) / weights.sum()
    return median


def training_forward(sae: TopKSAE, matmul_dtype: MatmulDtype = "float32", compile: bool = False,
                     auxk: AuxK = "fixed_shape") -> Callable[[Tensor], SAEOutput]:
    """``sae``'s training forward and loss as one callable, with bf16 products and torch.compile on request.

    ``auxk="fixed_shape"`` is :meth:`TopKSAE.forward` (no host sync, always ``k_aux`` AuxK pairs per token);
    ``"gathered"`` is :func:`gathered_aux_forward` (dense products over the dead columns, sized by a host
    sync: cheaper eager when fewer than ``k_aux`` latents are dead, but it cannot be compiled whole).

    ``matmul_dtype="bfloat16"`` runs the forward under bf16 autocast: the encoder's dense product takes bf16
    operands (accumulating in float32) where the chip is faster at them; parameters, gradients, the sparse
    gathers and the loss stay float32. ``compile=True`` wraps it in ``torch.compile``, with CUDA graphs on a
    GPU (mode "reduce-overhead"; the step has no host sync, so it can be captured) and the default mode
    elsewhere; then call ``torch.compiler.cudagraph_mark_step_begin()`` before each step on a GPU, and clone
    outputs kept past the next step.
    """
    if matmul_dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"matmul_dtype={matmul_dtype!r} is not one of 'float32', 'bfloat16'. Use 'bfloat16' "
                          "for bf16 encoder products on a GPU or a CPU with bf16 matrix units, else 'float32'.")
    if auxk not in ("fixed_shape", "gathered"):
        raise ConfigError(f"auxk={auxk!r} is not one of 'fixed_shape', 'gathered'.")
    if compile and auxk == "gathered":
        raise ConfigError("a compiled SAE step needs the fixed-shape AuxK: the gathered one sizes its products "
                          "from the data (a host sync, a graph break). Set model.auxk: fixed_shape (or auto), "
                          "or model.compile: false.")
    low = matmul_dtype == "bfloat16"
    step = sae.forward if auxk == "fixed_shape" else (lambda v: gathered_aux_forward(sae, v))

    def forward(x: Tensor) -> SAEOutput:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low):
            return step(x)

    if not compile:
        return forward
    mode = "reduce-overhead" if sae.W_dec.is_cuda else None
    return torch.compile(forward, mode=mode, dynamic=False)


def gathered_aux_forward(sae: TopKSAE, x: Tensor) -> SAEOutput:
    """The forward with AuxK on the gathered (B, n_dead) columns of the dead latents, as small dense products.

    Its cost scales with the number of dead latents rather than with ``k_aux``, but the gather's shape depends
    on the data: ``nonzero`` sizes it, a host sync on a GPU, and the step cannot be captured or compiled whole.
    It is the comparison for :meth:`TopKSAE.forward`'s fixed-shape AuxK (the tests check they agree;
    ``emoctl bench sae`` times both).
    """
    sae._check_rows(x)
    cfg = sae.cfg
    enc = topk_encode(x, sae.b_dec, sae.W_enc, sae.b_enc, cfg.k)
    x_hat = sparse_decode(enc.top_vals, enc.top_idx, sae.W_dec) + sae.b_dec
    fvu = fraction_of_variance_unexplained(x, x_hat)
    dead_idx = sae.dead_indices() if cfg.aux_coef > 0 else x.new_empty(0, dtype=torch.long)
    n_dead = dead_idx.numel()
    if n_dead == 0:
        aux_fvu = fvu.new_zeros(())
    else:
        x_c = (x - sae.b_dec).to(sae.W_enc.dtype)
        dead_pre = torch.addmm(sae.b_enc.index_select(0, dead_idx), x_c, sae.W_enc.index_select(0, dead_idx).t())
        acts = dead_pre.relu()  # (B, n_dead)
        k_aux = cfg.resolved_k_aux
        if n_dead > k_aux:  # keep each token's k_aux largest dead pre-activations
            keep = dead_pre.topk(k_aux, dim=1, sorted=False).indices
            acts = acts * torch.zeros_like(acts).scatter_(1, keep, 1.0)
        e_hat = acts @ sae.W_dec.index_select(0, dead_idx).to(acts.dtype)  # (B, d_in), no b_pre
        aux_fvu = fraction_of_variance_unexplained((x - x_hat).detach(), e_hat.to(x_hat.dtype))
    loss = fvu + cfg.aux_coef * aux_fvu
    return SAEOutput(x_hat, enc.top_vals, enc.top_idx, fvu, aux_fvu, loss,
                     torch.tensor(n_dead, dtype=torch.long, device=x.device))


def reference_forward(sae: TopKSAE, x: Tensor) -> SAEOutput:
    """The same forward and loss as :meth:`TopKSAE.forward`, written densely with plain autograd.

    Slow (every (B, d_sae) product is materialized) and obviously correct: the
    fast path is tested against it, and the benchmark times it.
    """
    cfg = sae.cfg
    pre = (x - sae.b_dec) @ sae.W_enc.t() + sae.b_enc  # (B, d_sae)
    top_pre, top_idx = pre.topk(cfg.k, dim=1)
    z = torch.zeros_like(pre).scatter(1, top_idx, top_pre.relu())  # (B, d_sae), k non-zeros per row
    x_hat = z @ sae.W_dec + sae.b_dec
    fvu = fraction_of_variance_unexplained(x, x_hat)

    dead = sae.dead_mask
    n_dead = int(dead.sum()) if cfg.aux_coef > 0 else 0  # the reference may sync: it branches on the count
    if n_dead > 0:
        k_aux = min(cfg.resolved_k_aux, n_dead)
        aux_pre, aux_idx = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=1)
        z_aux = torch.zeros_like(pre).scatter(1, aux_idx, aux_pre.relu())  # dead latents only
        aux_fvu = fraction_of_variance_unexplained((x - x_hat).detach(), z_aux @ sae.W_dec)
    else:
        aux_fvu = fvu.new_zeros(())
    top_idx, order = top_idx.sort(dim=1)
    top_vals = top_pre.gather(1, order).relu()
    return SAEOutput(x_hat, top_vals, top_idx, fvu, aux_fvu, fvu + cfg.aux_coef * aux_fvu,
                     torch.tensor(n_dead, dtype=torch.long, device=x.device))
