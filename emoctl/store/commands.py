"""``emoctl store info`` and ``emoctl store verify``: what a store holds, and whether it is intact."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

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
    fault with the file at fault and how to repair it.

    Args:
        path: The store's directory.
        progress: Show progress bars.
    """
    store = ActivationStore(path)
    store.verify(progress=progress)
    for _ in store.iter_chunks(progress=progress):  # each chunk is checked finite as it is read
        pass
    size = sum((store.path / s.path).stat().st_size for s in store.shards)
    print(f"{Path(path)}: intact. {len(store.shards)} shards ({size / 1e6:.1f} MB), {store.num_rows} rows, "
          f"{store.num_utterances} utterances: every CRC-32 matches and every row is finite.")
