"""``emoctl report diff``: which inputs, settings and results of two reports differ, from their records."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from emoctl.errors import ConfigError
from emoctl.io.provenance import digest_path



def read_info(path: Path) -> dict[str, Any]:
    """A report record, checked for the shape ``write_report_info`` gives it: an object whose ``provenance`` and
    ``outputs`` (when present) are objects too, so a hand-edited record is named rather than half-compared."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the report record {path}: {err}.") from None
    if not isinstance(info, dict):
        raise ConfigError(f"the report record {path} holds a JSON {_json_kind(info)}, not an object with "
                          "`provenance` and `outputs`; rerun the report that writes it, or undo the edit.")
    for key in ("provenance", "outputs"):
        if info.get(key) is not None and not isinstance(info[key], dict):
            raise ConfigError(f"the report record {path}: `{key}` is a JSON {_json_kind(info[key])}, not an "
                              "object; rerun the report that writes it, or undo the edit.")
    for name, digest in (info.get("outputs") or {}).items():
        if not isinstance(digest, str) or Path(name).name != name:
            raise ConfigError(f"the report record {path}: `outputs` maps {name!r} to {json.dumps(digest)}; each "
                              "entry must be a file name beside the record and its digest string. Rerun the report "
                              "that writes it, or undo the edit.")
    return info


def _json_kind(value: Any) -> str:
    """JSON's name for a decoded value's type (a Python ``str`` is a JSON string)."""
    return {str: "string", bool: "boolean", int: "number", float: "number", list: "list", type(None): "null"}.get(
        type(value), type(value).__name__)


def info_files(folder: Path) -> dict[str, Path]:
    """Every ``*_info.json`` below a report folder, by path relative to it (a single file maps to its name)."""
    if folder.is_file():
        return {folder.name: folder}
    if not folder.is_dir():
        raise ConfigError(f"{folder} is neither a report folder nor an _info.json file.")
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*_info.json"))}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def diff_records(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """What differs between two provenance records, one line per key (inputs by digest, then the rest)."""
    flat_a, flat_b = _flatten(dict(a)), _flatten(dict(b))
    lines = []
    for key in sorted(set(flat_a) | set(flat_b), key=lambda k: (not k.startswith("inputs."), k)):
        if key.startswith("inputs.") and not key.endswith((".digest", ".id", ".kind")):
            continue  # a path is where an input lay, not what it was
        va, vb = flat_a.get(key, "(absent)"), flat_b.get(key, "(absent)")
        if va != vb:
            lines.append(f"{key}: {json.dumps(va, default=str)} -> {json.dumps(vb, default=str)}")
    return lines


def diff_reports(a: str, b: str) -> int:
    """Print which inputs of two report folders (or two ``_info.json`` files) differ; 0 if none, 1 otherwise."""
    if Path(a).is_file() and Path(b).is_file():  # two records: compare them whatever their names
        files_a, files_b = {"report": Path(a)}, {"report": Path(b)}
    else:
        files_a, files_b = info_files(Path(a)), info_files(Path(b))
    if not files_a and not files_b:
        raise ConfigError(f"neither {a} nor {b} holds a report record (*_info.json); reports written by emoctl "
                          "record what made them there.")
    differ = 0
    for name in sorted(set(files_a) | set(files_b)):
        if name not in files_a or name not in files_b:
            print(f"{name}: only in {a if name in files_a else b}")
            differ = 1
            continue
        info_a, info_b = read_info(files_a[name]), read_info(files_b[name])
        record_a, record_b = info_a.get("provenance"), info_b.get("provenance")
        if record_a is None or record_b is None:
            print(f"{name}: no provenance in {files_a[name] if record_a is None else files_b[name]} "
                  "(written before reports recorded it; rerun that report)")
            differ = 1
            continue
        lines = diff_records(record_a, record_b)
        results = _outputs_differ(info_a, info_b) + _edited_outputs(files_a[name]) + _edited_outputs(files_b[name])
        if not lines and not results:
            print(f"{name}: same inputs, protocol, seeds, packages and machine; same result files")
            continue
        differ = 1
        print(f"{name}: " + ("same inputs and settings" if not lines else f"{len(lines)} difference(s)"))
        for line in lines:
            print(f"  {line}")
        for line in results:
            print(f"  {line}")
    return differ


def _outputs_differ(info_a: Mapping[str, Any], info_b: Mapping[str, Any]) -> list[str]:
    """The report's result files (digests recorded beside its provenance) that differ."""
    out_a, out_b = info_a.get("outputs") or {}, info_b.get("outputs") or {}
    return [f"{name}: " + ("results differ" if name in out_a and name in out_b else
                           f"only in {'the first' if name in out_a else 'the second'}")
            for name in sorted(set(out_a) | set(out_b)) if out_a.get(name) != out_b.get(name)]


def _edited_outputs(info_path: Path) -> list[str]:
    """Result files beside a report record whose bytes no longer match the digest recorded when it was written."""
    recorded = read_info(info_path).get("outputs") or {}
    return [f"{info_path.parent / name}: changed since the report wrote it" for name, digest in recorded.items()
            if (info_path.parent / name).is_file() and digest_path(info_path.parent / name) != digest]
