"""emotion2vec model folders: what the released format holds, a check of a user's folder, and a writer of
random-weight folders in that format for tests and benchmarks.

A released folder (``emotion2vec_plus_base``, ``emotion2vec_plus_large``) holds ``config.yaml`` (``model:
Emotion2vec``, a ``model_conf`` block with the audio modality's settings, ``tokenizer: CharTokenizer`` and a
``tokenizer_conf`` section), ``model.pt`` (the weights) and ``tokens.txt`` (the nine labels, such as
``生气/angry``, ending with ``<unk>``).  funasr builds the model from ``config.yaml`` and *evaluates* one of
its strings (``feature_encoder_spec``) as Python, so :func:`check_folder` reads it first and accepts only
a list expression of integer tuples.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emoctl.errors import ConfigError

FOLDER_FILES = ("config.yaml", "model.pt", "tokens.txt")
#: the released nine labels, in output order (funasr's "中文/english" form)
RELEASED_LABELS = ("生气/angry", "厌恶/disgusted", "恐惧/fearful", "开心/happy", "中立/neutral", "其他/other",
                   "难过/sad", "吃惊/surprised", "<unk>")
#: the seven convolutions of the released feature encoder (50 frames per second at 16 kHz)
FEATURE_ENCODER_SPEC = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"


def _spec_value(node: ast.AST) -> Any:
    """Evaluate a feature_encoder_spec expression made only of integer tuples, lists, ``+`` and ``*``."""
    if isinstance(node, ast.Expression):
        return _spec_value(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_spec_value(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _spec_value(node.left), _spec_value(node.right)
        if isinstance(node.op, ast.Mult) and isinstance(left, list) and isinstance(right, int) and right < 1000:
            return left * right
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return left + right
    raise ValueError(ast.dump(node)[:80])


def check_feature_encoder_spec(text: object, where: str) -> list[tuple[int, int, int]]:
    """The conv layers a ``feature_encoder_spec`` string describes; a ConfigError for anything but a list
    expression of (channels, kernel, stride) integer tuples (funasr would run the string as code)."""
    try:
        layers = _spec_value(ast.parse(str(text), mode="eval"))
    except (SyntaxError, ValueError):
        layers = None
    if not isinstance(layers, list) or not layers or not all(
            isinstance(t, tuple) and len(t) == 3 and all(isinstance(v, int) and v > 0 for v in t) for t in layers):
        raise ConfigError(f"{where}: feature_encoder_spec {str(text)[:80]!r} is not a list of (channels, kernel, "
                          "stride) integer tuples; funasr evaluates this string as Python, so emoctl refuses "
                          "anything else. Use the config.yaml of the emotion2vec release.")
    return layers


def check_folder(folder: Path) -> dict[str, Any]:
    """A user's emotion2vec folder, checked before funasr reads it: every file present (one error listing the
    missing ones), config.yaml an Emotion2vec config with a safe feature_encoder_spec, nine labels."""
    from omegaconf import OmegaConf

    missing = [name for name in FOLDER_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"emotion2vec model folder {folder} lacks {', '.join(missing)}; copy the whole released "
                          "folder (emotion2vec_plus_large or plus_base: config.yaml, model.pt, tokens.txt).")
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
    except Exception as err:  # yaml and omegaconf raise their own types
        raise ConfigError(f"cannot read {folder / 'config.yaml'}: {str(err).splitlines()[0]}") from None
    if not isinstance(cfg, dict) or cfg.get("model") != "Emotion2vec" or "model_conf" not in cfg:
        raise ConfigError(f"{folder / 'config.yaml'} is not an emotion2vec config (model: Emotion2vec with a "
                          "model_conf block).")
    audio = (cfg["model_conf"].get("modalities") or {}).get("audio") or {}
    check_feature_encoder_spec(audio.get("feature_encoder_spec"), str(folder / "config.yaml"))
    labels = [line.strip() for line in (folder / "tokens.txt").read_text(encoding="utf-8").splitlines()
              if line.strip()]
    if len(labels) != len(RELEASED_LABELS):
        raise ConfigError(f"{folder / 'tokens.txt'} has {len(labels)} labels; emotion2vec's 9-class models have "
                          f"{len(RELEASED_LABELS)} ({', '.join(RELEASED_LABELS)}).")
    return cfg


@dataclass(frozen=True)
class Emotion2VecSize:
    """The sizes of a random folder; ``plus_base()`` is the released base model (93.2 M parameters)."""

    embed_dim: int = 64
    heads: int = 2
    depth: int = 1
    prenet_depth: int = 1
    conv_channels: int = 32

    @classmethod
    def tiny(cls) -> Emotion2VecSize:
        return cls()

    @classmethod
    def plus_base(cls) -> Emotion2VecSize:
        return cls(embed_dim=768, heads=12, depth=8, prenet_depth=4, conv_channels=512)


def release_config(size: Emotion2VecSize) -> dict[str, Any]:
    """config.yaml of the released format at ``size`` (inference settings as released; dropouts are off in
    eval mode)."""
    spec = FEATURE_ENCODER_SPEC.replace("512", str(size.conv_channels))
    audio = {
        "type": "AUDIO", "prenet_depth": size.prenet_depth, "prenet_layerdrop": 0.05, "prenet_dropout": 0.1,
        "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "num_extra_tokens": 10,
        "init_extra_token_zero": True, "mask_noise_std": 0.01, "mask_prob_min": None, "inverse_mask": False,
        "mask_prob_adjust": 0.05, "keep_masked_pct": 0.0, "mask_length": 5, "add_masks": False,
        "remove_masks": False, "mask_dropout": 0.0, "encoder_zero_mask": True, "mask_channel_prob": 0.0,
        "mask_channel_length": 64, "ema_local_encoder": False, "local_grad_mult": 1.0, "use_alibi_encoder": True,
        "alibi_scale": 1.0, "learned_alibi": False, "alibi_max_pos": None, "learned_alibi_scale": True,
        "learned_alibi_scale_per_head": True, "learned_alibi_scale_per_layer": False,
        "num_alibi_heads": size.heads, "model_depth": size.depth, "decoder": None, "extractor_mode": "layer_norm",
        "feature_encoder_spec": spec, "conv_pos_width": 95, "conv_pos_groups": 16, "conv_pos_depth": 5,
        "conv_pos_pre_ln": False, "mask_prob": 0.65,
    }
    model_conf = {
        "loss_beta": 0.0, "loss_scale": None, "depth": size.depth, "start_drop_path_rate": 0.0,
        "end_drop_path_rate": 0.0, "num_heads": size.heads, "norm_eps": 1e-05, "norm_affine": True,
        "encoder_dropout": 0.1, "post_mlp_drop": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
        "dropout_input": 0.0, "layerdrop": 0.05, "embed_dim": size.embed_dim, "mlp_ratio": 4.0,
        "layer_norm_first": False, "average_top_k_layers": 8, "end_of_block_targets": False, "clone_batch": 8,
        "layer_norm_target_layer": False, "batch_norm_target_layer": False, "instance_norm_target_layer": True,
        "instance_norm_targets": False, "layer_norm_targets": False, "ema_decay": 0.999, "ema_same_dtype": True,
        "log_norms": True, "ema_end_decay": 0.99999, "ema_anneal_end_step": 20000, "ema_encoder_only": False,
        "max_update": 100000, "extractor_mode": "layer_norm", "shared_decoder": None, "min_target_var": 0.1,
        "min_pred_var": 0.01, "supported_modality": "AUDIO", "mae_init": False, "seed": 1, "skip_ema": False,
        "cls_loss": 0.0, "recon_loss": 0.0, "d2v_loss": 1.0, "decoder_group": False, "adversarial_training": False,
        "adversarial_hidden_dim": 128, "adversarial_weight": 0.1, "cls_type": "chunk", "normalize": True,
        "modalities": {"audio": audio},
    }
    return {"model": "Emotion2vec", "model_conf": model_conf, "tokenizer": "CharTokenizer",
            "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True}}


def write_random_emotion2vec(folder: str | Path, size: Emotion2VecSize | None = None, seed: int = 0) -> Path:
    """A complete emotion2vec folder of random weights (funasr's own Emotion2vec class) at ``size``."""
    import torch
    import yaml
    from funasr.models.emotion2vec.model import Emotion2vec

    from emoctl.backbones.audio_input import private_rng

    size = size or Emotion2VecSize.tiny()
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    cfg = release_config(size)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (root / "tokens.txt").write_text("\n".join(RELEASED_LABELS) + "\n", encoding="utf-8")
    with private_rng():
        torch.manual_seed(seed)
        model = Emotion2vec(model_conf=cfg["model_conf"], vocab_size=len(RELEASED_LABELS))
        torch.save(model.state_dict(), root / "model.pt")
    return root
