"""Save and load a :class:`~emoctl.sae.topk_sae.TopKSAE` in SAELens' on-disk format.

A saved SAE is a self-describing folder that SAELens (``SAE.load_from_disk``,
architecture "topk") and emoctl both load:

* ``sae_weights.safetensors``: ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae],
  ``W_dec`` [d_sae, d_in], ``b_dec`` [d_in].  SAELens subtracts ``b_dec`` from
  the input before encoding (``apply_b_dec_to_input``), which is our b_pre.
* ``cfg.json``: SAELens' keys (architecture, d_in, d_sae, k, dtype, device,
  apply_b_dec_to_input, normalize_activations, reshape_activations,
  rescale_acts_by_decoder_norm, metadata with hook_name and the layout's
  sae_lens_version), plus an ``emoctl``
  section with the full :class:`SAEConfig` (AuxK settings, dead_tokens), which
  SAELens ignores and our loader restores.

The dead-latent counters are training state; they live in Lightning checkpoints, not here.

Saving is crash-safe: the folder is built beside ``directory`` and renamed into
place (``emoctl.io.fsio.atomic_folder``), so an interrupted save leaves the
previous folder whole.  ``cfg.json`` records the SHA-256 of the weights it
belongs to, which loading checks, so a folder mixing two exports refuses to load.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from emoctl.errors import ConfigError
from emoctl.numerics import refuse_non_finite_weights
from emoctl.io.fsio import atomic_folder
from emoctl.sae.config import SAEConfig
from emoctl.sae.topk_sae import TopKSAE

WEIGHTS_FILENAME = "sae_weights.safetensors"
CONFIG_FILENAME = "cfg.json"
SAELENS_LAYOUT_VERSION = "6.0.0"


def save_pretrained(sae: TopKSAE, directory: str | Path, extra_metadata: dict[str, Any] | None = None) -> Path:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` as the folder ``directory`` (replaced whole, atomically).

    ``extra_metadata`` (JSON-serializable provenance such as the store path or the step)
    goes into SAELens' ``metadata`` section.
    """
    directory = Path(directory)
    try:
        json.dumps(extra_metadata or {})
    except TypeError as err:
        raise ConfigError(f"extra_metadata for {directory / CONFIG_FILENAME} must be JSON-serializable: {err}.") from err
    cfg = sae.cfg
    weights = {
        "W_enc": sae.W_enc.detach().t(),  # SAELens: [d_in, d_sae]; ours is one row per latent
        "b_enc": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    refuse_non_finite_weights(weights, f"the SAE to be saved in {directory}")
    blob = save_bytes({name: t.contiguous().cpu() for name, t in weights.items()})
    metadata = {
        # SAELens picks its cfg parser by this version; "6.0.0" declares the layout written here.
        # Not trained by SAELens, hence no training version.
        "sae_lens_version": SAELENS_LAYOUT_VERSION,
        "sae_lens_training_version": None,
        "hook_name": cfg.hook_name,
        **(extra_metadata or {}),
    }
    config = {
        "architecture": "topk",
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "dtype": str(sae.W_dec.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": metadata,
        "emoctl": {"sae": cfg.to_dict(), "weights_sha256": hashlib.sha256(blob).hexdigest()},
    }
    try:
        text = json.dumps(config, indent=2)
    except TypeError as err:
        raise ConfigError(f"extra_metadata for {directory / CONFIG_FILENAME} must be JSON-serializable: {err}.") from err
    with atomic_folder(directory) as staging:
        (staging / WEIGHTS_FILENAME).write_bytes(blob)
        (staging / CONFIG_FILENAME).write_text(text + "\n")
    return directory


def load_pretrained(directory: str | Path, device: torch.device | str = "cpu") -> TopKSAE:
    """Load an SAE folder written by :func:`save_pretrained` (or a SAELens "topk" SAE without extras)."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILENAME, directory / WEIGHTS_FILENAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ConfigError(
                f"{path} is missing: an exported SAE folder holds {CONFIG_FILENAME} and {WEIGHTS_FILENAME}. "
                "Point at the folder that `emoctl fit` wrote (<run>/sae) or re-export it."
            )
    cfg = _read_config(config_path)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{weights_path} is not a readable safetensors file ({err}); re-export the SAE.") from err
    expected = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_in),
                "b_dec": (cfg.d_in,)}
    for name, shape in expected.items():
        if name not in tensors:
            raise ConfigError(f"{weights_path} has no tensor {name!r} (it has {sorted(tensors)}); re-export the SAE.")
        if tuple(tensors[name].shape) != shape:
            raise ConfigError(
                f"{weights_path}: {name} has shape {tuple(tensors[name].shape)} but {config_path} "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}) needs {shape}. The two files come from different SAEs."
            )
    recorded = (json.loads(config_path.read_text()).get("emoctl") or {}).get("weights_sha256")
    if recorded is not None and hashlib.sha256(weights_path.read_bytes()).hexdigest() != recorded:
        raise ConfigError(f"{weights_path} is not the weights file {config_path} was written with (SHA-256 differs): "
                          "the folder mixes two exports or was damaged. Re-export the SAE.")
    refuse_non_finite_weights({name: tensors[name] for name in expected}, f"the SAE in {directory}")
    sae = TopKSAE(cfg, device=device, dtype=tensors["W_dec"].dtype)
    with torch.no_grad():
        sae.W_enc.copy_(tensors["W_enc"].t())
        sae.b_enc.copy_(tensors["b_enc"])
        sae.W_dec.copy_(tensors["W_dec"])
        sae.b_dec.copy_(tensors["b_dec"])
    return sae


def _read_config(path: Path) -> SAEConfig:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); re-export the SAE.") from err
    if raw.get("architecture") != "topk":
        raise ConfigError(f"{path} describes architecture {raw.get('architecture')!r}; emoctl loads only 'topk' SAEs.")
    for key, supported in (("apply_b_dec_to_input", True), ("normalize_activations", "none"),
                           ("rescale_acts_by_decoder_norm", False)):
        if raw.get(key, supported) != supported:
            raise ConfigError(f"{path} sets {key}={raw[key]!r}; emoctl's TopKSAE supports only {key}={supported!r}.")
    ours = raw.get("emoctl", {}).get("sae")
    if ours is None:  # a plain SAELens export: take what it defines
        try:
            ours = {"d_in": raw["d_in"], "d_sae": raw["d_sae"], "k": raw["k"]}
        except KeyError as err:
            raise ConfigError(f"{path} lacks the key {err.args[0]!r} that a 'topk' SAE needs.") from err
        hook_name = (raw.get("metadata") or {}).get("hook_name") or raw.get("hook_name")
        if hook_name:
            ours["hook_name"] = hook_name
    cfg = SAEConfig.from_dict(ours, source=str(path))
    for key in ("d_in", "d_sae", "k"):
        if key in raw and raw[key] != getattr(cfg, key):
            raise ConfigError(f"{path}: top-level {key}={raw[key]} disagrees with emoctl.sae.{key}={getattr(cfg, key)}.")
    return cfg
