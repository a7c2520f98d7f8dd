"""emoctl's LightningCLI: recipes name their model and data module by class path.

Project policy, set here as a Trainer default: emoctl's data modules give each
DDP rank its own disjoint rows themselves (their samplers know the rank), so
Lightning must not wrap their samplers in a ``DistributedSampler``. Every fit
holds its run folder for its lifetime (:mod:`emoctl.callbacks.run_folder_lock`).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from emoctl.callbacks.export import export_callbacks
from emoctl.callbacks.run_folder_lock import RunFolderLock, RunFolderRefused
from emoctl.errors import ConfigError, first_line

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

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        """A fit holds its run folder (:class:`~emoctl.callbacks.run_folder_lock.RunFolderLock`) from setup on,
        before the recipe echo (``config.yaml``) is written there; a model that is
        :class:`~emoctl.callbacks.export.Exportable` ends its fit with a
        :class:`~emoctl.callbacks.export.ModelExport` unless the recipe lists one."""
        if self.subcommand == "fit":
            ckpt_path = self.config["fit"].get("ckpt_path")
            callbacks = [RunFolderLock(resuming=ckpt_path is not None), *callbacks]
        listed = config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        callbacks = [*callbacks, *export_callbacks(getattr(self, "model", None), [*listed, *callbacks])]
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except RunFolderRefused:
            raise  # the folder is another run's: nothing of it is this fit's to settle
        except BaseException as err:
            if subcommand == "fit" and getattr(self, "trainer", None) is not None and self.trainer.is_global_zero:
                settle_failed_run(self.trainer, err)
            raise
        finally:
            for callback in getattr(getattr(self, "trainer", None), "callbacks", []):
                if isinstance(callback, RunFolderLock):
                    callback.release()

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


LEFT_BY_EVERY_RUN = {"config.yaml", "hparams.yaml", ".fit.lock"}
FAILED_NOTE = "FAILED.md"


def settle_failed_run(trainer: Any, err: BaseException) -> None:
    """After a failed fit, leave nothing that looks like a result: a run folder holding only the recipe echo
    is removed; one with logs or checkpoints keeps them (to debug, or to resume) under a FAILED.md that says
    what happened and how to resume."""
    import shutil

    logger = trainer.logger
    folder = Path(logger.log_dir) if logger is not None and getattr(logger, "log_dir", None) else None
    if folder is None or not folder.is_dir():
        return
    files = [p for p in folder.rglob("*") if p.is_file()]
    if all(p.name in LEFT_BY_EVERY_RUN or _logs_nothing(p) for p in files):
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # the logger's name folder, if this run was all it held
        except OSError:
            pass
        return
    checkpoints = sorted(p for p in files if p.suffix == ".ckpt")
    resume = (f"Resume from the last checkpoint: add `--ckpt_path {checkpoints[-1]}` to the same command."
              if checkpoints else "No checkpoint was written; rerun the command after fixing the cause.")
    message = " ".join(str(err).split()) or type(err).__name__
    note = (f"# This run failed at step {trainer.global_step}\n\n{type(err).__name__}: {message}\n\n"
            f"Nothing here was exported. {resume}\n")
    try:
        (folder / FAILED_NOTE).write_text(note)
    except OSError:
        pass  # the original error matters more than the note


def _logs_nothing(path: Path) -> bool:
    """A TensorBoard event file that holds no logged value (only the header every writer starts with)."""
    if not path.name.startswith("events.out.tfevents") or path.stat().st_size > 1 << 20:
        return False
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    try:
        return not any(event.HasField("summary") for event in EventFileLoader(str(path)).Load())
    except Exception:  # an unreadable log is kept: it may be what explains the failure
        return False


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
        said = re.sub(r"\x1b\[[0-9;]*m", "", first_line(err))[:200] if str(err).strip() else "the file ends early"
        raise ConfigError(f"--ckpt_path {path} is not a readable Lightning checkpoint ({type(err).__name__}: "
                          f"{said}). Point at a .ckpt a fit wrote.") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:  # torch.load also reads bare tensors
        found = (f"keys {sorted(map(str, checkpoint))[:4]}" if isinstance(checkpoint, dict)
                 else type(checkpoint).__name__)
        raise ConfigError(f"--ckpt_path {path} is not a Lightning checkpoint (it holds {found}, no state_dict), so "
                          "the run cannot resume from it. Point at a .ckpt a fit wrote (checkpoints/last.ckpt).")
    saved = checkpoint.get("hyper_parameters")
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
