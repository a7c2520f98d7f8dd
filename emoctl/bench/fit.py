"""``emoctl bench fit``: SAE training throughput end to end, as a user runs it.

``bench sae`` times the step alone and ``bench loader`` the store alone; whether the loop a user starts
(store -> ``ActivationStoreDataModule`` -> Lightning -> ``SAEModule``) keeps the device busy is a third
question. This runs real ``emoctl fit`` processes of the demo recipe with the SAE and the synthetic store
widened to the given shape (the paper's by default), and reads ms per step from the TensorBoard wall
times of ``train/loss`` between the first and the last logged step, so start-up, the store build and the
final validation do not count. On a machine with two or more GPUs it also runs 2-GPU DDP with the same
per-GPU batch.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from emoctl.bench.ddp import fit_demo_recipe, scalars
from emoctl.errors import ConfigError

ROWS_PER_UTTERANCE = 40  # the synthetic store's mean segment length, (20 + 60) / 2


def _fit(root: Path, version: str, devices: int, accelerator: str, precision: str, steps: int, batch_size: int,
         d_in: int, d_sae: int, k: int, rows: int, dtype: str) -> Path:
    build = "--data.init_args.build.init_args."
    overrides = [f"--trainer.accelerator={accelerator}", f"--trainer.precision={precision}",
                 f"--model.init_args.sae.d_in={d_in}", f"--model.init_args.sae.d_sae={d_sae}",
                 f"--model.init_args.sae.k={k}", f"{build}d_model={d_in}", f"{build}n_atoms={d_sae}",
                 f"{build}k_active=4",  # the build's cost grows with it
                 f"{build}n_utterances={max(1, rows // ROWS_PER_UTTERANCE)}", f"{build}dtype={dtype}"]
    print(f"bench fit: emoctl fit on {devices} {accelerator} device(s), {steps} steps (the first run also builds the "
          "synthetic store) ...", file=sys.stderr, flush=True)
    return fit_demo_recipe(root, version, steps, batch_size, devices, log_every=20, overrides=overrides)


def bench_fit(steps: int = 600, batch_size: int = 4096, d_in: int = 1280, d_sae: int = 4096, k: int = 32,
              rows: int = 400_000, dtype: str = "bfloat16", accelerator: str = "auto", precision: str | None = None,
              devices: list[int] | None = None) -> list[dict]:
    """ms per step and tokens/s of ``emoctl fit`` on a synthetic store; print a Markdown table, return its rows.

    Args:
        steps: Optimizer steps of each run (the first logged step starts the clock).
        batch_size: Rows per step on each device.
        d_in: Activation width (the synthetic store's too).
        d_sae: Latents.
        k: Latents kept per row.
        rows: About how many rows the synthetic store holds (d_sae atoms, 4 per row; its build is not timed).
        dtype: The store's dtype.
        accelerator: "cpu", "gpu" or "auto" (gpu when CUDA is available).
        precision: Lightning precision; default "bf16-mixed" on a GPU, "32-true" on the CPU.
        devices: Device counts to run; default 1, and 2 when at least two GPUs are visible.
    """
    import torch

    if steps < 60 or batch_size < 1 or rows < 4 * batch_size:
        raise ConfigError(f"bench fit needs steps >= 60 (three logged points), batch_size >= 1 and rows >= 4 x "
                          f"batch_size; got steps={steps}, batch_size={batch_size}, rows={rows}.")
    if accelerator not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"bench fit: accelerator={accelerator!r} is not one of auto, cpu, gpu.")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if accelerator == "auto":
        accelerator = "gpu" if gpus else "cpu"
    if accelerator == "gpu" and not gpus:
        raise ConfigError("bench fit: accelerator=gpu but CUDA is not available here; use accelerator=cpu or auto.")
    precision = precision or ("bf16-mixed" if accelerator == "gpu" else "32-true")
    devices = list(devices or ([1, 2] if gpus >= 2 and accelerator == "gpu" else [1]))
    if accelerator == "gpu" and max(devices) > gpus:
        raise ConfigError(f"bench fit: devices={devices} but {gpus} GPU(s) are visible.")
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="emoctl-bench-fit-") as tmp:
        root = Path(tmp)
        for n in devices:
            run = _fit(root, f"d{n}", n, accelerator, precision, steps, batch_size, d_in, d_sae, k, rows, dtype)
            step, loss, wall = scalars(run, "train/loss")
            _, fvu, _ = scalars(run, "val/fvu")
            seconds = (wall[-1] - wall[0]) / (step[-1] - step[0])
            results.append({"devices": n, "ms_per_step": 1e3 * seconds, "tokens_per_s": n * batch_size / seconds,
                            "tokens_per_s_per_device": batch_size / seconds, "final_loss": float(loss[-1]),
                            "val_fvu": float(fvu[-1])})
    name = torch.cuda.get_device_name(0) if accelerator == "gpu" else f"CPU ({os.cpu_count()} cores)"
    print(f"\nemoctl fit of the SAE demo recipe at {d_in} -> {d_sae} -> {d_in}, k {k}, batch {batch_size} per device, "
          f"{precision}, on {name}; synthetic {dtype} store of about {rows:,} rows; {steps} steps, timed between "
          "the first and last logged step.\n")
    print("| devices | ms/step | tokens/s | tokens/s per device | final train loss | val FVU |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['devices']} | {r['ms_per_step']:.2f} | {r['tokens_per_s']:,.0f} | "
              f"{r['tokens_per_s_per_device']:,.0f} | {r['final_loss']:.4f} | {r['val_fvu']:.4f} |")
    return results
