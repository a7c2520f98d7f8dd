"""A callback for the DDP test: each rank records a fingerprint of every row it trained on."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning.pytorch as pl


class RowRecorder(pl.Callback):
    """Writes ``rows-rank<R>.json`` with one hash per training row seen by that rank."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.hashes: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        rows = batch.detach().cpu().contiguous().numpy()
        self.hashes += [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in rows]

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        out = {"rank": trainer.global_rank, "world": trainer.world_size, "hashes": self.hashes}
        (self.out_dir / f"rows-rank{trainer.global_rank}.json").write_text(json.dumps(out))
