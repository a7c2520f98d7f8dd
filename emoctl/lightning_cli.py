"""emoctl's LightningCLI: recipes name their model and data module by class path.

Project policy, set here as a Trainer default: emoctl's data modules give each
DDP rank its own disjoint rows themselves (their samplers know the rank), so
Lightning must not wrap their samplers in a ``DistributedSampler``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from emoctl.errors import ConfigError

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

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the recipe's model arguments with the checkpoint's without a word; refuse a
        disagreement (and a missing or unreadable checkpoint) first, so a resume continues the run it names."""
        subcommand = self.config.get("subcommand")
        if subcommand:
            section = self.config[subcommand]
            model = section.get("model")
            init_args = model.get("init_args") if model is not None and hasattr(model, "get") else None
            check_resume(section.get("ckpt_path"), init_args.as_dict() if init_args is not None else {})
        super()._parse_ckpt_path()


def check_resume(ckpt_path: str | None, recipe_args: dict[str, Any]) -> None:
    """Refuse a missing or unreadable checkpoint, and model arguments that differ from the checkpoint's, naming
    both values."""
    if ckpt_path is None or ckpt_path in ("last", "best", "hpc", "registry"):
        return
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"--ckpt_path {path} does not exist. Give a checkpoint file (e.g. "
                          "runs/<name>/<version>/checkpoints/last.ckpt), or leave --ckpt_path out to start afresh.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise ConfigError(f"--ckpt_path {path} is not a readable Lightning checkpoint ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200]}). Point at a .ckpt a fit wrote.") from None
    saved = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict):
        return  # no recorded arguments to compare
    keys = sorted(k for k in saved.keys() & recipe_args.keys() if not k.startswith("_"))
    differ = [f"model.{key}: checkpoint {_plain(saved[key])!r}, recipe {_plain(recipe_args[key])!r}"
              for key in keys if _plain(saved[key]) != _plain(recipe_args[key])]
    if differ:
        raise ConfigError(f"--ckpt_path {path} was trained with other model arguments than this recipe gives ("
                          + "; ".join(differ) + "). Resume with the checkpoint's values, or start a new run "
                          "(another trainer.logger version) without --ckpt_path.")


def _plain(value: Any) -> Any:
    """Comparable form of an argument: dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if hasattr(value, "as_dict") and callable(value.as_dict):  # a jsonargparse Namespace
        return _plain(value.as_dict())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
