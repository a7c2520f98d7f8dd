"""A producer process for the store tests: appends deterministic utterances to one rank.

Run as ``python emoctl_tests/helpers/store_worker.py STORE --rank R --n-utts N ...``.  The test that
kills it with SIGKILL and the test of two concurrent ranks compare the store
with ``utterance_rows``; on start it prints how many committed utterances it skips.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from emoctl.store import ActivationWriter, StoreSpec, UtteranceMeta  # noqa: E402

D_MODEL = 48
SPEC = StoreSpec(d_model=D_MODEL, dtype="float32", hookpoint="resid_pre.3", layer=3, backbone="store-test")


def utt_id(rank: int, i: int) -> str:
    return f"r{rank}-u{i:05d}"


def utterance_rows(rank: int, i: int) -> np.ndarray:
    """Rows of utterance i of a rank: (5 + i % 7, D_MODEL) float32, reproducible anywhere."""
    return np.random.default_rng([rank, i]).standard_normal((5 + i % 7, D_MODEL)).astype(np.float32)


def meta(rank: int, i: int) -> UtteranceMeta:
    return UtteranceMeta(utt_id=utt_id(rank, i), text_id=f"t{i // 5}", speaker=f"s{rank}", emotion=f"e{i % 5}")


def produce(path: Path, rank: int, n_utts: int, shard_rows: int, sleep_s: float, consolidate: bool) -> None:
    with ActivationWriter(path, SPEC, rank=rank, shard_rows=shard_rows, consolidate=consolidate) as writer:
        done = writer.committed_utt_ids
        print(f"skipped {len(done)}", flush=True)
        for i in range(n_utts):
            if utt_id(rank, i) in done:
                continue
            writer.append(meta(rank, i), utterance_rows(rank, i))
            if sleep_s:
                time.sleep(sleep_s)
    print("done", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--n-utts", type=int, required=True)
    parser.add_argument("--shard-rows", type=int, default=64)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--no-consolidate", action="store_true")
    args = parser.parse_args()
    produce(args.path, args.rank, args.n_utts, args.shard_rows, args.sleep, not args.no_consolidate)
