"""SAELens-format export: round trip, the cfg.json layout SAELens loads, and clear errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from emoctl.errors import ConfigError
from emoctl.sae import SAEConfig, TopKSAE, load_pretrained, save_pretrained


def _trained_looking_sae(dtype: torch.dtype = torch.float32) -> TopKSAE:
    torch.manual_seed(0)
    sae = TopKSAE(SAEConfig(d_in=24, d_sae=96, k=6, k_aux=10, aux_coef=0.05, dead_tokens=777,
                            hook_name="resid_pre.16"), dtype=dtype)
    with torch.no_grad():
        sae.W_enc.add_(0.2 * torch.randn_like(sae.W_enc))
        sae.b_enc.normal_(std=0.1)
        sae.b_dec.normal_()
    return sae


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_save_then_load_gives_identical_outputs_and_config(tmp_path, dtype):
    sae = _trained_looking_sae(dtype)
    save_pretrained(sae, tmp_path / "sae", extra_metadata={"global_step": 42})
    loaded = load_pretrained(tmp_path / "sae")
    assert loaded.cfg == sae.cfg
    assert loaded.W_dec.dtype == dtype
    for name, tensor in sae.state_dict().items():
        if name != "tokens_since_fired":  # training state: in Lightning checkpoints, not in the export
            assert torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.randn(50, 24, dtype=dtype)
    a, b = sae(x), loaded(x)
    assert torch.equal(a.top_idx, b.top_idx) and torch.equal(a.x_hat, b.x_hat) and torch.equal(a.loss, b.loss)


def test_cfg_json_has_the_keys_saelens_reads_for_a_topk_sae(tmp_path):
    sae = _trained_looking_sae()
    save_pretrained(sae, tmp_path, extra_metadata={"store_path": "/data/store", "global_step": 7})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert {key: cfg[key] for key in ("architecture", "d_in", "d_sae", "k", "dtype", "device", "apply_b_dec_to_input",
                                      "normalize_activations", "reshape_activations",
                                      "rescale_acts_by_decoder_norm")} == {
        "architecture": "topk", "d_in": 24, "d_sae": 96, "k": 6, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False}
    meta = cfg["metadata"]
    assert meta["hook_name"] == "resid_pre.16" and meta["sae_lens_version"].startswith("6.")
    assert meta["store_path"] == "/data/store" and meta["global_step"] == 7
    assert cfg["emoctl"]["sae"] == {"d_in": 24, "d_sae": 96, "k": 6, "k_aux": 10, "aux_coef": 0.05,
                                    "dead_tokens": 777, "hook_name": "resid_pre.16"}


def test_weights_file_encodes_like_saelens_does(tmp_path):
    """SAELens' TopK encode: relu(topk((x - b_dec) @ W_enc + b_enc)), W_enc [d_in, d_sae]."""
    sae = _trained_looking_sae()
    save_pretrained(sae, tmp_path)
    w = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert {name: tuple(t.shape) for name, t in w.items()} == {
        "W_enc": (24, 96), "b_enc": (96,), "W_dec": (96, 24), "b_dec": (24,)}
    x = torch.randn(30, 24)
    hidden = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    top = hidden.topk(6, dim=-1)
    codes = torch.zeros_like(hidden).scatter(-1, top.indices, top.values.relu())  # (30, d_sae)
    torch.testing.assert_close(sae.encode_dense(x).detach(), codes, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sae.decode(*sae.encode(x)).detach(), codes @ w["W_dec"] + w["b_dec"],
                               rtol=1e-5, atol=1e-5)


def test_a_plain_saelens_folder_without_our_section_loads(tmp_path):
    sae = _trained_looking_sae()
    save_pretrained(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["emoctl"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    loaded = load_pretrained(tmp_path)
    assert (loaded.cfg.d_in, loaded.cfg.d_sae, loaded.cfg.k, loaded.cfg.hook_name) == (24, 96, 6, "resid_pre.16")
    x = torch.randn(10, 24)
    assert torch.equal(loaded.encode_dense(x), sae.encode_dense(x))


@pytest.mark.parametrize("missing", ["cfg.json", "sae_weights.safetensors"])
def test_missing_file_is_a_config_error_naming_it(tmp_path, missing):
    save_pretrained(_trained_looking_sae(), tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(ConfigError, match=missing):
        load_pretrained(tmp_path)


def test_mismatched_weight_shape_is_a_config_error_naming_file_and_tensor(tmp_path):
    save_pretrained(_trained_looking_sae(), tmp_path)
    weights = load_file(str(tmp_path / "sae_weights.safetensors"))
    weights["W_dec"] = weights["W_dec"][:, :20].contiguous()
    save_file(weights, str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(ConfigError, match=r"sae_weights\.safetensors: W_dec has shape \(96, 20\)"):
        load_pretrained(tmp_path)


def test_weights_from_another_sae_are_a_config_error(tmp_path):
    save_pretrained(_trained_looking_sae(), tmp_path / "a")
    other = TopKSAE(SAEConfig(d_in=24, d_sae=48, k=6))
    save_pretrained(other, tmp_path / "b")
    shutil.copy(tmp_path / "b" / "sae_weights.safetensors", tmp_path / "a" / "sae_weights.safetensors")
    with pytest.raises(ConfigError, match="W_enc has shape"):
        load_pretrained(tmp_path / "a")


@pytest.mark.parametrize("edit, message", [
    ({"architecture": "jumprelu"}, "architecture 'jumprelu'"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
    ({"k": 7}, "top-level k=7 disagrees"),
])
def test_unsupported_or_inconsistent_cfg_is_a_config_error(tmp_path, edit, message):
    save_pretrained(_trained_looking_sae(), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg.update(edit)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=message):
        load_pretrained(tmp_path)


def test_unserializable_metadata_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="JSON-serializable"):
        save_pretrained(_trained_looking_sae(), tmp_path, extra_metadata={"when": object()})
