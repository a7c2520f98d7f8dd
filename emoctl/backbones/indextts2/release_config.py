"""config.yaml of an IndexTTS2 release read as data, checked before any of upstream's classes sees it.

Upstream reads the file with OmegaConf and hands its sections straight to constructors
(``UnifiedVoice(**cfg.gpt)``) and its path keys straight to ``os.path.join(model_dir, ...)``.  A folder a user
brings from a hub is input, not code, so here the file is parsed with ``yaml.safe_load`` (no Python tags), every
OmegaConf interpolation (``${...}``, resolvers such as ``${oc.env:HOME}`` included) is refused, the ``gpt``
section's keys and types are checked against ``UnifiedVoice``'s own constructor (``semantic_codec``'s against
what ``RepCodec`` reads), ``emo_num`` must be eight positive integers, and every path key must name a file
inside the folder.  Each refusal is one
:class:`~emoctl.errors.ConfigError` naming config.yaml, the key, the value and what would be right.

Paths stay inside the folder by their *names*: a path key must be a relative path whose normalised form does
not climb out with ``..``.  Where a symlink inside the folder points is not checked, on purpose: a folder of
symlinks to big files kept elsewhere (shared weights, a test's damaged copy) is a legitimate layout, and the
person who made the symlink chose its target; a downloaded folder cannot make a name escape.
"""
from __future__ import annotations

import inspect
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from emoctl.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
"""The released config.yaml is about 3 kB; a larger file is not a release config."""
MAX_CONFIG_NODES = 100_000
"""Bound on the values config.yaml may expand to (YAML aliases can make a small file expand without limit)."""

#: upstream's emotion axes (happy, angry, sad, afraid, disgusted, melancholic, surprised, calm)
EMOTION_AXIS_COUNT = 8

#: path keys the adapter reads: (section or None, key) -> default file name when the key is absent
PATH_KEYS: dict[tuple[str | None, str], str | None] = {
    ("dataset", "bpe_model"): None,
    (None, "gpt_checkpoint"): "gpt.pth",
    (None, "w2v_stat"): None,
    (None, "s2mel_checkpoint"): "s2mel.pth",
    (None, "emo_matrix"): None,
    (None, "spk_matrix"): None,
}

#: keys of gpt.condition_module / gpt.emo_condition_module that upstream's UnifiedVoice reads, and their types
CONDITION_MODULE_KEYS: dict[str, type] = {"output_size": int, "linear_units": int, "attention_heads": int,
                                          "num_blocks": int, "input_layer": str, "perceiver_mult": int}
CONDITION_INPUT_LAYERS = ("linear", "conv2d", "conv2d2", "conv2d6", "conv2d8")  # upstream's ConformerEncoder
CONDITION_TYPES = ("perceiver", "conformer_perceiver", "conformer_encoder")
#: keys of semantic_codec that upstream's RepCodec reads (each a positive integer; absent ones take its defaults)
SEMANTIC_CODEC_KEYS = ("codebook_size", "hidden_size", "codebook_dim", "vocos_dim", "vocos_intermediate_dim",
                       "vocos_num_layers", "num_quantizers", "downsample_scale")
#: gpt keys that are sizes (>= 1); the others that are integers are token ids (>= 0)
POSITIVE_GPT_KEYS = ("layers", "model_dim", "heads", "max_text_tokens", "max_mel_tokens", "max_conditioning_inputs",
                     "mel_length_compression", "number_text_tokens", "number_mel_codes", "types",
                     "condition_num_latent")


@dataclass(frozen=True)
class ReleaseConfig:
    """config.yaml's checked content: plain data, the ``gpt`` keyword arguments, ``emo_num`` and the files."""

    data: dict[str, Any]
    gpt: dict[str, Any]
    emo_num: tuple[int, ...]
    files: dict[str, str]  # path key (``dataset.bpe_model``, ``gpt_checkpoint``, ...) -> normalised relative name


def _what(value: Any) -> str:
    """A value as the user wrote it, with its YAML type, cut short."""
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)
    return f"{text} ({kind})"


def load_yaml_data(path: Path) -> Any:
    """config.yaml parsed by ``yaml.safe_load`` (no tags that build objects), size-bounded, interpolations refused."""
    import yaml

    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is {size} bytes; an IndexTTS2 config.yaml is a few kB (at most "
                              f"{MAX_CONFIG_BYTES} bytes are read). Use the config.yaml of the IndexTeam/IndexTTS-2 "
                              "release.")
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except ConfigError:
        raise
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}. Copy config.yaml of the IndexTeam/IndexTTS-2 release "
                          "there again.") from None
    except yaml.YAMLError as err:  # also a !!python/... tag, which safe_load refuses
        said = " ".join(str(err).split())
        raise ConfigError(f"{path} is not plain YAML data: {said}. An IndexTTS2 config.yaml holds only "
                          "mappings, lists, numbers and strings (no tags).") from None
    _refuse_expansion_and_interpolation(path, data)
    return data


def _refuse_expansion_and_interpolation(path: Path, data: Any) -> None:
    """Walk every value once as OmegaConf would expand it: refuse ``${...}`` and trees beyond MAX_CONFIG_NODES."""
    stack: list[tuple[str, Any]] = [("", data)]
    seen = 0
    while stack:
        key, value = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise ConfigError(f"{path} expands to more than {MAX_CONFIG_NODES} values (YAML aliases that repeat "
                              "each other); an IndexTTS2 config.yaml has a few hundred. Use the released file.")
        if isinstance(value, dict):
            stack.extend((f"{key}.{k}" if key else str(k), v) for k, v in value.items())
            stack.extend((f"{key} (a key)", k) for k in value if isinstance(k, str))
        elif isinstance(value, list):
            stack.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str) and "${" in value:
            raise ConfigError(f"{path}: {key} = {_what(value)} is an OmegaConf interpolation; emoctl reads "
                              "config.yaml as plain data and resolves nothing (no ${...}, no resolvers such as "
                              "${oc.env:...}). Write the value itself.")


def relative_name(path: Path, key: str, value: Any) -> str:
    """``value`` as a file name inside the folder of config.yaml ``path``, or a ConfigError naming ``key``.

    Checks the name only (relative, no ``..`` left after normalisation), not where a symlink points."""
    right = "a file name relative to the release folder, such as 'bpe.model'"
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: {key} = {_what(value)}; it must be {right}.")
    if "\0" in value or "\\" in value:
        raise ConfigError(f"{path}: {key} = {_what(value)} has a NUL or a backslash; it must be {right}, "
                          "written with '/'.")
    if posixpath.isabs(value) or value.startswith("~"):
        raise ConfigError(f"{path}: {key} = {_what(value)} is an absolute path; every file config.yaml names must "
                          f"lie inside the release folder {path.parent}, so it must be {right}.")
    name = posixpath.normpath(value)
    if name == ".." or name.startswith("../"):
        raise ConfigError(f"{path}: {key} = {_what(value)} leads outside the release folder {path.parent}; every "
                          f"file config.yaml names must lie inside it, so it must be {right}.")
    if name == ".":
        raise ConfigError(f"{path}: {key} = {_what(value)} names the folder itself; it must be {right}.")
    return name


def gpt_defaults() -> dict[str, Any]:
    """``UnifiedVoice.__init__``'s keyword arguments and their defaults (read from upstream, so a new upstream
    argument is known here too); a default's type is the type the argument takes, None meaning a mapping."""
    from indextts.gpt.model_v2 import UnifiedVoice

    params = inspect.signature(UnifiedVoice.__init__).parameters
    return {name: p.default for name, p in params.items() if name != "self"}


def _typed(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_gpt(path: Path, gpt: Any) -> dict[str, Any]:
    """The ``gpt`` section as ``UnifiedVoice`` keyword arguments, every key and type checked against its
    constructor (an unknown key would be a TypeError; a wrong type a crash deep in torch)."""
    if not isinstance(gpt, dict):
        raise ConfigError(f"{path}: gpt = {_what(gpt)}; it must be a mapping of UnifiedVoice's arguments "
                          "(layers, model_dim, heads, ...), as in the released config.yaml.")
    defaults = gpt_defaults()
    known = {name: None if default is None else type(default) for name, default in defaults.items()}
    unknown = sorted(str(k) for k in gpt if k not in known)
    if unknown:
        raise ConfigError(f"{path}: gpt has key(s) {', '.join(unknown)} that upstream's UnifiedVoice does not take; "
                          f"its arguments are {', '.join(known)}.")
    for key, value in gpt.items():
        kind = known[key]
        if kind is None:
            _check_condition_module(path, f"gpt.{key}", value)
        elif not _typed(value, kind):
            raise ConfigError(f"{path}: gpt.{key} = {_what(value)}; it must be {_article(kind)} (UnifiedVoice's "
                              f"default is {defaults[key]!r}).")
        elif kind is int and key in POSITIVE_GPT_KEYS and value < 1:
            raise ConfigError(f"{path}: gpt.{key} = {value}; it must be a positive integer.")
        elif kind is int and value < 0:
            raise ConfigError(f"{path}: gpt.{key} = {value}; a token id must be a non-negative integer.")
    width, heads = gpt.get("model_dim", defaults["model_dim"]), gpt.get("heads", defaults["heads"])
    if width % heads:
        raise ConfigError(f"{path}: gpt.heads = {heads} does not divide gpt.model_dim = {width}; the GPT splits its "
                          "width evenly across heads (the release has 1280 and 20).")
    condition_type = gpt.get("condition_type", defaults["condition_type"])
    if condition_type not in CONDITION_TYPES:
        raise ConfigError(f"{path}: gpt.condition_type = {_what(condition_type)}; it must be one of "
                          f"{', '.join(CONDITION_TYPES)} (the release has conformer_perceiver).")
    needed = ["emo_condition_module"] + (["condition_module"] if condition_type.startswith("conformer") else [])
    for key in needed:
        if gpt.get(key) is None:
            raise ConfigError(f"{path}: gpt.{key} is missing; with condition_type {condition_type} UnifiedVoice "
                              f"reads its {', '.join(CONDITION_MODULE_KEYS)}.")
    return dict(gpt)


def _article(kind: type) -> str:
    return {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}.get(
        kind, kind.__name__)


def _check_condition_module(path: Path, key: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key} = {_what(value)}; it must be a mapping of "
                          f"{', '.join(CONDITION_MODULE_KEYS)}, as in the released config.yaml.")
    unknown = sorted(str(k) for k in value if k not in CONDITION_MODULE_KEYS)
    missing = [k for k in CONDITION_MODULE_KEYS if k not in value]
    if unknown or missing:
        said = "; ".join(s for s in (f"unknown {', '.join(unknown)}" if unknown else "",
                                     f"missing {', '.join(missing)}" if missing else "") if s)
        raise ConfigError(f"{path}: {key} must have exactly the keys UnifiedVoice reads "
                          f"({', '.join(CONDITION_MODULE_KEYS)}): {said}.")
    for name, kind in CONDITION_MODULE_KEYS.items():
        item = value[name]
        if not _typed(item, kind) or (kind is int and item < 1):
            raise ConfigError(f"{path}: {key}.{name} = {_what(item)}; it must be "
                              f"{'a positive integer' if kind is int else 'a string'}.")
    if value["input_layer"] not in CONDITION_INPUT_LAYERS:
        raise ConfigError(f"{path}: {key}.input_layer = {_what(value['input_layer'])}; it must be one of "
                          f"{', '.join(CONDITION_INPUT_LAYERS)} (the release has conv2d2).")
    if value["output_size"] % value["attention_heads"]:
        raise ConfigError(f"{path}: {key}.attention_heads = {value['attention_heads']} does not divide "
                          f"{key}.output_size = {value['output_size']}.")


def check_semantic_codec(path: Path, codec: dict) -> None:
    """The ``semantic_codec`` section: keys RepCodec reads (it ignores others silently), positive integers."""
    unknown = sorted(str(k) for k in codec if k not in SEMANTIC_CODEC_KEYS)
    if unknown:
        raise ConfigError(f"{path}: semantic_codec has key(s) {', '.join(unknown)} that upstream's RepCodec does not "
                          f"read; it reads {', '.join(SEMANTIC_CODEC_KEYS)}.")
    for key, value in codec.items():
        if not _typed(value, int) or value < 1:
            raise ConfigError(f"{path}: semantic_codec.{key} = {_what(value)}; it must be a positive integer.")


def check_emo_num(path: Path, emo_num: Any) -> tuple[int, ...]:
    """``emo_num``: how many rows of the emotion tables belong to each of the eight emotion axes."""
    right = (f"a list of {EMOTION_AXIS_COUNT} positive integers, the emotion tables' rows per emotion axis "
             "(the release has [3, 17, 2, 8, 4, 5, 10, 24])")
    if not isinstance(emo_num, list) or len(emo_num) != EMOTION_AXIS_COUNT:
        raise ConfigError(f"{path}: emo_num = {_what(emo_num)}; it must be {right}.")
    for i, n in enumerate(emo_num):
        if not _typed(n, int) or n < 1:
            raise ConfigError(f"{path}: emo_num[{i}] = {_what(n)}; emo_num must be {right}.")
    return tuple(emo_num)


def read_release_config(path: Path) -> ReleaseConfig:
    """config.yaml at ``path`` read and checked as data (see the module's docstring); names no file outside
    ``path.parent`` and only files that exist."""
    data = load_yaml_data(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds {_what(data)}, not a mapping; it is not an IndexTTS2 config.yaml.")
    for key in ("gpt", "s2mel", "semantic_codec", "emo_num", "dataset"):
        if key not in data:
            raise ConfigError(f"{path} has no '{key}' section; it is not an IndexTTS2 config (IndexTTS 1.x and 2.5 "
                              "use other layouts).")
    for key in ("s2mel", "semantic_codec", "dataset"):
        if not isinstance(data[key], dict):
            raise ConfigError(f"{path}: {key} = {_what(data[key])}; it must be a mapping, as in the released "
                              "config.yaml.")
    gpt = check_gpt(path, data["gpt"])
    check_semantic_codec(path, data["semantic_codec"])
    emo_num = check_emo_num(path, data["emo_num"])
    files: dict[str, str] = {}
    for (section, key), default in PATH_KEYS.items():
        where: Mapping[str, Any] = data[section] if section else data
        label = f"{section}.{key}" if section else key
        if key not in where and default is None:
            raise ConfigError(f"{path} has no {label}; it must name the file inside the release folder (the "
                              "released config.yaml has it).")
        name = relative_name(path, label, where.get(key, default))
        if not (path.parent / name).is_file():
            raise ConfigError(f"{path}: {label} = {name!r}, but {path.parent / name} is missing; copy that file "
                              "there from the IndexTeam/IndexTTS-2 release, or fix the name.")
        files[label] = name
    return ReleaseConfig(data, gpt, emo_num, files)
