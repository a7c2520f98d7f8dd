"""CosyVoice's ``cosyvoice.yaml`` read as data, and upstream's model classes built from it.

Upstream reads the file with HyperPyYAML, whose tags construct objects while the file is parsed: ``!new:X``
instantiates class X, ``!name:X`` binds function X, ``!apply:X`` *calls* X (the release uses it to seed RNGs),
``!ref <key>`` refers to another key.  Parsing a folder the user downloaded that way runs whatever the file
names.  Here the tags become plain records (:class:`Tagged`, :class:`Ref`); :func:`build` then constructs only
the sections the adapter needs (``llm``, ``flow``, ``hift``, ``get_tokenizer``), and only from upstream's own
packages (:data:`ALLOWED_TARGETS`).  ``!apply:`` is never executed.  A target outside the allowed packages is
refused with the key that names it.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from emoctl.backbones.cosyvoice_instruct.upstream import import_upstream
from emoctl.errors import ConfigError

#: module prefixes (or exact names) a cosyvoice.yaml may construct from: upstream's packages and the two
#: third-party names the released file uses.
ALLOWED_TARGETS = ("cosyvoice.", "matcha.", "omegaconf.DictConfig", "whisper.tokenizer.get_tokenizer")


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


def read_config(path: Path) -> dict[str, Any]:
    """The file's top-level mapping, tags as records; one error naming the file if it is not such a file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader that builds nothing
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}. Copy cosyvoice.yaml again from the "
                          "CosyVoice-300M-Instruct release.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a cosyvoice.yaml (its top level is not a mapping).")
    return data


_REF = re.compile(r"^<([A-Za-z_][\w]*)>$")


def resolve(value: Any, config: dict[str, Any], where: str, seen: tuple[str, ...] = ()) -> Any:
    """``value`` with every ``!ref <key>`` replaced by that top-level key's (resolved) value."""
    if isinstance(value, Ref):
        match = _REF.match(value.expr)
        if match is None:
            raise ConfigError(f"cosyvoice.yaml {where}: !ref {value.expr!r} is not a plain <key> reference; emoctl "
                              "reads references to top-level keys only. Write the value out.")
        key = match.group(1)
        if key not in config:
            raise ConfigError(f"cosyvoice.yaml {where}: !ref <{key}> names no top-level key.")
        if key in seen:
            raise ConfigError(f"cosyvoice.yaml {where}: !ref <{key}> refers to itself.")
        return resolve(config[key], config, key, seen + (key,))
    if isinstance(value, Tagged):
        return Tagged(value.kind, value.target, resolve(value.args, config, where, seen))
    if isinstance(value, dict):
        return {k: resolve(v, config, f"{where}.{k}", seen) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, config, f"{where}[{i}]", seen) for i, v in enumerate(value)]
    return value


def _import(target: str, where: str) -> Any:
    if not any(target == allowed or (allowed.endswith(".") and target.startswith(allowed))
               for allowed in ALLOWED_TARGETS):
        raise ConfigError(f"cosyvoice.yaml {where} names {target!r}; emoctl builds only upstream's own classes "
                          f"({', '.join(ALLOWED_TARGETS)}). Use the cosyvoice.yaml of the CosyVoice-300M-Instruct "
                          "release.")
    module_name, _, attribute = target.rpartition(".")
    try:
        return getattr(import_upstream(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cosyvoice.yaml {where} names {target!r}, which upstream's installed package does not "
                          f"have ({err}).") from None


def build(value: Any, where: str) -> Any:
    """Construct a resolved section: ``!new:`` instantiates, ``!name:`` binds a partial, ``!apply:`` is refused."""
    if isinstance(value, Tagged):
        if value.kind == "apply":
            raise ConfigError(f"cosyvoice.yaml {where} is an !apply:{value.target} call; emoctl never runs calls "
                              "from a model's config file.")
        target = _import(value.target, where)
        args = build(value.args, where)
        if value.kind == "name":
            return functools.partial(target, **(args or {}))
        try:
            return target(*args) if isinstance(args, list) else target(**(args or {}))
        except TypeError as err:
            raise ConfigError(f"cosyvoice.yaml {where}: {value.target} does not take these arguments ({err}).") from None
    if isinstance(value, dict):
        return {k: build(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [build(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def section(config: dict[str, Any], key: str, path: Path) -> Any:
    """A top-level section, refs resolved, not yet built; an error naming the file if it is missing."""
    if key not in config:
        raise ConfigError(f"{path} has no '{key}' section; it is not the cosyvoice.yaml of a CosyVoice-300M "
                          "release.")
    return resolve(config[key], config, key)
