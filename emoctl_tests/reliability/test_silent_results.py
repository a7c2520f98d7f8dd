"""Results that used to come out wrong without a word: an edited resume block, two writers of one run folder or
one store, an empty harvest grid, an unfinished store called intact. Each is now refused, or waited for."""
from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from emoctl_tests.helpers.cli import RECIPES, REPO

pytestmark = pytest.mark.usefixtures("one_thread")


def _emoctl_here(*args: str) -> tuple[int, str]:
    """``emoctl`` run in this process: (exit status, stderr)."""
    from emoctl.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return code, err.getvalue()


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    from data_modules import SyntheticSparseStore

    path = tmp_path_factory.mktemp("silent") / "store"
    SyntheticSparseStore(d_model=16, n_atoms=32, k_active=3, n_utterances=60).build_atomically(path)
    return path


def _fit_args(root: Path, store: Path, steps: int = 4) -> list[str]:
    return ["fit", "--config", str(RECIPES / "sae_demo.yaml"), f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.save_dir={root}", "--trainer.logger.init_args.version=v0",
            "--data.init_args.build=null", "--data.init_args.batch_size=64", "--model.init_args.sae.d_in=16",
            "--model.init_args.sae.d_sae=32", "--model.init_args.sae.k=3", f"--trainer.max_steps={steps}",
            "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
            f"--data.init_args.path={store}"]


# --------------------------------------------------------------------------------- Table 1's kept blocks

RECORD = {"inputs": {"sae": {"path": "/a", "digest": "d1"}}, "protocol": {"n_texts": 1}, "seeds": {"sampling": 0},
          "packages": {"torch": "x"}}
BLOCK = {"tag": "table", "direction": "induction", "emotion": "Angry", "method": "global", "alpha": 4.0,
         "prompts": [("hello", "0011", "Neutral", "u0"), ("hello", "0012", "Neutral", "u1")], "seed": 0}
ROWS = [{"method": "global", "wer": 1.118, "ser_hit": 1.0, "p_target": float("nan")},
        {"method": "global", "wer": 1.25, "ser_hit": 0.0, "p_target": 0.5}]


def _kept_file(out: Path) -> Path:
    (path,) = (out / ".partial").glob("*.json")
    return path


@pytest.mark.parametrize("edit, needle", [
    pytest.param(lambda d: d["rows"][0].update(wer=0.777), "does not match its checksum", id="wer"),
    pytest.param(lambda d: d.update(rows=[]), "not a non-empty list", id="rows-empty"),
    pytest.param(lambda d: d.pop("rows"), "has no rows", id="rows-removed"),
    pytest.param(lambda d: d["block"].update(alpha=8.0), "does not match its checksum", id="alpha"),
])
def test_an_edited_table1_block_is_refused_not_reused(tmp_path, edit, needle):
    """A kept block whose content was changed (a clip's WER, its rows emptied or removed) is refused with a
    paragraph naming the file; before, the edited value went into table1.md."""
    from emoctl.evaluation.cell_cache import CellCache, KeptBlockError

    cache = CellCache(tmp_path, RECORD)
    cache.put(BLOCK, ROWS)
    reused = CellCache(tmp_path, RECORD).get(BLOCK)  # unedited: reused as is
    assert json.dumps(reused) == json.dumps(ROWS)
    path = _kept_file(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(KeptBlockError) as caught:
        CellCache(tmp_path, RECORD).get(BLOCK)
    message = str(caught.value)
    assert str(path) in message and needle in message and "\n" not in message, message


@pytest.mark.parametrize("content, needle", [("[1, 2]", "holds a JSON list"), ("{not json", "not readable JSON"),
                                             ('{"block": {}, "rows": [{"wer": 1}]}', "has no checksum")])
def test_report_table1_refuses_a_kept_block_that_is_no_block_before_any_work(tmp_path, content, needle):
    """`emoctl report table1` on a folder whose `.partial` holds a list, broken JSON or a block without its checksum:
    one paragraph naming the file, before the backbone, SAE or corpus is read (none of them exists here)."""
    out = tmp_path / "out"
    (out / ".partial").mkdir(parents=True)
    bad = out / ".partial" / "0123.json"
    bad.write_text(content)
    code, stderr = _emoctl_here("report", "table1", "--sae", str(tmp_path / "no_sae"), "--store",
                                str(tmp_path / "no_store"), "--selection", str(tmp_path / "no_sel"),
                                "--corpus_root", str(tmp_path / "no_corpus"), "--out_dir", str(out))
    message = " ".join(stderr.split())
    assert code != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert f"the kept block {bad}" in message and needle in message, message
    assert "--resume false" in message


def test_a_kept_block_with_fewer_rows_than_prompts_is_refused(tmp_path):
    """Even with a matching checksum, a block must hold one row per prompt (a cell short of clips shifts the
    paired statistics)."""
    from emoctl.evaluation.cell_cache import CellCache, KeptBlockError

    CellCache(tmp_path, RECORD).put(BLOCK, ROWS[:1])
    with pytest.raises(KeptBlockError, match="holds 1 rows for the block's 2 prompts"):
        CellCache(tmp_path, RECORD).get(BLOCK)


# --------------------------------------------------------------------------------------- one run folder

def test_a_second_fit_into_a_run_folder_in_use_is_refused_and_leaves_the_first_alone(tmp_path, small_store):
    """Fit A (its own process) runs in sae_demo/v0; fit B, same folder, starts while A runs: B is refused with a
    paragraph naming the folder and A, and A's checkpoints, config.yaml and export are A's alone. Before, both
    exited 0 and the folder held last.ckpt and last-v1.ckpt of two runs."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "emoctl", *_fit_args(tmp_path, small_store, steps=300)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "sae_demo" / "v0"
    try:
        _wait_for(lambda: (run / "config.yaml").is_file() or first.poll() is not None, 300, "fit A's config.yaml")
        assert first.poll() is None, "fit A ended before fit B started; give it more steps"
        code, stderr = _emoctl_here(*_fit_args(tmp_path, small_store, steps=4),
                                    "--model.init_args.sae.k=2")  # another recipe, to tell the runs apart
        _, a_err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    message = " ".join(stderr.split())
    assert code != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert f"the run folder {run} is in use by another fit (pid {first.pid}" in message, message
    assert first.returncode == 0, a_err[-3000:]
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in ckpts if p.name.startswith("last")] == ["last.ckpt"]  # no last-v1.ckpt of fit B
    assert {torch.load(p, weights_only=True)["global_step"] for p in ckpts} == {300}
    assert "k: 3" in (run / "config.yaml").read_text() and "k: 2" not in (run / "config.yaml").read_text()
    assert json.loads((run / "sae" / "cfg.json").read_text())["k"] == 3
    assert not (run / "FAILED.md").exists() and not (run / ".fit.lock").exists()


def test_a_fresh_fit_into_a_finished_run_folder_is_refused_and_a_resume_is_not(tmp_path, small_store):
    """A fresh fit (no --ckpt_path) into the folder of a finished run would replace its export and leave the old
    last.ckpt beside the new: refused, naming the folder and both ways out; with --ckpt_path it continues."""
    code, stderr = _emoctl_here(*_fit_args(tmp_path, small_store))
    assert code == 0, stderr[-3000:]
    run = tmp_path / "sae_demo" / "v0"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "events" not in p.name}
    code, stderr = _emoctl_here(*_fit_args(tmp_path, small_store), "--trainer.max_steps=6")
    message = " ".join(stderr.split())
    assert code != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert f"the run folder {run} already holds a run" in message and "--ckpt_path" in message, message
    assert "--trainer.logger.init_args.version" in message
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "events" not in p.name}
    assert after == before  # nothing replaced, no FAILED.md written into the finished run
    code, stderr = _emoctl_here(*_fit_args(tmp_path, small_store), "--trainer.max_steps=6",
                                "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert code == 0, stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


# ---------------------------------------------------------------------------------------- one store

def _build(path: str, n_utterances: int, started) -> None:
    from data_modules import SyntheticSparseStore

    started.set()
    SyntheticSparseStore(d_model=16, n_atoms=32, k_active=3, n_utterances=n_utterances).build_atomically(Path(path))


def test_two_builds_of_one_synthetic_store_at_once_both_end_with_the_one_store(tmp_path):
    """Build A runs in its own process; build B of the same path starts while A's `.building` folder is live.
    B waits for A and uses A's store: both succeed, and the store equals a build made alone. Before, B deleted
    A's live folder as a crash leftover and A failed (or the two interleaved)."""
    from data_modules import SyntheticSparseStore
    from emoctl.store import ActivationStore

    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "store"
    started = ctx.Event()
    first = ctx.Process(target=_build, args=(str(path), 6000, started))
    first.start()
    staging = tmp_path / ".store.building"
    _wait_for(lambda: (staging / "manifest.json").is_file() or not first.is_alive(), 120, "build A's staging folder")
    assert first.is_alive() and not path.exists(), "build A ended before B started; give it more utterances"
    SyntheticSparseStore(d_model=16, n_atoms=32, k_active=3, n_utterances=6000).build_atomically(path)
    first.join(120)
    assert first.exitcode == 0
    store = ActivationStore(path)
    store.require_finished("compare")
    store.verify(progress=False)
    SyntheticSparseStore(d_model=16, n_atoms=32, k_active=3, n_utterances=6000).build_atomically(tmp_path / "alone")
    alone = ActivationStore(tmp_path / "alone")
    assert store.num_rows == alone.num_rows and store.num_utterances == 6000
    assert not staging.exists() and not list(tmp_path.glob(".*.lock"))


def _write_direct(path: str) -> None:
    from emoctl.store.synthetic import write_sparse_dictionary_store

    write_sparse_dictionary_store(path, d_model=16, n_atoms=32, k_active=3, n_utterances=6000, progress=False)


def test_a_second_direct_synthetic_build_of_a_live_store_is_refused_and_deletes_nothing(tmp_path):
    """write_sparse_dictionary_store on a path another live process is writing: a paragraph naming the store and
    that process; the first build finishes whole. Before, the second took the live store for a killed build and
    deleted it."""
    from emoctl.errors import StoreError
    from emoctl.store import ActivationStore
    from emoctl.store.synthetic import write_sparse_dictionary_store

    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "store"
    first = ctx.Process(target=_write_direct, args=(str(path),))
    first.start()
    _wait_for(lambda: (path / "manifest.json").is_file() or not first.is_alive(), 120, "build A's manifest")
    assert first.is_alive(), "build A ended before B started; give it more utterances"
    with pytest.raises(StoreError) as caught:
        write_sparse_dictionary_store(path, d_model=16, n_atoms=32, k_active=3, n_utterances=6000, progress=False)
    first.join(120)
    message = str(caught.value)
    assert f"another process is writing the synthetic store at {path} (pid {first.pid}" in message, message
    assert first.exitcode == 0
    ActivationStore(path).require_finished("use")


# -------------------------------------------------------------------------------- empty grids, verify

@pytest.mark.parametrize("key", ["speakers", "emotions"])
def test_an_empty_speaker_or_emotion_list_is_refused_before_any_work(key):
    """`speakers: []` harvested nothing and exited 0 with an empty, unfinished store; `emotions: []` a
    Neutral-only one. Both are refused when the data module is built, naming the key."""
    from data_modules.prompt_grid import PromptGridDataModule
    from emoctl.errors import ConfigError

    with pytest.raises(ConfigError, match=f"data.{key} is an empty list"):
        PromptGridDataModule(texts=["Hello there."], **{key: []})


def test_store_verify_refuses_an_unfinished_store_after_checking_its_shards(tmp_path, small_store):
    """A killed build's store was called "intact"; now verify checks its committed shards and then says it is
    unfinished, who never finished it and how to finish it, with a non-zero exit."""
    import shutil

    from emoctl.store.manifest import mark_finished

    store = tmp_path / "store"
    shutil.copytree(small_store, store)
    mark_finished(store, finished=False)
    code, stderr = _emoctl_here("store", "verify", "--path", str(store), "--progress", "false")
    message = " ".join(stderr.split())
    assert code != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert f"the store at {store} is unfinished: its synthetic" in message and "60 utterances" in message, message
    assert "Rerun the same synthetic command" in message
