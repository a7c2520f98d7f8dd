"""emoctl's LightningCLI: recipes name their model and data module by class path.

Project policy, set here as a Trainer default: emoctl's data modules give each
DDP rank its own disjoint rows themselves (their samplers know the rank), so
Lightning must not wrap their samplers in a ``DistributedSampler``.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

import data_modules  # noqa: F401  (registers emoctl's data modules for short names)
import emoctl.sae.module  # noqa: F401  (registers SAEModule for short names)
import emoctl.harvest.module  # noqa: F401  (registers HarvestModule for short names)


class EmoctlLightningCLI(LightningCLI):
    """LightningCLI with emoctl's defaults; see :mod:`emoctl.cli` for the front door."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", LightningModule)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("trainer_defaults", {"use_distributed_sampler": False})
        # A rerun into the same log directory (e.g. a resumed job) refreshes config.yaml.
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(**kwargs)
