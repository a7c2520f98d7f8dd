"""Reports say what made them: content digests of their inputs, seeds, versions, machine; `report diff`."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from emoctl_tests.helpers.cli import run_emoctl
from emoctl.errors import ConfigError
from emoctl.io.provenance import collect, digest_path, provenance_line, stamp
from emoctl.reports.diff import diff_records, diff_reports
from emoctl.sae import load_pretrained, save_pretrained
from emoctl.selection.feature_set import FeatureSet, check_selected_with
from emoctl.commands.select import select_features
from emoctl.selection.feature_set import feature_set_path
from emoctl_tests.helpers.planted import planted_sae, write_store

pytestmark = pytest.mark.usefixtures("one_thread")


def test_folder_digest_is_content_not_location_and_skips_logs(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "w.bin").write_bytes(b"\x00" * 1000 + b"\x01")
    (a / "sub" / "cfg.json").write_text('{"k": 16}')
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert digest_path(a) == digest_path(b)
    (b / "tensorboard").mkdir()
    (b / "tensorboard" / "events").write_bytes(b"log")
    assert digest_path(a) == digest_path(b)  # logs beside a model are not the model
    (b / "w.bin").write_bytes(b"\x00" * 1000 + b"\x02")  # one byte
    assert digest_path(a) != digest_path(b)
    (b / "w.bin").write_bytes(b"\x00" * 1000 + b"\x01")
    (b / "sub" / "cfg.json").rename(b / "cfg.json")  # same bytes, other name
    assert digest_path(a) != digest_path(b)
    with pytest.raises(ConfigError, match="does not exist"):
        digest_path(tmp_path / "missing")


def test_stamp_puts_one_line_under_the_title():
    record = {"inputs": {"sae": {"digest": "0123456789abcdef" * 2}}, "seeds": {"sampling": 7},
              "packages": {"torch": "2.x", "numpy": "2.y"},
              "machine": {"gpu": None, "cpu": "Some CPU", "torch_threads": 3}}
    text = stamp("# Title\n\nBody.\n", record, "x_info.json")
    lines = text.splitlines()
    assert lines[0] == "# Title" and lines[1] == "" and lines[2] == provenance_line(record, "x_info.json")
    assert lines[4] == "Body."
    assert "SAE `0123456789ab`" in lines[2] and "sampling 7" in lines[2] and "3 threads" in lines[2]


def test_selection_records_its_inputs_and_report_diff_names_what_changed(tmp_path):
    store = write_store(tmp_path / "store", n_texts=12)
    sae, _ = planted_sae()
    save_pretrained(sae, tmp_path / "sae")
    select_features(str(store), str(tmp_path / "sae"), str(tmp_path / "one"), m=3, n_bootstrap=50,
                    n_stability=10, progress=False)
    select_features(str(store), str(tmp_path / "sae"), str(tmp_path / "two"), m=3, n_bootstrap=50,
                    n_stability=10, progress=False)
    info = json.loads((tmp_path / "one" / "selection_info.json").read_text())
    record = info["provenance"]
    assert record["inputs"]["sae"]["digest"] == digest_path(tmp_path / "sae")
    assert set(record["inputs"]) == {"sae", "store"}
    assert record["protocol"]["m"] == 3 and record["seeds"] == {"bootstrap": 0, "held_out_split": 0}
    assert torch.__version__.startswith(record["packages"]["torch"].split("+")[0])
    assert record["machine"]["torch_threads"] == torch.get_num_threads()
    assert set(info["outputs"]) == {"selection.csv", "selection_held_out.csv", "features_Angry.json",
                                    "features_Happy.json"}
    md = (tmp_path / "one" / "selection.md").read_text().splitlines()
    assert md[0] == "# SAE emotion features" and md[2].startswith("*Made with* SAE `")

    # Same inputs twice: nothing differs (exit 0); the same run is deterministic on CPU.
    assert diff_reports(str(tmp_path / "one"), str(tmp_path / "two")) == 0

    # Another SAE (one decoder weight moved) and another m: named by key, and the results differ.
    moved = load_pretrained(tmp_path / "sae")
    with torch.no_grad():
        moved.W_dec[0, 1] += 0.5
    save_pretrained(moved, tmp_path / "sae2")
    select_features(str(store), str(tmp_path / "sae2"), str(tmp_path / "three"), m=2, n_bootstrap=50,
                    n_stability=10, progress=False)
    # Feature sets know the SAE they index: another SAE is refused by digest, the right one passes.
    sets = {e: FeatureSet.load(feature_set_path(tmp_path / "one", e)) for e in ("Angry", "Happy")}
    check_selected_with(sets, tmp_path / "sae", tmp_path / "one")
    with pytest.raises(ConfigError, match="selected on the SAE .* would index another dictionary"):
        check_selected_with(sets, tmp_path / "sae2", tmp_path / "one")
    result = run_emoctl("report", "diff", str(tmp_path / "one"), str(tmp_path / "three"))
    assert result.returncode == 1, result.stderr[-2000:]
    out = result.stdout
    assert "inputs.sae.digest" in out and "protocol.m: 3 -> 2" in out
    assert "inputs.store.digest" not in out  # the same store
    assert "selection.csv: results differ" in out

    # A result file edited after the report was written is caught against its recorded digest.
    csv = tmp_path / "two" / "selection.csv"
    csv.write_text(csv.read_text().replace("Angry", "Anger", 1))
    result = run_emoctl("report", "diff", str(tmp_path / "one"), str(tmp_path / "two"))
    assert result.returncode == 1 and "changed since the report wrote it" in result.stdout


def test_diff_records_ignores_paths_but_not_digests():
    a = {"inputs": {"sae": {"path": "/x/sae", "digest": "aa"}}, "seeds": {"sampling": 0}}
    b = {"inputs": {"sae": {"path": "/y/sae", "digest": "aa"}}, "seeds": {"sampling": 0}}
    assert diff_records(a, b) == []
    b["inputs"]["sae"]["digest"] = "bb"
    b["seeds"]["sampling"] = 1
    assert diff_records(a, b) == ['inputs.sae.digest: "aa" -> "bb"', "seeds.sampling: 0 -> 1"]


def test_collect_refuses_a_missing_input(tmp_path):
    with pytest.raises(ConfigError, match="missing"):
        collect(paths={"sae": tmp_path / "missing"})


def test_readme_tables_are_the_committed_reports_tables(tmp_path):
    """Every quoted table in README equals its report's; a changed cell, a wrong table number or an unclosed
    marker is named with its README line."""
    from emoctl_tests.helpers.cli import REPO
    from emoctl.reports.readme_tables import check_readme, quoted_tables, quoting_pages, sync_readme

    pages = quoting_pages(REPO / "README.md")
    assert REPO / "docs" / "results.md" in pages
    everywhere = [b for page in pages for b in quoted_tables(page.read_text(), str(page))]
    assert len(everywhere) >= 10 and {b.report for b in everywhere} >= {
        "reports/table1.md", "reports/table1_emoshift.md", "reports/attribution/attribution.md"}
    assert [problem for page in pages for problem in check_readme(page, REPO)] == []

    readme = REPO / "docs" / "results.md"  # the page that quotes reports/table1.md
    blocks = quoted_tables(readme.read_text())
    copy = tmp_path / "README.md"
    shutil.copytree(REPO / "reports", tmp_path / "reports", ignore=shutil.ignore_patterns("tensorboard"))
    text = readme.read_text()
    block = next(b for b in blocks if b.report == "reports/table1.md")
    row = block.lines[2]
    edited = row[:-2] + "X |"  # one cell changed
    copy.write_text(text.replace(row, edited, 1))
    problems = check_readme(copy)
    assert len(problems) == 1 and "reports/table1.md" in problems[0] and edited in problems[0]
    assert sync_readme(copy) == 1 and check_readme(copy) == []  # rewritten from the report
    copy.write_text(text.replace(f"<!-- table: {block.report} #{block.index} -->",
                                 f"<!-- table: {block.report} #9 -->", 1))
    with pytest.raises(ConfigError, match=r"quotes table #9 of reports/table1.md, which has \d+ table"):
        check_readme(copy)
