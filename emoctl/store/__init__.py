"""Sharded on-disk store of activation rows, readable with numpy and pyarrow alone.

Layout of a store directory::

    manifest.json              format_version, d_model, dtype, hookpoint, layer, backbone,
                               created {time, emoctl_version, host, user, extra}, and a
                               consolidated shard list + num_rows (refreshed by consolidate_store)
    utterances.parquet         consolidated utterance table: utt_id, text_id, speaker, emotion,
                               condition, pair_key, first_row (global), num_rows, shard
    index-r0000.json           rank 0's committed shards (path, rows, bytes, crc32, ...): the truth
    index-r0001.json           rank 1's, written only by rank 1; and so on
    shards/r0000-s000000.npy   (rows, d_model) rows; bfloat16 as raw uint16 words ("<u2")
    shards/r0000-s000000.utts.parquet   that shard's utterances, offsets as row_in_shard
    shards/.r0000-s000001.npy.tmp       the shard being written (deleted if its writer died)

Global row order: shards sorted by (rank, sequence), rows in file order.  An
utterance is a contiguous run of rows inside one shard.  A shard and its
utterances are committed when its rank's index lists it; every index is
replaced atomically, so a writer killed at any point loses only uncommitted
rows, and ``ActivationWriter.committed_utt_ids`` tells a resumed producer what
to skip.  ``ActivationStore`` unions the rank indexes, so it reads a store
before and after consolidation alike.

Plain tools::

    numpy.load("store/shards/r0000-s000000.npy", mmap_mode="r")          # (rows, d)
    pyarrow.parquet.read_table("store/utterances.parquet")                # after consolidation
"""
from __future__ import annotations

from emoctl.store.consolidate import consolidate_store
from emoctl.store.dataset import ActivationDataset
from emoctl.store.reader import ActivationStore
from emoctl.store.sampler import ShuffledBatchSampler
from emoctl.store.spec import STORE_DTYPES, StoreSpec, UtteranceMeta
from emoctl.store.synthetic import write_sparse_dictionary_store
from emoctl.store.writer import ActivationWriter

__all__ = [
    "STORE_DTYPES", "ActivationDataset", "ActivationStore", "ActivationWriter", "ShuffledBatchSampler",
    "StoreSpec", "UtteranceMeta", "consolidate_store", "write_sparse_dictionary_store",
]
