"""SAE training end to end: `emoctl fit` on the demo recipe, bad inputs, and resume."""
from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
import numpy as np
import pytest
import torch

from emoctl_tests.helpers.cli import RECIPES, run_emoctl
from data_modules import ActivationStoreDataModule, SyntheticSparseStore
from emoctl.errors import ConfigError, StoreNotFoundError
from emoctl.sae.config import SAEConfig
from emoctl.sae.export import load_pretrained
from emoctl.sae.module import SAEModule
from emoctl.sae.recovery import dictionary_recovery


def _demo_overrides(root: Path) -> list[str]:
    return [
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.logger.init_args.version=v0",
        f"--data.init_args.path={root / 'store'}",
    ]


@pytest.mark.slow
def test_demo_recipe_recovers_the_true_dictionary(tmp_path):
    result = run_emoctl("fit", "--config", str(RECIPES / "sae_demo.yaml"), *_demo_overrides(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "sae_demo" / "v0"
    export = run_dir / "sae"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    cfg = json.loads((export / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["d_in"] == 64 and cfg["d_sae"] == 512 and cfg["k"] == 8

    sae = load_pretrained(export)
    true = np.load(tmp_path / "store" / "true_dictionary.npy")
    recovery = dictionary_recovery(sae.W_dec.detach(), true, threshold=0.9)
    assert recovery.fraction_recovered >= 0.8, recovery.summary()
    # Unit-norm decoder atoms survive training.
    norms = sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)

    # TensorBoard has the training curves and the validation histogram.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/fvu", "train/l0", "train/dead_fraction", "train/aux_fvu", "train/lr",
                "val/fvu", "val/never_fired"):
        assert tag in tags["scalars"], tag
    assert "val/log10_feature_frequency" in tags["histograms"]
    fvu = [e.value for e in events.Scalars("val/fvu")]
    assert fvu[-1] < 0.1 < fvu[0] or fvu[-1] < 0.5 * fvu[0]
    l0 = [e.value for e in events.Scalars("train/l0")]
    assert max(l0) <= 8.0 + 1e-6


def test_store_width_differs_from_d_in_is_a_clear_error_and_writes_nothing(tmp_path):
    result = run_emoctl("fit", "--config", str(RECIPES / "sae_demo.yaml"), *_demo_overrides(tmp_path),
                        "--data.init_args.build.init_args.n_utterances=200", "--model.init_args.sae.d_in=32")
    assert result.returncode != 0
    assert "d_model=64" in result.stderr and "d_in=32" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("cfg.json"))


def test_missing_store_without_builder_names_the_path(tmp_path):
    missing = tmp_path / "no_store_here"
    dm = ActivationStoreDataModule(str(missing), batch_size=8)
    with pytest.raises(StoreNotFoundError, match="no_store_here"):
        dm.prepare_data()
    assert not missing.exists()
    result = run_emoctl("fit", "--config", str(RECIPES / "sae_demo.yaml"), *_demo_overrides(tmp_path),
                        f"--data.init_args.path={missing}", "--data.init_args.build=null")
    assert result.returncode != 0 and "no_store_here" in result.stderr and "Traceback" not in result.stderr


def test_failed_build_leaves_no_half_store(tmp_path):
    class Exploding(SyntheticSparseStore):
        def build(self, path: Path) -> None:
            super().build(path)
            raise RuntimeError("disk full")

    target = tmp_path / "store"
    with pytest.raises(RuntimeError):
        Exploding(n_utterances=20).build_atomically(target)
    assert not target.exists()
    SyntheticSparseStore(n_utterances=20).build_atomically(target)  # a retry cleans the leftovers
    assert (target / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_bad_module_settings_are_config_errors():
    with pytest.raises(ConfigError, match="decay_fraction"):
        SAEModule(SAEConfig(d_in=8, d_sae=16, k=2), decay_fraction=1.5)


class _CaptureCounters(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.at_start = pl_module.sae.tokens_since_fired.clone()
        self.b_pre_at_start = pl_module.sae.b_dec.detach().clone()


def _small_run(tmp_path: Path, max_steps: int, callbacks=(), ckpt_path=None) -> pl.Trainer:
    dm = ActivationStoreDataModule(str(tmp_path / "store"), batch_size=256, num_workers=0,
                                   build=SyntheticSparseStore(d_model=16, n_atoms=32, n_utterances=100))
    model = SAEModule(SAEConfig(d_in=16, d_sae=64, k=4, dead_tokens=2000, hook_name="synthetic"), warmup_steps=5)
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks),
                         use_distributed_sampler=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return trainer


def test_resume_continues_dead_latent_counters_and_b_pre(tmp_path):
    first = _small_run(tmp_path, max_steps=12)
    ckpt = tmp_path / "resume.ckpt"
    first.save_checkpoint(ckpt)
    checkpoint = torch.load(ckpt, weights_only=False)
    saved = checkpoint["state_dict"]
    # On this data every latent fires within a step, so the trained counters are all 0: give them distinct
    # values (as a run with dead latents would have) so that a resume which re-initialized them shows.
    counters = torch.arange(saved["sae.tokens_since_fired"].numel(), dtype=saved["sae.tokens_since_fired"].dtype) * 7
    saved["sae.tokens_since_fired"] = counters
    torch.save(checkpoint, ckpt)

    capture = _CaptureCounters()
    second = _small_run(tmp_path, max_steps=20, callbacks=[capture], ckpt_path=ckpt)
    assert second.global_step == 20
    assert torch.equal(capture.at_start, counters)
    assert torch.equal(capture.b_pre_at_start, saved["sae.b_dec"])  # not re-initialized from the data


class _RecordRows(pl.Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch.detach().clone())


def test_a_run_resumed_mid_epoch_sees_the_rows_an_uninterrupted_one_would(tmp_path):
    """Lightning restarts a loader at its first batch on resume; the data module continues the epoch instead,
    so the resumed steps train on exactly the uninterrupted run's batches (no repeats, none skipped)."""
    whole = _RecordRows()
    _small_run(tmp_path / "whole", max_steps=10, callbacks=[whole])
    first = _RecordRows()  # a run killed after step 7 that checkpointed at step 5 (during training, as runs do)
    saver = ModelCheckpoint(dirpath=tmp_path / "parts" / "ckpt", every_n_train_steps=5, save_top_k=-1)
    interrupted = _small_run(tmp_path / "parts", max_steps=7, callbacks=[first, saver])
    assert interrupted.num_training_batches > 10  # the cut falls inside the first epoch
    rest = _RecordRows()
    _small_run(tmp_path / "parts", max_steps=10, callbacks=[rest],
               ckpt_path=tmp_path / "parts" / "ckpt" / "epoch=0-step=5.ckpt")
    first.batches = first.batches[:5]
    assert len(rest.batches) == 5
    for step, (want, got) in enumerate(zip(whole.batches, first.batches + rest.batches), 1):
        assert torch.equal(want, got), f"step {step} trained on other rows"


def test_a_run_resumed_at_an_epoch_end_sees_the_rows_an_uninterrupted_one_would(tmp_path):
    """A checkpoint written after an epoch's last batch resumes with the next epoch from its first batch. (It used
    to skip as many of the next epoch's batches as the finished epoch had: a run killed there trained on other
    rows than an uninterrupted one; found by emoctl_tests/harness/kill_campaign.py.)"""
    probe = _small_run(tmp_path / "probe", max_steps=1)
    n = probe.num_training_batches  # steps of one epoch
    whole = _RecordRows()
    _small_run(tmp_path / "whole", max_steps=n + 4, callbacks=[whole])
    first = _RecordRows()  # a run killed after step n + 1 that checkpointed at step n, the epoch's last
    saver = ModelCheckpoint(dirpath=tmp_path / "parts" / "ckpt", every_n_train_steps=n, save_top_k=-1)
    _small_run(tmp_path / "parts", max_steps=n + 1, callbacks=[first, saver])
    rest = _RecordRows()
    _small_run(tmp_path / "parts", max_steps=n + 4, callbacks=[rest],
               ckpt_path=tmp_path / "parts" / "ckpt" / f"epoch=0-step={n}.ckpt")
    assert len(rest.batches) == 4
    for step, (want, got) in enumerate(zip(whole.batches, first.batches[:n] + rest.batches), 1):
        assert torch.equal(want, got), f"step {step} trained on other rows"


def test_resume_refuses_a_missing_or_unreadable_checkpoint_and_a_recipe_that_disagrees_with_it(tmp_path):
    base = ["fit", "--config", str(RECIPES / "sae_demo.yaml"), *_demo_overrides(tmp_path),
            "--data.init_args.build.init_args.n_utterances=200", "--trainer.max_steps=10",
            "--trainer.val_check_interval=5"]
    assert run_emoctl(*base).returncode == 0
    ckpt = next(tmp_path.rglob("last.ckpt"))
    for extra, needles in (
        (["--ckpt_path", str(tmp_path / "nope.ckpt")], ["nope.ckpt does not exist"]),
        (["--ckpt_path", str(tmp_path / "garbage.ckpt")], ["garbage.ckpt is not a readable Lightning checkpoint"]),
        (["--ckpt_path", str(ckpt), "--model.init_args.sae.k=4", "--model.init_args.lr=0.001"],
         ["model.sae: checkpoint", "'k': 8", "'k': 4", "model.lr: checkpoint 0.002, recipe 0.001"]),
    ):
        (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
        result = run_emoctl(*base, "--trainer.max_steps=20", *extra)
        message = " ".join(result.stderr.split())
        assert result.returncode == 1 and "Traceback" not in message, message[-1500:]
        for needle in needles:
            assert needle in message, (needle, message[-1500:])
    resumed = run_emoctl(*base, "--trainer.max_steps=20", "--ckpt_path", str(ckpt))  # the same recipe resumes
    assert resumed.returncode == 0, resumed.stderr[-2000:]


class _CountingSAEModule(SAEModule):
    """SAEModule that records the global step of every ``self.log`` call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logged_at: list[int] = []

    def log(self, name, *args, **kwargs):
        if name.startswith("train/"):
            self.logged_at.append(self.global_step)
        return super().log(name, *args, **kwargs)


def test_training_scalars_are_computed_and_logged_only_on_the_steps_lightning_writes(tmp_path):
    """Each self.log costs Lightning Python work and a progress-bar value a device sync (on a GPU the loop was
    2.6x slower than the step): the module logs only on the steps Lightning writes, and those are all there."""
    from emoctl.bench.ddp import scalars
    from lightning.pytorch.loggers import TensorBoardLogger

    dm = ActivationStoreDataModule(str(tmp_path / "store"), batch_size=256, num_workers=0,
                                   build=SyntheticSparseStore(d_model=16, n_atoms=32, n_utterances=100))
    model = _CountingSAEModule(SAEConfig(d_in=16, d_sae=64, k=4, dead_tokens=2000, hook_name="synthetic"),
                               warmup_steps=5)
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="v")
    trainer = pl.Trainer(accelerator="cpu", max_steps=47, logger=logger, log_every_n_steps=10,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, dm)
    logged_steps = sorted(set(model.logged_at))
    assert logged_steps == [9, 19, 29, 39]  # not all 47 steps
    assert len(model.logged_at) == 4 * 6  # six training scalars each time
    steps, losses, _ = scalars(tmp_path / "tb" / "v", "train/loss")
    assert steps.tolist() == logged_steps and np.isfinite(losses).all()


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"compile": True}, {"auxk": "fixed_shape", "matmul_dtype": "bfloat16"}],
                         ids=["compiled", "fixed-shape-bf16"])
def test_the_step_options_train_and_keep_atoms_unit_norm(tmp_path, options):
    """SAEModule's compiled step (fixed-shape AuxK) and its bf16 encoder products run a real Lightning fit."""
    torch._dynamo.reset()
    dm = ActivationStoreDataModule(str(tmp_path / "store"), batch_size=256, num_workers=0,
                                   build=SyntheticSparseStore(d_model=16, n_atoms=32, n_utterances=100))
    model = SAEModule(SAEConfig(d_in=16, d_sae=64, k=4, dead_tokens=512, hook_name="synthetic"), warmup_steps=2,
                      **options)
    trainer = pl.Trainer(accelerator="cpu", max_steps=8, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, enable_checkpointing=False,
                         use_distributed_sampler=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, dm)
    torch._dynamo.reset()
    assert trainer.global_step == 8 and model.resolved_auxk == "fixed_shape"
    assert not torch.equal(model.sae.W_enc, model.sae.W_dec)  # trained away from the tied-copy init
    norms = model.sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert int(model._non_finite_losses) == 0
