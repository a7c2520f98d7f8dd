"""``emoctl store info`` and ``emoctl store verify``: what a store holds, and whether it is intact."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from emoctl.errors import StoreError
from emoctl.store.reader import ActivationStore


def store_info(path: str, as_json: bool = False) -> dict:
    """Print a store's attributes and contents: rows, utterances, shards, size on disk, labels.

    Args:
        path: The store's directory (it holds manifest.json).
        as_json: Print JSON instead of a table.
    """
    store = ActivationStore(path)
    table = store.utterances
    created = store.manifest.get("created") or {}
    info = {
        "path": str(store.path), "hookpoint": store.spec.hookpoint, "layer": store.spec.layer,
        "backbone": store.spec.backbone, "d_model": store.d_model, "dtype": store.dtype,
        "finished": store.finished if store.manifest.get("producer") else "not recorded (no named producer)",
        "rows": store.num_rows, "utterances": store.num_utterances, "shards": len(store.shards),
        "ranks": sorted({s.rank for s in store.shards}),
        "bytes_on_disk": sum((store.path / s.path).stat().st_size for s in store.shards),
        "created": created.get("time"), "emoctl_version": created.get("emoctl_version"),
        "emotions": dict(sorted(Counter(table["emotion"].to_pylist()).items())),
        "speakers": len(set(table["speaker"].to_pylist())),
    }
    if as_json:
        print(json.dumps(info, indent=1))
    else:
        width = max(map(len, info))
        print("\n".join(f"{key:<{width}}  {value}" for key, value in info.items()))
    return info


def verify_store(path: str, progress: bool = True) -> None:
    """Check every shard and utterance table against its CRC-32 and every row for NaN or Inf; raise on the first
    fault with the file at fault and how to repair it. A store its producer never marked finished (killed, or
    still running) is an error too, after its committed shards are checked: intact shards do not make a store
    that lacks utterances usable, and every reader refuses it.

    Args:
        path: The store's directory.
        progress: Show progress bars.
    """
    store = ActivationStore(path)
    store.verify(progress=progress)
    for _ in store.iter_chunks(progress=progress):  # each chunk is checked finite as it is read
        pass
    size = sum((store.path / s.path).stat().st_size for s in store.shards)
    if not store.finished:
        name = store.manifest["producer"].get("name", "producer")
        raise StoreError(
            f"the store at {store.path} is unfinished: its {name} has not marked it complete (it was killed, or is "
            f"still running), so it is not usable, though its {len(store.shards)} committed shards "
            f"({store.num_utterances} utterances, {store.num_rows} rows) are intact. Rerun the same {name} command: "
            f"it resumes from the committed utterances and marks the store finished.")
    print(f"{Path(path)}: intact. {len(store.shards)} shards ({size / 1e6:.1f} MB), {store.num_rows} rows, "
          f"{store.num_utterances} utterances: every CRC-32 matches and every row is finite.")
