"""A 2-process CPU DDP fit (gloo) through the real CLI: it runs, and the ranks train on disjoint rows."""
from __future__ import annotations

import json

import pytest

from conftest import RECIPES, run_emoctl


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
        "--trainer.callbacks+=emoctl_tests.ddp_row_recorder.RowRecorder", f"--trainer.callbacks.out_dir={rec}",
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
