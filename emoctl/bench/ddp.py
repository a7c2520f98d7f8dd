"""``emoctl bench ddp``: the SAE demo recipe on 1 process against 2 DDP processes (gloo on CPU).

Both runs see the same global batch (each of the 2 ranks takes half), the same number of steps and the same
CPU threads in all, so their loss curves should agree within the noise of which rows land in a batch, and the
time per step says what the second process buys. Time per step is read from the TensorBoard events of
``train/loss`` between the first and the last logged step, so process start-up and the store build do not
count. Each run is a real ``emoctl fit`` in fresh processes, as a user would start it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from emoctl.errors import ConfigError
from emoctl.io.fsio import save_figure_atomically

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sae_demo.yaml"


def scalars(run_dir: Path, tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, values, wall times) of one scalar from a run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        raise ConfigError(f"the run in {run_dir} logged no {tag!r}; its fit did not train.")
    points = events.Scalars(tag)
    return (np.array([p.step for p in points]), np.array([p.value for p in points]),
            np.array([p.wall_time for p in points]))


def fit_demo_recipe(root: Path, version: str, steps: int, batch_size: int, devices: int, log_every: int,
                    overrides: Sequence[str] = (), env: dict[str, str] | None = None) -> Path:
    """Run ``emoctl fit`` of the demo recipe in a fresh process, its store and logs under ``root``; return the
    run's TensorBoard folder. ``batch_size`` is per device; more than one device trains with DDP."""
    args = [sys.executable, "-m", "emoctl", "fit", "--config", str(RECIPE), f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.save_dir={root}", f"--trainer.logger.init_args.version={version}",
            f"--data.init_args.path={root / 'store'}", f"--trainer.max_steps={steps}",
            f"--trainer.val_check_interval={steps}", f"--trainer.log_every_n_steps={log_every}",
            f"--data.init_args.batch_size={batch_size}", f"--trainer.devices={devices}", *overrides]
    if devices > 1:
        args.append("--trainer.strategy=ddp")
    result = subprocess.run(args, env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}, capture_output=True,
                            text=True)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:] if result.stderr.strip() else ["no output"]
        raise ConfigError(f"the {devices}-device fit failed (exit {result.returncode}): {' | '.join(tail)}")
    return root / "sae_demo" / version


def bench_ddp(steps: int = 600, batch_size: int = 2048, processes: list[int] | None = None, threads: int = 2,
              figure: str | None = None) -> list[dict]:
    """Time per step, rows/s per process and the loss curve of 1 vs 2 DDP processes on the demo recipe.

    Args:
        steps: Optimizer steps of each run.
        batch_size: Global rows per step, split evenly across the processes.
        processes: Process counts to run (default 1 and 2).
        threads: CPU threads in all, split evenly across the processes (OMP_NUM_THREADS per process).
        figure: Optional PNG path for the loss curves.
    """
    processes = [1, 2] if processes is None else list(processes)
    if steps < 50 or batch_size < 1 or not processes or any(p < 1 or batch_size % p or threads % p
                                                           for p in processes):
        raise ConfigError(f"steps must be >= 50 and batch_size and threads divisible by every process count; got "
                          f"steps={steps}, batch_size={batch_size}, processes={processes}, threads={threads}.")
    rows, curves = [], {}
    with tempfile.TemporaryDirectory(prefix="emoctl-bench-ddp-") as tmp:
        root = Path(tmp)
        for p in processes:
            run = fit_demo_recipe(root, f"p{p}", steps, batch_size // p, p, log_every=10,
                                  env={"OMP_NUM_THREADS": str(threads // p)})
            step, loss, wall = scalars(run, "train/loss")
            _, fvu, _ = scalars(run, "val/fvu")
            curves[p] = (step, loss)
            seconds_per_step = (wall[-1] - wall[0]) / (step[-1] - step[0])
            rows.append({"processes": p, "threads_per_process": threads // p, "ms_per_step": 1e3 * seconds_per_step,
                         "rows_per_s": batch_size / seconds_per_step,
                         "rows_per_s_per_process": batch_size / seconds_per_step / p,
                         "final_loss": float(loss[-5:].mean()), "val_fvu": float(fvu[-1])})
    base_step, base_loss = curves[processes[0]]
    for r in rows:
        step, loss = curves[r["processes"]]
        common = np.intersect1d(base_step, step)
        a, b = base_loss[np.isin(base_step, common)], loss[np.isin(step, common)]
        late = common >= common[len(common) // 2]
        r["speedup"] = rows[0]["ms_per_step"] / r["ms_per_step"]
        r["late_loss_gap"] = float(np.mean(np.abs(a[late] - b[late]) / np.abs(a[late])))
    print(f"\nSAE demo recipe (64 -> 512, k = 8), {steps} steps of {batch_size} rows in all, {threads} CPU threads "
          "in all; time per step from the logged steps (start-up excluded); loss gap: mean relative difference to "
          f"the {processes[0]}-process curve over the second half of the run.\n")
    print("| processes | threads each | ms/step | rows/s | rows/s per process | speed-up | final train loss | "
          "val FVU | late loss gap |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['processes']} | {r['threads_per_process']} | {r['ms_per_step']:.1f} | {r['rows_per_s']:,.0f} | "
              f"{r['rows_per_s_per_process']:,.0f} | {r['speedup']:.2f} | {r['final_loss']:.4f} | {r['val_fvu']:.4f} | "
              f"{r['late_loss_gap']:.1%} |")
    if figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
        for p, (step, loss) in curves.items():
            ax.plot(step, loss, label=f"{p} process{'es' if p > 1 else ''}", lw=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (rank 0's rows)")
        ax.legend()
        fig.tight_layout()
        save_figure_atomically(fig, Path(figure))
    return rows
