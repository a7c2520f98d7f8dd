"""Table 1's cell runner on the committed mini backbone: unsteered cells that share their prompts are
synthesized once and scored against each cell's own target."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emoctl.backbones.loading import load_backbone
from emoctl.metrics.loading import load_recognizer
from emoctl.evaluation.scoring import References, Scorers
from emoctl.reports.table1_cells import Cell, run_cells
from emoctl.reports.table1_methods import SteeringMethods
from emoctl.synthesis import SamplingConfig

SPEAKERS = ["0017", "0018"]


@pytest.fixture(scope="module")
def setup(corpus_root: Path):
    from emoctl.evaluation.texts import corpus_test_sentences

    backbone = load_backbone("mini_tts", None)
    texts, record = corpus_test_sentences(corpus_root)
    scorers = Scorers(load_recognizer("mini", None), None, None, None)
    refs = References(corpus_root, record["sentences"], SPEAKERS, scorers, used=texts[:2])
    return backbone, texts[:2], scorers, refs


def test_shared_unsteered_cells_are_generated_once_and_scored_per_target(setup, monkeypatch):
    backbone, texts, scorers, refs = setup
    calls: list[int] = []
    generate = backbone.generate

    def counting_generate(prompts, sampling=None, **overrides):
        calls.append(len(prompts))
        return generate(prompts, sampling, **overrides)

    monkeypatch.setattr(backbone, "generate", counting_generate)
    methods = SteeringMethods(sae=None, feature_sets={}, mean_differences={})
    cells = [Cell("induction", "Angry"), Cell("induction", "Sad"), Cell("suppression", "Sad")]
    sampling = SamplingConfig(batch_size=4, max_new_tokens=300)
    rows = run_cells(backbone, methods, ["unsteered"], cells, texts, SPEAKERS, {}, scorers, refs, seed=3,
                     sampling=sampling, tag="t", progress=False)

    # Two induction cells share Neutral prompts: one batch of 4 for them, one for the Sad-condition cell.
    assert calls == [4, 4]
    by_cell = {(c.direction, c.emotion): [r for r in rows if (r["direction"], r["emotion"]) == (c.direction, c.emotion)]
               for c in cells}
    angry, sad = by_cell[("induction", "Angry")], by_cell[("induction", "Sad")]
    assert [r["predicted"] for r in angry] == [r["predicted"] for r in sad]
    assert [r["duration_s"] for r in angry] == [r["duration_s"] for r in sad]
    assert [r["target"] for r in angry] == ["Angry"] * 4 and [r["target"] for r in sad] == ["Sad"] * 4
    assert [r["p_target"] for r in angry] != [r["p_target"] for r in sad]  # scored against its own target
    assert len({r["utt_id"] for r in rows}) == len(rows)  # each cell keeps its own prompt ids

    # The shared rows equal what a cell run on its own gives (same prompts, batches and seed).
    alone = run_cells(backbone, methods, ["unsteered"], [Cell("induction", "Sad")], texts, SPEAKERS, {}, scorers,
                      refs, seed=3, sampling=sampling, tag="t", progress=False)
    assert [r["p_target"] for r in alone] == pytest.approx([r["p_target"] for r in sad], abs=1e-6)
    assert [r["duration_s"] for r in alone] == [r["duration_s"] for r in sad]
    suppression = by_cell[("suppression", "Sad")]
    assert [r["condition"] for r in suppression] == ["Sad"] * 4
    assert torch.tensor([r["duration_s"] for r in suppression]).ne(torch.tensor([r["duration_s"] for r in sad])).any()


def _record(seed: int = 0) -> dict:
    return {"inputs": {"sae": {"path": "/a", "digest": "d1"}}, "protocol": {"n_texts": 2}, "seeds": {"sampling": seed},
            "packages": {"torch": "x"}}


def test_an_interrupted_report_resumes_from_its_finished_blocks_and_only_those(setup, tmp_path, monkeypatch):
    from emoctl.evaluation.cell_cache import CellCache
    from emoctl.evaluation.summary import csv_bytes

    backbone, texts, scorers, refs = setup
    methods = SteeringMethods(sae=None, feature_sets={}, mean_differences={})
    cells = [Cell("induction", "Angry"), Cell("suppression", "Sad")]
    sampling = SamplingConfig(batch_size=4, max_new_tokens=300)
    first = run_cells(backbone, methods, ["unsteered"], cells, texts, SPEAKERS, {}, scorers, refs, seed=3,
                      sampling=sampling, tag="t", progress=False, cache=CellCache(tmp_path, _record()))
    kept = sorted((tmp_path / ".partial").glob("*.json"))
    assert len(kept) == 2  # one block per (cell, method)

    # The rerun generates nothing and gives the same rows, to the byte of the CSV.
    def no_generation(*args, **kwargs):
        raise AssertionError("a finished block was generated again")

    monkeypatch.setattr(backbone, "generate", no_generation)
    cache = CellCache(tmp_path, _record())
    again = run_cells(backbone, methods, ["unsteered"], cells, texts, SPEAKERS, {}, scorers, refs, seed=3,
                      sampling=sampling, tag="t", progress=False, cache=cache)
    assert cache.reused == 2 and csv_bytes(again) == csv_bytes(first)

    # Anything that decides the rows is in the key: another input digest, seed, sampling or cell is recomputed.
    changed = _record()
    changed["inputs"]["sae"]["digest"] = "d2"
    for other, kwargs in ((CellCache(tmp_path, changed), {}), (CellCache(tmp_path, _record(seed=1)), {}),
                          (CellCache(tmp_path, _record()), {"seed": 4}),
                          (CellCache(tmp_path, _record()), {"sampling": SamplingConfig(batch_size=4, max_new_tokens=200)})):
        with pytest.raises(AssertionError, match="generated again"):
            run_cells(backbone, methods, ["unsteered"], cells[:1], texts, SPEAKERS, {}, scorers, refs,
                      **{"seed": 3, "sampling": sampling, **kwargs}, tag="t", progress=False, cache=other)
    # A moved input (same content, other path) is the same input; a damaged block is refused, never trusted
    # (reliability/test_silent_results.py tries the edits one by one).
    moved = _record()
    moved["inputs"]["sae"]["path"] = "/elsewhere"
    assert CellCache(tmp_path, moved).key({"a": 1}) == CellCache(tmp_path, _record()).key({"a": 1})
    from emoctl.evaluation.cell_cache import KeptBlockError

    for damaged in kept:
        damaged.write_text("{not json")
    with pytest.raises(KeptBlockError, match="is not readable JSON"):
        run_cells(backbone, methods, ["unsteered"], cells, texts, SPEAKERS, {}, scorers, refs, seed=3,
                  sampling=sampling, tag="t", progress=False, cache=CellCache(tmp_path, _record()))
    CellCache(tmp_path, _record()).clear()
    assert not (tmp_path / ".partial").exists()


def test_the_block_key_follows_the_code_not_the_commit(tmp_path, monkeypatch):
    from emoctl.evaluation import cell_cache
    from emoctl.evaluation.cell_cache import CellCache

    record = _record()
    base = CellCache(tmp_path, record).key({"a": 1})
    other_commit = {**record, "packages": {**record["packages"], "emoctl_commit": "abc+dirty"}}
    assert CellCache(tmp_path, other_commit).key({"a": 1}) == base
    other_torch = {**record, "packages": {"torch": "y"}}
    assert CellCache(tmp_path, other_torch).key({"a": 1}) != base
    monkeypatch.setattr(cell_cache, "source_digest", lambda: "edited")
    assert CellCache(tmp_path, record).key({"a": 1}) != base


def test_save_audio_writes_each_scored_clip_as_flac_named_in_its_row(setup, tmp_path, monkeypatch):
    import soundfile

    from emoctl.evaluation.cell_cache import CellCache

    backbone, texts, scorers, refs = setup
    methods = SteeringMethods(sae=None, feature_sets={}, mean_differences={})
    cells = [Cell("induction", "Angry"), Cell("induction", "Sad")]
    sampling = SamplingConfig(batch_size=4, max_new_tokens=300)
    audio_dir = tmp_path / "clips"
    rows = run_cells(backbone, methods, ["unsteered"], cells, texts, SPEAKERS, {}, scorers, refs, seed=3,
                     sampling=sampling, tag="t", progress=False, cache=CellCache(tmp_path, _record()),
                     audio_dir=audio_dir)
    assert len({r["audio"] for r in rows}) == len(rows) == 8  # shared unsteered clips: one file per cell's row
    for row in rows:
        wave, rate = soundfile.read(tmp_path / row["audio"])
        assert row["audio"].startswith("clips/") and row["audio"].endswith(".flac")
        assert len(wave) / rate == pytest.approx(row["duration_s"], abs=1e-6)
    # Without audio the rows are the same but for the column (so committed reports do not change).
    plain = run_cells(backbone, methods, ["unsteered"], cells[:1], texts, SPEAKERS, {}, scorers, refs, seed=3,
                      sampling=sampling, tag="t", progress=False)
    assert "audio" not in plain[0] and {k: v for k, v in rows[0].items() if k != "audio"} == plain[0]
    # A kept block whose files were deleted is spoken again, so every row of a resumed report has its audio.
    (tmp_path / rows[0]["audio"]).unlink()
    again = run_cells(backbone, methods, ["unsteered"], cells[:1], texts, SPEAKERS, {}, scorers, refs, seed=3,
                      sampling=sampling, tag="t", progress=False, cache=CellCache(tmp_path, _record()),
                      audio_dir=audio_dir)
    assert (tmp_path / again[0]["audio"]).is_file()
