"""A 2-process CPU DDP fit (gloo) through the real CLI: it runs, and the ranks train on disjoint rows."""
from __future__ import annotations

import json

import pytest

from emoctl_tests.helpers.cli import RECIPES, run_emoctl


@pytest.mark.slow
def test_two_process_ddp_fit_uses_disjoint_rows(tmp_path):
    rec = tmp_path / "rows"
    result = run_emoctl(
        "fit", "--config", str(RECIPES / "sae_demo.yaml"),
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.logger.init_args.version=ddp", f"--data.init_args.path={tmp_path / 'store'}",
        "--data.init_args.build.init_args.n_utterances=300",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.max_steps=6", "--trainer.val_check_interval=3",
        "--data.init_args.batch_size=256",
        "--trainer.callbacks+=emoctl_tests.helpers.ddp_row_recorder.RowRecorder", f"--trainer.callbacks.out_dir={rec}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((rec / f"rows-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    seen = [set(r["hashes"]) for r in ranks]
    assert len(ranks[0]["hashes"]) == len(ranks[1]["hashes"]) == 6 * 256
    assert len(seen[0]) == len(seen[1]) == 6 * 256  # no row twice within a rank
    assert not seen[0] & seen[1]                      # and none shared across ranks
    # One export, written once by rank 0, loads.
    from emoctl.sae.export import load_pretrained

    sae = load_pretrained(tmp_path / "sae_demo" / "ddp" / "sae")
    assert sae.cfg.d_in == 64


@pytest.mark.slow
def test_bench_ddp_compares_one_and_two_processes_on_the_same_global_batch(tmp_path, capsys):
    """Two real fits (1 process; 2 gloo processes with half the batch each): both train the same global batch,
    so their loss curves agree within batch noise; the table and the loss figure are written."""
    from emoctl.bench.ddp import bench_ddp
    from emoctl.errors import ConfigError

    rows = bench_ddp(steps=100, batch_size=512, figure=str(tmp_path / "ddp.png"))
    assert [r["processes"] for r in rows] == [1, 2] and [r["threads_per_process"] for r in rows] == [2, 1]
    assert all(r["ms_per_step"] > 0 and r["rows_per_s"] > 0 for r in rows)
    assert rows[0]["late_loss_gap"] == 0.0 and rows[1]["late_loss_gap"] < 0.25, rows
    assert abs(rows[0]["val_fvu"] - rows[1]["val_fvu"]) < 0.1 * rows[0]["val_fvu"] + 0.02, rows
    assert (tmp_path / "ddp.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 2 | 1 |" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="divisible"):
        bench_ddp(batch_size=1001)


def test_bench_fit_times_a_real_fit_and_refuses_what_it_cannot_run():
    """``emoctl bench fit`` on a tiny shape here: a real fit process trains (held-out FVU well below 1) and its
    throughput is read from the logged steps."""
    import torch

    from emoctl.bench.fit import bench_fit
    from emoctl.errors import ConfigError

    (row,) = bench_fit(steps=60, batch_size=256, d_in=64, d_sae=256, k=8, rows=20_000, dtype="float32",
                       accelerator="cpu")
    assert row["devices"] == 1 and row["ms_per_step"] > 0
    assert abs(row["tokens_per_s"] - 256 / (row["ms_per_step"] / 1e3)) < 1e-6 * row["tokens_per_s"]
    assert 0 < row["val_fvu"] < 0.8 and 0 < row["final_loss"] < 0.8  # 60 steps of Adam already explain most
    with pytest.raises(ConfigError, match="steps >= 60"):
        bench_fit(steps=10)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            bench_fit(accelerator="gpu")
