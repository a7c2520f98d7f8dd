"""Reliability cases of the silent-results surface: Table 1's kept blocks, run folders two fits share or a fresh
fit reuses, empty harvest grids and unfinished stores.

Imported by ``reliability_cases.py``, which registers its cases; it must not import that module.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

PLACEHOLDERS: dict[str, str] = {
    "out": "a Table 1 output folder whose `.partial` holds one kept block, altered as the case says",
    "block": "that kept block's file",
    "run": "the run folder `{tmp}/sae_demo/v0` that @FIT_STORE writes",
}

ALSO_TESTED: dict[str, list[tuple[str, str]]] = {
    "5": [("reliability/test_silent_results.py", "test_an_edited_table1_block_is_refused_not_reused"),
          ("reliability/test_silent_results.py", "test_a_kept_block_with_fewer_rows_than_prompts_is_refused"),
          ("reliability/test_silent_results.py", "test_a_fresh_fit_into_a_finished_run_folder_is_refused_and_a_resume_is_not")],
    "6": [("reliability/test_silent_results.py", "test_store_verify_refuses_an_unfinished_store_after_checking_its_shards")],
    "7": [("reliability/test_silent_results.py", "test_an_empty_speaker_or_emotion_list_is_refused_before_any_work")],
    "concurrency": [
        ("reliability/test_silent_results.py", "test_a_second_fit_into_a_run_folder_in_use_is_refused_and_leaves_the_first_alone"),
        ("reliability/test_silent_results.py", "test_two_builds_of_one_synthetic_store_at_once_both_end_with_the_one_store"),
        ("reliability/test_silent_results.py",
         "test_a_second_direct_synthetic_build_of_a_live_store_is_refused_and_deletes_nothing")],
}

_HELD_LOCKS: list = []


# ------------------------------------------------------------------------------- Table 1's kept blocks

def _kept_block(case_dir: Path) -> tuple[Path, dict]:
    """A block kept by Table 1's resume cache (two clips, real checksum) in ``case_dir/out/.partial``."""
    from emoctl.evaluation.cell_cache import CellCache

    out = case_dir / "out"
    record = {"inputs": {"sae": {"path": "/sae", "digest": "d1"}}, "protocol": {"n_texts": 1},
              "seeds": {"sampling": 0}, "packages": {}}
    block = {"tag": "table", "direction": "induction", "emotion": "Angry", "method": "global", "alpha": 4.0,
             "prompts": [["hello", "0011", "Neutral", "u0"], ["hello", "0012", "Neutral", "u1"]], "seed": 0}
    CellCache(out, record).put(block, [{"method": "global", "wer": 1.118, "ser_hit": 1.0},
                                       {"method": "global", "wer": 1.25, "ser_hit": 0.0}])
    (path,) = (out / ".partial").glob("*.json")
    return path, json.loads(path.read_text())


def _placed(path: Path, data) -> dict[str, str]:
    path.write_text(json.dumps(data))
    return {"out": str(path.parent.parent), "block": str(path)}


def block_wer_edited(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
    """`{out}`'s kept block `{block}` (written by Table 1's cache, checksum and all) with one clip's `wer` changed
    from 1.118 to 0.777; still valid JSON."""
    path, data = _kept_block(case_dir)
    data["rows"][0]["wer"] = 0.777
    return _placed(path, data)


def block_rows_emptied(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
    """`{out}`'s kept block `{block}` with `rows: []`."""
    path, data = _kept_block(case_dir)
    data["rows"] = []
    return _placed(path, data)


def block_without_rows(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
    """`{out}`'s kept block `{block}` with its `rows` key removed."""
    path, data = _kept_block(case_dir)
    del data["rows"]
    return _placed(path, data)


def block_is_a_list(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
    """`{out}`'s kept block `{block}` replaced by a JSON list (its rows alone)."""
    path, data = _kept_block(case_dir)
    return _placed(path, data["rows"])


TABLE1 = ("report", "table1", "--sae", "{sae_mini}", "--store", "{store}", "--selection", "{select_mini}",
          "--corpus_root", "{tmp}/no_corpus", "--out_dir", "{out}")


# ------------------------------------------------------------------------------------------ run folders

def run_folder_held(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
    """`{run}` is held by another fit: its `.fit.lock` is locked (the OS lock a running fit holds), with the
    holder's line written in it."""
    from emoctl.io.fsio import ExclusiveLock

    run = case_dir / "sae_demo" / "v0"
    lock = ExclusiveLock(run / ".fit.lock")
    assert lock.acquire()
    _HELD_LOCKS.append(lock)
    return {"run": str(run)}


def nothing_written_and_released(case_dir: Path, values: dict[str, str]) -> None:
    """The refused fit wrote no config.yaml, FAILED.md or checkpoint into the held folder (the lock is then
    released)."""
    run = Path(values["run"])
    try:
        assert not (run / "config.yaml").exists() and not (run / "FAILED.md").exists()
        assert not (run / "checkpoints").exists()
    finally:
        while _HELD_LOCKS:
            _HELD_LOCKS.pop().release()


def finished_run(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
    """`{run}` holds a finished run: a copy of the run folder of `{ckpt}` (its config.yaml, checkpoints and SAE
    export)."""
    source = Path(values["ckpt"]).parents[1]
    run = case_dir / "sae_demo" / "v0"
    shutil.copytree(source, run)
    return {"run": str(run)}


def finished_run_untouched(case_dir: Path, values: dict[str, str]) -> None:
    """The finished run's export, checkpoints and config.yaml are byte for byte the copied ones, and no
    FAILED.md was written into it."""
    source, run = Path(values["ckpt"]).parents[1], Path(values["run"])
    for path in source.rglob("*"):
        if path.is_file() and "events" not in path.name:
            assert (run / path.relative_to(source)).read_bytes() == path.read_bytes(), path
    assert not (run / "FAILED.md").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        sorted(p.name for p in (source / "checkpoints").iterdir())


# ------------------------------------------------------------------------------- grids and stores

def unfinished_store(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
    """`{bad}` is a copy of `{store}` whose producer (the synthetic build) never marked it finished, as a killed
    build leaves it."""
    from emoctl.store.manifest import mark_finished

    bad = case_dir / "store"
    shutil.copytree(values["store"], bad)
    mark_finished(bad, finished=False)
    return {"bad": str(bad)}


HARVEST = ("harvest", "--config", "{harvest}", "--trainer.callbacks.init_args.path={tmp}/store")


def no_store_written(case_dir: Path, values: dict[str, str]) -> None:
    """No store (not even an empty, unfinished one) was left at `{tmp}/store`."""
    assert not (case_dir / "store").exists(), sorted(p.name for p in (case_dir / "store").rglob("*"))


def register(case) -> None:
    case("5", "Table 1 resumes from a kept block with a clip's WER edited",
         TABLE1, ("the kept block {block}", "does not match its checksum", "--resume false"), setup=block_wer_edited)
    case("5", "Table 1 resumes from a kept block with rows: []",
         TABLE1, ("the kept block {block}", "not a non-empty list"), setup=block_rows_emptied)
    case("5", "Table 1 resumes from a kept block without rows",
         TABLE1, ("the kept block {block}", "has no rows"), setup=block_without_rows)
    case("5", "Table 1 resumes from a kept block that is a JSON list",
         TABLE1, ("the kept block {block}", "holds a JSON list"), setup=block_is_a_list)
    case("5", "a fresh fit into a finished run's folder",
         ("@FIT_STORE", "--data.init_args.path={store}"),
         ("the run folder {run} already holds a run", "--trainer.logger.init_args.version", "--ckpt_path"),
         setup=finished_run, check=finished_run_untouched)
    case("concurrency", "a fit into a run folder another fit holds",
         ("@FIT_STORE", "--data.init_args.path={store}"),
         ("the run folder {run} is in use by another fit", "--trainer.logger.init_args.version"),
         setup=run_folder_held, check=nothing_written_and_released)
    case("6", "unfinished store (a killed build): store verify",
         ("store", "verify", "--path", "{bad}", "--progress", "false"),
         ("the store at {bad} is unfinished", "synthetic", "are intact", "Rerun the same synthetic command"),
         setup=unfinished_store)
    case("7", "harvest with speakers: []", (*HARVEST, "--data.init_args.speakers=[]"),
         ("data.speakers is an empty list",), check=no_store_written)
    case("7", "harvest with emotions: []", (*HARVEST, "--data.init_args.emotions=[]"),
         ("data.emotions is an empty list",), check=no_store_written)
