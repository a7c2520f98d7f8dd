"""CosyVoice's ``cosyvoice.yaml`` read as data, and upstream's modules built from an allow-list of its layout.

Upstream reads the file with HyperPyYAML, whose tags construct objects while the file is parsed: ``!new:X``
instantiates X, ``!name:X`` binds function X, ``!apply:X`` *calls* X, ``!ref <key>`` refers to another key.
Parsing a downloaded folder that way runs whatever the file names, and a prefix allow-list does not help: an
upstream function such as ``matcha.utils.instantiators.instantiate_callbacks`` instantiates any hydra
``_target_`` it is handed.  So here:

* the file is parsed by PyYAML's safe loader with the four tags recorded as plain records (:class:`Tagged`,
  :class:`Ref`); any other tag (``!!python/object`` ...) is refused;
* what the file may expand to is bounded (:data:`MAX_FILE_BYTES`, :data:`MAX_NODES`, counted through anchors,
  aliases and ``!ref``), so a billion-laughs file is an error, not a hang;
* a hydra ``_target_`` anywhere in the file is refused;
* only ``llm``, ``flow``, ``hift`` and ``get_tokenizer`` are built, each against :data:`LAYOUT`: the exact class
  at every position of the released file, its exact argument names and each argument's type and range, all
  checked before any constructor runs.  The two ``!name:`` positions (``llm.sampling``, ``get_tokenizer``) bind
  emoctl's own fixed choice of function to type-checked literal arguments.  Every other key (the data pipeline,
  ``train_conf``, ``__set_seed*: !apply:``) is data that is never built.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import yaml

from emoctl.backbones.cosyvoice_instruct.upstream import import_upstream
from emoctl.errors import ConfigError

MAX_FILE_BYTES = 1 << 20  # the released cosyvoice.yaml is about 7 kB
MAX_NODES = 100_000  # values the file may expand to through aliases and !ref (the released file: under 1,000)
#: the release each config file name comes from, named in every error with the fix (use the file as released)
RELEASES = {"cosyvoice.yaml": "the CosyVoice-300M-Instruct release", "cosyvoice2.yaml": "the CosyVoice2-0.5B release"}


def _release(path: Path) -> str:
    return RELEASES.get(Path(path).name, "the release it came with")


def _fix(path: Path) -> str:
    return f"Use the {Path(path).name} of {_release(path)}."


@dataclass(frozen=True)
class Tagged:
    """A ``!new:``, ``!name:`` or ``!apply:`` node: what it would build and with which arguments."""

    kind: str  # "new", "name" or "apply"
    target: str  # dotted path of the class or function
    args: Any  # dict (keyword arguments), list (positional) or None


@dataclass(frozen=True)
class Ref:
    """A ``!ref <key>`` node."""

    expr: str


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with HyperPyYAML's tags recorded as data."""


# YAML 1.1 reads "1e-06" as a string; HyperPyYAML (ruamel, YAML 1.2) reads it as a float, as the release means.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _tagged(kind: str):
    def construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
        if isinstance(node, yaml.MappingNode):
            args: Any = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            args = loader.construct_sequence(node, deep=True)
        else:
            args = loader.construct_scalar(node) or None
        return Tagged(kind, suffix, args)

    return construct


for _kind in ("new", "name", "apply"):
    _Loader.add_multi_constructor(f"!{_kind}:", _tagged(_kind))
_Loader.add_constructor("!ref", lambda loader, node: Ref(str(loader.construct_scalar(node)).strip()))


# --------------------------------------------------------------------------------------------- reading

def _too_big(path: Path, what: str) -> ConfigError:
    return ConfigError(f"{path} expands to more than {MAX_NODES:,} values {what}; the released {path.name} has "
                       f"under 1,000, so this is not a model config (nested anchors or !ref chains that multiply). "
                       f"{_fix(path)}")


def _check_node_size(root: yaml.Node, path: Path) -> None:
    """Refuse a node graph whose tree (aliases followed) exceeds MAX_NODES, counted once per distinct node."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"{path} line {node.start_mark.line + 1}: an alias refers to the node that holds it "
                              f"(a recursive structure). {_fix(path)}")
        open_nodes.add(key)
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [item for pair in node.value for item in pair] if isinstance(node, yaml.MappingNode) else [])
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                raise _too_big(path, "once its aliases are followed")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root)


def _tag_error(path: Path, err: yaml.constructor.ConstructorError) -> ConfigError:
    line = f" line {err.problem_mark.line + 1}" if err.problem_mark is not None else ""
    tag = re.search(r"constructor for the tag '([^']*)'", str(err.problem))
    if tag is None:
        return ConfigError(f"cannot read {path}{line}: {' '.join(str(err).split())}. Copy {path.name} again "
                           f"from {_release(path)}.")
    name = tag.group(1)
    if "python/" in name:
        return ConfigError(f"{path}{line} has the YAML tag {name}, which builds or calls Python objects while the "
                           f"file is read; emoctl reads {path.name} as plain data and never runs what it names. "
                           f"{_fix(path)}")
    return ConfigError(f"{path}{line} has the tag {name}, which {path.name} does not use; emoctl reads plain YAML "
                       f"and HyperPyYAML's !new:, !name:, !apply: and !ref tags, as data. {_fix(path)}")


def _ref_key(ref: Ref) -> str | None:
    match = _REF.match(ref.expr)
    return match.group(1) if match else None


_REF = re.compile(r"^<([A-Za-z_][\w]*)>$")
# CosyVoice2's one arithmetic reference: ``!ref <chunk_size> * <token_mel_ratio>``, a product of two integer keys
_PRODUCT = re.compile(r"^<([A-Za-z_][\w]*)>\s*\*\s*<([A-Za-z_][\w]*)>$")


def _check_expanded_size(data: dict[str, Any], path: Path) -> None:
    """Refuse a file whose keys, each ``!ref <key>`` replaced by that key's value, exceed MAX_NODES in all."""
    sizes: dict[str, int] = {}
    open_keys: set[str] = set()

    def walk(value: Any) -> int:
        if isinstance(value, Ref):
            key = _ref_key(value)
            return key_size(key) if key in data else 1
        if isinstance(value, Tagged):
            return 1 + walk(value.args)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        total = 1
        for _, item in items:
            total += walk(item)
            if total > MAX_NODES:
                raise _too_big(path, "once its !ref references are followed")
        return total

    def key_size(key: str) -> int:
        if key not in sizes:
            if key in open_keys:
                raise ConfigError(f"{path}: !ref <{key}> refers, directly or through other keys, to itself. {_fix(path)}")
            open_keys.add(key)
            sizes[key] = walk(data[key])
            open_keys.discard(key)
        return sizes[key]

    if sum(key_size(key) for key in data) > MAX_NODES:
        raise _too_big(path, "once its !ref references are followed")


def _refuse_hydra_targets(value: Any, path: Path, where: str) -> None:
    """A ``_target_`` key is how hydra and OmegaConf-driven upstream helpers name what to instantiate."""
    if isinstance(value, Tagged):
        _refuse_hydra_targets(value.args, path, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                raise ConfigError(f"{path} {here}: a hydra _target_ names something to instantiate ({repr(item)[:80]}); "
                                  "emoctl builds only the released file's classes, from their own keys, and never "
                                  f"what a _target_ names. {_fix(path)}")
            _refuse_hydra_targets(item, path, here)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_hydra_targets(item, path, f"{where}[{i}]")


def read_config(path: Path) -> dict[str, Any]:
    """The file's top-level mapping, tags as records, its expansion bounded; one error naming the file otherwise."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path} is {path.stat().st_size:,} bytes; a {path.name} is a few kB (emoctl reads "
                              f"at most {MAX_FILE_BYTES:,}). {_fix(path)}")
        with open(path, encoding="utf-8") as f:
            loader = _Loader(f.read())
        try:
            node = loader.get_single_node()
            if node is None:
                raise ConfigError(f"{path} is empty; it is not a {path.name}. {_fix(path)}")
            _check_node_size(node, path)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.constructor.ConstructorError as err:
        raise _tag_error(path, err) from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a {path.name}. {_fix(path)}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {' '.join(str(err).split())}. Copy {path.name} again from "
                          f"{_release(path)}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a {path.name} (its top level is not a mapping). {_fix(path)}")
    _check_expanded_size(data, path)
    _refuse_hydra_targets(data, path, "")
    return data


def resolve(value: Any, config: dict[str, Any], path: Path, where: str, seen: tuple[str, ...] = ()) -> Any:
    """``value`` with every ``!ref <key>`` replaced by that top-level key's (resolved) value."""
    if isinstance(value, Ref):
        key = _ref_key(value)
        product = _PRODUCT.match(value.expr)
        if key is None and product is not None:
            factors = [resolve(Ref(f"<{name}>"), config, path, where, seen) for name in product.groups()]
            if any(isinstance(f, bool) or not isinstance(f, int) for f in factors):
                raise ConfigError(f"{path} {where}: !ref {value.expr!r} multiplies {factors[0]!r} by {factors[1]!r}; "
                                  "emoctl multiplies integer keys only. Write the value out.")
            return factors[0] * factors[1]
        if key is None:
            raise ConfigError(f"{path} {where}: !ref {value.expr!r} is neither a plain <key> reference nor a product "
                              "<a> * <b> of two; emoctl reads only those. Write the value out.")
        if key not in config:
            raise ConfigError(f"{path} {where}: !ref <{key}> names no top-level key. {_fix(path)}")
        if key in seen:
            raise ConfigError(f"{path} {where}: !ref <{key}> refers to itself. {_fix(path)}")
        return resolve(config[key], config, path, key, seen + (key,))
    if isinstance(value, Tagged):
        return Tagged(value.kind, value.target, resolve(value.args, config, path, where, seen))
    if isinstance(value, dict):
        return {k: resolve(v, config, path, f"{where}.{k}", seen) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, config, path, f"{where}[{i}]", seen) for i, v in enumerate(value)]
    return value


# ------------------------------------------------------------------------------ the layout, as types

def _describe(value: Any) -> str:
    if isinstance(value, Tagged):
        return f"!{value.kind}:{value.target}"
    if isinstance(value, Ref):
        return f"!ref {value.expr}"
    return f"{value!r} ({type(value).__name__})"


class Arg:
    """One argument's type: ``read`` returns the checked value or raises a ConfigError naming ``where``."""

    wants: str = ""

    def read(self, value: Any, where: str, path: Path) -> Any:
        raise NotImplementedError

    def refuse(self, value: Any, where: str, path: Path) -> ConfigError:
        call = ", a call emoctl never makes there" if isinstance(value, Tagged) else ""
        return ConfigError(f"{path} {where} is {_describe(value)}{call}; {_release(path)} gives {self.wants} there. {_fix(path)}")


@dataclass(frozen=True)
class Int(Arg):
    low: int = 1
    high: int = 1 << 16

    @property
    def wants(self) -> str:  # type: ignore[override]
        return f"an integer in [{self.low}, {self.high}]"

    def read(self, value: Any, where: str, path: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise self.refuse(value, where, path)
        return value


@dataclass(frozen=True)
class Float(Arg):
    low: float = 0.0
    high: float = 1.0

    @property
    def wants(self) -> str:  # type: ignore[override]
        return f"a number in [{self.low:g}, {self.high:g}]"

    def read(self, value: Any, where: str, path: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            raise self.refuse(value, where, path)  # NaN fails the range test too
        return float(value)


class Bool(Arg):
    wants = "true or false"

    def read(self, value: Any, where: str, path: Path) -> bool:
        if not isinstance(value, bool):
            raise self.refuse(value, where, path)
        return value


@dataclass(frozen=True)
class Str(Arg):
    choices: tuple[str, ...]

    @property
    def wants(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def read(self, value: Any, where: str, path: Path) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise self.refuse(value, where, path)
        return value


@dataclass(frozen=True)
class Text(Arg):
    """Any short string (a path the adapter replaces with the release's own, for instance)."""

    max_len: int = 4096

    @property
    def wants(self) -> str:  # type: ignore[override]
        return f"a string of at most {self.max_len} characters"

    def read(self, value: Any, where: str, path: Path) -> str:
        if not isinstance(value, str) or len(value) > self.max_len:
            raise self.refuse(value, where, path)
        return value


@dataclass(frozen=True)
class Optional(Arg):
    """An argument one released form gives and another leaves to upstream's default (CosyVoice2's encoder
    chunking, which only streaming inference reads)."""

    arg: Arg

    @property
    def wants(self) -> str:  # type: ignore[override]
        return self.arg.wants

    def read(self, value: Any, where: str, path: Path) -> Any:
        return self.arg.read(value, where, path)


@dataclass(frozen=True)
class IntList(Arg):
    item: Int = Int()
    max_len: int = 16

    @property
    def wants(self) -> str:  # type: ignore[override]
        return f"a list of 1 to {self.max_len} integers in [{self.item.low}, {self.item.high}]"

    def read(self, value: Any, where: str, path: Path) -> list[int]:
        if not isinstance(value, list) or not 1 <= len(value) <= self.max_len:
            raise self.refuse(value, where, path)
        return [self.item.read(v, f"{where}[{i}]", path) for i, v in enumerate(value)]


@dataclass(frozen=True)
class IntListList(Arg):
    item: IntList = IntList()
    max_len: int = 16

    @property
    def wants(self) -> str:  # type: ignore[override]
        return f"a list of 1 to {self.max_len} lists of integers"

    def read(self, value: Any, where: str, path: Path) -> list[list[int]]:
        if not isinstance(value, list) or not 1 <= len(value) <= self.max_len:
            raise self.refuse(value, where, path)
        return [self.item.read(v, f"{where}[{i}]", path) for i, v in enumerate(value)]


@dataclass(frozen=True)
class Record(Arg):
    """A plain mapping with exactly these keys (``istft_params``, a DictConfig's ``content``)."""

    fields: Mapping[str, Arg]

    @property
    def wants(self) -> str:  # type: ignore[override]
        return "a mapping of " + ", ".join(self.fields)

    def read(self, value: Any, where: str, path: Path) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.refuse(value, where, path)
        return _read_fields(value, self.fields, where, path, "mapping")


@dataclass(frozen=True)
class Module(Arg):
    """``!new:<target>`` with exactly these keyword arguments; ``check`` relates arguments upstream asserts on."""

    target: str
    fields: Mapping[str, Arg]
    check: Callable[[dict[str, Any]], str] | None = None  # "" when fine, else what is wrong
    note: str = ""
    factory: Callable[..., Any] | None = None  # emoctl's own builder for the checked arguments, instead of target

    @property
    def wants(self) -> str:  # type: ignore[override]
        return f"!new:{self.target}"

    def read(self, value: Any, where: str, path: Path) -> _Plan:
        if not isinstance(value, Tagged) or value.kind != "new" or value.target != self.target:
            got = _describe(value)
            raise ConfigError(f"{path} {where} is {got}; at {where} emoctl builds only {self.target}, the released "
                              f"file's class{self.note}. {_fix(path)}")
        if not isinstance(value.args, dict):
            raise ConfigError(f"{path} {where}: !new:{self.target} needs its arguments as a mapping of names, as "
                              f"the release writes them, not {_describe(value.args)}. {_fix(path)}")
        args = _read_fields(value.args, self.fields, where, path, self.target)
        problem = self.check(args) if self.check else ""
        if problem:
            raise ConfigError(f"{path} {where}: {problem}. {_fix(path)}")
        return _Plan(self.target, args, where, path, factory=self.factory)


@dataclass(frozen=True)
class DictConfigOf(Arg):
    """``!new:omegaconf.DictConfig`` whose ``content`` is a Record of plain scalars."""

    content: Record
    target: str = "omegaconf.DictConfig"

    @property
    def wants(self) -> str:  # type: ignore[override]
        return f"!new:{self.target} with content: {', '.join(self.content.fields)}"

    def read(self, value: Any, where: str, path: Path) -> _Plan:
        if (not isinstance(value, Tagged) or value.kind != "new" or value.target != self.target
                or not isinstance(value.args, dict) or set(value.args) != {"content"}):
            raise self.refuse(value, where, path)
        return _Plan(self.target, {"content": self.content.read(value.args["content"], f"{where}.content", path)},
                     where, path)


@dataclass(frozen=True)
class Function(Arg):
    """``!name:<target>``: emoctl's own fixed choice of ``target``, bound to type-checked literal arguments."""

    target: str
    fields: Mapping[str, Arg]

    @property
    def wants(self) -> str:  # type: ignore[override]
        return f"!name:{self.target}"

    def read(self, value: Any, where: str, path: Path) -> _Plan:
        if not isinstance(value, Tagged) or value.kind != "name" or value.target != self.target:
            raise ConfigError(f"{path} {where} is {_describe(value)}; at {where} emoctl binds only {self.target}, "
                              f"the released file's function, and no other function anywhere. {_fix(path)}")
        args = value.args if value.args is not None else {}
        if not isinstance(args, dict):
            raise self.refuse(value, where, path)
        return _Plan(self.target, _read_fields(args, self.fields, where, path, self.target), where, path,
                     bind=True)


def _read_fields(given: dict[str, Any], fields: Mapping[str, Arg], where: str, path: Path,
                 owner: str) -> dict[str, Any]:
    unknown = [str(k) for k in given if k not in fields]
    if unknown:
        raise ConfigError(f"{path} {where} has argument(s) {', '.join(unknown)}, which emoctl does not build {owner} "
                          f"with; the released file gives it exactly {', '.join(fields)}. {_fix(path)}")
    missing = [k for k in fields if k not in given and not isinstance(fields[k], Optional)]
    if missing:
        raise ConfigError(f"{path} {where} lacks {', '.join(missing)}, which the released file gives {owner} "
                          f"({'; '.join(f'{k}: {fields[k].wants}' for k in missing)}); without them upstream's "
                          f"defaults would quietly change the model. {_fix(path)}")
    return {k: spec.read(given[k], f"{where}.{k}", path) for k, spec in fields.items() if k in given}


@dataclass
class _Plan:
    """What one checked position builds: nothing is constructed until the whole section is checked."""

    target: str
    args: dict[str, Any]
    where: str
    path: Path
    bind: bool = False
    factory: Callable[..., Any] | None = None


# ---------------------------------------------------------------------------- the released layout

def _divides(width_key: str) -> Callable[[dict[str, Any]], str]:
    def check(args: dict[str, Any]) -> str:
        if args[width_key] % args["attention_heads"]:
            return (f"attention_heads {args['attention_heads']} does not divide {width_key} {args[width_key]} "
                    "(each head takes an equal share of the width; the release uses 16 heads of width 1024 in the "
                    "LLM and 8 of 512 in the flow)")
        return ""
    return check


def _same_lengths(*groups: tuple[str, ...]) -> Callable[[dict[str, Any]], str]:
    def check(args: dict[str, Any]) -> str:
        for group in groups:
            lengths = [len(args[k]) for k in group]
            if len(set(lengths)) > 1:
                return (f"{', '.join(group)} have lengths {', '.join(map(str, lengths))}; upstream pairs them up "
                        "one to one (zip), so they must be equally long")
        return ""
    return check


_SIZE, _VOCAB, _BLOCKS, _RATE = Int(), Int(1, 1 << 20), Int(1, 256), Float()
_ENCODER_ARGS: dict[str, Arg] = {
    "input_size": _SIZE, "output_size": _SIZE, "attention_heads": Int(1, 1024), "linear_units": _SIZE,
    "num_blocks": _BLOCKS, "dropout_rate": _RATE, "positional_dropout_rate": _RATE,
    "attention_dropout_rate": _RATE, "normalize_before": Bool(),
    "input_layer": Str(("linear", "linear_legacy", "embed", "conv1d2", "conv2d", "conv2d6", "conv2d8")),
    "pos_enc_layer_type": Str(("embed", "abs_pos", "rel_pos", "rel_pos_espnet", "no_pos", "abs_pos_whisper",
                               "embed_learnable_pe")),
    "selfattention_layer_type": Str(("selfattn", "rel_selfattn")),
    "use_cnn_module": Bool(), "macaron_style": Bool(), "use_dynamic_chunk": Bool(), "use_dynamic_left_chunk": Bool(),
    "static_chunk_size": Int(0, 1 << 16),
}
_CONFORMER = "cosyvoice.transformer.encoder.ConformerEncoder"


def _encoder(target: str, names: str) -> Module:
    """An encoder position with the arguments the released file gives it there (names, space-separated)."""
    return Module(target, {name: _ENCODER_ARGS[name] for name in names.split()}, _divides("output_size"))


LLM = Module("cosyvoice.llm.llm.TransformerLM", {
    "text_encoder_input_size": _SIZE, "llm_input_size": _SIZE, "llm_output_size": _SIZE,
    "text_token_size": _VOCAB, "speech_token_size": _VOCAB, "length_normalized_loss": Bool(), "lsm_weight": _RATE,
    "spk_embed_dim": _SIZE,
    "text_encoder": _encoder(_CONFORMER, "input_size output_size attention_heads linear_units num_blocks dropout_rate "
                             "positional_dropout_rate attention_dropout_rate normalize_before input_layer "
                             "pos_enc_layer_type selfattention_layer_type use_cnn_module macaron_style "
                             "use_dynamic_chunk use_dynamic_left_chunk static_chunk_size"),
    "llm": _encoder("cosyvoice.transformer.encoder.TransformerEncoder",
                    "input_size output_size attention_heads linear_units num_blocks dropout_rate "
                    "positional_dropout_rate attention_dropout_rate input_layer pos_enc_layer_type "
                    "selfattention_layer_type static_chunk_size"),
    "sampling": Function("cosyvoice.utils.common.ras_sampling", {
        "top_p": _RATE, "top_k": Int(1, 1 << 20), "win_size": Int(1, 1 << 16), "tau_r": _RATE}),
}, note=" (CosyVoice2's Qwen2LM is another model)")

FLOW = Module("cosyvoice.flow.flow.MaskedDiffWithXvec", {
    "input_size": _SIZE, "output_size": _SIZE, "spk_embed_dim": _SIZE, "output_type": Str(("mel",)),
    "vocab_size": _VOCAB, "input_frame_rate": Int(1, 1000), "only_mask_loss": Bool(),
    "encoder": _encoder(_CONFORMER, "output_size attention_heads linear_units num_blocks dropout_rate "
                        "positional_dropout_rate attention_dropout_rate normalize_before input_layer "
                        "pos_enc_layer_type selfattention_layer_type input_size use_cnn_module macaron_style"),
    "length_regulator": Module("cosyvoice.flow.length_regulator.InterpolateRegulator", {
        "channels": _SIZE, "sampling_ratios": IntList(Int(1, 64))}),
    "decoder": Module("cosyvoice.flow.flow_matching.ConditionalCFM", {
        "in_channels": _SIZE, "n_spks": Int(1, 1 << 16), "spk_emb_dim": _SIZE,
        "cfm_params": DictConfigOf(Record({
            "sigma_min": _RATE, "solver": Str(("euler",)), "t_scheduler": Str(("cosine",)),
            "training_cfg_rate": _RATE, "inference_cfg_rate": Float(0.0, 100.0), "reg_loss_type": Str(("l1",))})),
        "estimator": Module("cosyvoice.flow.decoder.ConditionalDecoder", {
            "in_channels": _SIZE, "out_channels": _SIZE, "channels": IntList(_SIZE), "dropout": _RATE,
            "attention_head_dim": _SIZE, "n_blocks": _BLOCKS, "num_mid_blocks": _BLOCKS, "num_heads": Int(1, 1024),
            "act_fn": Str(("gelu",))}),
    }),
})

HIFT = Module("cosyvoice.hifigan.generator.HiFTGenerator", {
    "in_channels": _SIZE, "base_channels": _SIZE, "nb_harmonics": Int(0, 1024), "sampling_rate": Int(1, 192_000),
    "nsf_alpha": _RATE, "nsf_sigma": _RATE, "nsf_voiced_threshold": Float(0.0, 1e4),
    "upsample_rates": IntList(Int(1, 64)), "upsample_kernel_sizes": IntList(Int(1, 256)),
    "istft_params": Record({"n_fft": Int(1, 1 << 14), "hop_len": Int(1, 1 << 14)}),
    "resblock_kernel_sizes": IntList(Int(1, 256)), "resblock_dilation_sizes": IntListList(IntList(Int(1, 256))),
    "source_resblock_kernel_sizes": IntList(Int(1, 256)),
    "source_resblock_dilation_sizes": IntListList(IntList(Int(1, 256))),
    "lrelu_slope": _RATE, "audio_limit": _RATE,
    "f0_predictor": Module("cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor", {
        "num_class": Int(1, 1024), "in_channels": _SIZE, "cond_channels": _SIZE}),
}, check=_same_lengths(("upsample_rates", "upsample_kernel_sizes", "source_resblock_kernel_sizes",
                        "source_resblock_dilation_sizes"), ("resblock_kernel_sizes", "resblock_dilation_sizes")))

TOKENIZER = Function("whisper.tokenizer.get_tokenizer", {
    "multilingual": Bool(), "num_languages": Int(1, 1000), "language": Str(("en",)),
    "task": Str(("transcribe",))})

LAYOUT: dict[str, Arg] = {"llm": LLM, "flow": FLOW, "hift": HIFT, "get_tokenizer": TOKENIZER}
"""Every top-level key the adapter builds, and what it may be: the released file's layout."""


def _construct(value: Any) -> Any:
    """Build a checked plan bottom-up: children first, then the position's own (allow-listed) class."""
    if isinstance(value, list):
        return [_construct(v) for v in value]
    if isinstance(value, dict):
        return {k: _construct(v) for k, v in value.items()}
    if not isinstance(value, _Plan):
        return value
    if value.factory is not None:
        return value.factory(**_construct(value.args))
    module_name, _, attribute = value.target.rpartition(".")
    try:
        target = getattr(import_upstream(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{value.path} {value.where} is {value.target}, which the installed upstream package "
                          f"lacks ({err}); install it with `make cosyvoice`.") from None
    args = _construct(value.args)
    if value.bind:
        return functools.partial(target, **args)
    try:
        return target(**args)
    except Exception as err:  # upstream's asserts and checks on checked arguments: say which position refused
        raise ConfigError(f"{value.path} {value.where}: upstream's {attribute} refused these arguments "
                          f"({type(err).__name__}: {' '.join(str(err).split()) or 'no message'}). {_fix(value.path)}") from None


@dataclass(frozen=True)
class CosyVoiceConfig:
    """A read ``cosyvoice.yaml``: the data, and the allow-listed sections built from it."""

    path: Path
    data: dict[str, Any]
    layout: ClassVar[Mapping[str, Arg]] = {}  # set below: LAYOUT

    @classmethod
    def read(cls, path: str | Path) -> CosyVoiceConfig:
        return cls(Path(path), read_config(Path(path)))

    def plan(self, key: str) -> _Plan:
        """The checked plan of a top-level key of :data:`LAYOUT` (refs resolved, nothing built)."""
        if key not in self.data:
            raise ConfigError(f"{self.path} has no '{key}' section; it is not the {self.path.name} of "
                              f"{_release(self.path)}. {_fix(self.path)}")
        return self.layout[key].read(resolve(self.data[key], self.data, self.path, key), key, self.path)

    def build(self, key: str) -> Any:
        """``llm``, ``flow`` or ``hift`` as upstream's module, every argument checked before any constructor."""
        return _construct(self.plan(key))

    def sampling(self) -> dict[str, Any]:
        """The release's ``ras_sampling`` arguments (top_p, top_k, win_size, tau_r), checked."""
        return dict(self.plan("llm").args["sampling"].args)

    def text_tokenizer(self) -> Any:
        """Whisper's tokenizer from ``get_tokenizer``'s checked arguments."""
        return _construct(self.plan("get_tokenizer"))()

    @property
    def allowed_special(self) -> str:
        value = resolve(self.data.get("allowed_special", "all"), self.data, self.path, "allowed_special")
        return Str(("all",)).read(value, "allowed_special", self.path)


CosyVoiceConfig.layout = LAYOUT
