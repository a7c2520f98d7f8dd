"""``harvest_into``: a single-process harvest loop without a Trainer.

``emoctl harvest`` runs the harvest as Lightning's predict (DDP, progress bar,
callbacks); a store builder runs inside another Trainer's ``prepare_data``,
where starting a second Trainer is not safe, so it uses this loop.  Both go
through the same module, data module and :class:`HarvestSession`, so they
write the same store for the same settings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm

from emoctl.backbones.hooks import Phase
from emoctl.harvest.module import HarvestModule
from emoctl.harvest.session import HarvestSession
from emoctl.store import consolidate_store
from emoctl.store.manifest import mark_finished


def harvest_into(path: str | Path, module: HarvestModule, datamodule, hookpoint: str,
                 phases: Iterable[str | Phase] = (Phase.DECODE,), dtype: str = "float32", shard_rows: int = 1 << 16,
                 progress: bool = True, commit_every_s: float = 60.0) -> HarvestSession:
    """Generate every pending batch of ``datamodule`` and store it at ``path`` (resumes a partial store)."""
    module.bind_prompts(datamodule)
    settings = {"generation": module.generation_settings(), "prompts": datamodule.describe()}
    session = HarvestSession(path, module.backbone, hookpoint, phases, settings, dtype=dtype, shard_rows=shard_rows,
                             commit_every_s=commit_every_s)
    try:
        datamodule.skip_utt_ids(session.committed)
        batches = datamodule.pending_batches()
        with session.recorder, torch.inference_mode():
            for batch in tqdm(batches, desc=f"harvesting {hookpoint}", unit="batch", disable=not progress):
                session.recorder.start()
                out = module.generate_batch(batch)
                session.write(out.prompts, out.generation)
    except BaseException:
        session.abort()
        raise
    session.close()
    consolidate_store(path)
    mark_finished(Path(path))  # every pending batch went through: readers may use the store
    return session
