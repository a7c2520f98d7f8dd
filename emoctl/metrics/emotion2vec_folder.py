"""emotion2vec model folders: what the released format holds, a reader of a user's folder that takes only data
from it, and a writer of random-weight folders in that format for tests and benchmarks.

A released folder (``emotion2vec_plus_base``, ``emotion2vec_plus_large``) holds ``config.yaml`` (``model:
Emotion2vec``, a ``model_conf`` block with the audio modality's settings, ``tokenizer: CharTokenizer`` and a
``tokenizer_conf`` section), ``model.pt`` (the weights), ``tokens.txt`` (the nine labels, such as
``生气/angry``, ending with ``<unk>``) and often ``configuration.json`` (the hub's index of those three files).

Why a reader of its own.  funasr's ``AutoModel(model=folder)`` follows whatever the folder says:
``trust_remote_code``/``remote_code`` import a Python file, ``configuration.json``'s ``file_path_metas`` name
the config (or any other file) it loads, and the config's ``feature_encoder_spec`` string is run with
``eval``.  :func:`read_folder` therefore reads the three files as data and refuses everything else:

* ``config.yaml`` is parsed with a safe YAML loader (no tags that build objects, no aliases, no OmegaConf
  ``${...}`` interpolations) and may hold only the released top-level keys (:data:`CONFIG_KEYS`);
  no key anywhere may ask for code or name another file (:data:`CODE_KEYS`, :data:`FILE_KEYS`);
* ``feature_encoder_spec`` must be a literal list of integer triples (:func:`check_feature_encoder_spec`,
  read with :mod:`ast`, never evaluated); funasr is given emoctl's own rendering of the parsed list;
* ``configuration.json``, if present, may only index the folder's own three files under their released
  names (:data:`RELEASED_FILE_METAS`), and may not ask for remote code;
* ``model.pt`` is read with torch's weights-only loader (:func:`read_weights`).

:class:`~emoctl.metrics.emotion2vec.Emotion2Vec` then builds funasr's ``Emotion2vec`` class from the validated
``model_conf`` and loads the weights itself; funasr never sees the folder's path.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from emoctl.errors import ConfigError

FOLDER_FILES = ("config.yaml", "model.pt", "tokens.txt")
#: the released nine labels, in output order (funasr's "中文/english" form)
RELEASED_LABELS = ("生气/angry", "厌恶/disgusted", "恐惧/fearful", "开心/happy", "中立/neutral", "其他/other",
                   "难过/sad", "吃惊/surprised", "<unk>")
#: the seven convolutions of the released feature encoder (50 frames per second at 16 kHz)
FEATURE_ENCODER_SPEC = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
#: the top-level keys of a released config.yaml, the only ones read
CONFIG_KEYS = ("model", "model_conf", "tokenizer", "tokenizer_conf")
#: tokenizer_conf keys of the released config (token_list, if given, must be tokens.txt)
TOKENIZER_CONF_KEYS = ("unk_symbol", "split_with_space", "token_list")
#: keys with which funasr imports and runs Python files
CODE_KEYS = frozenset({"trust_remote_code", "remote_code"})
#: keys with which funasr opens another file than the three emoctl reads
FILE_KEYS = frozenset({"init_param", "config", "model_path", "token_list", "tokens", "seg_dict", "seg_dicts",
                       "token_lists", "bpemodel", "cmvn_file", "jieba_usr_dict", "non_linguistic_symbols",
                       "frontend", "frontend_conf", "requirements", "output_dir"})
#: configuration.json's file_path_metas of the released folders: the folder's own three files
RELEASED_FILE_METAS: dict[str, Any] = {"init_param": "model.pt", "config": "config.yaml",
                                       "tokenizer_conf": {"token_list": "tokens.txt"}}
MAX_TEXT_BYTES = 1 << 20
"""Largest config.yaml, configuration.json or tokens.txt read (the released ones are a few kilobytes)."""

_RELEASE_HINT = ("Use the files of the emotion2vec release (emotion2vec_plus_large or plus_base: config.yaml, "
                 "model.pt, tokens.txt); emoctl never runs code or follows paths a model folder names.")


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


class _DataLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-05`` as a float as funasr's OmegaConf does (YAML 1.2)."""


_DataLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9]+(?:_[0-9]+)*\.[0-9]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?[0-9]+(?:_[0-9]+)*(?:[eE][-+]?[0-9]+)
                   |\.[0-9]+(?:_[0-9]+)*(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _read_text(path: Path) -> str:
    """A small UTF-8 file of the folder; ConfigError if it is too big or not text."""
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise ConfigError(f"{path} is {size} bytes; an emotion2vec {path.name} is a few kilobytes (at most "
                          f"{MAX_TEXT_BYTES} read). {_RELEASE_HINT}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}). {_RELEASE_HINT}") from None


def _load_yaml(path: Path) -> Any:
    """config.yaml as plain data: no aliases, no tags that build Python objects."""
    text = _read_text(path)
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=_DataLoader)):
            raise ConfigError(f"{path} uses YAML aliases (*name); a released emotion2vec config has none, and "
                              f"emoctl reads it as plain data. {_RELEASE_HINT}")
        return yaml.load(text, Loader=_DataLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())[:300]
        raise ConfigError(f"{path} is not a plain YAML mapping that emoctl can read as data ({reason}); tags such "
                          f"as !!python/object are refused. {_RELEASE_HINT}") from None


def _refuse_named(path: Path, where: str, key: str) -> None:
    if key in CODE_KEYS:
        raise ConfigError(f"{path}: {where}{key} asks funasr to import and run a Python file; emoctl never runs "
                          f"code from a model folder, so it refuses the folder. {_RELEASE_HINT}")
    if key in FILE_KEYS:
        raise ConfigError(f"{path}: {where}{key} names another file for funasr to open; emoctl reads only the "
                          f"folder's own {', '.join(FOLDER_FILES)}. {_RELEASE_HINT}")


def _check_data(path: Path, value: Any, where: str, depth: int = 0) -> None:
    """Nested mappings of scalars (and lists of scalars): no key naming code or files, no interpolation."""
    if depth > 6:
        raise ConfigError(f"{path}: {where.rstrip('.')} nests deeper than a released emotion2vec config. "
                          f"{_RELEASE_HINT}")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{path}: {where}{key!r} is not a string key. {_RELEASE_HINT}")
            _refuse_named(path, where, key)
            _check_data(path, item, f"{where}{key}.", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, (dict, list)):
                raise ConfigError(f"{path}: {where}{index} is a nested {type(item).__name__} inside a list; a "
                                  f"released emotion2vec config has only lists of numbers. {_RELEASE_HINT}")
            _check_data(path, item, f"{where}{index}.", depth + 1)
    elif isinstance(value, str):
        if "${" in value:
            raise ConfigError(f"{path}: {where.rstrip('.')} is {value[:80]!r}, an OmegaConf interpolation that "
                              f"funasr would resolve; give the value itself. {_RELEASE_HINT}")
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise ConfigError(f"{path}: {where.rstrip('.')} is a {type(value).__name__}; emotion2vec settings are "
                          f"numbers, booleans, strings or null. {_RELEASE_HINT}")


def _check_configuration_json(folder: Path) -> None:
    """The hub's index of the folder, if present: no remote code, and only the folder's own three files."""
    path = folder / "configuration.json"
    if not path.exists():
        return
    try:
        meta = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not JSON ({err.msg}, line {err.lineno}). {_RELEASE_HINT}") from None
    if not isinstance(meta, dict):
        raise ConfigError(f"{path} holds a JSON {type(meta).__name__}; the released file is an object. "
                          f"{_RELEASE_HINT}")

    def scan(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in CODE_KEYS:
                    _refuse_named(path, where, key)
                scan(item, f"{where}{key}.")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                scan(item, f"{where}{index}.")

    scan(meta, "")
    metas = meta.get("file_path_metas", {})

    def same(given: Any, released: Any, where: str) -> None:
        if isinstance(released, dict) and isinstance(given, dict):
            for key, item in given.items():
                if key not in released:
                    raise ConfigError(f"{path}: file_path_metas.{where}{key} is {str(item)[:80]!r}, a file the "
                                      f"released folder does not index; emoctl reads only the folder's own "
                                      f"{', '.join(FOLDER_FILES)}. {_RELEASE_HINT}")
                same(item, released[key], f"{where}{key}.")
        elif given != released:
            raise ConfigError(f"{path}: {('file_path_metas.' + where).rstrip('.')} is {str(given)[:80]!r}, but the "
                              f"released folder names {released!r} there; funasr would load that file instead of "
                              f"the one emoctl checks, so emoctl refuses it. {_RELEASE_HINT}")

    same(metas, RELEASED_FILE_METAS, "")


@dataclass(frozen=True)
class Emotion2VecFolder:
    """What emoctl takes from a user's folder: checked data and the path of the weights, nothing else."""

    root: Path
    model_conf: dict[str, Any]  # feature_encoder_spec rewritten by emoctl from the parsed literal
    labels: tuple[str, ...]  # tokens.txt, in output order
    unk_symbol: str
    split_with_space: bool

    @property
    def weights(self) -> Path:
        return self.root / "model.pt"


def read_folder(folder: Path) -> Emotion2VecFolder:
    """A user's emotion2vec folder as data (see the module docstring); a ConfigError naming the file and the key
    for anything else: a missing file, a key that asks for code or another file, a spec that is not a literal."""
    folder = Path(folder)
    missing = [name for name in FOLDER_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"emotion2vec model folder {folder} lacks {', '.join(missing)}; copy the whole released "
                          "folder (emotion2vec_plus_large or plus_base: config.yaml, model.pt, tokens.txt).")
    _check_configuration_json(folder)
    path = folder / "config.yaml"
    cfg = _load_yaml(path)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} is not an emotion2vec config (a mapping with model: Emotion2vec and a "
                          f"model_conf block). {_RELEASE_HINT}")
    for key in cfg:
        if key not in CONFIG_KEYS:
            _refuse_named(path, "", str(key))
            raise ConfigError(f"{path}: top-level key {key!r} is not part of a released emotion2vec config; emoctl "
                              f"reads only {', '.join(CONFIG_KEYS)}. {_RELEASE_HINT}")
    if cfg.get("model") != "Emotion2vec" or not isinstance(cfg.get("model_conf"), dict):
        raise ConfigError(f"{path} is not an emotion2vec config (model: Emotion2vec with a model_conf block). "
                          f"{_RELEASE_HINT}")
    if cfg.get("tokenizer", "CharTokenizer") != "CharTokenizer":
        raise ConfigError(f"{path}: tokenizer is {cfg['tokenizer']!r}; emotion2vec's is CharTokenizer. "
                          f"{_RELEASE_HINT}")
    model_conf = cfg["model_conf"]
    _check_data(path, model_conf, "model_conf.")
    audio = (model_conf.get("modalities") or {}).get("audio")
    if not isinstance(audio, dict):
        raise ConfigError(f"{path}: model_conf.modalities.audio is missing; emotion2vec scores audio. "
                          f"{_RELEASE_HINT}")
    layers = check_feature_encoder_spec(audio.get("feature_encoder_spec"), str(path))
    model_conf = {**model_conf, "modalities": {**model_conf["modalities"],
                                               "audio": {**audio, "feature_encoder_spec": repr(layers)}}}
    tokenizer_conf = cfg.get("tokenizer_conf") or {}
    if not isinstance(tokenizer_conf, dict):
        raise ConfigError(f"{path}: tokenizer_conf is a {type(tokenizer_conf).__name__}, not a mapping. "
                          f"{_RELEASE_HINT}")
    for key, value in tokenizer_conf.items():
        if key == "token_list" and value in (None, "tokens.txt"):
            continue
        if key not in TOKENIZER_CONF_KEYS[:2]:
            _refuse_named(path, "tokenizer_conf.", str(key))
            raise ConfigError(f"{path}: tokenizer_conf.{key} is not a released tokenizer setting; emoctl reads "
                              f"only {', '.join(TOKENIZER_CONF_KEYS[:2])}. {_RELEASE_HINT}")
    unk, split = tokenizer_conf.get("unk_symbol", "<unk>"), tokenizer_conf.get("split_with_space", True)
    if not isinstance(unk, str) or not isinstance(split, bool):
        raise ConfigError(f"{path}: tokenizer_conf.unk_symbol must be a string and split_with_space a boolean, "
                          f"got {unk!r} and {split!r}. {_RELEASE_HINT}")
    labels = tuple(line.strip() for line in _read_text(folder / "tokens.txt").splitlines() if line.strip())
    if len(labels) != len(RELEASED_LABELS) or len(set(labels)) != len(labels) or unk not in labels:
        raise ConfigError(f"{folder / 'tokens.txt'} has {len(labels)} labels ({len(set(labels))} distinct); "
                          f"emotion2vec's 9-class models have {len(RELEASED_LABELS)} distinct ones, "
                          f"{unk!r} among them ({', '.join(RELEASED_LABELS)}).")
    return Emotion2VecFolder(folder, model_conf, labels, unk, split)


def read_weights(path: Path) -> dict[str, Any]:
    """model.pt's tensors through torch's weights-only loader (memory-mapped where the format allows); a
    one-paragraph ConfigError for a truncated or damaged file and for one that holds pickled objects."""
    import pickle

    import torch

    def load(mmap: bool) -> Any:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            state = load(True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
            state = load(False)  # the legacy (non-zip) format cannot be memory-mapped
    except pickle.UnpicklingError as err:
        text = str(err)
        detail = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
        detail = " ".join(detail.split()).split(". Please use")[0][:200]
        if "Unsupported global" not in text:  # not a pickle of tensors: garbage, or another format
            reason = detail or " ".join(text.split())[:160]
            raise ConfigError(f"{path} is not a torch weights file (torch's weights-only loader: {reason}); it is "
                              "damaged or something else. Copy model.pt from the emotion2vec release again.") from None
        raise ConfigError(f"{path} holds pickled Python objects besides tensors, which torch's weights-only loader "
                          f"refuses ({detail}); loading it could run code, so emoctl does not. Use the model.pt of "
                          f"the emotion2vec release.") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        reason = " ".join(str(err).split(". ")[0].split())[:200]
        raise ConfigError(f"{path} is truncated or damaged and cannot be read as a torch weights file ({reason}); "
                          "copy model.pt from the emotion2vec release again.") from None
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model_state_dict", "model"):  # the wrappings funasr unwraps
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} does not hold a mapping of parameter names to tensors; copy model.pt from the "
                          f"emotion2vec release again.")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


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

    from emoctl.numerics import private_rng  # lazy: emoctl.numerics imports torch, loaded here only to write a folder

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
