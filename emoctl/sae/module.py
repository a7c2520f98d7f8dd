"""``SAEModule``: trains a :class:`~emoctl.sae.topk_sae.TopKSAE` with Lightning.

The nn.Module holds the math; this module adds what a training run needs:
Adam with warm-up and linear decay, the decoder-norm constraint around each
optimizer step, dead-latent counters kept in sync across DDP ranks, and the
numbers a researcher watches in TensorBoard (loss, FVU, L0, dead fraction,
AuxK loss, learning rate; at validation the held-out FVU, the dead count and a
feature-frequency histogram).

It knows nothing of files: data arrive as (B, d_in) batches, and the export
to SAELens format is done by :class:`emoctl.callbacks.SAEExport`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import TensorBoardLogger

from emoctl.errors import ConfigError, NonFiniteError
from emoctl.sae.config import SAEConfig
from emoctl.sae.export import save_pretrained
from emoctl.sae.topk_sae import MatmulDtype, SAEOutput, TopKSAE, training_forward
from emoctl.io.provenance import machine, package_versions
from emoctl.training import store_provenance

NON_FINITE_CHECK_EVERY = 16
"""Steps between looks at the non-finite-loss counter (a look is one device sync; counting costs none)."""

# Lightning checkpoints keep the hyperparameters, this dataclass among them; resuming loads them with
# torch.load(weights_only=True), which refuses classes it was not told are safe.
torch.serialization.add_safe_globals([SAEConfig])


class SAEModule(pl.LightningModule):
    """Top-k SAE with AuxK, trained on rows of an activation store."""

    def __init__(
        self,
        sae: SAEConfig = SAEConfig(),
        lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 1000,
        decay_fraction: float = 0.2,
        b_pre_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median",
        histogram_bins: int = 50,
        compile: bool = False,
        matmul_dtype: MatmulDtype = "float32",
        auxk: Literal["auto", "fixed_shape", "gathered"] = "auto",
    ) -> None:
        """
        Args:
            sae: Shape and loss settings of the sparse autoencoder.
            lr: Adam learning rate; None uses 2e-4 / sqrt(d_sae / 2**14), the scaling of Gao et al. (2024).
            betas: Adam betas.
            warmup_steps: Steps of linear learning-rate warm-up from 0.
            decay_fraction: Final fraction of the run over which the rate decays linearly to 0.
            b_pre_init: How the input bias b_pre is set from the first training batch
                (gathered over all DDP ranks): geometric median (robust to outliers), mean, or zeros.
            histogram_bins: Bins of the log10 feature-frequency histogram logged at validation.
            compile: Run the training forward and loss through torch.compile (CUDA graphs on a GPU: the step
                has no host sync). Off by default: compiling costs tens of seconds at the start, which only a
                long run on a GPU earns back (``emoctl bench sae`` measures both).
            matmul_dtype: "bfloat16" gives the encoder's dense product bf16 operands (float32 accumulation,
                parameters and loss), faster on GPUs and CPUs with bf16 matrix units; "float32" is exact.
                ``trainer.precision: bf16-mixed`` has the same effect on the step.
            auxk: How the AuxK loss finds the dead latents (the same loss either way): "fixed_shape" masks the
                live ones and takes each token's top k_aux over all latents (no host sync; a compiled step
                needs it), "gathered" gathers the dead columns (their count, read on the host, sizes small
                dense products: cheaper eager), "auto" the first when compiling, else the second.
        """
        super().__init__()
        if not 0.0 <= decay_fraction <= 1.0:
            raise ConfigError(f"model.decay_fraction must be in [0, 1], got {decay_fraction}.")
        if warmup_steps < 0:
            raise ConfigError(f"model.warmup_steps must be >= 0, got {warmup_steps}.")
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"model.lr must be a finite number > 0 (or null for the d_sae scaling), got {lr}.")
        if matmul_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"model.matmul_dtype must be 'float32' or 'bfloat16', got {matmul_dtype!r}. Use "
                              "'bfloat16' for bf16 encoder products on a GPU or a CPU with bf16 matrix units.")
        if auxk not in ("auto", "fixed_shape", "gathered"):
            raise ConfigError(f"model.auxk must be 'auto', 'fixed_shape' or 'gathered', got {auxk!r}.")
        if compile and auxk == "gathered":
            raise ConfigError("model.compile: true needs model.auxk: fixed_shape (or auto): the gathered AuxK sizes "
                              "its products from the data, which a compiled step cannot capture.")
        self.save_hyperparameters()
        self.cfg = sae
        self.sae = TopKSAE(sae)
        self.lr = lr if lr is not None else 2e-4 / math.sqrt(sae.d_sae / 2**14)
        # Saved in checkpoints so a resumed run does not re-initialize b_pre.
        self.register_buffer("b_pre_initialized", torch.tensor(False))
        self._b_pre_ready = False  # the buffer, read once per process (a GPU read is a sync)
        self._val_sums: dict[str, torch.Tensor] = {}
        self._non_finite_losses: torch.Tensor | None = None  # (,) int64 on the SAE's device
        self._forward: Callable[[torch.Tensor], SAEOutput] | None = None  # built on the device, at the first step

    # ------------------------------------------------------------------ setup
    # ----------------------------------------------------------------- export
    export_name = "sae"

    def export(self, folder, trainer: pl.Trainer) -> None:
        """The SAE in SAELens' layout, with where its activations came from (written by ModelExport)."""

        # Where it was trained: float kernels differ by CPU, thread count and GPU, so a retrained SAE is not
        # bit-identical across machines (README, "What reproduces exactly").
        trained_on = {**machine(self.device), "world_size": trainer.world_size, "packages": package_versions()}
        save_pretrained(self.sae, folder, extra_metadata={"global_step": trainer.global_step,
                                                          **store_provenance(trainer), "trained_on": trained_on})

    def setup(self, stage: str) -> None:
        """Check that the data's width matches the SAE before any step runs."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        d_model = getattr(datamodule, "d_model", None)
        if d_model is not None and d_model != self.cfg.d_in:
            raise ConfigError(
                f"the activation store has rows of width d_model={d_model}, but model.sae.d_in={self.cfg.d_in}. "
                f"Set model.sae.d_in: {d_model} in the recipe, or point data.path at a store harvested "
                "from the hookpoint this SAE is meant for."
            )

    def configure_optimizers(self) -> Any:
        # fused Adam on a GPU: one kernel for all parameters (the CPU keeps the default implementation)
        fused = True if self.sae.W_dec.is_cuda else None
        optimizer = torch.optim.Adam(self.sae.parameters(), lr=self.lr, betas=self.betas, fused=fused)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_decay(self.hparams.warmup_steps,
                                                                                   self.hparams.decay_fraction, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    @property
    def betas(self) -> tuple[float, float]:
        return tuple(self.hparams.betas)  # type: ignore[return-value]

    # --------------------------------------------------------------- training
    def on_train_batch_start(self, batch: torch.Tensor, batch_idx: int) -> None:
        if not self._b_pre_ready:  # a Python flag: reading the buffer would be a device sync every step
            if not bool(self.b_pre_initialized):
                self._init_b_pre(batch)
            self._b_pre_ready = True

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x = batch.to(self.dtype_for_math)  # (B, d_in)
        out = self._training_forward()(x)
        self._update_dead_counters(out.top_idx, out.top_vals, n_tokens=x.shape[0])
        if self._logs_this_step():
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log_dict(
                {
                    "train/loss": out.loss.detach(),
                    "train/fvu": out.fvu.detach(),
                    "train/aux_fvu": out.aux_fvu.detach(),
                    "train/l0": (out.top_vals > 0).sum(-1).float().mean(),
                    "train/dead_fraction": self.sae.dead_mask.float().mean(),
                    "train/lr": torch.tensor(lr),
                },
                prog_bar=False,
            )
            self.log("fvu", out.fvu.detach(), prog_bar=True, logger=False)
        self._count_non_finite(out.loss.detach(), batch_idx)
        return out.loss

    def _training_forward(self) -> Callable[[torch.Tensor], SAEOutput]:
        """The forward and loss with this run's options, built once the SAE is on its device."""
        if self._forward is None:
            self._forward = training_forward(self.sae, self.hparams.matmul_dtype, self.hparams.compile,
                                             self.resolved_auxk)
        if self.hparams.compile and self.sae.W_dec.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be overwritten now
        return self._forward

    @property
    def resolved_auxk(self) -> str:
        """The AuxK form the training step uses: "auto" is the fixed-shape one when compiling (it must be), else
        the gathered one, cheaper eager (``emoctl bench sae`` times both)."""
        if self.hparams.auxk != "auto":
            return self.hparams.auxk
        return "fixed_shape" if self.hparams.compile else "gathered"

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes the logs after this batch (every ``trainer.log_every_n_steps`` steps and the
        last). Only then are the training scalars computed and logged: every ``self.log`` costs Lightning
        Python work on each call, and a progress-bar value a device sync, which on a GPU cost more than the
        SAE step itself (``emoctl bench fit``)."""
        connector = getattr(self.trainer, "_logger_connector", None)  # Lightning's own rule, where it has one
        return bool(getattr(connector, "should_update_logs", True)) or bool(self.trainer.fast_dev_run)

    def _count_non_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Refuse a NaN or Inf loss within NON_FINITE_CHECK_EVERY steps, without a device sync every step.

        Rows are checked finite when the store reads them, so a non-finite loss means training diverged;
        the export would refuse its weights anyway, but stopping here saves the rest of the run.
        """
        bad = (~torch.isfinite(loss)).to(torch.int64)
        self._non_finite_losses = bad if self._non_finite_losses is None else self._non_finite_losses + bad
        if (batch_idx + 1) % NON_FINITE_CHECK_EVERY == 0:
            self.check_finite_training()

    def check_finite_training(self) -> None:
        if self._non_finite_losses is not None and int(self._non_finite_losses) > 0:
            raise NonFiniteError(
                f"the SAE's training loss became NaN or Inf ({int(self._non_finite_losses)} steps, by step "
                f"{self.global_step}) though every batch it read was finite: training diverged. Lower model.lr "
                f"(now {self.lr:g}), lengthen model.warmup_steps, or train in float32 (trainer.precision); "
                "nothing was exported."
            )

    def on_train_end(self) -> None:
        self.check_finite_training()

    @property
    def dtype_for_math(self) -> torch.dtype:
        """Batches may be stored as float16/bfloat16; the SAE computes in its parameter dtype."""
        return self.sae.W_dec.dtype

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Gradients are final (DDP-reduced, accumulated) here: keep only the part of each
        # decoder atom's gradient that is orthogonal to the atom.
        self.sae.remove_parallel_grad()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.sae.normalize_decoder()

    # ------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        x = batch.to(self.dtype_for_math)
        with torch.no_grad():
            out = self.sae(x)
        x64 = x.double()
        sums = {
            "sse": (x64 - out.x_hat.double()).pow(2).sum(),
            "sum": x64.sum(0),
            "sumsq": x64.pow(2).sum(),
            "n": torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device),
            "fires": torch.zeros(self.cfg.d_sae, dtype=torch.float64, device=x.device).index_add_(
                0, out.top_idx.flatten(), (out.top_vals > 0).flatten().double()
            ),
        }
        for key, value in sums.items():
            self._val_sums[key] = self._val_sums.get(key, 0) + value

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        sums = {key: self._all_reduce_sum(value) for key, value in self._val_sums.items()}
        n = sums["n"]
        # FVU over the whole held-out set: SSE / sum ||x - mean||^2.
        total_var = sums["sumsq"] - sums["sum"].pow(2).sum() / n
        frequency = sums["fires"] / n  # fraction of held-out tokens on which each latent fired
        self.log_dict(
            {
                "val/fvu": (sums["sse"] / total_var).float(),
                "val/never_fired": (frequency == 0).sum().float(),
                "val/dead_by_counter": self.sae.dead_mask.sum().float(),
            },
            sync_dist=False,  # already reduced
        )
        if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            log_freq = torch.log10(frequency.clamp_min(1e-8)).float().cpu()
            self.logger.experiment.add_histogram("val/log10_feature_frequency", log_freq, self.global_step,
                                                 bins=self.hparams.histogram_bins)

    # ---------------------------------------------------------------- helpers
    def _init_b_pre(self, batch: torch.Tensor) -> None:
        x = batch.to(self.dtype_for_math)
        if self.trainer.world_size > 1:
            x = self.all_gather(x).reshape(-1, x.shape[-1])  # identical sample on every rank
        self.sae.init_b_pre(x, method=self.hparams.b_pre_init)
        self.b_pre_initialized.fill_(True)

    def _update_dead_counters(self, top_idx: torch.Tensor, top_vals: torch.Tensor, n_tokens: int) -> None:
        """A latent is alive if it fired on any rank: OR the masks across ranks, count all ranks' tokens."""
        with torch.no_grad():
            fired = self.sae.fired_mask(top_idx, top_vals)
            world = self.trainer.world_size
            if world > 1 and dist.is_available() and dist.is_initialized():
                fired_int = fired.to(torch.int32)
                dist.all_reduce(fired_int, op=dist.ReduceOp.MAX)
                fired = fired_int.bool()
            self.sae.update_dead_counters(fired, n_tokens * world)

    def _all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value


def _warmup_then_decay(warmup: int, decay_fraction: float, total: int):
    """Multiplier on the base rate: linear warm-up, flat, then linear decay to 0 over the last fraction."""
    decay_start = int(total * (1.0 - decay_fraction))

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        if step < decay_start or decay_fraction == 0:
            return warm
        return warm * max(0.0, (total - step) / max(total - decay_start, 1))

    return factor
