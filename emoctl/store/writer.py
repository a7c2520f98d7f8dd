"""``ActivationWriter``: append utterances' activation rows to a store.

The producer (a harvest loop) calls ``append`` and goes on; a background
thread writes.  A CUDA tensor is cast on the GPU, copied into pinned host
memory with ``non_blocking=True`` and tagged with a CUDA event, so the
producer never waits for the copy; the thread waits on the event, then writes.
A bounded queue keeps host memory bounded when the disk is slower than the
GPU.  CPU tensors and numpy arrays take the same queue after a synchronous
check, so their errors are raised by the ``append`` that caused them.

Commit protocol of one shard (the only state a crash can observe):
  1. rows stream into ``shards/.rRRRR-sSSSSSS.npy.tmp`` with a CRC-32 kept as they go;
  2. the npy header gets the final shape, the file is fsynced;
  3. the shard's utterance table is written to a temp file and fsynced;
  4. both are renamed to their final names and the directory is fsynced;
  5. the rank's ``index-rRRRR.json`` is atomically replaced by one listing the shard.
The shard and its utterances are committed iff step 5 happened.  Reopening a
rank deletes its temp files and any renamed-but-unlisted shard (killed between
4 and 5), so a resumed producer simply skips ``committed_utt_ids``.
"""
from __future__ import annotations

import fcntl
import json
import os
import queue
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import torch

from emoctl.errors import ConfigError, EmoctlError, NonFiniteActivationError, StoreError
from emoctl.numerics import all_finite
from emoctl.store.consolidate import consolidate_store
from emoctl.io.fsio import create_once, fsync_dir, remove_dead_temps, write_durably
from emoctl.store.manifest import (
    MANIFEST_NAME, SHARD_DIR, UTTERANCES_NAME, ShardRecord, committed_shards, index_path, mark_finished, new_manifest,
    read_manifest, read_rank_index, shard_stem, write_rank_index,
)
from emoctl.store.npy_stream import StreamingNpyWriter
from emoctl.store.spec import StoreSpec, UtteranceMeta, torch_to_bits
from emoctl.store.utterance_table import read_shard_table, shard_table, table_to_parquet_bytes


@dataclass
class _Pending:
    """One utterance on its way to disk."""

    meta: UtteranceMeta
    rows: torch.Tensor                       # (T, d) CPU (pinned for CUDA sources), store dtype
    bad_rows: torch.Tensor | None = None     # () int64, pinned: non-finite row count computed on the GPU
    ready: torch.cuda.Event | None = None    # recorded after the device-to-host copies
    source: torch.Tensor | None = None       # keeps the GPU buffer alive until the copy is done


_FLUSH = object()
_STOP = object()


class _OpenShard:
    """The shard being filled: its npy stream and the utterances in it, in row order."""

    def __init__(self, npy: StreamingNpyWriter) -> None:
        self.npy = npy
        self.metas: list[UtteranceMeta] = []
        self.offsets: list[int] = []
        self.counts: list[int] = []

    @property
    def rows(self) -> int:
        return self.npy.rows

    def add(self, meta: UtteranceMeta, bits: np.ndarray) -> None:
        self.metas.append(meta)
        self.offsets.append(self.npy.rows)
        self.counts.append(bits.shape[0])
        self.npy.write(bits)


class ActivationWriter:
    """Writes one rank's shard series of a store; creates the store or reopens it for append."""

    def __init__(
        self,
        path: str | Path,
        spec: StoreSpec,
        rank: int = 0,
        shard_rows: int = 1 << 18,
        max_pending: int = 64,
        consolidate: bool | None = None,
        producer: str | None = None,
    ) -> None:
        """
        Args:
            path: Store directory; created if missing.
            spec: Store attributes. On reopen they must equal the store's (``extra`` may differ and is ignored).
            rank: This writer's DDP rank; each rank writes its own files, concurrently with the others.
            shard_rows: Rows per shard; an utterance never straddles shards, so a shard closes early
                rather than split one, and an utterance longer than this gets a shard of its own.
            max_pending: Utterances queued for the writer thread before ``append`` blocks (bounds memory).
            consolidate: Refresh manifest.json and utterances.parquet on close; default: only rank 0.
                With several ranks, call ``consolidate_store`` once after all have closed.
            producer: Name of the job that fills the store (``harvest``, ``synthetic``) when it will call
                :func:`~emoctl.store.manifest.mark_finished` at its end: readers then refuse the store until it
                has (a killed job leaves a store that looks whole but is not). Reopening clears the mark.
        """
        if not isinstance(rank, int) or rank < 0:
            raise ConfigError(f"ActivationWriter rank must be a non-negative integer, got {rank!r}.")
        if shard_rows <= 0 or max_pending <= 0:
            raise ConfigError(f"shard_rows and max_pending must be positive, got {shard_rows} and {max_pending}.")
        self.path = Path(path)
        self.spec = spec
        self.rank = rank
        self.shard_rows = shard_rows
        self.consolidate = rank == 0 if consolidate is None else consolidate
        self.producer = producer
        (self.path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        self._lock_file = self._lock_rank()
        try:
            self._create_or_check_manifest()
            self._shards = read_rank_index(self.path, rank)
            self._discard_uncommitted()
            ids = [read_shard_table(self.path, s, ["utt_id"])["utt_id"].to_pylist()
                   for s in committed_shards(self.path)]
        except BaseException:
            self._lock_file.close()
            raise
        self._committed_ids = {i for part in ids for i in part}
        self._committed_frozen: frozenset[str] | None = None
        self._ids_lock = threading.Lock()
        self._seen_ids = set(self._committed_ids)  # producer side: committed or queued
        self._next_seq = self._shards[-1].seq + 1 if self._shards else 0
        self._shard: _OpenShard | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._failure: BaseException | None = None          # an I/O error: the writer stops
        self._rejected: list[tuple[str, NonFiniteActivationError]] = []  # non-finite CUDA rows, found late
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"emoctl-store-writer-r{rank}", daemon=True)
        self._thread.start()

    # ---- opening ------------------------------------------------------------------------------

    def _lock_rank(self):
        """Hold an exclusive lock on this rank for the writer's life; the OS drops it if the process dies."""
        lock = open(self.path / SHARD_DIR / f".lock-r{self.rank:04d}", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StoreError(
                f"another ActivationWriter already writes rank {self.rank} of the store at {self.path}. "
                "Give each concurrent writer its own rank, or close the other writer first."
            ) from None
        return lock

    def _create_or_check_manifest(self) -> None:
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.exists():
            create_once(manifest_path, json.dumps(new_manifest(self.spec, self.producer), indent=1).encode())
        stored = read_manifest(self.path)
        if (stored.get("producer") or {}).get("finished") and self.producer:
            mark_finished(self.path, False)  # the producer writes again: unfinished until it says otherwise
        wanted = self.spec.attributes()
        differ = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
        if differ:
            detail = "; ".join(f"{k}: store has {s!r}, writer has {w!r}" for k, (s, w) in differ.items())
            raise StoreError(
                f"cannot append to the store at {self.path}: its attributes differ from the writer's StoreSpec "
                f"({detail}). Write to a new directory, or give a StoreSpec that matches {manifest_path}."
            )

    def _discard_uncommitted(self) -> None:
        """Delete this rank's temp files and shards a crash left renamed but unlisted in the index."""
        listed = {shard_stem(self.rank, s.seq) for s in self._shards}
        prefix = f"r{self.rank:04d}-"
        for path in (self.path / SHARD_DIR).iterdir():
            name = path.name
            if name.startswith(f".{prefix}") and name.endswith(".tmp"):
                path.unlink()
            elif name.startswith(prefix) and name.split(".")[0] not in listed:
                path.unlink()
        own_index = index_path(self.path, self.rank)
        for path in self.path.glob(f".{own_index.name}.*.tmp"):  # no other process writes this rank's index
            path.unlink()
        for shared in (MANIFEST_NAME, UTTERANCES_NAME):
            remove_dead_temps(self.path / shared)

    # ---- producer side ------------------------------------------------------------------------

    @property
    def committed_utt_ids(self) -> frozenset[str]:
        """Utterances committed by any rank (as of opening) or by this writer since: a producer skips these."""
        with self._ids_lock:
            if self._committed_frozen is None:
                self._committed_frozen = frozenset(self._committed_ids)
            return self._committed_frozen

    def append(self, meta: UtteranceMeta, acts: torch.Tensor | np.ndarray) -> None:
        """Queue one utterance's (T, d_model) rows; converted to the store dtype, never split across shards."""
        self._raise_if_unusable()
        if meta.utt_id in self._seen_ids:
            raise StoreError(
                f"utterance {meta.utt_id!r} is already in the store at {self.path} (or was appended earlier "
                "by this writer). Skip the ids in ActivationWriter.committed_utt_ids, or give it a new utt_id."
            )
        item = self._stage(meta, acts)
        self._seen_ids.add(meta.utt_id)
        self._queue.put(item)

    def flush(self) -> None:
        """Write what is queued and commit the partial shard now (a shorter shard; nothing is lost)."""
        self._raise_if_unusable()
        self._queue.put(_FLUSH)
        self._queue.join()
        self._raise_if_unusable()

    def close(self) -> None:
        """Commit everything queued, stop the thread, and (see ``consolidate``) refresh the root files."""
        if self._closed:
            return
        self._closed = True
        if self._failure is None:
            self._queue.put(_FLUSH)
        self._queue.put(_STOP)
        self._thread.join()
        self._lock_file.close()
        if self._failure is not None:
            raise StoreError(
                f"writing rank {self.rank} of the store at {self.path} failed ({self._failure!r}); the utterances "
                "committed before the failure are intact. Fix the cause (e.g. disk space) and resume: reopen "
                "the writer and skip committed_utt_ids."
            ) from self._failure
        if self.consolidate:
            consolidate_store(self.path)
        self._raise_rejected()

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # keep the producer's exception; utterances appended before it are still committed
            self.close()
        except EmoctlError as err:
            warnings.warn(f"while closing after {exc_type.__name__}: {err}", stacklevel=2)

    def _raise_if_unusable(self) -> None:
        if self._closed:
            raise StoreError(f"the ActivationWriter for {self.path} (rank {self.rank}) is closed; open a new one.")
        if self._failure is not None:
            self.close()  # raises with the cause
        self._raise_rejected()

    def _raise_rejected(self) -> None:
        if self._rejected:
            utt_id, err = self._rejected.pop(0)
            self._seen_ids.discard(utt_id)  # the producer may retry it
            raise err

    def _stage(self, meta: UtteranceMeta, acts: torch.Tensor | np.ndarray) -> _Pending:
        """Check shape and values and convert to the store dtype; CUDA tensors are checked on the device."""
        if isinstance(acts, np.ndarray):
            if not np.issubdtype(acts.dtype, np.floating):
                raise StoreError(f"activations of {meta.utt_id!r} have dtype {acts.dtype}; pass floating-point rows.")
            acts = torch.from_numpy(acts)
        if not isinstance(acts, torch.Tensor) or not acts.is_floating_point():
            raise StoreError(
                f"activations of {meta.utt_id!r} must be a floating-point torch tensor or numpy array, "
                f"got {type(acts).__name__} {getattr(acts, 'dtype', '')}."
            )
        d = self.spec.d_model
        if acts.ndim != 2 or acts.shape[1] != d or acts.shape[0] == 0:
            raise StoreError(
                f"activations of {meta.utt_id!r} have shape {tuple(acts.shape)}, but the store at {self.path} "
                f"holds rows of d_model={d}: pass a (T, {d}) tensor with T >= 1 (one row per decoding step)."
            )
        if acts.device.type == "cuda":
            return self._stage_cuda(meta, acts)
        rows = acts.detach().to(device="cpu", dtype=self.spec.torch_dtype, memory_format=torch.contiguous_format,
                                copy=True)  # (T, d): our own copy, so the caller may reuse its buffer
        if not all_finite(rows):  # the same one-pass check every store read makes
            bad = int((~torch.isfinite(rows)).any(dim=1).sum())
            raise NonFiniteActivationError(self._non_finite_message(meta.utt_id, bad, rows.shape[0]))
        return _Pending(meta, rows)

    def _stage_cuda(self, meta: UtteranceMeta, acts: torch.Tensor) -> _Pending:
        with torch.cuda.device(acts.device):
            stream = torch.cuda.current_stream()
            rows = acts.detach().to(self.spec.torch_dtype).contiguous()           # (T, d) on the GPU
            bad = (~torch.isfinite(rows)).any(dim=1).sum()                       # () on the GPU, no sync
            host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)   # cached pinned block
            host.copy_(rows, non_blocking=True)
            bad_host = torch.empty((), dtype=torch.int64, pin_memory=True)
            bad_host.copy_(bad, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(stream)
        return _Pending(meta, host, bad_host, ready, source=rows)

    def _non_finite_message(self, utt_id: str, bad: int, total: int, late: bool = False) -> str:
        overflow = (" (a float16 store turns values beyond ±65504 into Inf: use a bfloat16 or float32 store)"
                    if self.spec.dtype == "float16" else "")
        when = " It was found after the copy from the GPU, so this call reports an earlier append." if late else ""
        return (f"utterance {utt_id!r} has {bad} of {total} rows with NaN or Inf{overflow}; none of its rows were "
                f"written.{when} Find where the activations diverge, or skip this utterance; the others are "
                "unaffected.")

    # ---- writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._failure is not None:
                    continue  # after an I/O error nothing more is written; close() reports it
                if item is _FLUSH:
                    self._commit_shard()
                else:
                    self._write(item)
            except NonFiniteActivationError as err:
                self._rejected.append((item.meta.utt_id, err))
            except BaseException as err:  # noqa: BLE001 - handed to the producer by close()
                self._failure = err
                if self._shard is not None:
                    self._shard.npy.abort()
                    self._shard = None
            finally:
                self._queue.task_done()

    def _write(self, item: _Pending) -> None:
        if item.ready is not None:
            item.ready.synchronize()
            item.source = None
            bad = int(item.bad_rows)
            if bad:
                raise NonFiniteActivationError(
                    self._non_finite_message(item.meta.utt_id, bad, item.rows.shape[0], late=True))
        n = item.rows.shape[0]
        if self._shard is not None and self._shard.rows + n > self.shard_rows:
            self._commit_shard()
        if self._shard is None:
            tmp = self.path / SHARD_DIR / f".{shard_stem(self.rank, self._next_seq)}.npy.tmp"
            self._shard = _OpenShard(StreamingNpyWriter(tmp, self.spec.numpy_dtype, self.spec.d_model))
        self._shard.add(item.meta, torch_to_bits(item.rows))
        if self._shard.rows >= self.shard_rows:
            self._commit_shard()

    def _commit_shard(self) -> None:
        shard, self._shard = self._shard, None
        if shard is None:
            return
        shard.npy.finish()
        utts = table_to_parquet_bytes(shard_table(shard.metas, shard.offsets, shard.counts))
        record = ShardRecord(rank=self.rank, seq=self._next_seq, rows=shard.rows, num_utterances=len(shard.metas),
                             bytes=shard.npy.nbytes, crc32=shard.npy.crc32, utterances_crc32=zlib.crc32(utts))
        utts_path = self.path / record.utterances_path
        utts_tmp = utts_path.with_name(f".{utts_path.name}.tmp")
        write_durably(utts_tmp, utts)
        os.replace(utts_tmp, utts_path)
        os.replace(shard.npy.path, self.path / record.path)
        fsync_dir(self.path / SHARD_DIR)
        write_rank_index(self.path, self.rank, self._shards + [record])  # the commit point
        self._shards.append(record)
        self._next_seq += 1
        with self._ids_lock:
            self._committed_ids.update(m.utt_id for m in shard.metas)
            self._committed_frozen = None
