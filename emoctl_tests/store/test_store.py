"""The activation store: exact round trips, crash safety, concurrent ranks, splits, sampling, statistics."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from emoctl.errors import ConfigError, NonFiniteActivationError, StoreError, StoreNotFoundError
from emoctl.store import (
    ActivationDataset, ActivationStore, ActivationWriter, ShuffledBatchSampler, StoreSpec, UtteranceMeta,
    consolidate_store, write_sparse_dictionary_store,
)
from emoctl.store.npy_stream import HEADER_BYTES
from emoctl_tests.helpers import store_worker

WORKER = Path(store_worker.__file__)


def _meta(i: int, speaker: str = "spk", emotion: str = "Neutral", text: str | None = None) -> UtteranceMeta:
    return UtteranceMeta(utt_id=f"u{i:04d}", text_id=text or f"t{i}", speaker=speaker, emotion=emotion,
                         condition="test")


def _bits(t: torch.Tensor) -> np.ndarray:
    """Raw bits of a 16- or 32-bit float tensor, for exact comparison (NaN-safe, -0.0-aware)."""
    return t.contiguous().view({2: torch.int16, 4: torch.int32}[t.element_size()]).numpy()


def _random_finite(dtype: torch.dtype, shape: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """Values from random bit patterns, so every exponent (subnormals, huge, tiny, -0.0) appears."""
    if dtype == torch.float32:
        bits = rng.integers(-(2**31), 2**31, size=shape, dtype=np.int64).astype(np.int32)
        t = torch.from_numpy(bits).view(torch.float32)
    else:
        bits = rng.integers(-(2**15), 2**15, size=shape, dtype=np.int64).astype(np.int16)
        t = torch.from_numpy(bits).view(dtype)
    return torch.where(torch.isfinite(t), t, torch.zeros((), dtype=dtype))


def _write(path: Path, utterances: list[tuple[UtteranceMeta, object]], dtype: str = "float32", d: int = 16,
           **kw) -> None:
    with ActivationWriter(path, StoreSpec(d_model=d, dtype=dtype, hookpoint="resid_pre.2", layer=2,
                                          backbone="test"), **kw) as w:
        for meta, acts in utterances:
            w.append(meta, acts)


# ---- format and round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    rng = np.random.default_rng(0)
    segments = [_random_finite(torch_dtype, (int(n), 24), rng) for n in rng.integers(3, 40, size=12)]
    if dtype == "bfloat16":  # the test must include values float16 cannot hold
        values = torch.cat(segments).float().abs()
        assert (values > 65504).any() and ((values > 0) & (values < 6e-8)).any()
    _write(tmp_path, [(_meta(i), s) for i, s in enumerate(segments)], dtype=dtype, d=24, shard_rows=100)

    store = ActivationStore(tmp_path)
    expected = torch.cat(segments)
    got = store.rows(np.arange(store.num_rows))
    assert got.dtype == torch_dtype and store.dtype == dtype
    np.testing.assert_array_equal(_bits(got), _bits(expected))
    # The same bits on disk, through numpy alone.
    on_disk = np.concatenate([np.load(p, mmap_mode="r") for p in store.shard_paths])
    assert on_disk.dtype == {"float16": "<f2", "bfloat16": "<u2", "float32": "<f4"}[dtype]
    np.testing.assert_array_equal(on_disk.view(_bits(expected).dtype), _bits(expected))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["dtype"] == dtype and manifest["d_model"] == 24 and manifest["hookpoint"] == "resid_pre.2"


def test_float32_input_is_rounded_to_bfloat16_like_torch(tmp_path):
    x = torch.randn(50, 16) * 1e20
    _write(tmp_path, [(_meta(0), x)], dtype="bfloat16")
    np.testing.assert_array_equal(_bits(ActivationStore(tmp_path).segment("u0000")), _bits(x.to(torch.bfloat16)))


def test_random_gathers_and_table_agree_with_what_was_written(tmp_path):
    rng = np.random.default_rng(1)
    segments = [rng.standard_normal((int(n), 8)).astype(np.float32) for n in rng.integers(1, 30, size=40)]
    metas = [_meta(i, speaker=f"s{i % 3}", emotion=["Angry", "Sad"][i % 2]) for i in range(40)]
    _write(tmp_path, list(zip(metas, segments)), d=8, shard_rows=64)
    store = ActivationStore(tmp_path)
    everything = np.concatenate(segments)
    assert store.num_rows == len(everything) and store.num_utterances == 40 and len(store) == len(everything)

    table = store.utterances
    assert table.column_names == ["utt_id", "text_id", "speaker", "emotion", "condition", "pair_key",
                                  "first_row", "num_rows", "shard"]
    for meta, seg, row in zip(metas, segments, table.to_pylist()):
        assert row["utt_id"] == meta.utt_id and row["speaker"] == meta.speaker and row["emotion"] == meta.emotion
        assert row["pair_key"] == f"{meta.speaker}|{meta.text_id}" and row["num_rows"] == len(seg)
        np.testing.assert_array_equal(store.rows(np.arange(row["first_row"], row["first_row"] + row["num_rows"])), seg)
        np.testing.assert_array_equal(store.segment(meta.utt_id).numpy(), seg)
    # Unsorted, repeated indices across all shards.
    idx = rng.integers(0, store.num_rows, size=500)
    assert len(store.shards) > 3
    np.testing.assert_array_equal(store.rows(idx).numpy(), everything[idx])
    np.testing.assert_array_equal(store.rows(np.sort(idx)).numpy(), everything[np.sort(idx)])
    np.testing.assert_array_equal(torch.cat(list(store.iter_chunks(7))).numpy(), everything)
    assert all(len(c) <= 7 for c in store.iter_chunks(7))
    with pytest.raises(IndexError, match=str(store.num_rows)):
        store.rows([store.num_rows])


def test_shards_roll_at_shard_rows_and_no_utterance_straddles(tmp_path):
    lengths = [7, 23, 11, 120, 5, 30, 30, 9, 50, 1, 49, 3]  # 120 > shard_rows: a shard of its own
    segments = [np.full((n, 4), i, np.float32) for i, n in enumerate(lengths)]
    _write(tmp_path, [(_meta(i), s) for i, s in enumerate(segments)], d=4, shard_rows=50)
    store = ActivationStore(tmp_path)
    table = store.utterances.to_pylist()
    shard_rows = [s.rows for s in store.shards]
    # Greedy packing: a shard closes only when the next utterance would not fit (or it is full).
    expected, current = [], 0
    for n in lengths:
        if current and current + n > 50:
            expected.append(current)
            current = 0
        current += n
        if current >= 50:
            expected.append(current)
            current = 0
    expected += [current] if current else []
    assert shard_rows == expected and 120 in shard_rows
    for row in table:
        first, last = row["first_row"], row["first_row"] + row["num_rows"] - 1
        shard = np.searchsorted(store.shard_starts, [first, last], side="right") - 1
        assert shard[0] == shard[1], f"{row['utt_id']} straddles shards"
        assert row["shard"] == store.shards[shard[0]].path
    assert all(s.rows <= 50 or s.num_utterances == 1 for s in store.shards)


def test_numpy_and_pyarrow_alone_read_the_store(tmp_path):
    segments = [np.arange(12 * i, 12 * i + 12, dtype=np.float32).reshape(3, 4) for i in range(10)]
    _write(tmp_path, [(_meta(i, speaker="spk9"), s) for i, s in enumerate(segments)], d=4, shard_rows=8)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["num_rows"] == 30 and len(manifest["shards"]) == 5  # two 3-row utterances per 8-row shard
    assert set(manifest["created"]) >= {"time", "emoctl_version", "host", "extra"}
    shards = [np.load(tmp_path / s["path"], mmap_mode="r") for s in manifest["shards"]]
    assert [s.shape for s in shards] == [(s["rows"], 4) for s in manifest["shards"]]
    assert all(isinstance(s, np.memmap) for s in shards)
    table = pq.read_table(tmp_path / "utterances.parquet").to_pydict()
    rows = np.concatenate(shards)
    for utt, first, n in zip(table["utt_id"], table["first_row"], table["num_rows"]):
        np.testing.assert_array_equal(rows[first:first + n], segments[int(utt[1:])])
    assert set(table["speaker"]) == {"spk9"}
    # The npy header was written by hand with a fixed size; numpy reads it and rows start after it.
    assert (tmp_path / manifest["shards"][0]["path"]).stat().st_size == HEADER_BYTES + 6 * 4 * 4


# ---- input errors ------------------------------------------------------------------------------


def test_non_finite_rows_are_refused_and_nothing_of_them_is_written(tmp_path):
    spec = StoreSpec(d_model=4, dtype="float32")
    bad = torch.ones(6, 4)
    bad[1, 2] = float("nan")
    bad[4, 0] = float("-inf")
    with ActivationWriter(tmp_path, spec) as w:
        w.append(_meta(0), torch.zeros(3, 4))
        with pytest.raises(NonFiniteActivationError, match=r"'u0001' has 2 of 6 rows"):
            w.append(_meta(1), bad)
        w.append(_meta(2), torch.full((2, 4), 2.0))
        w.append(_meta(1), torch.ones(5, 4))  # fixed and retried under the same id
    store = ActivationStore(tmp_path)
    assert store.utterances["utt_id"].to_pylist() == ["u0000", "u0002", "u0001"]
    assert store.num_rows == 10 and torch.isfinite(store.rows(np.arange(10))).all()


def test_float16_overflow_counts_as_non_finite(tmp_path):
    with ActivationWriter(tmp_path, StoreSpec(d_model=4, dtype="float16")) as w:
        with pytest.raises(NonFiniteActivationError, match="u0000.*65504"):
            w.append(_meta(0), torch.tensor([[1e6, 0, 0, 0]]))
    assert ActivationStore(tmp_path).num_rows == 0


def test_writer_input_errors_are_clear(tmp_path):
    spec = StoreSpec(d_model=4, dtype="float32")
    with ActivationWriter(tmp_path, spec) as w:
        w.append(_meta(0), np.zeros((2, 4)))  # numpy float64 is accepted and converted
        with pytest.raises(StoreError, match=r"'u0000' is already in the store"):
            w.append(_meta(0), np.zeros((2, 4)))
        with pytest.raises(StoreError, match=r"shape \(2, 5\).*d_model=4"):
            w.append(_meta(1), torch.zeros(2, 5))
        with pytest.raises(StoreError, match="floating-point"):
            w.append(_meta(1), torch.zeros(2, 4, dtype=torch.int64))
        with pytest.raises(StoreError, match="rank 0"):
            ActivationWriter(tmp_path, spec)  # a second live writer of the same rank
    with ActivationWriter(tmp_path, spec) as w:  # reopened: the committed id is still a duplicate
        assert w.committed_utt_ids == {"u0000"}
        with pytest.raises(StoreError, match="already in the store"):
            w.append(_meta(0), np.zeros((1, 4)))
    with pytest.raises(StoreError, match=r"d_model: store has 4, writer has 8"):
        ActivationWriter(tmp_path, StoreSpec(d_model=8, dtype="float32"))
    with pytest.raises(StoreError, match=r"dtype: store has 'float32', writer has 'bfloat16'"):
        ActivationWriter(tmp_path, StoreSpec(d_model=4, dtype="bfloat16"))
    with pytest.raises(ConfigError, match="float8"):
        StoreSpec(d_model=4, dtype="float8")


def test_reader_errors_name_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(StoreNotFoundError, match=f"no activation store at {missing}.*ActivationWriter"):
        ActivationStore(missing)

    _write(tmp_path / "s", [(_meta(i), np.ones((5, 16), np.float32) * i) for i in range(6)], shard_rows=10)
    store = ActivationStore(tmp_path / "s")
    store.verify(progress=False)
    shard = store.shard_paths[1]
    original = shard.read_bytes()

    flipped = bytearray(original)
    flipped[-3] ^= 0x40
    shard.write_bytes(bytes(flipped))  # same size: only the checksum can tell
    reopened = ActivationStore(tmp_path / "s")
    with pytest.raises(StoreError, match=f"{shard.name} fails its checksum"):
        reopened.verify(progress=False)

    shard.write_bytes(original[:-4])
    with pytest.raises(StoreError, match=f"{shard.name} has {len(original) - 4} bytes"):
        ActivationStore(tmp_path / "s")
    shard.write_bytes(original)

    (tmp_path / "s" / "manifest.json").write_text('{"format_version": 1, "d_model": ')
    with pytest.raises(StoreError, match="manifest.json is not valid JSON"):
        ActivationStore(tmp_path / "s")


def test_the_same_utterance_from_two_ranks_is_reported_by_the_reader(tmp_path):
    spec = StoreSpec(d_model=4, dtype="float32")
    with ActivationWriter(tmp_path, spec, rank=0, consolidate=False) as w0, ActivationWriter(tmp_path, spec, rank=1) as w1:
        w0.append(_meta(7), np.zeros((2, 4)))
        w1.append(_meta(7), np.ones((3, 4)))  # ranks do not coordinate: the producer must split the work
    with pytest.raises(StoreError, match=r"\['u0007'\] more than once"):
        ActivationStore(tmp_path).utterances
    with pytest.raises(StoreError, match="u0007"):
        consolidate_store(tmp_path)


# ---- crash safety and concurrent ranks ---------------------------------------------------------


def _worker(path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _committed_on_disk(path: Path, rank: int = 0) -> list[str]:
    """Utterance ids committed according to the rank index, read with json and pyarrow only."""
    index = path / f"index-r{rank:04d}.json"
    if not index.exists():
        return []
    shards = json.loads(index.read_text())["shards"]
    return [u for s in shards for u in pq.read_table(path / s["utterances"])["utt_id"].to_pylist()]


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Return once the process is in the stopped state (Linux /proc); elsewhere, after a short pause."""
    stat = Path(f"/proc/{pid}/stat")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
        except (OSError, IndexError):
            time.sleep(0.05)
            return
        time.sleep(0.001)


def test_sigkill_mid_shard_loses_no_committed_utterance_and_resume_skips_them(tmp_path):
    proc = _worker(tmp_path, "--n-utts", "100000", "--shard-rows", "64", "--sleep", "0.003")
    deadline = time.monotonic() + 60
    open_shard = None
    try:
        while time.monotonic() < deadline:
            time.sleep(0.02)
            os.kill(proc.pid, signal.SIGSTOP)  # freeze it, look, then kill or let it go on
            _wait_stopped(proc.pid)  # the signal is delivered asynchronously: a rename may still be under way
            index = tmp_path / "index-r0000.json"
            temps = [p for p in (tmp_path / "shards").glob(".*.npy.tmp") if p.stat().st_size > HEADER_BYTES]
            if index.exists() and len(json.loads(index.read_text())["shards"]) >= 3 and temps:
                open_shard = temps[0]
                os.kill(proc.pid, signal.SIGKILL)
                break
            os.kill(proc.pid, signal.SIGCONT)
    finally:
        if proc.poll() is None and open_shard is None:
            proc.kill()
        proc.wait()
    assert open_shard is not None, f"the worker never had 3 committed shards and an open one: {proc.stderr.read()}"

    committed = _committed_on_disk(tmp_path)
    k = len(committed)
    assert committed == [store_worker.utt_id(0, i) for i in range(k)]  # commits are in append order
    assert open_shard.exists()  # rows of an unfinished shard were on disk when it died

    with ActivationWriter(tmp_path, store_worker.SPEC, shard_rows=64) as w:
        assert w.committed_utt_ids == frozenset(committed)
        assert not list(tmp_path.rglob("*.tmp")), "reopening must discard unfinished temp files"
    # The producer resumes in a fresh process: it skips exactly the committed ones.
    n_total = k + 25
    done = subprocess.run([sys.executable, str(WORKER), str(tmp_path), "--n-utts", str(n_total)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"skipped {k}" in done.stdout

    store = ActivationStore(tmp_path)
    ids = store.utterances["utt_id"].to_pylist()
    assert ids == [store_worker.utt_id(0, i) for i in range(n_total)]  # none lost, none twice
    for i in range(n_total):
        np.testing.assert_array_equal(store.segment(store_worker.utt_id(0, i)).numpy(), store_worker.utterance_rows(0, i))
    assert store.num_rows == sum(len(store_worker.utterance_rows(0, i)) for i in range(n_total))
    assert not list(tmp_path.rglob("*.tmp"))
    store.verify(progress=False)


def test_shard_renamed_but_not_indexed_is_discarded_on_reopen(tmp_path):
    """A kill between renaming a shard and replacing the index leaves an unlisted shard: it is not committed."""
    _write(tmp_path, [(_meta(i), np.full((4, 16), i, np.float32)) for i in range(6)], shard_rows=8)
    shards = tmp_path / "shards"
    for suffix in (".npy", ".utts.parquet"):  # looks exactly like a finished shard 3
        shutil.copy(shards / f"r0000-s000000{suffix}", shards / f"r0000-s000003{suffix}")
    assert ActivationStore(tmp_path).num_utterances == 6  # the reader ignores it
    dead, live = tmp_path / ".manifest.json.999999999.tmp", tmp_path / f".manifest.json.{os.getpid()}.tmp"
    dead.write_text("{}")  # a consolidation killed midway, and one still running
    live.write_text("{}")
    with ActivationWriter(tmp_path, StoreSpec(d_model=16, dtype="float32", hookpoint="resid_pre.2", layer=2,
                                              backbone="test"), shard_rows=8) as w:
        assert not (shards / "r0000-s000003.npy").exists()
        assert not dead.exists() and live.exists()
        w.append(_meta(6), np.full((4, 16), 6, np.float32))
    store = ActivationStore(tmp_path)
    assert store.num_utterances == 7 and store.shards[-1].seq == 3
    np.testing.assert_array_equal(store.segment("u0006").numpy(), np.full((4, 16), 6, np.float32))


def test_two_ranks_write_concurrently_and_the_reader_sees_the_union(tmp_path):
    n = {0: 40, 1: 33}
    procs = [_worker(tmp_path, "--rank", str(r), "--n-utts", str(n[r]), "--shard-rows", "50", "--sleep", "0.001",
                     "--no-consolidate") for r in (0, 1)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()

    def check(store: ActivationStore) -> None:
        expected_ids = [store_worker.utt_id(r, i) for r in (0, 1) for i in range(n[r])]  # rank 0's rows first
        assert store.utterances["utt_id"].to_pylist() == expected_ids
        assert store.num_rows == sum(len(store_worker.utterance_rows(r, i)) for r in (0, 1) for i in range(n[r]))
        assert {s.rank for s in store.shards} == {0, 1}
        everything = store.rows(np.arange(store.num_rows)).numpy()
        for row in store.utterances.to_pylist():
            rank, i = int(row["utt_id"][1]), int(row["utt_id"][4:])
            np.testing.assert_array_equal(everything[row["first_row"]:row["first_row"] + row["num_rows"]],
                                          store_worker.utterance_rows(rank, i))

    assert json.loads((tmp_path / "manifest.json").read_text())["shards"] == []  # not consolidated yet
    check(ActivationStore(tmp_path))
    consolidate_store(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    store = ActivationStore(tmp_path)
    assert [s["path"] for s in manifest["shards"]] == [str(s.path) for s in store.shards]
    assert manifest["num_rows"] == store.num_rows
    plain = pq.read_table(tmp_path / "utterances.parquet")
    assert plain.equals(store.utterances)
    check(store)


# ---- statistics, splits, sampling --------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mean_var_matches_numpy_over_all_rows(tmp_path, dtype):
    rng = np.random.default_rng(3)
    segments = [(100 + rng.standard_normal((int(n), 12)) * rng.uniform(0.01, 3, 12)).astype(np.float32)
                for n in rng.integers(5, 80, size=60)]
    _write(tmp_path, [(_meta(i), s) for i, s in enumerate(segments)], dtype=dtype, d=12, shard_rows=200)
    store = ActivationStore(tmp_path)
    rows = store.rows(np.arange(store.num_rows)).double().numpy()  # the stored values, in float64
    mean, var = store.mean_var()
    assert mean.dtype == var.dtype == torch.float64
    np.testing.assert_allclose(mean.numpy(), rows.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var.numpy(), rows.var(0), rtol=1e-6)
    sample_mean, _ = store.mean_var(max_rows=store.num_rows // 2)
    assert not torch.equal(sample_mean, mean)  # a sample, not the whole store
    np.testing.assert_allclose(sample_mean.numpy(), rows.mean(0), rtol=1e-2)


@pytest.fixture
def labelled_store(tmp_path) -> ActivationStore:
    """60 pair groups (speaker, text) x 5 emotions, each utterance 3-9 rows."""
    rng = np.random.default_rng(5)
    utterances, i = [], 0
    for speaker in ("a", "b", "c"):
        for text in range(20):
            for emotion in ("Neutral", "Angry", "Happy", "Sad", "Surprise"):
                meta = _meta(i, speaker=speaker, emotion=emotion, text=f"t{text}")
                utterances.append((meta, rng.standard_normal((int(rng.integers(3, 10)), 16)).astype(np.float32)))
                i += 1
    _write(tmp_path, utterances, shard_rows=128)
    return ActivationStore(tmp_path)


def _owners(store: ActivationStore, rows: np.ndarray, column: str) -> set[str]:
    table = store.utterances
    which = np.searchsorted(table["first_row"].to_numpy(), rows, side="right") - 1
    return set(np.asarray(table[column].to_pylist(), dtype=object)[which])


@pytest.mark.parametrize("by", ["utt_id", "pair_key"])
def test_split_keeps_each_group_on_one_side(labelled_store, by):
    store = labelled_store
    train, val = store.split(0.2, seed=7, by=by)
    assert train.dtype == val.dtype == np.int64
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(store.num_rows))
    assert not _owners(store, train, by) & _owners(store, val, by)
    groups = len(set(store.utterances[by].to_pylist()))
    assert len(_owners(store, val, by)) == round(0.2 * groups)
    if by == "pair_key":  # a held-out pair group takes all five emotions with it
        assert len(_owners(store, val, "utt_id")) == 5 * len(_owners(store, val, "pair_key"))
    again_train, again_val = store.split(0.2, seed=7, by=by)
    assert np.array_equal(again_train, train) and np.array_equal(again_val, val)
    assert not np.array_equal(store.split(0.2, seed=8, by=by)[1], val)


def test_sampler_is_deterministic_disjoint_across_ranks_and_full(labelled_store):
    train, _ = labelled_store.split(0.1, seed=0, by="pair_key")
    batch, world = 16, 3

    def run(rank: int, seed: int = 1, epoch: int = 0, **kw) -> list[np.ndarray]:
        sampler = ShuffledBatchSampler(train, batch, seed=seed, rank=rank, world_size=world, window_rows=120,
                                       block_rows=10, **kw)
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        return batches

    per_rank = [run(r) for r in range(world)]
    steps = len(train) // (batch * world)
    assert [len(b) for b in per_rank] == [steps] * world
    for batches in per_rank:
        assert all(len(b) == batch and b.dtype == np.int64 and np.all(np.diff(b) > 0) for b in batches)
    seen = [np.concatenate(b) for b in per_rank]
    union = np.concatenate(seen)
    assert len(np.unique(union)) == len(union) == steps * batch * world  # disjoint ranks, no row twice
    assert np.isin(union, train).all()

    assert all(np.array_equal(a, b) for a, b in zip(per_rank[0], run(0)))
    assert not all(np.array_equal(a, b) for a, b in zip(per_rank[0], run(0, seed=2)))
    assert not all(np.array_equal(a, b) for a, b in zip(per_rank[0], run(0, epoch=1)))

    # Bounded working set: one step draws from at most two windows of 12 blocks of 10 rows.
    position = {row: p for p, row in enumerate(np.sort(train))}
    for step in zip(*per_rank):
        blocks = {position[row] // 10 for row in np.concatenate(step)}
        assert len(blocks) <= 24

    tails = [run(r, drop_last=False) for r in range(world)]
    assert [len(t) for t in tails] == [steps + 1] * world and len(tails[0][-1]) < batch
    covered = np.concatenate([np.concatenate(t) for t in tails])
    assert len(np.unique(covered)) == len(covered) > len(train) - world


def test_dataloader_yields_whole_batches_from_worker_processes(labelled_store):
    train, _ = labelled_store.split(0.1, seed=0)
    sampler = ShuffledBatchSampler(train, 32, seed=0)
    loader = DataLoader(ActivationDataset(labelled_store, train), sampler=sampler, batch_size=None, num_workers=1)
    batches = list(loader)
    assert len(batches) == len(sampler) == len(train) // 32
    for rows, got in zip(sampler, batches):
        assert got.shape == (32, 16)
        np.testing.assert_array_equal(got.numpy(), labelled_store.rows(rows).numpy())


@pytest.mark.parametrize("threads, depth", [(1, 1), (2, 4), (3, 3)])
def test_thread_prefetcher_yields_the_samplers_batches_in_order(labelled_store, threads, depth):
    """Threads gather ahead, but batch i is still the sampler's i-th array whatever the thread count."""
    from emoctl.store.prefetch import ThreadPrefetcher

    train, _ = labelled_store.split(0.1, seed=0)
    sampler = ShuffledBatchSampler(train, 8, seed=3)
    loader = ThreadPrefetcher(ActivationDataset(labelled_store, train), sampler, threads=threads, depth=depth)
    batches = list(loader)
    assert len(batches) == len(loader) == len(sampler) > depth
    for rows, got in zip(sampler, batches):
        np.testing.assert_array_equal(got.numpy(), labelled_store.rows(rows).numpy())
    sampler.set_epoch(1)  # the next pass follows the sampler's new order
    again = next(iter(loader))
    np.testing.assert_array_equal(again.numpy(), labelled_store.rows(next(iter(sampler))).numpy())
    early = iter(loader)
    next(early)
    early.close()  # stopping early shuts the threads down without gathering the rest


def test_thread_prefetcher_raises_the_gathers_error_and_refuses_bad_sizes(labelled_store):
    from emoctl.store.prefetch import ThreadPrefetcher

    def sampler():
        yield np.arange(4)
        yield np.array([labelled_store.num_rows + 5])  # outside the store

    loader = ThreadPrefetcher(ActivationDataset(labelled_store), sampler(), threads=2, depth=2)
    with pytest.raises(IndexError, match="outside the store"):
        list(loader)
    with pytest.raises(ConfigError, match="depth >= threads"):
        ThreadPrefetcher(ActivationDataset(labelled_store), [], threads=2, depth=1)


# ---- synthetic store ---------------------------------------------------------------------------


def test_synthetic_store_rows_are_sparse_positive_combinations_of_its_dictionary(tmp_path):
    kw = dict(d_model=24, n_atoms=16, k_active=3, n_utterances=30, rows_per_utterance=(4, 9), noise_std=0.0,
              seed=4, shard_rows=100, progress=False)
    dictionary = write_sparse_dictionary_store(tmp_path / "a", **kw)
    assert dictionary.shape == (16, 24)
    np.testing.assert_allclose(np.linalg.norm(dictionary, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "true_dictionary.npy"), dictionary)
    store = ActivationStore(tmp_path / "a")
    rows = store.rows(np.arange(store.num_rows)).numpy()
    codes = np.linalg.lstsq(dictionary.T, rows.T, rcond=None)[0].T  # (rows, atoms): exact, atoms independent
    active = np.abs(codes) > 1e-4
    assert (active.sum(1) == 3).all()
    assert (codes[active] > 0.5 - 1e-4).all() and (codes[active] < 2 + 1e-4).all()
    table = store.utterances.to_pydict()
    assert set(table["emotion"]) == {"Neutral", "Angry", "Happy", "Sad", "Surprise"}
    assert all(4 <= n <= 9 for n in table["num_rows"])
    pairs = {}
    for key, speaker, text in zip(table["pair_key"], table["speaker"], table["text_id"]):
        pairs.setdefault(key, set()).add((speaker, text))
    assert len(pairs) == 6 and all(len(v) == 1 for v in pairs.values())

    again = write_sparse_dictionary_store(tmp_path / "b", **kw)
    np.testing.assert_array_equal(again, dictionary)
    np.testing.assert_array_equal(ActivationStore(tmp_path / "b").rows(np.arange(store.num_rows)).numpy(), rows)
    other = write_sparse_dictionary_store(tmp_path / "c", **{**kw, "seed": 5})
    assert not np.array_equal(other, dictionary)


def test_a_killed_synthetic_build_is_rebuilt_and_readers_refuse_an_unfinished_store(tmp_path):
    """A build killed after its first shards leaves a manifest and committed rows, so it looks like a store:
    readers refuse it by its missing finish mark, and a rerun rebuilds it to the same rows as a clean build."""
    from data_modules.activation_store import ActivationStoreDataModule

    kw = dict(d_model=8, n_atoms=16, k_active=2, n_utterances=40, rows_per_utterance=(3, 5), seed=1,
              shard_rows=32, progress=False)
    clean = write_sparse_dictionary_store(tmp_path / "clean", **kw)
    assert ActivationStore(tmp_path / "clean").finished
    spec = StoreSpec(d_model=8, dtype="float32", hookpoint="synthetic", backbone="synthetic-sparse-dictionary")
    with ActivationWriter(tmp_path / "killed", spec, shard_rows=32, producer="synthetic") as writer:
        for i in range(10):  # the part written before the kill
            writer.append(UtteranceMeta(f"u{i}", f"t{i}", "s", "Neutral"), np.ones((4, 8), np.float32))
    killed = ActivationStore(tmp_path / "killed")
    assert killed.num_utterances == 10 and not killed.finished
    killed.verify(progress=False)  # every checksum is fine: only the finish mark tells
    data = ActivationStoreDataModule(str(tmp_path / "killed"), batch_size=4, verify=False)
    with pytest.raises(StoreError, match="unfinished: its synthetic has not marked it complete .* 10 utterances"):
        data.setup("fit")
    with pytest.warns(UserWarning, match="unfinished synthetic store"):
        again = write_sparse_dictionary_store(tmp_path / "killed", **kw)
    np.testing.assert_array_equal(again, clean)
    rebuilt, reference = ActivationStore(tmp_path / "killed"), ActivationStore(tmp_path / "clean")
    assert rebuilt.finished and rebuilt.num_rows == reference.num_rows
    np.testing.assert_array_equal(rebuilt.rows(np.arange(rebuilt.num_rows)).numpy(),
                                  reference.rows(np.arange(reference.num_rows)).numpy())
    with pytest.raises(StoreError, match="already holds a store"):  # a finished one is never overwritten
        write_sparse_dictionary_store(tmp_path / "clean", **kw)
    # Reopening for writing clears the mark: the producer is writing again.
    ActivationWriter(tmp_path / "clean", ActivationStore(tmp_path / "clean").spec, producer="synthetic").close()
    assert not ActivationStore(tmp_path / "clean").finished


def test_bench_loader_delivers_every_batch_and_prints_its_table(capsys):
    """The loader benchmark times real batches of the training split (rows per batch x batches) against a copy of
    every row of the store, and refuses sizes that leave nothing to time."""
    from emoctl.bench.loader import bench_loader
    from emoctl.errors import ConfigError

    rows = bench_loader(rows=4096, d_model=64, batch_size=256, workers=[], threads=[2, 0], dtypes=["float32"])
    floor, threaded, plain = rows
    assert floor["ratio"] == 1.0 and floor["rows_per_s"] > 0 and threaded["rows_per_s"] > 0
    assert threaded["ratio"] == pytest.approx(threaded["gb_per_s"] / floor["gb_per_s"])
    out = capsys.readouterr().out
    assert "| float32 | ActivationStoreDataModule, in-process, 2 prefetch thread(s) (default) |" in out
    assert "| float32 | ActivationStoreDataModule, in-process, no prefetch |" in out and "Store of 4,096 rows x 64" in out
    with pytest.raises(ConfigError, match="rows must be at least 4 x batch_size"):
        bench_loader(rows=100, batch_size=256)


def test_bench_gpu_writes_one_report_and_refuses_what_it_cannot_run(tmp_path):
    """The GPU check script, run on its reduced shapes on this CPU (the full run needs a GPU)."""
    import torch

    from emoctl.bench.gpu import bench_gpu

    out = bench_gpu(out=str(tmp_path / "r" / "bench_gpu.md"), device="cpu", quick=True, sections=["sae", "loader"])
    text = out.read_text(encoding="utf-8")
    assert "| sae |" in text and "| loader |" in text and "| ddp |" in text and "failed" not in text
    assert "emoctl TopKSAE step" in text and "x fp32 matmul floor" in text  # the benchmark's own table survives
    with pytest.raises(ConfigError, match="--quick true"):
        bench_gpu(out=str(tmp_path / "x.md"), device="cpu")
    with pytest.raises(ConfigError, match="not among"):
        bench_gpu(out=str(tmp_path / "x.md"), device="cpu", quick=True, sections=["ddp"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            bench_gpu(out=str(tmp_path / "x.md"))
