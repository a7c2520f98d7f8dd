"""The store's JSON files: ``manifest.json`` (attributes and a consolidated
shard list) and one ``index-rNNNN.json`` per writer rank (that rank's
committed shards).

The rank indexes are the truth: a shard, and every utterance in it, is
committed exactly when its rank's index lists it.  Each rank replaces only its
own index, so ranks never coordinate.  ``consolidate_store`` copies the union
into ``manifest.json`` and ``utterances.parquet`` for readers without emoctl;
emoctl's own reader always unions the indexes, so a stale manifest is harmless.
"""
from __future__ import annotations

import getpass
import json
import re
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from emoctl import __version__
from emoctl.errors import StoreError, StoreNotFoundError
from emoctl.io.fsio import atomic_write_bytes
from emoctl.store.spec import StoreSpec

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
UTTERANCES_NAME = "utterances.parquet"
SHARD_DIR = "shards"
_INDEX_RE = re.compile(r"^index-r(\d+)\.json$")


def shard_stem(rank: int, seq: int) -> str:
    """File stem of shard ``seq`` of ``rank``; names sort in global row order."""
    return f"r{rank:04d}-s{seq:06d}"


def index_path(root: Path, rank: int) -> Path:
    return Path(root) / f"index-r{rank:04d}.json"


@dataclass(frozen=True)
class ShardRecord:
    """One committed shard: where it is, how many rows, and checksums to verify it."""

    rank: int
    seq: int
    rows: int
    num_utterances: int
    bytes: int
    """Size of the .npy file; a reader refuses a shard of another size."""
    crc32: int
    """CRC-32 of the row bytes (the .npy after its header)."""
    utterances_crc32: int
    """CRC-32 of the whole utterance parquet file."""

    @property
    def path(self) -> str:
        """The .npy file, relative to the store root."""
        return f"{SHARD_DIR}/{shard_stem(self.rank, self.seq)}.npy"

    @property
    def utterances_path(self) -> str:
        """This shard's utterance table (``row_in_shard`` offsets), relative to the store root."""
        return f"{SHARD_DIR}/{shard_stem(self.rank, self.seq)}.utts.parquet"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "utterances": self.utterances_path, **asdict(self)}

    @classmethod
    def from_json(cls, entry: dict[str, Any], source: Path) -> ShardRecord:
        try:
            return cls(**{name: int(entry[name]) for name in cls.__dataclass_fields__})
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(
                f"{source} has a malformed shard entry {entry!r} ({err!r}). The file was edited or damaged; "
                "restore it from a backup or re-harvest that rank."
            ) from err


def new_manifest(spec: StoreSpec, producer: str | None = None) -> dict[str, Any]:
    """The manifest of a store with no shards yet; a named ``producer`` (harvest, synthetic) marks the store
    finished when it has written everything (:func:`mark_finished`), and readers refuse it until then."""
    return {
        "format_version": FORMAT_VERSION,
        **spec.attributes(),
        "created": {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "emoctl_version": __version__,
            "host": socket.gethostname(),
            "user": _user(),
            "extra": spec.extra,
        },
        "num_rows": 0,
        "num_utterances": 0,
        "shards": [],
        "utterances": None,
        **({"producer": {"name": producer, "finished": None}} if producer else {}),
    }


def mark_finished(root: Path, finished: bool = True) -> None:
    """Record that the store's producer wrote everything it meant to (or, ``finished=False``, that it is
    writing again); a store without a named producer is left as it is."""
    manifest = read_manifest(root)
    producer = manifest.get("producer")
    if not producer:
        return
    producer["finished"] = ({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "num_rows": manifest.get("num_rows"), "num_utterances": manifest.get("num_utterances")}
                            if finished else None)
    write_manifest(root, manifest)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def read_manifest(root: Path) -> dict[str, Any]:
    """Load and check ``manifest.json``; the errors say what is wrong and how to fix it."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise StoreNotFoundError(
            f"no activation store at {root}: {path} does not exist. Point to a directory that holds a "
            "manifest.json, or create a store with emoctl.store.ActivationWriter (a harvest does this)."
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(
            f"the store manifest {path} is not valid JSON ({err}). It was damaged or edited by hand; restore "
            "it from a backup. The shards and index-r*.json files are separate, so a manifest rewritten with "
            "the right d_model and dtype recovers the rows."
        ) from err
    if not isinstance(manifest, dict):
        raise StoreError(f"the store manifest {path} holds {type(manifest).__name__}, not a JSON object; restore it.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(
            f"{path} has format_version={version!r}; this emoctl ({__version__}) reads versions up to "
            f"{FORMAT_VERSION}. Upgrade emoctl, or check that the file is an emoctl store manifest."
        )
    for key, kind in (("d_model", int), ("dtype", str)):
        if not isinstance(manifest.get(key), kind):
            raise StoreError(
                f"{path} lacks a valid {key!r} (found {manifest.get(key)!r}); it was damaged or edited. "
                "Restore it from a backup."
            )
    return manifest


def spec_from_manifest(manifest: dict[str, Any], root: Path) -> StoreSpec:
    try:
        return StoreSpec(
            d_model=manifest["d_model"], dtype=manifest["dtype"], hookpoint=manifest.get("hookpoint", ""),
            layer=manifest.get("layer"), backbone=manifest.get("backbone", ""),
            extra=(manifest.get("created") or {}).get("extra", {}),
        )
    except Exception as err:  # ConfigError from StoreSpec: the manifest, not the user's config, is at fault
        raise StoreError(f"{Path(root) / MANIFEST_NAME} has invalid store attributes: {err}") from err


def read_rank_index(root: Path, rank: int) -> list[ShardRecord]:
    """The shards ``rank`` has committed, in sequence order (empty if it never committed one)."""
    return _read_index_file(index_path(root, rank))


def _read_index_file(path: Path) -> list[ShardRecord]:
    if not path.exists():
        return []
    try:
        index = json.loads(path.read_text())
        entries = index["shards"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise StoreError(
            f"the rank index {path} is unreadable ({err!r}). Index files are replaced atomically, so it was "
            "damaged outside emoctl; restore it from a backup or delete that rank's shards and re-harvest them."
        ) from err
    return sorted((ShardRecord.from_json(e, path) for e in entries), key=lambda s: s.seq)


def write_rank_index(root: Path, rank: int, shards: list[ShardRecord]) -> None:
    """Atomically replace ``rank``'s index: the commit point of its shards."""
    index = {"format_version": FORMAT_VERSION, "rank": rank, "shards": [s.to_json() for s in shards]}
    atomic_write_bytes(index_path(root, rank), json.dumps(index, indent=1).encode())


def committed_shards(root: Path) -> list[ShardRecord]:
    """Union of every rank's committed shards, in global row order (rank, then sequence)."""
    shards: list[ShardRecord] = []
    for path in Path(root).iterdir():
        if _INDEX_RE.match(path.name):
            shards += _read_index_file(path)
    return sorted(shards, key=lambda s: (s.rank, s.seq))


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(Path(root) / MANIFEST_NAME, json.dumps(manifest, indent=1).encode())
