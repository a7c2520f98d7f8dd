"""Per-utterance tables, as parquet so pyarrow (or pandas, polars, DuckDB)
reads them without emoctl.

Each shard carries its own small table with offsets *inside* the shard
(``row_in_shard``), written in the same commit as the shard, because a rank
cannot know the global row numbers while other ranks are still writing.  The
store-wide table (global ``first_row`` and the ``shard`` file) is derived from
them on read, and written once as ``utterances.parquet`` by consolidation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emoctl.errors import StoreError
from emoctl.store.manifest import ShardRecord
from emoctl.store.spec import SPEECH_COLUMNS, UTTERANCE_LABELS, UtteranceMeta

SHARD_TABLE_SCHEMA = pa.schema(
    [(name, pa.string()) for name in UTTERANCE_LABELS] + [("row_in_shard", pa.int64()), ("num_rows", pa.int64())]
    + [("text", pa.string()), ("voice_clip", pa.string()), ("speech_tokens", pa.list_(pa.int32()))]
)
"""A shard's table; shards written before the speech columns existed lack the last three, and still read."""
SPEECH_SCHEMA = pa.schema([("utt_id", pa.string()), ("text", pa.string()), ("voice_clip", pa.string()),
                           ("speech_tokens", pa.list_(pa.int32()))])
STORE_TABLE_SCHEMA = pa.schema(
    [(name, pa.string()) for name in UTTERANCE_LABELS]
    + [("first_row", pa.int64()), ("num_rows", pa.int64()), ("shard", pa.string())]
)


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def shard_table(metas: list[UtteranceMeta], row_in_shard: list[int], num_rows: list[int]) -> pa.Table:
    """The utterance table of one shard, from its utterances in row order."""
    columns = {name: [getattr(m, name) for m in metas] for name in UTTERANCE_LABELS + SPEECH_COLUMNS}
    columns["speech_tokens"] = [None if m.speech_tokens is None else list(m.speech_tokens) for m in metas]
    return pa.table({**columns, "row_in_shard": row_in_shard, "num_rows": num_rows}, schema=SHARD_TABLE_SCHEMA)


def speech_table(root: Path, shards: list[ShardRecord]) -> pa.Table:
    """utt_id, text, voice_clip and speech_tokens of every utterance, in row order; null where a shard was
    written without them."""
    parts = []
    for shard in shards:
        local = read_shard_table(root, shard)
        n = local.num_rows
        parts.append(pa.table({
            "utt_id": local["utt_id"],
            **{name: (local[name] if name in local.column_names else pa.nulls(n, SPEECH_SCHEMA.field(name).type))
               for name in SPEECH_COLUMNS},
        }, schema=SPEECH_SCHEMA))
    return (pa.concat_tables(parts) if parts else SPEECH_SCHEMA.empty_table()).combine_chunks()


def read_shard_table(root: Path, shard: ShardRecord, columns: list[str] | None = None) -> pa.Table:
    path = Path(root) / shard.utterances_path
    try:
        table = pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowInvalid) as err:
        raise StoreError(
            f"cannot read the utterance table {path} of committed shard {shard.path} ({err}). The store was "
            "damaged after the commit; restore the file or run ActivationStore.verify() to find other damage."
        ) from err
    if table.num_rows != shard.num_utterances:
        raise StoreError(
            f"{path} lists {table.num_rows} utterances but the rank index says {shard.num_utterances}; the "
            "file was replaced or damaged. Restore it from a backup."
        )
    return table


def store_table(root: Path, shards: list[ShardRecord]) -> pa.Table:
    """The store-wide utterance table: global ``first_row`` (shards in (rank, seq) order) and ``shard`` path."""
    starts = np.concatenate([[0], np.cumsum([s.rows for s in shards], dtype=np.int64)])
    parts = []
    for shard, start in zip(shards, starts[:-1]):
        local = read_shard_table(root, shard)
        parts.append(pa.table({
            **{name: local[name] for name in UTTERANCE_LABELS},
            "first_row": pc.add(local["row_in_shard"], pa.scalar(int(start), pa.int64())),
            "num_rows": local["num_rows"],
            "shard": pa.array([shard.path] * local.num_rows, pa.string()),
        }, schema=STORE_TABLE_SCHEMA))
    table = pa.concat_tables(parts) if parts else STORE_TABLE_SCHEMA.empty_table()
    check_unique_ids(table, root)
    return table.combine_chunks()


def check_unique_ids(table: pa.Table, root: Path) -> None:
    """Utterance ids must be unique; two ranks given the same utterance would break segment() and splits."""
    if pc.count_distinct(table["utt_id"]).as_py() == table.num_rows:
        return
    counts = pc.value_counts(table["utt_id"])
    repeated = [c["values"].as_py() for c in counts if c["counts"].as_py() > 1][:5]
    raise StoreError(
        f"the store at {root} holds the utterance ids {repeated} more than once (each DDP rank must get "
        "different utterances). Delete the duplicated shards (see the shard column of the utterance table) "
        "or re-harvest with a disjoint split of utterances per rank."
    )
