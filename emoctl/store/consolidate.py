"""Refresh the store-wide files from the rank indexes.

After all ranks have finished (e.g. after a barrier), ``consolidate_store``
writes ``utterances.parquet`` (global ``first_row``) and the shard list in
``manifest.json`` so that tools without emoctl see the whole store.  It reads
only the committed state, so running it while ranks still write is safe but
leaves a snapshot that emoctl's reader will notice is out of date.
"""
from __future__ import annotations

from pathlib import Path

from emoctl.io.fsio import atomic_write_bytes
from emoctl.store.manifest import UTTERANCES_NAME, committed_shards, read_manifest, write_manifest
from emoctl.store.utterance_table import store_table, table_to_parquet_bytes


def consolidate_store(path: str | Path) -> None:
    """Write ``utterances.parquet`` and the manifest's shard list from all committed shards."""
    root = Path(path)
    manifest = read_manifest(root)
    shards = committed_shards(root)
    table = store_table(root, shards)
    # Table first, manifest second: a reader trusts the table only if the manifest's shard list
    # equals the union of the indexes and the row counts agree (see ActivationStore).
    atomic_write_bytes(root / UTTERANCES_NAME, table_to_parquet_bytes(table))
    manifest.update(
        num_rows=sum(s.rows for s in shards),
        num_utterances=table.num_rows,
        shards=[s.to_json() for s in shards],
        utterances=UTTERANCES_NAME,
    )
    write_manifest(root, manifest)
