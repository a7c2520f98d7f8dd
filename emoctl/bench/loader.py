"""``emoctl bench loader``: how fast the activation store feeds SAE training, against a plain copy.

An H100 takes a bf16 SAE step at the paper's shape (1280 -> 4096, k = 32, batch 4096) in a few
milliseconds, so the store must hand it on the order of a million rows a second.  This measures what
``ActivationStoreDataModule`` delivers as ready training batches (the training split, shuffled as in
training: gathered ahead by 2, 1 or 0 threads of the training process, or by 1 or 2 worker processes) from
page-cached shards, for float32 and bfloat16 stores of
d = 1280; and, in the same run, the floor: a sequential copy of the same bytes out of the same
memory-mapped shard files, in batch-sized chunks, into one reused buffer.

The store is written to a temporary folder (random rows; the loader does not care what they hold) and
read once before timing, so every row is timed from the page cache, as in a training run after its
first epoch.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data_modules.activation_store import ActivationStoreDataModule
from emoctl.bench.rounds import resolve_device, sync
from emoctl.emotions import ESD_EMOTIONS
from emoctl.errors import ConfigError
from emoctl.store import ActivationStore, ActivationWriter, StoreSpec, UtteranceMeta

ROWS_PER_UTTERANCE = 250  # about 5 s of speech tokens: a harvest's utterance


def _write_store(path: Path, rows: int, d_model: int, dtype: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    spec = StoreSpec(d_model=d_model, dtype=dtype, hookpoint="resid_pre.16", backbone="bench")
    emotions = ESD_EMOTIONS
    with ActivationWriter(path, spec) as writer:
        for u in range(-(-rows // ROWS_PER_UTTERANCE)):
            n = min(ROWS_PER_UTTERANCE, rows - u * ROWS_PER_UTTERANCE)
            group = u // len(emotions)
            meta = UtteranceMeta(utt_id=f"u{u:06d}", text_id=f"t{group}", speaker="s", emotion=emotions[u % 5],
                                 pair_key=f"s|t{group}")
            writer.append(meta, torch.randn(n, d_model, generator=g).to(spec.torch_dtype))


def _floor(path: Path, batch_size: int) -> tuple[float, int]:
    """Seconds to copy every shard's rows sequentially, batch-sized chunk by chunk, into one buffer."""
    store = ActivationStore(path)
    shards = [store._shard_rows(i) for i in range(len(store.shards))]
    buffer = np.empty((batch_size, store.d_model), dtype=shards[0].dtype)
    start, copied = time.perf_counter(), 0
    for mm in shards:
        for a in range(0, mm.shape[0], batch_size):
            chunk = mm[a:a + batch_size]
            np.copyto(buffer[:len(chunk)], chunk)
            copied += chunk.nbytes
    return time.perf_counter() - start, copied


def _loader(path: Path, batch_size: int, workers: int, threads: int, max_batches: int,
            device: torch.device) -> tuple[float, int, int]:
    """Seconds, rows and bytes of ``max_batches`` training batches from the data module (first batch untimed:
    it pays the worker start-up, which a training run pays once); on a GPU each batch is pinned and copied to
    it, as a training step receives it."""
    data = ActivationStoreDataModule(str(path), batch_size=batch_size, val_fraction=0.02, num_workers=workers,
                                     prefetch_threads=threads, verify=False, pin_memory=device.type == "cuda")
    data.setup("fit")
    loader = iter(data.train_dataloader())
    next(loader)
    rows = nbytes = 0
    start = time.perf_counter()
    for _ in range(max_batches):
        try:
            batch = next(loader)
        except StopIteration:
            break
        if device.type == "cuda":
            batch = batch.to(device, non_blocking=True)
        rows += batch.shape[0]
        nbytes += batch.numel() * batch.element_size()
    sync(device)
    seconds = time.perf_counter() - start
    del loader
    return seconds, rows, nbytes


def bench_loader(rows: int = 262_144, d_model: int = 1280, batch_size: int = 4096, workers: list[int] | None = None,
                 threads: list[int] | None = None, dtypes: list[str] | None = None, seed: int = 0,
                 device: str = "cpu") -> list[dict]:
    """Rows/s and GB/s of training batches from the store, against a sequential copy of its bytes.

    Args:
        rows: Rows in the temporary store (262,144 x 1280 is 1.34 GB at float32, 0.67 GB at bfloat16).
        d_model: Row width (IndexTTS2's GPT: 1280).
        batch_size: Rows per training batch (the SAE recipes' 4096).
        workers: DataLoader worker-process counts to time (default 1, 2).
        threads: Prefetch-thread counts to time in the training process, with 0 workers (default 2, 1, 0;
            2 is the data module's default setting).
        dtypes: Store dtypes to time (default float32 and bfloat16).
        seed: Seed of the random rows.
        device: "cpu" (batches in host memory) or "cuda" (pinned batches copied to the GPU, timed until the
            last copy lands).
    """
    workers = [1, 2] if workers is None else list(workers)
    threads = [2, 1, 0] if threads is None else list(threads)
    dtypes = ["float32", "bfloat16"] if dtypes is None else list(dtypes)
    if (rows < 4 * batch_size or d_model < 1 or batch_size < 1 or any(w < 0 for w in workers)
            or any(t < 0 for t in threads)):
        raise ConfigError(f"rows must be at least 4 x batch_size, d_model and batch_size positive, workers and "
                          f"threads >= 0; got rows={rows}, d_model={d_model}, batch_size={batch_size}, "
                          f"workers={workers}, threads={threads}.")
    dev = resolve_device(device, "bench loader", auto=False)
    settings = [(0, t) for t in threads] + [(w, 0) for w in workers if w > 0]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="emoctl-bench-loader-") as tmp:
        for dtype in dtypes:
            path = Path(tmp) / dtype
            _write_store(path, rows, d_model, dtype, seed)
            _floor(path, batch_size)  # warm the page cache
            floor_s, floor_bytes = min(_floor(path, batch_size) for _ in range(3))
            floor_gbs = floor_bytes / floor_s / 1e9
            results.append({"dtype": dtype, "row": "floor: sequential copy of the memmapped shards",
                            "rows_per_s": floor_bytes / (d_model * np.dtype(np.float32 if dtype == "float32"
                                                                            else np.uint16).itemsize) / floor_s,
                            "gb_per_s": floor_gbs, "ratio": 1.0})
            batches = rows // batch_size - 2
            for w, t in tqdm(settings, desc=f"bench loader {dtype}", unit="setting"):
                seconds, got_rows, got_bytes = _loader(path, batch_size, w, t, batches, dev)
                gbs = got_bytes / seconds / 1e9
                label = (f"{w} worker process(es)" if w else
                         f"in-process, {t} prefetch thread(s)" + (" (default)" if t == 2 else "") if t else
                         "in-process, no prefetch") + (", pinned -> cuda" if dev.type == "cuda" else "")
                results.append({"dtype": dtype, "row": f"ActivationStoreDataModule, {label}",
                                "rows_per_s": got_rows / seconds, "gb_per_s": gbs, "ratio": gbs / floor_gbs})
    print(f"\nStore of {rows:,} rows x {d_model}, batches of {batch_size} (training split, shuffled as in "
          f"training), page-cached; torch threads {torch.get_num_threads()}. Target: the default setting "
          "(in-process, 2 prefetch threads) at >= 50% of the floor.\n")
    print("| dtype | row | rows/s | GB/s | x floor |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['dtype']} | {r['row']} | {r['rows_per_s']:,.0f} | {r['gb_per_s']:.2f} | {r['ratio']:.2f} |")
    return results
