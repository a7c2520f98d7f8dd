"""LightningDataModules of emoctl.

Data modules read data and hand out batches; they know nothing of steering or
of the models that consume them.  Each one gives every DDP rank its own
disjoint share itself (its sampler knows the rank), which is why emoctl's CLI
sets ``trainer.use_distributed_sampler: false``.
"""
from __future__ import annotations

from data_modules.activation_store import ActivationStoreDataModule
from data_modules.prompt_grid import CorpusTexts, PromptGridDataModule
from data_modules.store_builders import HarvestedStore, StoreBuilder, SyntheticSparseStore

__all__ = ["ActivationStoreDataModule", "CorpusTexts", "HarvestedStore", "PromptGridDataModule", "StoreBuilder",
           "SyntheticSparseStore"]
