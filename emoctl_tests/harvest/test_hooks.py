"""Hook manager on a real transformers GPT2 stack: placement, phase gating, writes, zero cost when idle."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2Model

from emoctl.backbones import HookManager, Phase
from emoctl.errors import ConfigError


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=50, n_positions=64)).eval()
    head = torch.nn.Linear(32, 50)
    points = {f"resid_pre.{i}": block for i, block in enumerate(model.h)}
    points["lm_out"] = head
    return model, head, HookManager(points)


def test_resid_pre_is_the_input_of_block_L_counted_from_0(gpt):
    model, _, hooks = gpt
    ids = torch.randint(0, 50, (2, 7))
    seen = {}
    handles = [hooks.add_reader(f"resid_pre.{i}", lambda x, ctx: seen.__setitem__(ctx.hookpoint, x.clone()),
                                phases=[Phase.TEACHER_FORCED]) for i in range(4)]
    with torch.no_grad(), hooks.phase(Phase.TEACHER_FORCED):
        out = model(ids, output_hidden_states=True)
    for i in range(4):
        assert torch.equal(seen[f"resid_pre.{i}"], out.hidden_states[i])
    for h in handles:
        h.remove()


def test_hooks_fire_only_in_their_phases(gpt):
    model, _, hooks = gpt
    calls = []
    with hooks.add_reader("resid_pre.2", lambda x, ctx: calls.append((ctx.phase, x.shape[1]))):  # decode only
        with torch.no_grad():
            prefill = model(torch.randint(0, 50, (1, 5)), use_cache=True)
            model(torch.randint(0, 50, (1, 5)))  # no phase declared: gated hooks stay silent
            with hooks.phase(Phase.PREFILL):
                model(torch.randint(0, 50, (1, 5)))
            with hooks.phase(Phase.DECODE, step=3):
                model(torch.randint(0, 50, (1, 1)), past_key_values=prefill.past_key_values)
    assert calls == [(Phase.DECODE, 1)]


def test_identity_writer_is_bit_exact_and_a_shift_propagates(gpt):
    model, head, hooks = gpt
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        base = head(model(ids).last_hidden_state)
        with hooks.add_writer("resid_pre.1", lambda x, ctx: x.clone(), phases=None):
            same = head(model(ids).last_hidden_state)
        delta = torch.zeros(32)
        delta[0] = 5.0
        with hooks.add_writer("lm_out", lambda x, ctx: x + delta, phases=None):
            shifted = head(model(ids).last_hidden_state)
    assert torch.equal(base, same)
    # At lm_out (the head's input) the change is exactly linear: W @ delta added to every position.
    assert torch.allclose(shifted - base, (head.weight @ delta).expand_as(base), atol=1e-5)


def test_no_torch_hook_remains_after_the_last_removal(gpt):
    model, _, hooks = gpt
    block = model.h[3]
    assert not block._forward_pre_hooks
    a = hooks.add_reader("resid_pre.3", lambda x, ctx: None)
    b = hooks.add_writer("resid_pre.3", lambda x, ctx: x)
    assert len(block._forward_pre_hooks) == 1  # one torch hook however many emoctl hooks
    a.remove()
    assert len(block._forward_pre_hooks) == 1
    b.remove()
    assert not block._forward_pre_hooks and not hooks.has_hooks()


def test_bad_hookpoint_and_phase_are_named(gpt):
    _, _, hooks = gpt
    with pytest.raises(ConfigError, match="resid_pre.9"):
        hooks.add_reader("resid_pre.9", lambda x, ctx: None)
    with pytest.raises(ConfigError, match="decoding"):
        hooks.add_reader("resid_pre.0", lambda x, ctx: None, phases=["decoding"])


def test_an_output_hookpoint_sees_and_replaces_what_the_attention_adds():
    """``attn_out.L`` hooks the output of block L's attention (the first element of GPT2Attention's tuple): a
    reader sees exactly what the block adds to its residual, a writer's change reaches the block's output
    one for one before the MLP, and the rest of the tuple passes through."""
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=64)).eval()
    block = model.h[0]
    points = {"resid_pre.0": block, "attn_out.0": block.attn, "resid_pre.1": model.h[1]}
    hooks = HookManager(points, outputs=["attn_out.0"])
    assert hooks.hookpoints == ["resid_pre.0", "attn_out.0", "resid_pre.1"]
    ids = torch.randint(0, 50, (2, 6))
    seen = {}
    handles = [hooks.add_reader(h, lambda x, ctx: seen.__setitem__(ctx.hookpoint, x.clone()), phases=None)
               for h in points]
    with torch.no_grad():
        model(ids)
        h, a = seen["resid_pre.0"], seen["attn_out.0"]
        assert torch.allclose(a, block.attn(block.ln_1(h))[0])
        assert torch.allclose(seen["resid_pre.1"], h + a + block.mlp(block.ln_2(h + a)), atol=1e-6)
        delta = torch.zeros(32)
        delta[3] = 2.0
        with hooks.add_writer("attn_out.0", lambda x, ctx: x + delta, phases=None):
            model(ids)
        assert torch.equal(seen["attn_out.0"], a)  # a reader added before the writer sees the unwritten tensor
        r = h + a + delta
        assert torch.allclose(seen["resid_pre.1"], r + block.mlp(block.ln_2(r)), atol=1e-6)
    for handle in handles:
        handle.remove()
    assert not block.attn._forward_hooks and not block._forward_pre_hooks  # the last removal unregisters
    with pytest.raises(ValueError, match=r"output hookpoints \['nope'\]"):
        HookManager(points, outputs=["nope"])
