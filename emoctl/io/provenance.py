"""What made a report: digests of its inputs, its protocol and seeds, package versions, the machine.

A table that cannot say which SAE, feature sets or recognizer produced it cannot be checked against another run
of it. Every report writes :func:`collect`'s record into its ``*_info.json`` (key ``"provenance"``) and
:func:`provenance_line` under its title; ``emoctl report diff A B`` (:mod:`emoctl.reports.diff`) names what
differs.

Digests are content digests (blake2b-128): a folder's is over its files' relative paths and bytes, a store's over
its committed shards' CRC-32s (the store already checksums its bytes, so a 100 GB store is not re-read), a
backbone's is its ``backbone_id`` (a digest of its weights, computed once per load by the adapter).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import torch

from emoctl.errors import ConfigError
from emoctl.io.fsio import atomic_write_bytes

PACKAGES = ("emoctl", "torch", "transformers", "lightning", "numpy")
INPUT_LABELS = {"backbone": "backbone", "sae": "SAE", "feature_sets": "feature sets", "layer": "EmoSteer layer",
                "low_rank": "low-rank layer", "sft": "SFT backbone", "recognizer": "recognizer", "store": "store",
                "corpus": "corpus", "directions": "directions"}
_CHUNK = 1 << 22
_SKIPPED_PARTS = {"tensorboard", "__pycache__"}  # logs written beside a model are not the model


def digest_path(path: str | os.PathLike) -> str:
    """Content digest of a file or folder (every file below it, by relative path, in sorted order)."""
    path = Path(path).resolve()
    if not path.exists():
        raise ConfigError(f"cannot digest {path} for the report's provenance: it does not exist.")
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not _SKIPPED_PARTS & set(p.relative_to(path).parts)
        and not p.name.startswith("."))
    stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _digest_files(str(path), stats)


@lru_cache(maxsize=64)
def _digest_files(root: str, stats: tuple[tuple[str, int, int], ...]) -> str:
    """Cached on (path, size, mtime) of every file, so a report that names one input twice hashes it once."""
    h = hashlib.blake2b(digest_size=16)
    for name, _, _ in stats:
        h.update(os.path.relpath(name, root).encode() + b"\0")
        try:
            with open(name, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except OSError as err:
            raise ConfigError(f"cannot read {name} to digest it for the report's provenance: {err}.") from None
    return h.hexdigest()


def corpus_checksum(root: str | os.PathLike) -> str:
    """The checksum a corpus build records over every wav and transcript (``corpus.json``); an ESD copy without
    one is digested by its file list and sizes."""
    root = Path(root)
    try:
        value = json.loads((root / "corpus.json").read_text())["checksum"]["value"]
        return str(value)[:32]
    except (OSError, ValueError, KeyError, TypeError):
        listing = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())
        return hashlib.blake2b(json.dumps(listing).encode(), digest_size=16).hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    commit = _emoctl_commit()
    if commit:
        out["emoctl_commit"] = commit
    return out


@lru_cache(maxsize=1)
def _emoctl_commit() -> str | None:
    """The git commit of an emoctl checkout (``+dirty`` when its tracked code or recipes differ; committed models
    under emoctl/assets are named by their own digests); None outside
    git. Read when this module is imported, i.e. when the command starts: the code that ran, not the checkout
    at the report's end."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "emoctl", "data_modules", "recipes", "pyproject.toml", ":(exclude)emoctl/assets"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine(device: str | torch.device | None = None) -> dict[str, Any]:
    """The processor the numbers were computed on, the thread count and the determinism settings in force."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = torch.device(device) if device is not None else torch.device("cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "device": str(device), "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def digest_paths(paths: str | os.PathLike | list | tuple) -> str:
    """:func:`digest_path` of one path, or one digest over several (e.g. the feature-set files a report read)."""
    if isinstance(paths, (list, tuple)):
        h = hashlib.blake2b(digest_size=16)
        for p in sorted(str(p) for p in paths):
            h.update(Path(p).name.encode() + b"\0" + digest_path(p).encode())
        return h.hexdigest()
    return digest_path(paths)


def collect(*, backbone: Any | None = None, paths: Mapping[str, Any] | None = None,
            stores: Mapping[str, Any] | None = None, corpus: str | os.PathLike | None = None,
            recognizer: tuple[str, str | os.PathLike | None] | None = None, protocol: Mapping[str, Any] | None = None, seeds: Mapping[str, Any] | None = None,
            device: str | torch.device | None = None) -> dict[str, Any]:
    """The provenance record of one report.

    Args:
        backbone: The loaded backbone (its ``backbone_id`` is the digest of its weights).
        paths: Model folders or files (or lists of files) by role (``sae``, ``feature_sets``, ``layer`` ...);
            None entries are left out.
        stores: Activation stores by role (opened: each one's ``content_digest()`` is recorded).
        corpus: The ESD-shaped corpus folder (its recorded checksum: eSpeak NG versions can change its audio).
        recognizer: (kind, folder of its weights or None when unknown) of the emotion recognizer.
        protocol: The evaluation protocol as plain data (speakers, sentences, sampling ...).
        seeds: Every seed the report used, by name.
        device: Where the backbone ran.
    """
    inputs: dict[str, dict[str, str]] = {}
    if backbone is not None:
        inputs["backbone"] = {"id": str(backbone.backbone_id), "digest": str(backbone.backbone_id).split("@")[-1]}
        device = device if device is not None else getattr(backbone, "device", None)
    for role, path in (paths or {}).items():
        if path is not None:
            shown = [str(p) for p in path] if isinstance(path, (list, tuple)) else str(path)
            inputs[role] = {"path": shown, "digest": digest_paths(path)}
    for role, store in (stores or {}).items():
        if store is not None:
            inputs[role] = {"path": str(store.root), "digest": store.content_digest()}
    if corpus is not None:
        inputs["corpus"] = {"path": str(corpus), "digest": corpus_checksum(corpus)}
    if recognizer is not None:
        kind, where = recognizer
        inputs["recognizer"] = {"kind": kind, "path": str(where) if where else None,
                                "digest": digest_path(where) if where else "unknown"}
    return {"inputs": inputs, "protocol": dict(protocol or {}), "seeds": dict(seeds or {}),
            "packages": package_versions(), "machine": machine(device)}


def provenance_line(record: Mapping[str, Any], info_file: str) -> str:
    """One Markdown line for under a report's title: short digests, seeds, versions, machine."""
    inputs = ", ".join(f"{INPUT_LABELS.get(role, role)} `{entry['digest'][:12]}`"
                       for role, entry in record["inputs"].items())
    seeds = ", ".join(f"{k} {v}" for k, v in record["seeds"].items()) or "none"
    packages = record["packages"]
    versions = ", ".join(f"{k} {packages[k]}" for k in PACKAGES if k in packages)
    if "emoctl_commit" in packages:
        versions += f" (commit {packages['emoctl_commit']})"
    m = record["machine"]
    where = m["gpu"] or f"{m['cpu']}, {m['torch_threads']} threads"
    return f"*Made with* {inputs}; seeds: {seeds}; {versions}; on {where}. Full record: `{info_file}`."


def stamp(markdown: str, record: Mapping[str, Any], info_file: str) -> str:
    """``markdown`` with the provenance line (and a blank line) inserted right after its first title line."""
    lines = markdown.split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("# ")), -1) + 1
    return "\n".join(lines[:at] + ["", provenance_line(record, info_file)] + lines[at:])


def write_report_info(path: Path, info: Mapping[str, Any], record: Mapping[str, Any],
                      outputs: list[Path]) -> None:
    """Write a report's ``_info.json`` last: its own facts, the provenance record, and a digest of each result
    file it wrote (so ``emoctl report diff`` can say whether the results, not only the inputs, agree)."""

    body = {**info, "provenance": dict(record),
            "outputs": {p.name: digest_path(p) for p in outputs}}
    atomic_write_bytes(path, (json.dumps(body, indent=1, default=str) + "\n").encode())


_emoctl_commit()  # at start-up (see its docstring)
