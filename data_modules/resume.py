"""Where a resumed fit stands in its epoch, for data modules that continue the epoch's data order."""
from __future__ import annotations

import lightning.pytorch as pl


def batches_done_this_epoch(trainer: pl.Trainer | None) -> int:
    """Training batches the fit loop processed in its current epoch before the checkpoint it resumes from
    (0 for a fresh run or when resuming at an epoch's end)."""
    if trainer is None or not trainer.fit_loop.restarting:
        return 0
    progress = trainer.fit_loop.epoch_loop.batch_progress
    if progress.is_last_batch:  # checkpointed after the epoch's last batch: the loop resumes with the next
        return 0                # epoch, whose first pass must not skip anything
    # processed, not completed: a checkpoint written in on_train_batch_end (ModelCheckpoint) has processed
    # and stepped on the batch before Lightning counts it completed.
    return int(progress.current.processed)
