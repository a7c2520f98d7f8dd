"""Top-k SAE: the sparse autograd against the dense reference, AuxK, the decoder-norm constraint,
dead-latent counters, b_pre initialization and config validation."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from emoctl.errors import ConfigError
from emoctl.sae import SAEConfig, TopKSAE, geometric_median, reference_forward
from emoctl.sae.module import SAEModule
from emoctl.sae.sparse_ops import gathered_dot, latent_major_sum
from emoctl.sae.topk_sae import gathered_aux_forward, training_forward

F64 = torch.float64


def _random_sae(d_in: int = 16, d_sae: int = 64, k: int = 4, seed: int = 0, **cfg) -> TopKSAE:
    """An SAE away from its symmetric init (W_enc != W_dec, non-zero biases), in float64."""
    torch.manual_seed(seed)
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=k, **cfg), dtype=F64)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
        sae.b_enc.normal_(std=0.1)
        sae.b_dec.normal_()
    return sae


def _loss_and_grads(forward, sae: TopKSAE, x: torch.Tensor):
    """``forward(sae, x)``, its loss backpropagated from zeroed gradients: (output, parameter grads, x's grad)."""
    sae.zero_grad(set_to_none=True)
    x.grad = None
    out = forward(sae, x)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    return out, grads, None if x.grad is None else x.grad.clone()


def _mark_dead(sae: TopKSAE, latents: torch.Tensor) -> None:
    sae.tokens_since_fired.zero_()
    sae.tokens_since_fired[latents] = sae.cfg.dead_tokens


# ------------------------------------------------------------------ encoding
def test_each_row_keeps_exactly_the_k_largest_relu_preactivations():
    sae = _random_sae(k=5)
    with torch.no_grad():
        sae.b_enc.add_(10.0)  # every pre-activation positive: ReLU zeroes none of the k
    x = torch.randn(40, 16, dtype=F64)
    pre = (x - sae.b_dec) @ sae.W_enc.detach().T + sae.b_enc.detach()  # (B, d_sae)
    dense = sae.encode_dense(x).detach()
    assert ((dense != 0).sum(1) == 5).all()
    for row in range(40):
        expected = set(torch.argsort(pre[row], descending=True)[:5].tolist())
        assert set(torch.nonzero(dense[row]).flatten().tolist()) == expected
    vals, idx = sae.encode(x)
    torch.testing.assert_close(vals, pre.gather(1, idx), rtol=0, atol=1e-12)
    assert (idx.diff(dim=1) > 0).all()  # ascending within each row


def test_relu_zeroes_selected_latents_with_negative_preactivations():
    sae = _random_sae(k=5)
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
        sae.b_enc[:2] = 100.0  # only two latents can be positive
    vals, idx = sae.encode(torch.randn(8, 16, dtype=F64))
    assert ((vals > 0).sum(1) == 2).all() and (vals >= 0).all()


def test_encode_and_decode_keep_leading_dimensions():
    sae = _random_sae()
    x = torch.randn(3, 7, 16, dtype=F64)
    vals, idx = sae.encode(x)
    assert vals.shape == idx.shape == (3, 7, 4)
    x_hat = sae.decode(vals, idx)
    torch.testing.assert_close(x_hat.reshape(21, 16), sae(x.reshape(21, 16)).x_hat)


# ------------------------------------------------------- sparse ops vs dense
def test_latent_major_sum_and_gathered_dot_match_dense_products():
    torch.manual_seed(1)
    B, n, k, d = 30, 50, 4, 7
    idx = torch.stack([torch.randperm(n)[:k] for _ in range(B)])  # latent 0.. some never picked
    weights, rows, table = torch.randn(B, k, dtype=F64), torch.randn(B, d, dtype=F64), torch.randn(n, d, dtype=F64)
    dense = torch.zeros(B, n, dtype=F64).scatter(1, idx, weights)  # (B, n)
    torch.testing.assert_close(latent_major_sum(idx, weights, rows, n), dense.T @ rows)
    torch.testing.assert_close(gathered_dot(idx, rows, table), (rows @ table.T).gather(1, idx))


@pytest.mark.parametrize("n_dead", [0, 6, 40], ids=["no-dead", "fewer-dead-than-k_aux", "more-dead-than-k_aux"])
@pytest.mark.parametrize("x_requires_grad", [False, True])
@pytest.mark.parametrize("aux_dense", [False, True], ids=["sparse-aux", "dense-aux"])
def test_fast_forward_and_all_gradients_equal_the_dense_reference(n_dead, x_requires_grad, aux_dense):
    sae = _random_sae(k_aux=12, dead_tokens=1000)
    with torch.no_grad():
        sae.b_enc.sub_(2.5)  # so that ReLU zeroes some of the k selected values (its gradient gate matters)
    _mark_dead(sae, torch.randperm(64, generator=torch.Generator().manual_seed(2))[:n_dead])
    x = torch.randn(48, 16, dtype=F64, requires_grad=x_requires_grad)

    fast, fast_grads, fast_dx = _loss_and_grads(lambda s, v: TopKSAE.forward(s, v, aux_dense=aux_dense), sae, x)
    ref, ref_grads, ref_dx = _loss_and_grads(reference_forward, sae, x)

    assert isinstance(fast.n_dead, torch.Tensor) and fast.n_dead.ndim == 0 and fast.n_dead.dtype == torch.long
    assert fast.n_dead == ref.n_dead == n_dead
    assert 0 < (fast.top_vals == 0).float().mean() < 0.5
    assert torch.equal(fast.top_idx, ref.top_idx)
    for field in ("x_hat", "top_vals", "fvu", "aux_fvu", "loss"):
        torch.testing.assert_close(getattr(fast, field), getattr(ref, field), rtol=1e-12, atol=1e-12)
    assert (fast.aux_fvu > 0) == (n_dead > 0)
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-10, atol=1e-12, msg=name)
    if x_requires_grad:
        torch.testing.assert_close(fast_dx, ref_dx, rtol=1e-10, atol=1e-12)
    else:
        assert fast_dx is None


def test_bf16_autocast_gives_fp32_gradients_close_to_fp32():
    torch.manual_seed(3)
    sae = TopKSAE(SAEConfig(d_in=32, d_sae=128, k=8, dead_tokens=10))
    _mark_dead(sae, torch.arange(0, 128, 4))
    x = torch.randn(256, 32)
    sae(x).loss.backward()
    fp32 = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x)
    out.loss.backward()
    for name, p in sae.named_parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        cosine = torch.nn.functional.cosine_similarity(p.grad.flatten(), fp32[name].flatten(), dim=0)
        assert cosine > 0.95, (name, cosine)


# ----------------------------------------------------------------------- AuxK
def test_aux_loss_alone_trains_only_the_dead_latents():
    sae = _random_sae(k_aux=8, dead_tokens=1000)
    dead = torch.tensor([3, 17, 30, 41, 55])
    with torch.no_grad():
        sae.b_enc[dead] = 1.0  # dead latents with positive pre-activations somewhere in the batch
    _mark_dead(sae, dead)
    live = torch.ones(64, dtype=torch.bool)
    live[dead] = False
    x = torch.randn(64, 16, dtype=F64)

    out = sae(x)
    out.aux_fvu.backward()
    for name in ("W_enc", "b_enc", "W_dec"):
        grad = getattr(sae, name).grad
        assert torch.count_nonzero(grad[live]) == 0, f"AuxK sent gradient to live latents' {name}"
        assert (grad[dead].reshape(len(dead), -1).abs().sum(1) > 0).all(), f"a dead latent's {name} got no gradient"
    fast_grads = {n: p.grad.clone() for n, p in sae.named_parameters()}

    sae.zero_grad(set_to_none=True)
    reference_forward(sae, x).aux_fvu.backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(fast_grads[name], p.grad, rtol=1e-10, atol=1e-12, msg=name)


def test_aux_codes_are_dense_when_k_aux_is_a_large_share_of_d_sae():
    from emoctl.sae.sparse_ops import aux_is_dense

    assert aux_is_dense(SAEConfig().resolved_k_aux, SAEConfig().d_sae)  # 640 of 4096
    assert not aux_is_dense(32, 4096) and not aux_is_dense(4, 64) and aux_is_dense(5, 64)


def test_aux_uses_each_tokens_top_k_aux_dead_latents():
    sae = _random_sae(k_aux=2, dead_tokens=1000)
    dead = torch.arange(10)
    _mark_dead(sae, dead)
    x = torch.randn(20, 16, dtype=F64)
    out = sae(x)
    pre = (x - sae.b_dec) @ sae.W_enc.detach().T + sae.b_enc.detach()
    top_dead = pre[:, :10].topk(2, dim=1)
    z = torch.zeros(20, 10, dtype=F64).scatter(1, top_dead.indices, top_dead.values.relu())
    residual = (x - out.x_hat).detach()
    e_hat = z @ sae.W_dec.detach()[:10]
    expected = (residual - e_hat).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum()
    torch.testing.assert_close(out.aux_fvu, expected)
    torch.testing.assert_close(out.loss, out.fvu + out.aux_fvu / 32)


@pytest.mark.parametrize("n_dead, k_aux", [(0, 12), (6, 12), (12, 12), (40, 12), (64, 100)],
                         ids=["none-dead", "fewer-than-k_aux", "exactly-k_aux", "more-than-k_aux",
                              "k_aux-above-d_sae"])
@pytest.mark.parametrize("aux_dense", [False, True], ids=["sparse-aux", "dense-aux"])
def test_fixed_shape_aux_equals_the_gathered_dead_columns_aux(n_dead, k_aux, aux_dense):
    """The masked top-k_aux over all latents gives the loss and every gradient of AuxK on gathered columns."""
    sae = _random_sae(k_aux=k_aux, dead_tokens=1000)
    with torch.no_grad():
        sae.b_enc[::3] += 0.5  # some dead latents with positive pre-activations on many tokens
    _mark_dead(sae, torch.randperm(64, generator=torch.Generator().manual_seed(7))[:n_dead])
    x = torch.randn(40, 16, dtype=F64, requires_grad=True)
    fixed, fixed_grads, fixed_dx = _loss_and_grads(lambda s, v: TopKSAE.forward(s, v, aux_dense=aux_dense), sae, x)
    gathered, gathered_grads, gathered_dx = _loss_and_grads(gathered_aux_forward, sae, x)
    assert int(fixed.n_dead) == int(gathered.n_dead) == n_dead
    for field in ("fvu", "aux_fvu", "loss"):
        torch.testing.assert_close(getattr(fixed, field), getattr(gathered, field), rtol=1e-12, atol=1e-12)
    if n_dead == 0:
        assert fixed.aux_fvu.item() == 0.0  # exactly 0, not the FVU of an empty reconstruction (1)
    else:
        assert fixed.aux_fvu > 0
    for name in gathered_grads:
        torch.testing.assert_close(fixed_grads[name], gathered_grads[name], rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(fixed_dx, gathered_dx, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------- a step without host syncs
def _compile_sae(seed: int = 0) -> tuple[TopKSAE, torch.Tensor]:
    torch.manual_seed(seed)
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=64, k=4, k_aux=12, dead_tokens=1000))
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
        sae.b_enc.normal_(std=0.1)
        sae.b_dec.normal_()
    _mark_dead(sae, torch.randperm(64)[:20])
    return sae, torch.randn(48, 16)


@pytest.mark.parametrize("aux_dense", [False, True], ids=["sparse-aux", "dense-aux"])
def test_training_forward_and_backward_trace_as_one_graph_without_host_syncs(aux_dense):
    """fullgraph=True refuses any graph break: an .item(), a nonzero or another data-dependent shape."""
    sae, x = _compile_sae()
    torch._dynamo.reset()
    out = torch.compile(lambda v: sae(v, aux_dense=aux_dense), fullgraph=True, backend="eager")(x)
    out.loss.backward()  # the autograd.Functions' backwards were traced too
    assert isinstance(out.n_dead, torch.Tensor) and int(out.n_dead) == 20
    assert sae.W_enc.grad is not None and torch.isfinite(sae.W_enc.grad).all()
    # the counter update between steps is sync-free as well
    torch.compile(lambda o: sae.update_dead_counters(sae.fired_mask(o.top_idx, o.top_vals), 48),
                  fullgraph=True, backend="eager")(out)
    # the check can fail: AuxK on gathered dead columns sizes its gather from the data
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.TorchDynamoException):
        torch.compile(lambda v: gathered_aux_forward(sae, v), fullgraph=True, backend="eager")(x)
    torch._dynamo.reset()


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend (inductor) needs a C compiler, and none is installed")
def test_compiled_step_gives_the_eager_loss_and_gradients():
    sae, x = _compile_sae(seed=1)
    results = []
    torch._dynamo.reset()
    for compile in (False, True):
        sae.zero_grad(set_to_none=True)
        out = training_forward(sae, compile=compile)(x)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in sae.named_parameters()}))
    torch._dynamo.reset()
    (eager, eager_grads), (compiled, compiled_grads) = results
    assert torch.equal(eager.top_idx, compiled.top_idx)
    for field in ("x_hat", "fvu", "aux_fvu", "loss"):
        torch.testing.assert_close(getattr(compiled, field), getattr(eager, field), rtol=1e-5, atol=1e-5)
    assert eager.aux_fvu > 0
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_bf16_matmuls_stay_close_to_float32_and_the_default_is_the_plain_forward():
    sae, x = _compile_sae(seed=2)
    plain, default = sae(x), training_forward(sae)(x)
    for field in ("x_hat", "top_vals", "top_idx", "fvu", "aux_fvu", "loss"):
        assert torch.equal(getattr(default, field), getattr(plain, field)), field
    ref = reference_forward(sae, x)
    torch.testing.assert_close(default.loss, ref.loss, rtol=1e-6, atol=1e-7)
    bf16 = training_forward(sae, matmul_dtype="bfloat16")(x)
    assert bf16.loss.dtype == torch.float32
    torch.testing.assert_close(bf16.loss, plain.loss, rtol=2e-2, atol=0)
    bf16.loss.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in sae.parameters())
    with pytest.raises(ConfigError, match="matmul_dtype='fp8'"):
        training_forward(sae, matmul_dtype="fp8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model.matmul_dtype"):
        SAEModule(SAEConfig(d_in=8, d_sae=16, k=2), matmul_dtype="fp8")  # type: ignore[arg-type]


def test_sae_module_picks_the_fixed_shape_auxk_when_compiling_and_refuses_compiling_the_gathered_one():
    cfg = SAEConfig(d_in=8, d_sae=16, k=2)
    assert SAEModule(cfg).resolved_auxk == "gathered"
    assert SAEModule(cfg, compile=True).resolved_auxk == "fixed_shape"
    assert SAEModule(cfg, auxk="fixed_shape").resolved_auxk == "fixed_shape"
    with pytest.raises(ConfigError, match="model.auxk: fixed_shape"):
        SAEModule(cfg, compile=True, auxk="gathered")
    with pytest.raises(ConfigError, match="model.auxk must be"):
        SAEModule(cfg, auxk="dense")  # type: ignore[arg-type]
    sae, x = _compile_sae(seed=3)
    with pytest.raises(ConfigError, match="fixed-shape AuxK"):
        training_forward(sae, compile=True, auxk="gathered")
    fixed, gathered = training_forward(sae)(x), training_forward(sae, auxk="gathered")(x)
    assert torch.equal(fixed.top_idx, gathered.top_idx) and int(fixed.n_dead) == int(gathered.n_dead) == 20
    torch.testing.assert_close(fixed.loss, gathered.loss, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------- decoder-norm constraint
def test_parallel_gradient_removal_is_an_exact_projection():
    sae = _random_sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1, dtype=F64) + 0.5)  # exact even for atoms that are not unit
    before = torch.randn(64, 16, dtype=F64)
    sae.W_dec.grad = before.clone()
    sae.remove_parallel_grad()
    after = sae.W_dec.grad
    atoms = sae.W_dec.detach()
    assert ((after * atoms).sum(1).abs() < 1e-12).all()  # orthogonal to its atom
    probes = torch.randn(64, 5, 16, dtype=F64)  # random directions orthogonal to each atom
    unit = atoms / atoms.norm(dim=1, keepdim=True)
    probes -= (probes @ unit.unsqueeze(2)) * unit.unsqueeze(1)
    torch.testing.assert_close(probes @ after.unsqueeze(2), probes @ before.unsqueeze(2), rtol=1e-12, atol=1e-12)


def test_decoder_atoms_stay_unit_norm_through_training_with_adam():
    torch.manual_seed(4)
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=64, k=4, dead_tokens=512))
    true_atoms = torch.nn.functional.normalize(torch.randn(32, 16), dim=1)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    worst, losses = 0.0, []
    for _ in range(300):
        codes = torch.rand(128, 32) * (torch.rand(128, 32) < 0.1)
        x = codes @ true_atoms + 0.5  # (128, 16) sparse data with an offset
        out = sae(x)
        out.loss.backward()
        sae.update_dead_counters(sae.fired_mask(out.top_idx, out.top_vals), x.shape[0])
        sae.remove_parallel_grad()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder()
        losses.append(out.fvu.item())
        worst = max(worst, (sae.W_dec.detach().norm(dim=1) - 1).abs().max().item())
    assert worst < 1e-5
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])  # it trained, so the constraint was exercised


# ------------------------------------------------------------ dead latents
def test_a_latent_that_never_fires_dies_after_dead_tokens_and_revives_when_it_fires():
    sae = _random_sae(dead_tokens=100)
    with torch.no_grad():
        sae.b_enc[7] = -1e3  # latent 7 can never be selected
    batch = torch.randn(25, 16, dtype=F64)
    for step in range(1, 6):
        out = sae(batch)
        assert 7 not in out.top_idx
        sae.update_dead_counters(sae.fired_mask(out.top_idx, out.top_vals), n_tokens=25)
        assert int(sae.tokens_since_fired[7]) == 25 * step
        assert bool(sae.dead_mask[7]) == (25 * step >= 100)  # dead at exactly 100 tokens, not at 75
    assert sae.dead_indices().tolist() == torch.nonzero(sae.dead_mask).flatten().tolist()
    assert int(sae(batch).n_dead) == int(sae.dead_mask.sum()) >= 1

    with torch.no_grad():
        sae.b_enc[7] = 1e3  # now it fires on every token
    out = sae(batch)
    fired = sae.fired_mask(out.top_idx, out.top_vals)
    assert fired[7] and fired.sum() <= out.top_idx.unique().numel()
    sae.update_dead_counters(fired, n_tokens=25)
    assert int(sae.tokens_since_fired[7]) == 0 and not sae.dead_mask[7]


def test_a_selected_latent_with_zero_activation_has_not_fired():
    sae = _random_sae(d_sae=8, k=3)
    idx = torch.tensor([[0, 1, 2], [1, 2, 5]])
    vals = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 2.0]])
    assert sae.fired_mask(idx, vals).nonzero().flatten().tolist() == [0, 5]
    assert sae.fired_mask(idx).nonzero().flatten().tolist() == [0, 1, 2, 5]


def test_dead_counters_are_a_buffer_in_the_state_dict():
    sae = _random_sae()
    sae.update_dead_counters(torch.zeros(64, dtype=torch.bool), 123)
    state = sae.state_dict()
    assert state["tokens_since_fired"].dtype == torch.int64 and (state["tokens_since_fired"] == 123).all()
    fresh = _random_sae(seed=9)
    fresh.load_state_dict(state)
    assert (fresh.tokens_since_fired == 123).all()


# ------------------------------------------------------------ initialization
def test_init_is_unit_atoms_with_encoder_a_copy_not_a_tie():
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=64, k=4))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    assert torch.equal(sae.W_enc, sae.W_dec) and sae.W_enc.data_ptr() != sae.W_dec.data_ptr()
    assert (sae.b_enc == 0).all() and (sae.b_dec == 0).all()


def test_geometric_median_init_beats_the_mean_on_data_with_outliers():
    torch.manual_seed(5)
    center = torch.randn(8, dtype=F64) * 3
    points = torch.cat([center + torch.randn(400, 8, dtype=F64), center + 200 + torch.randn(20, 8, dtype=F64)])
    objective = lambda y: np.linalg.norm(points.numpy() - y, axis=1).sum()  # noqa: E731
    true = torch.from_numpy(minimize(objective, points.median(0).values.numpy(), method="Nelder-Mead",
                                     options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 40_000}).x)
    median = geometric_median(points)
    mean = points.mean(0)
    assert (median - true).norm() < 1e-3 < 5.0 < (mean - true).norm()

    sae = TopKSAE(SAEConfig(d_in=8, d_sae=16, k=2), dtype=F64)
    sae.init_b_pre(points)
    torch.testing.assert_close(sae.b_dec.detach(), median)
    sae.init_b_pre(points, method="mean")
    torch.testing.assert_close(sae.b_dec.detach(), mean)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, key", [
    ({"k": 65, "d_sae": 64}, "k=65"),
    ({"k": 0}, "k=0"),
    ({"d_in": -1}, "d_in=-1"),
    ({"d_sae": 2.5}, "d_sae=2.5"),
    ({"k_aux": 0}, "k_aux=0"),
    ({"aux_coef": -0.1}, "aux_coef=-0.1"),
    ({"aux_coef": math.nan}, "aux_coef=nan"),
    ({"dead_tokens": 0}, "dead_tokens=0"),
    ({"hook_name": ""}, "hook_name=''"),
])
def test_bad_config_values_are_config_errors_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(").replace(".", r"\.")):
        SAEConfig(**kwargs)


def test_bad_inputs_are_config_errors():
    sae = _random_sae()
    with pytest.raises(ConfigError, match="d_in=16"):
        sae(torch.randn(4, 15, dtype=F64))
    with pytest.raises(ConfigError, match="b_pre_init='median'"):
        sae.init_b_pre(torch.randn(4, 16, dtype=F64), method="median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown SAE settings"):
        SAEConfig.from_dict({"d_in": 4, "width": 3})


def test_default_k_aux_is_half_of_d_in():
    assert SAEConfig().resolved_k_aux == 640
    assert SAEConfig(k_aux=256).resolved_k_aux == 256


def test_bench_sae_rows_and_ratios(capsys):
    from emoctl.bench.sae import EAGER, _has_fast_bf16, bench_sae

    rows = {r["row"]: r for r in bench_sae(batch_size=128, d_in=32, d_sae=128, k=4, steps=1, warmup=0,
                                             device="cpu", compile=False)}
    floor = rows["bare encoder matmul, fp32"]
    assert floor["x_matmul_floor"] == 1.0
    eager = rows[EAGER]
    assert eager["speed_vs_eager"] == 1.0
    step = rows["emoctl TopKSAE step, fixed-shape AuxK, eager, fp32"]
    assert step["x_matmul_floor"] == pytest.approx(step["ms_per_step"] / floor["ms_per_step"])
    assert step["speed_vs_eager"] == pytest.approx(eager["ms_per_step"] / step["ms_per_step"])
    assert "emoctl TopKSAE step, fixed-shape AuxK, eager, fp32, no dead latents" in rows
    assert not any("compiled" in name for name in rows)  # compile=False
    dense = rows["encoder matmul + AuxK's 4 dense products, fp32"]
    assert dense["x_matmul_floor"] == pytest.approx(dense["ms_per_step"] / floor["ms_per_step"])
    bf16_step = "emoctl TopKSAE step, fixed-shape AuxK, eager, bf16 matmul"
    assert (bf16_step in rows) == _has_fast_bf16(torch.device("cpu"))
    if "bare encoder matmul, bf16" in rows:
        bf16, bf16_floor = rows[bf16_step], rows["bare encoder matmul, bf16"]
        assert bf16["x_same_precision_floor"] == pytest.approx(bf16["ms_per_step"] / bf16_floor["ms_per_step"])
        assert bf16["x_matmul_floor"] == pytest.approx(bf16["ms_per_step"] / floor["ms_per_step"])
    assert f"| {EAGER} |" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_sae_times_the_compiled_and_bf16_steps(capsys):
    from emoctl.bench.sae import bench_sae

    rows = {r["row"]: r for r in bench_sae(batch_size=64, d_in=16, d_sae=64, k=4, steps=1, warmup=0,
                                             device="cpu", compile=True, bf16=True)}
    out = capsys.readouterr().out
    for name in ("emoctl TopKSAE step, fixed-shape AuxK, compiled, fp32",
                 "emoctl TopKSAE step, fixed-shape AuxK, eager, bf16 matmul",
                 "emoctl TopKSAE step, fixed-shape AuxK, compiled, bf16 matmul", "bare encoder matmul, bf16"):
        assert name in rows, (name, out)
        assert rows[name]["speed_vs_eager"] > 0
