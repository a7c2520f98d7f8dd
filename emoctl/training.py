"""Training plumbing the LightningModules share: the learning-rate schedule, AdamW groups, provenance.

The mini TTS, its SFT baseline, EmoShift and the mini SER all train with AdamW
(no decay on biases and norms), linear warm-up then cosine or linear decay, and
export a folder that records the resolved recipe; this module holds that once.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import lightning.pytorch as pl
import torch

from emoctl.errors import ConfigError


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its learning-rate schedule: linear warm-up, then cosine or linear decay (``model.optimizer``)."""

    lr: float = 1e-3
    """Peak learning rate, reached at the end of the warm-up."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices and embeddings (biases and norms are never decayed)."""
    warmup_steps: int = 0
    """Steps of linear warm-up from 0 to ``lr``."""
    schedule: Literal["cosine", "linear"] = "cosine"
    """Decay after warm-up, to ``min_lr_fraction * lr`` at the last step."""
    min_lr_fraction: float = 0.1
    """Final learning rate as a fraction of ``lr``."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or not 0.0 <= self.min_lr_fraction <= 1.0:
            raise ConfigError(f"model.optimizer needs lr > 0, warmup_steps >= 0 and 0 <= min_lr_fraction <= 1; got "
                              f"lr={self.lr}, warmup_steps={self.warmup_steps}, "
                              f"min_lr_fraction={self.min_lr_fraction}.")
        if self.schedule not in ("cosine", "linear"):
            raise ConfigError(f"model.optimizer.schedule must be 'cosine' or 'linear', got {self.schedule!r}.")


# Lightning checkpoints keep the hyperparameters, this dataclass among them; resuming loads them with
# torch.load(weights_only=True), which refuses classes it was not told are safe.
torch.serialization.add_safe_globals([OptimizerConfig])


def warmup_then_decay(warmup_steps: int, total_steps: int, schedule: str, min_fraction: float
                      ) -> Callable[[int], float]:
    """Learning-rate factor per step: linear 0 -> 1 over warm-up, then cosine or linear to ``min_fraction``."""
    if schedule not in ("cosine", "linear"):
        raise ConfigError(f"model.optimizer.schedule must be 'cosine' or 'linear', got {schedule!r}.")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_fraction + (1 - min_fraction) * shape

    return factor


def adamw_with_schedule(params: Iterable[torch.nn.Parameter], config: OptimizerConfig, total_steps: int,
                        *, decay_groups: bool = True) -> dict[str, Any]:
    """``configure_optimizers`` output: AdamW stepped by :func:`warmup_then_decay` over ``total_steps``.

    With ``decay_groups`` weight decay applies to matrices only (``ndim >= 2``), in a group of its own beside the
    undecayed biases and norms; without, one group decays every parameter."""
    params = [p for p in params if p.requires_grad]
    if decay_groups:
        groups: Any = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
                       {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas),
                                      weight_decay=config.weight_decay)
    factor = warmup_then_decay(config.warmup_steps, max(int(total_steps), 1), config.schedule,
                               config.min_lr_fraction)
    return {"optimizer": optimizer,
            "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}}


def jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def run_dir(trainer: pl.Trainer) -> Path:
    """``trainer.log_dir`` without its collective broadcast, so one rank alone may ask (an export on rank 0).

    Lightning's property broadcasts rank 0's answer to every rank; called on rank 0 only, it waits forever
    for the others under DDP."""
    if trainer.loggers:
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        logger = trainer.loggers[0]
        folder = logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else logger.save_dir
        if folder:
            return Path(folder)
    return Path(trainer.default_root_dir)


def read_recipe(trainer: pl.Trainer) -> str | None:
    """The resolved recipe LightningCLI saved as ``<log dir>/config.yaml``, if any (safe on one rank)."""
    path = run_dir(trainer) / "config.yaml"
    return path.read_text() if path.is_file() else None


def store_provenance(trainer: pl.Trainer) -> dict[str, Any]:
    """Where a model's training rows came from (the data module's activation store), for its export."""
    store = getattr(getattr(trainer, "datamodule", None), "store", None)
    if store is None:
        return {}
    spec = store.spec
    return {"store_path": str(store.path), "backbone": spec.backbone, "hookpoint": spec.hookpoint,
            "layer": spec.layer, "store_rows": int(store.num_rows)}
