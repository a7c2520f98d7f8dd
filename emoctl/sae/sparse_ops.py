"""Sparse autograd for the Top-k SAE: encoder and decoder that never go d_sae-wide in backward.

With k of d_sae latents active per token, PyTorch's default autograd of
``topk(x @ W_enc.T)`` builds a dense (B, d_sae) gradient and multiplies it
back through a full-size matmul, as costly as the forward itself.  Only the
k selected columns per row carry gradient, so both backwards here work on
the (B, k) values and indices alone:

* ``dW[j] = sum over tokens b that selected latent j of g[b, j] * rows[b]``
  is a segmented sum: sort the B*k (token, latent) pairs by latent once and
  let ``embedding_bag`` add each latent's rows (:func:`latent_major_sum`).
* The decoder's gradient w.r.t. the k values of each token is a dot product
  with k decoder rows, a sampled dense-dense matmul (:func:`gathered_dot`).

AuxK needs the pre-activations of the dead latents, a few (B, n_dead) columns
of the dense (B, d_sae) product the encoder already computed.  The encoder
gathers them in its forward and takes their gradient in its backward as
small dense products over the dead columns only.

The plain dense version of the same math is ``emoctl.sae.topk_sae.reference_forward``;
the tests compare values and every gradient against it.
"""
from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class TopKEncoding(NamedTuple):
    """What :func:`topk_encode` returns."""

    top_vals: Tensor
    """(B, k) ReLU'd pre-activations of the selected latents, in the parameters' dtype."""

    top_idx: Tensor
    """(B, k) int64 latent indices, ascending within each row."""

    dead_pre: Tensor
    """(B, n_dead) raw pre-activations of the latents in ``dead_idx`` (for AuxK), parameters' dtype."""


def latent_major_sum(top_idx: Tensor, weights: Tensor, rows: Tensor, n_latents: int) -> Tensor:
    """``out[j] = sum_{(b, s): top_idx[b, s] == j} weights[b, s] * rows[b]``, shape (n_latents, d).

    This is ``dense(weights)^T @ rows`` for a (B, n_latents) matrix with k entries
    per row, computed in O(B * k * d) by sorting the pairs by latent and
    summing each latent's segment with ``embedding_bag``.  Latents that no
    token selected get zero rows.
    """
    B, k = top_idx.shape
    flat = top_idx.reshape(-1)  # (B*k,)
    order = flat.argsort()
    counts = torch.zeros(n_latents, dtype=torch.long, device=flat.device).index_add_(0, flat, torch.ones_like(flat))
    starts = counts.cumsum(0) - counts  # (n_latents,) start of each latent's segment in `order`
    return F.embedding_bag(order // k, rows, starts, mode="sum",
                           per_sample_weights=weights.reshape(-1)[order].to(rows.dtype))


def gathered_dot(top_idx: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """``out[b, s] = left[b] . right[top_idx[b, s]]``, shape (B, k), without the dense (B, n) product.

    A sampled dense-dense matmul (SDDMM) on the CSR pattern of ``top_idx``.
    """
    B, k = top_idx.shape
    crow = torch.arange(0, B * k + 1, k, device=top_idx.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(crow, top_idx.reshape(-1), left.new_zeros(B * k),
                                          size=(B, right.shape[0]), check_invariants=False)
        sampled = torch.sparse.sampled_addmm(pattern, left, right.t(), beta=0.0)
    return sampled.values().view(B, k)


class _TopKEncode(torch.autograd.Function):
    """(x, b_pre, W_enc, b_enc, dead_idx, k) -> (top_vals, top_idx, dead_pre); see :func:`topk_encode`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, dead_idx: Tensor,
                k: int) -> tuple[Tensor, Tensor, Tensor]:
        dtype = W_enc.dtype
        x_c = (x - b_pre).to(dtype)  # (B, d_in)
        pre = torch.addmm(b_enc, x_c, W_enc.t())  # (B, d_sae); lower precision under autocast
        top_pre, top_idx = pre.topk(k, dim=1, sorted=False)  # (B, k)
        top_idx, order = top_idx.sort(dim=1)  # canonical order: a valid CSR pattern
        top_vals = top_pre.gather(1, order).relu().to(dtype)  # TopK(ReLU(p)) = ReLU(TopK(p))
        dead_pre = pre.index_select(1, dead_idx).to(dtype)  # (B, n_dead)
        ctx.save_for_backward(x_c, W_enc, top_vals, top_idx, dead_idx)
        ctx.x_dtype = x.dtype
        # The AuxK backward products are dense matmuls like the forward's: run them at its autocast precision.
        device = x.device.type
        ctx.matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else dtype
        ctx.mark_non_differentiable(top_idx)
        ctx.set_materialize_grads(False)  # an unused output (e.g. dead_pre without AuxK) costs nothing
        return top_vals, top_idx, dead_pre

    @staticmethod
    def backward(ctx: Any, grad_vals: Tensor | None, _grad_idx: Any, grad_dead: Tensor | None):
        x_c, W_enc, top_vals, top_idx, dead_idx = ctx.saved_tensors
        need_x, need_b_pre, need_W, need_b = ctx.needs_input_grad[:4]
        d_sae = W_enc.shape[0]
        grad_b = W_enc.new_zeros(d_sae)  # always: grad of b_pre is -grad_b @ W_enc
        if grad_vals is not None:
            g_top = grad_vals.to(W_enc.dtype) * (top_vals > 0)  # (B, k), through the ReLU
            grad_b.index_add_(0, top_idx.reshape(-1), g_top.reshape(-1))
            grad_W = latent_major_sum(top_idx, g_top, x_c, d_sae) if need_W else None
            grad_x_c = F.embedding_bag(top_idx, W_enc, per_sample_weights=g_top, mode="sum") if need_x else None
        else:
            grad_W = W_enc.new_zeros(W_enc.shape) if need_W else None
            grad_x_c = x_c.new_zeros(x_c.shape) if need_x else None
        if grad_dead is not None and dead_idx.numel() > 0:
            g_dead = grad_dead.to(W_enc.dtype)  # (B, n_dead)
            grad_b.index_add_(0, dead_idx, g_dead.sum(0))
            low = ctx.matmul_dtype
            g_low = g_dead.to(low)
            if need_W:
                grad_W.index_add_(0, dead_idx, (g_low.t() @ x_c.to(low)).to(grad_W.dtype))  # (n_dead, d_in)
            if need_x:
                grad_x_c.add_(g_low @ W_enc.index_select(0, dead_idx).to(low))

        # x_c = x - b_pre with b_pre broadcast over rows: its gradient is minus the column sum of
        # grad_x_c, i.e. -(sum_b g_b) @ W_enc = -grad_b @ W_enc, a (d_sae,) x (d_sae, d_in) product.
        grad_b_pre = -(grad_b @ W_enc) if need_b_pre else None
        grad_x = grad_x_c.to(ctx.x_dtype) if need_x else None
        return grad_x, grad_b_pre, grad_W, grad_b if need_b else None, None, None


def topk_encode(x: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, k: int,
                dead_idx: Tensor | None = None) -> TopKEncoding:
    """Top-k encoder with sparse backward: ``TopK(ReLU((x - b_pre) @ W_enc.T + b_enc))``.

    Args:
        x: (B, d_in) inputs; gradient w.r.t. x is computed only if x requires grad.
        b_pre: (d_in,) input bias subtracted before encoding.
        W_enc: (d_sae, d_in) encoder, one row per latent.
        b_enc: (d_sae,) encoder bias.
        k: latents kept per row.
        dead_idx: (n_dead,) int64 latents whose raw pre-activations to return for AuxK.
    """
    if dead_idx is None:
        dead_idx = torch.empty(0, dtype=torch.long, device=x.device)
    return TopKEncoding(*_TopKEncode.apply(x, b_pre, W_enc, b_enc, dead_idx, k))


class _SparseDecode(torch.autograd.Function):
    """(top_vals, top_idx, W_dec) -> (B, d_in); see :func:`sparse_decode`."""

    @staticmethod
    def forward(ctx: Any, top_vals: Tensor, top_idx: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(top_vals, top_idx, W_dec)
        return F.embedding_bag(top_idx, W_dec, per_sample_weights=top_vals.to(W_dec.dtype), mode="sum")

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):
        top_vals, top_idx, W_dec = ctx.saved_tensors
        grad_out = grad_out.to(W_dec.dtype)
        grad_vals = gathered_dot(top_idx, grad_out, W_dec) if ctx.needs_input_grad[0] else None
        grad_W = latent_major_sum(top_idx, top_vals, grad_out, W_dec.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_vals, None, grad_W


def sparse_decode(top_vals: Tensor, top_idx: Tensor, W_dec: Tensor) -> Tensor:
    """``sum_s top_vals[b, s] * W_dec[top_idx[b, s]]``: (B, k) codes -> (B, d_in), sparse both ways."""
    return _SparseDecode.apply(top_vals, top_idx, W_dec)
