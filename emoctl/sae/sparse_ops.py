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

AuxK needs each token's top ``k_aux`` pre-activations among the *dead* latents.
The encoder takes them from the dense (B, d_sae) product it computes anyway for
the top-k: the columns of live latents are masked to -inf and a second top-k
runs over all latents, so every shape is fixed by the config and none by the
data (no ``nonzero``, no host sync: the step can be compiled and captured in a
CUDA graph).  Where fewer than ``k_aux`` latents are dead, the spare slots hold
-inf, which the ReLU turns into 0: they add nothing and get no gradient.  The
backward treats the AuxK pairs like the top-k ones, in the same segmented sums.

Those are B * k_aux gathers of d_in-wide rows, each far slower per element
than a dense product (about 20x on a CPU, ``emoctl bench sae``); with k_aux in
the hundreds (default d_in // 2) a dense (B, d_sae) AuxK code is cheaper: the
same selection as a mask (each row's k_aux-th largest dead pre-activation is
its threshold), the decode and every gradient as encoder-sized matmuls
(``aux_dense``; :func:`aux_is_dense` picks the form from the config).

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

    aux_vals: Tensor
    """(B, k_aux) ReLU'd pre-activations of each row's top ``k_aux`` dead latents, parameters' dtype; 0 in
    slots that no dead latent fills. (B, 0) without a dead mask."""

    aux_idx: Tensor
    """(B, k_aux) int64 indices of those latents, ascending within each row; (B, 0) when ``aux_vals`` is
    dense: (B, d_sae), zero outside each row's top ``k_aux`` dead latents (``aux_dense``)."""


AUX_DENSE_ABOVE = 1 / 16
"""AuxK codes are dense (B, d_sae) when k_aux exceeds this share of d_sae: a gathered row costs about 20 dense
multiply-adds per element on a CPU (``emoctl bench sae``), and the dense form has five products to the sparse
form's four gathers."""


def aux_is_dense(k_aux: int, d_sae: int) -> bool:
    """Whether AuxK runs on dense (B, d_sae) codes rather than (B, k_aux) sparse ones (see AUX_DENSE_ABOVE)."""
    return k_aux > AUX_DENSE_ABOVE * d_sae


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


@torch.library.custom_op("emoctl::gathered_dot", mutates_args=())
def gathered_dot(top_idx: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """``out[b, s] = left[b] . right[top_idx[b, s]]``, shape (B, k), without the dense (B, n) product.

    A sampled dense-dense matmul (SDDMM) on the CSR pattern of ``top_idx``. A custom op, so that
    ``torch.compile`` keeps it as one opaque call (the CSR tensor and the warnings filter inside do not trace).
    """
    B, k = top_idx.shape
    crow = torch.arange(0, B * k + 1, k, device=top_idx.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(crow, top_idx.reshape(-1), left.new_zeros(B * k),
                                          size=(B, right.shape[0]), check_invariants=False)
        sampled = torch.sparse.sampled_addmm(pattern, left, right.t(), beta=0.0)
    return sampled.values().view(B, k).clone()  # its own storage: a custom op may not alias the CSR buffers


@gathered_dot.register_fake
def _gathered_dot_shape(top_idx: Tensor, left: Tensor, right: Tensor) -> Tensor:
    return left.new_empty(top_idx.shape)


def _relu_topk(pre: Tensor, k: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Row-wise top-k of ``pre``, ReLU'd and cast to ``dtype``, indices ascending (a valid CSR pattern)."""
    top_pre, top_idx = pre.topk(k, dim=1, sorted=False)  # (B, k)
    top_idx, order = top_idx.sort(dim=1)
    return top_pre.gather(1, order).relu().to(dtype), top_idx  # TopK(ReLU(p)) = ReLU(TopK(p))


class _TopKEncode(torch.autograd.Function):
    """(x, b_pre, W_enc, b_enc, dead_mask, k, k_aux) -> (top_vals, top_idx, aux_vals, aux_idx); see
    :func:`topk_encode`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, dead_mask: Tensor | None,
                k: int, k_aux: int, aux_dense: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dtype = W_enc.dtype
        x_c = (x - b_pre).to(dtype)  # (B, d_in)
        pre = torch.addmm(b_enc, x_c, W_enc.t())  # (B, d_sae); lower precision under autocast
        top_vals, top_idx = _relu_topk(pre, k, dtype)
        if k_aux > 0:  # live latents' columns at -inf: the top k_aux of what is left are dead, or -inf -> ReLU 0
            dead_pre = pre.masked_fill(~dead_mask, float("-inf"))
            if aux_dense:  # each row's k_aux-th largest dead pre-activation is its threshold (-inf: all dead kept)
                threshold = dead_pre.topk(k_aux, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
                aux_vals = dead_pre.masked_fill(dead_pre < threshold, 0.0).relu().to(dtype)  # (B, d_sae)
                aux_idx = top_idx[:, :0]
            else:
                aux_vals, aux_idx = _relu_topk(dead_pre, k_aux, dtype)
        else:
            aux_vals, aux_idx = top_vals[:, :0], top_idx[:, :0]
        ctx.save_for_backward(x_c, W_enc, top_vals, top_idx, aux_vals, aux_idx)
        ctx.x_dtype = x.dtype
        ctx.aux_dense = k_aux > 0 and aux_dense
        # The dense AuxK backward products are matmuls like the forward's: run them at its autocast precision.
        device = x.device.type
        ctx.matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else dtype
        ctx.mark_non_differentiable(top_idx, aux_idx)
        ctx.set_materialize_grads(False)  # an unused output (e.g. the AuxK pair without AuxK) costs nothing
        return top_vals, top_idx, aux_vals, aux_idx

    @staticmethod
    def backward(ctx: Any, grad_vals: Tensor | None, _grad_idx: Any, grad_aux: Tensor | None, _grad_aux_idx: Any):
        x_c, W_enc, top_vals, top_idx, aux_vals, aux_idx = ctx.saved_tensors
        need_x, need_b_pre, need_W, need_b = ctx.needs_input_grad[:4]
        d_sae = W_enc.shape[0]
        # The (token, latent) pairs that carry gradient, through the ReLU: the top-k and the AuxK ones alike.
        sparse = ((top_idx, top_vals, grad_vals),) if ctx.aux_dense else \
            ((top_idx, top_vals, grad_vals), (aux_idx, aux_vals, grad_aux))
        pairs = [(idx, grad.to(W_enc.dtype) * (vals > 0)) for idx, vals, grad in sparse
                 if grad is not None and idx.shape[1] > 0]
        grad_b = W_enc.new_zeros(d_sae)  # always: grad of b_pre is -grad_b @ W_enc
        if pairs:
            idx = pairs[0][0] if len(pairs) == 1 else torch.cat([i for i, _ in pairs], dim=1)
            g = pairs[0][1] if len(pairs) == 1 else torch.cat([g for _, g in pairs], dim=1)
            grad_b.index_add_(0, idx.reshape(-1), g.reshape(-1))
            grad_W = latent_major_sum(idx, g, x_c, d_sae) if need_W else None
            grad_x_c = F.embedding_bag(idx, W_enc, per_sample_weights=g, mode="sum") if need_x else None
        else:
            grad_W = W_enc.new_zeros(W_enc.shape) if need_W else None
            grad_x_c = x_c.new_zeros(x_c.shape) if need_x else None
        if ctx.aux_dense and grad_aux is not None:  # (B, d_sae) gradient of the dense AuxK codes
            g_aux = grad_aux.to(W_enc.dtype) * (aux_vals > 0)
            grad_b.add_(g_aux.sum(0))
            low = ctx.matmul_dtype
            g_low = g_aux.to(low)
            if need_W:
                grad_W.add_((g_low.t() @ x_c.to(low)).to(grad_W.dtype))
            if need_x:
                grad_x_c.add_((g_low @ W_enc.to(low)).to(grad_x_c.dtype))

        # x_c = x - b_pre with b_pre broadcast over rows: its gradient is minus the column sum of
        # grad_x_c, i.e. -(sum_b g_b) @ W_enc = -grad_b @ W_enc, a (d_sae,) x (d_sae, d_in) product.
        grad_b_pre = -(grad_b @ W_enc) if need_b_pre else None
        grad_x = grad_x_c.to(ctx.x_dtype) if need_x else None
        return grad_x, grad_b_pre, grad_W, grad_b if need_b else None, None, None, None, None


def topk_encode(x: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, k: int,
                dead_mask: Tensor | None = None, k_aux: int = 0, aux_dense: bool | None = None) -> TopKEncoding:
    """Top-k encoder with sparse backward: ``TopK(ReLU((x - b_pre) @ W_enc.T + b_enc))``.

    Args:
        x: (B, d_in) inputs; gradient w.r.t. x is computed only if x requires grad.
        b_pre: (d_in,) input bias subtracted before encoding.
        W_enc: (d_sae, d_in) encoder, one row per latent.
        b_enc: (d_sae,) encoder bias.
        k: latents kept per row.
        dead_mask: (d_sae,) bool, the dead latents whose top ``k_aux`` pre-activations per row to return
            for AuxK; None returns none.
        k_aux: AuxK latents per row, at most d_sae (a config value, so the shapes do not depend on data).
        aux_dense: Return the AuxK codes dense, (B, d_sae); None decides by :func:`aux_is_dense`.
    """
    if dead_mask is None or k_aux <= 0:
        dead_mask, k_aux = None, 0
    if aux_dense is None:
        aux_dense = aux_is_dense(k_aux, W_enc.shape[0])
    return TopKEncoding(*_TopKEncode.apply(x, b_pre, W_enc, b_enc, dead_mask, k, k_aux, aux_dense))


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
