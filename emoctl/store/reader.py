"""``ActivationStore``: random and streaming access to a store's rows.

Shards are memory-mapped lazily (per process, so a store can be handed to
DataLoader workers) and rows are gathered with one ``numpy.take`` per shard
touched, straight into the output tensor's memory.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from emoctl.errors import ConfigError, NonFiniteActivationError, StoreError
from emoctl.store.manifest import ShardRecord, committed_shards, read_manifest, spec_from_manifest
from emoctl.numerics import all_finite
from emoctl.store.moments import RunningMoments
from emoctl.store.npy_stream import crc32_of_rows
from emoctl.store.spec import StoreSpec, rows_to_torch, torch_to_bits
from emoctl.store.utterance_table import STORE_TABLE_SCHEMA, speech_table, store_table


class ActivationStore:
    """A store's committed rows (all ranks), in global order: shards sorted by (rank, sequence)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        self.spec: StoreSpec = spec_from_manifest(self.manifest, self.path)
        self.shards: list[ShardRecord] = committed_shards(self.path)
        self._check_against_manifest()
        for shard in self.shards:
            self._check_size(shard)
        self.shard_starts = np.concatenate([[0], np.cumsum([s.rows for s in self.shards])]).astype(np.int64)
        """Global index of each shard's first row, plus the total at the end: (num_shards + 1,)."""
        self._mmaps: dict[int, np.ndarray] = {}
        self._utterances: pa.Table | None = None
        self._segments: dict[str, tuple[int, int]] | None = None

    def _check_against_manifest(self) -> None:
        """A shard the manifest lists must still be committed: the rank indexes are the commit record, and a
        missing or rolled-back index would otherwise read as a smaller (or empty) store."""
        listed = [ShardRecord.from_json(e, self.path / "manifest.json") for e in self.manifest.get("shards") or []]
        committed = set(self.shards)
        lost = [s for s in listed if s not in committed]
        if lost:
            ranks = sorted({s.rank for s in lost})
            files = ", ".join(f"index-r{r:04d}.json" for r in ranks)
            raise StoreError(
                f"the store at {self.path} lost committed shards: manifest.json lists {len(lost)} shard(s) "
                f"({', '.join(s.path for s in lost[:3])}{' ...' if len(lost) > 3 else ''}) that {files} no longer "
                "record(s); the rank index is missing, truncated or rolled back. Restore it from a backup, or "
                "rebuild it from manifest.json (its 'shards' entries of that rank are the index entries)."
            )

    def _check_size(self, shard: ShardRecord) -> None:
        path = self.path / shard.path
        if not path.is_file():
            raise StoreError(
                f"shard {path} is listed as committed in index-r{shard.rank:04d}.json but is missing. Restore it, "
                "or remove its entry from that index (its utterances are then lost and a resumed harvest redoes them)."
            )
        size = path.stat().st_size
        if size != shard.bytes:
            raise StoreError(
                f"shard {path} has {size} bytes but the store's index says {shard.bytes} ({shard.rows} rows of "
                f"d_model={self.d_model} {self.dtype}); it was truncated or replaced. Restore it from a backup."
            )

    # ---- attributes ---------------------------------------------------------------------------

    @property
    def d_model(self) -> int:
        return self.spec.d_model

    @property
    def dtype(self) -> str:
        return self.spec.dtype

    @property
    def num_rows(self) -> int:
        return int(self.shard_starts[-1])

    @property
    def finished(self) -> bool:
        """False while the job that fills the store (a harvest, a synthetic build) has not marked it finished:
        it was killed or is still running. Stores written without a named producer count as finished."""
        producer = self.manifest.get("producer")
        return not producer or producer.get("finished") is not None

    def require_finished(self, purpose: str) -> None:
        """Refuse to ``purpose`` on a store its producer never finished (it looks whole but lacks utterances)."""
        if self.finished:
            return
        name = self.manifest["producer"].get("name", "producer")
        raise StoreError(
            f"the store at {self.path} is unfinished: its {name} has not marked it complete (it was killed, or is "
            f"still running; {self.num_utterances} utterances so far), so it cannot be used to {purpose}. Rerun the "
            f"same {name} command: it resumes from the committed utterances and marks the store finished."
        )

    @property
    def num_utterances(self) -> int:
        return sum(s.num_utterances for s in self.shards)

    @property
    def shard_paths(self) -> list[Path]:
        return [self.path / s.path for s in self.shards]

    @property
    def utterances(self) -> pa.Table:
        """One row per utterance: labels, global ``first_row``, ``num_rows`` and ``shard``; in row order."""
        if self._utterances is None:
            self._utterances = self._consolidated_table() or store_table(self.path, self.shards)
        return self._utterances

    def _consolidated_table(self) -> pa.Table | None:
        """``utterances.parquet`` if consolidation saw exactly the shards committed now, else None."""
        name = self.manifest.get("utterances")
        listed = self.manifest.get("shards") or []
        if not name or [ShardRecord.from_json(e, self.path) for e in listed] != self.shards:
            return None
        try:
            table = pq.read_table(self.path / name)
        except (OSError, pa.ArrowException):
            return None  # a damaged convenience copy: the per-shard tables (checksummed) are the truth
        if table.num_rows != self.num_utterances or table.schema.names != STORE_TABLE_SCHEMA.names:
            return None  # rewritten by a later consolidation since the manifest was read
        return table

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}: {self.num_rows} rows x {self.d_model} {self.dtype}, "
                f"{self.num_utterances} utterances, {len(self.shards)} shards, {self.spec.hookpoint or 'no hookpoint'})")

    # ---- rows ---------------------------------------------------------------------------------

    def _shard_rows(self, i: int) -> np.ndarray:
        """Shard ``i`` as a read-only (rows, d) memmap of its on-disk dtype."""
        mm = self._mmaps.get(i)
        if mm is None:
            path = self.path / self.shards[i].path
            mm = np.load(path, mmap_mode="r", allow_pickle=False)
            expected = (self.shards[i].rows, self.d_model)
            if mm.shape != expected or mm.dtype != self.spec.numpy_dtype:
                raise StoreError(f"shard {path} holds {mm.shape} {mm.dtype}, but the store expects {expected} "
                                 f"{self.spec.numpy_dtype}; it was replaced. Restore it from a backup.")
            self._mmaps[i] = mm
        return mm

    def rows(self, indices: np.ndarray | torch.Tensor | list[int]) -> torch.Tensor:
        """Rows at global indices (any order, any shards) as a (n, d) tensor of the store dtype."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)  # (n,)
        out = torch.empty((idx.size, self.d_model), dtype=self.spec.torch_dtype)
        if idx.size == 0:
            return out
        if idx.min() < 0 or idx.max() >= self.num_rows:
            bad = idx[(idx < 0) | (idx >= self.num_rows)][0]
            raise IndexError(f"row {bad} is outside the store at {self.path}, which has {self.num_rows} rows")
        out_bits = torch_to_bits(out)  # (n, d) numpy view of out's memory
        order = None if np.all(idx[1:] >= idx[:-1]) else np.argsort(idx, kind="stable")
        sorted_idx = idx if order is None else idx[order]
        shard_of = np.searchsorted(self.shard_starts, sorted_idx, side="right") - 1  # (n,)
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(shard_of)) + 1, [idx.size]])
        for a, b in zip(cuts[:-1], cuts[1:]):
            shard = int(shard_of[a])
            local = sorted_idx[a:b] - self.shard_starts[shard]
            source = self._shard_rows(shard)
            if order is None:  # sorted input: gather straight into the output rows
                np.take(source, local, axis=0, out=out_bits[a:b], mode="clip")  # indices checked above
            else:
                out_bits[order[a:b]] = np.take(source, local, axis=0, mode="clip")
        self._refuse_non_finite(out, idx)
        return out

    def speech(self, purpose: str = "this step") -> pa.Table:
        """utt_id, text, voice_clip and speech_tokens of every utterance, in row order.

        A store whose harvest did not record speech tokens (written before harvests kept them, or by a
        producer that generates none) is refused, naming the command that writes a store with them."""
        table = speech_table(self.path, self.shards)
        missing = table["speech_tokens"].null_count
        if missing:
            first = table["utt_id"][table["speech_tokens"].is_null().to_pylist().index(True)].as_py()
            raise StoreError(
                f"{purpose} speaks stored utterances again, but {missing} of the {table.num_rows} utterances in "
                f"the store at {self.path} (first {first!r}) carry no speech tokens: the store was written before "
                "harvests recorded them, or by a producer that generates no speech. Harvest it again into a new "
                "folder, which records the tokens beside the rows (for the demo's store: `rm -r "
                "runs/stores/mini_tts_train_resid_pre5 && make store-mini`; in general `emoctl validate --config "
                "<your SAE recipe> --trainer.limit_val_batches=1` with the harvester's path set to a new folder)."
            )
        return table

    def segment(self, utt_id: str) -> torch.Tensor:
        """All rows of one utterance, (T, d), in decoding order."""
        if self._segments is None:
            table = self.utterances
            self._segments = dict(zip(table["utt_id"].to_pylist(),
                                      zip(table["first_row"].to_pylist(), table["num_rows"].to_pylist())))
        if utt_id not in self._segments:
            raise StoreError(f"no utterance {utt_id!r} in the store at {self.path}; see .utterances for the ids it holds.")
        first, count = self._segments[utt_id]
        shard = int(np.searchsorted(self.shard_starts, first, side="right") - 1)
        local = first - int(self.shard_starts[shard])
        rows = rows_to_torch(np.array(self._shard_rows(shard)[local:local + count]), self.dtype)
        self._refuse_non_finite(rows, first + np.arange(count, dtype=np.int64))
        return rows

    def iter_chunks(self, chunk_rows: int = 1 << 16, progress: bool = False) -> Iterator[torch.Tensor]:
        """All rows in global order, as (≤ chunk_rows, d) tensors that never span two shards."""
        if chunk_rows <= 0:
            raise ConfigError(f"chunk_rows must be positive, got {chunk_rows}.")
        bar = tqdm(total=self.num_rows, unit="row", unit_scale=True, disable=not progress, desc="reading store")
        for i, shard in enumerate(self.shards):
            source = self._shard_rows(i)
            for a in range(0, shard.rows, chunk_rows):
                chunk = rows_to_torch(np.array(source[a:a + chunk_rows]), self.dtype)
                first = int(self.shard_starts[i]) + a
                self._refuse_non_finite(chunk, np.arange(first, first + chunk.shape[0], dtype=np.int64))
                bar.update(chunk.shape[0])
                yield chunk
        bar.close()

    def _refuse_non_finite(self, rows: torch.Tensor, global_rows: np.ndarray) -> None:
        """Raise, naming the shard and utterance, if any of ``rows`` (read at ``global_rows``) holds NaN or Inf.

        Every reader of rows passes through here (training batches, selection, steering directions, segments):
        one NaN row turns an SAE's weights into NaN and shifts a selection without a word. The writer never
        stores such rows, so one found here means a damaged shard or a store written by other code.
        """
        if all_finite(rows):
            return
        bad = int(global_rows[int((~torch.isfinite(rows).all(dim=1)).nonzero()[0, 0])])
        raise NonFiniteActivationError(
            f"the store at {self.path} holds NaN or Inf in row {bad}: {self.describe_row(bad)}. emoctl refuses "
            "non-finite activations everywhere (one NaN row makes an SAE's weights NaN). The harvest never writes "
            "them, so the shard was damaged or written by other code: restore it from a backup, or harvest into a "
            "new store."
        )

    def describe_row(self, row: int) -> str:
        """Where a global row lives: its shard file, utterance and decode step (for error messages)."""
        shard = int(np.searchsorted(self.shard_starts, row, side="right") - 1)
        where = f"shard {self.shards[shard].path}, local row {row - int(self.shard_starts[shard])}"
        try:
            table = self.utterances
            first = table["first_row"].to_numpy()
            u = int(np.searchsorted(first, row, side="right") - 1)
            if 0 <= u < table.num_rows:
                where += f", utterance {table['utt_id'][u].as_py()!r} (step {row - int(first[u])})"
        except (StoreError, OSError, pa.ArrowException):  # a damaged table: the shard and row still locate it
            pass
        return where

    # ---- statistics and splits ----------------------------------------------------------------

    def mean_var(self, max_rows: int | None = None, seed: int = 0, progress: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature float64 mean and population variance: exact over all rows, or over a random
        sample of ``max_rows`` rows (drawn with ``seed``)."""
        moments = RunningMoments(self.d_model)
        chunk_rows = max(1, (1 << 19) // self.d_model)  # ~4 MiB float64 chunks stay in cache (6x faster than 64 MiB)
        if max_rows is None or max_rows >= self.num_rows:
            for chunk in self.iter_chunks(chunk_rows, progress=progress):
                moments.update(chunk)
        else:
            sample = np.sort(np.random.default_rng(seed).choice(self.num_rows, size=max_rows, replace=False))
            for a in tqdm(range(0, max_rows, chunk_rows), disable=not progress, desc="sampling store"):
                moments.update(self.rows(sample[a:a + chunk_rows]))
        return moments.mean, moments.var

    def split(self, val_fraction: float, seed: int = 0, by: Literal["utt_id", "pair_key"] = "utt_id"
              ) -> tuple[np.ndarray, np.ndarray]:
        """Hold out whole utterances (or whole pair groups): sorted int64 global rows (train, val).

        Groups are sorted before the seeded shuffle, so the split depends only on the
        store's content and the seed.  ``round(val_fraction * groups)`` groups go to
        validation, at least one when ``val_fraction > 0`` and at least one stays in training.
        """
        if by not in ("utt_id", "pair_key"):
            raise ConfigError(f"split by={by!r} is not supported; use 'utt_id' or 'pair_key'.")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        table = self.utterances
        keys = np.asarray(table[by].to_pylist(), dtype=object)
        groups, group_of_utt = np.unique(keys, return_inverse=True)
        n_val = int(round(val_fraction * len(groups)))
        if val_fraction > 0 and len(groups) > 1:
            n_val = min(max(n_val, 1), len(groups) - 1)
        val_group = np.zeros(len(groups), dtype=bool)
        val_group[np.random.default_rng(seed).permutation(len(groups))[:n_val]] = True
        val_utt = val_group[group_of_utt]  # (utterances,)
        first = table["first_row"].to_numpy()
        count = table["num_rows"].to_numpy()
        return _expand_segments(first[~val_utt], count[~val_utt]), _expand_segments(first[val_utt], count[val_utt])

    # ---- integrity ----------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The store's folder (what a provenance record names it by)."""
        return self.path

    def content_digest(self) -> str:
        """Digest of the store's attributes and every committed shard's rows and CRC-32s: the store already
        checksums its bytes, so a 100 GB store is identified without re-reading it."""
        record = {"d_model": self.d_model, "dtype": self.dtype, "hookpoint": self.spec.hookpoint,
                  "shards": [[s.rank, s.seq, s.rows, s.num_utterances, s.crc32, s.utterances_crc32]
                             for s in self.shards]}
        return hashlib.blake2b(json.dumps(record, sort_keys=True).encode(), digest_size=16).hexdigest()

    def verify(self, progress: bool = True) -> None:
        """Re-read every shard and utterance table and compare CRC-32s with the index; raise on a mismatch.

        About a second per GB; commands that read a whole store (SAE training, selection, steering
        directions) call it once before their first step unless told not to.
        """
        for shard in tqdm(self.shards, disable=not progress, desc=f"verifying {self.path.name}", unit="shard"):
            self._check_size(shard)
            crc = crc32_of_rows(self.path / shard.path)
            if crc != shard.crc32:
                raise StoreError(f"shard {self.path / shard.path} fails its checksum (crc32 {crc:#010x}, index says "
                                 f"{shard.crc32:#010x}): its rows were damaged on disk. Restore it from a backup.")
            utts_crc = zlib.crc32((self.path / shard.utterances_path).read_bytes())
            if utts_crc != shard.utterances_crc32:
                raise StoreError(f"utterance table {self.path / shard.utterances_path} fails its checksum; "
                                 "it was damaged on disk. Restore it from a backup.")

    # ---- pickling (DataLoader workers reopen the memmaps themselves) --------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mmaps": {}}


def _expand_segments(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Row indices of segments [first, first + count), concatenated and sorted: (sum(count),) int64."""
    total = int(count.sum())
    starts_in_out = np.cumsum(count) - count                    # where each segment begins in the output
    rows = np.repeat(first - starts_in_out, count) + np.arange(total, dtype=np.int64)
    rows = rows.astype(np.int64, copy=False)
    return rows if np.all(rows[1:] >= rows[:-1]) else np.sort(rows)
