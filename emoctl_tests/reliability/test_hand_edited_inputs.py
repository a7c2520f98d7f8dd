"""Files and values a user edits by hand are read strictly: an edit that would change what is steered, compared or
checked is refused in one paragraph naming the file and the entry, before anything heavy runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from emoctl_tests.helpers.cli import REPO, parse_emoctl
from emoctl.errors import ConfigError
from emoctl.selection.feature_set import FeatureSet

SELECT_MINI = REPO / "emoctl" / "assets" / "select_mini"
SAE_MINI = REPO / "emoctl" / "assets" / "sae_mini"


def _selection(tmp_path: Path, edit) -> Path:
    """A copy of the committed selection whose features_Angry.json ``edit`` changed (a function of its JSON)."""
    sel = tmp_path / "sel"
    shutil.copytree(SELECT_MINI, sel)
    path = sel / "features_Angry.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw, indent=1))
    return sel


def _first_id(value: Any):
    def edit(raw: dict) -> None:
        raw["features"][0]["id"] = value
        raw["feature_ids"][0] = value
    return edit


EDITS = [
    (_first_id(3.7), r"features\[0\]: the latent id 3.7 .* JSON integer in 0 .. 1023"),
    (_first_id(True), r"features\[0\]: the latent id true"),
    (_first_id("seven"), r'features\[0\]: the latent id "seven"'),
    (_first_id([3]), r"features\[0\]: the latent id \[3\]"),
    (_first_id(None), r"features\[0\]: the latent id null"),
    (_first_id(-1), r"features\[0\]: the latent id -1"),
    (_first_id(1024), r"features\[0\]: the latent id 1024 .* 0 .. 1023"),
    (lambda raw: raw["feature_ids"].__setitem__(0, 7), r"`feature_ids` \[7, 383.* disagree"),
    (lambda raw: raw.pop("feature_ids"), r"`feature_ids` null .* disagree"),
    (lambda raw: (raw["features"].__setitem__(1, dict(raw["features"][0])),
                  raw["feature_ids"].__setitem__(1, raw["feature_ids"][0])), r"\[579\] appear more than once"),
    (lambda raw: raw.__setitem__("emotion", "Sad"), r"says emotion 'Sad', but its name files it under another"),
    (lambda raw: raw.__setitem__("emotion", 3), r"`emotion` must be a non-empty string"),
    (lambda raw: raw["features"][0].__setitem__("q_value", "tiny"), r"features\[0\]: `q_value` must be a finite"),
    (lambda raw: raw["features"][0].__setitem__("both", 2.5), r"features\[0\]: `both` must be a count"),
    (lambda raw: raw["features"][0].pop("delta"), r"features\[0\] has the wrong keys \(missing \['delta'\]\)"),
    (lambda raw: raw.__setitem__("features", {"id": 3}), r"`features` must be a list"),
    (lambda raw: raw["sae"].__setitem__("digest", 7), r"`sae.digest` must be a string"),
]


@pytest.mark.parametrize("edit, needle", EDITS, ids=[needle[:40] for _, needle in EDITS])
def test_a_hand_edited_feature_set_is_refused_naming_the_file_and_entry(edit, needle, tmp_path):
    path = _selection(tmp_path, edit) / "features_Angry.json"
    with pytest.raises(ConfigError, match=needle) as err:
        FeatureSet.load(path)
    assert str(path) in str(err.value)


def test_the_committed_feature_sets_read_as_written(tmp_path):
    """The strict reading accepts what ``emoctl select`` writes: every committed set, and a save/load round trip."""
    for path in sorted(SELECT_MINI.glob("features_*.json")):
        fs = FeatureSet.load(path)
        assert fs.feature_ids == json.loads(path.read_text())["feature_ids"] and fs.path == path
        again = fs.save(tmp_path / path.name)
        assert FeatureSet.load(again).features == fs.features


def _attribute(selection: Path, tmp_path: Path, **kwargs):
    """``emoctl attribute`` on the committed SAE with a backbone folder that does not exist: a refusal that came
    after the backbone loaded would name that folder instead."""
    from emoctl.backbones.loading import BackboneSpec
    from emoctl.commands.attribute import attribute_features

    return attribute_features(str(SAE_MINI), str(selection), str(tmp_path / "out"), progress=False,
                              backbone=BackboneSpec(path=str(tmp_path / "no_backbone")), **kwargs)


@pytest.mark.parametrize("edit, kwargs, needle", [
    (_first_id(3.7), {}, r"latent id 3.7"),
    (_first_id(True), {}, r"latent id true"),
    (lambda raw: raw["feature_ids"].__setitem__(0, 7), {}, r"disagree"),
    (lambda raw: (raw["features"].__setitem__(1, dict(raw["features"][0])),
                  raw["feature_ids"].__setitem__(1, raw["feature_ids"][0])), {}, r"more than once"),
    (lambda raw: raw.__setitem__("emotion", "Sad"), {}, r"files it under another emotion"),
    (lambda raw: raw.__setitem__("emotion", "Sad"), {"emotions": ["Angry"]}, r"files it under another emotion"),
    (lambda raw: None, {"alpha": 1e30}, r"alpha=1e\+30 .*\|α\| <= 1000 .* 4 to 40"),
    (lambda raw: None, {"alpha": -1e30}, r"alpha=-1e\+30"),
    (lambda raw: None, {"alphas": {"Angry": 5000.0}}, r"alphas="),
    (lambda raw: None, {"seed": -1}, r"seed=-1"),
])
def test_attribute_refuses_edited_sets_and_absurd_alpha_before_the_backbone_loads(edit, kwargs, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle) as err:
        _attribute(_selection(tmp_path, edit), tmp_path, **kwargs)
    assert "no_backbone" not in str(err.value) and not (tmp_path / "out").exists()


def test_a_feature_set_without_an_sae_digest_is_applied_only_when_asked(tmp_path):
    sel = _selection(tmp_path, lambda raw: raw["sae"].pop("digest"))
    with pytest.raises(ConfigError, match=r"features_Angry.json records no SAE digest.*"
                                          r"--allow_unverified_features true"):
        _attribute(sel, tmp_path)
    # asked: the set passes its checks and the run goes on, to the (missing) backbone
    with pytest.raises(ConfigError, match="no_backbone"):
        _attribute(sel, tmp_path, allow_unverified_features=True)
    # ids outside the SAE are refused whatever the digest says
    wide = _selection(tmp_path / "wide", lambda raw: (raw["sae"].pop("digest"), raw["sae"].__setitem__("d_sae", 4096),
                                                       _first_id(2000)(raw)))
    with pytest.raises(ConfigError, match=r"names latents \[2000\], outside --sae .*\(d_sae 1024"):
        _attribute(wide, tmp_path, allow_unverified_features=True)


MARKERS = ["<!--  table: reports/t.md #1 -->", "<!-- table reports/t.md #1 -->", "<!-- Table: reports/t.md #1 -->",
           "<!-- tabel: reports/t.md #1 -->", "<!--table: reports/t.md #1-->", "<!-- table: reports/t.md 1 -->",
           " <!-- table: reports/t.md #1 --> quoted"]


@pytest.mark.parametrize("marker", MARKERS)
def test_a_mistyped_table_marker_is_refused_not_left_out_of_the_check(marker, tmp_path):
    from emoctl.reports.readme_tables import check_readme, sync_readme

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "t.md").write_text("# T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    readme = tmp_path / "README.md"
    good = "# R\n\n<!-- table: reports/t.md #1 -->\n| a | b |\n|---|---|\n| 1 | 2 |\n<!-- /table -->\n"
    readme.write_text(good)
    assert check_readme(readme) == []
    readme.write_text(good.replace("<!-- table: reports/t.md #1 -->", marker).replace("| 1 | 2 |\n<", "| 1 | 9 |\n<"))
    for call in (check_readme, sync_readme):
        with pytest.raises(ConfigError, match=rf"README.md:3: `{marker.strip()[:12]}.*looks like a table marker"):
            call(readme)
    # and a closing marker mistyped: the block is refused too, not read as unclosed elsewhere
    readme.write_text(good.replace("<!-- /table -->", "<!-- / table -->"))
    with pytest.raises(ConfigError, match=r"README.md:7: .* looks like a table marker"):
        check_readme(readme)


@pytest.mark.parametrize("body, needle", [
    ([1, 2], "holds a JSON list"), ("hello", "holds a JSON string"),
    ({"provenance": [1]}, "`provenance` is a JSON list"), ({"provenance": "x"}, "`provenance` is a JSON string"),
    ({"provenance": {}, "outputs": ["t.csv"]}, "`outputs` is a JSON list"),
    ({"provenance": {}, "outputs": {"t.csv": 3}}, "maps 't.csv' to 3"),
    ({"provenance": {}, "outputs": {"../../etc/hostname": "00"}}, "file name beside the record"),
])
def test_report_diff_names_a_record_of_the_wrong_shape(body, needle, tmp_path):
    bad, good = tmp_path / "a_info.json", tmp_path / "b_info.json"
    bad.write_text(json.dumps(body))
    good.write_text(json.dumps({"provenance": {"seeds": {"sampling": 0}}, "outputs": {}}))
    for first, second in ((bad, good), (good, bad)):
        result = parse_emoctl("report", "diff", str(first), str(second))
        message = " ".join(result.stderr.split())
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"the report record {bad}" in message and needle in message, message
    folder_a, folder_b = tmp_path / "fa", tmp_path / "fb"  # the same through two report folders
    for folder, record in ((folder_a, bad), (folder_b, good)):
        folder.mkdir()
        shutil.copy(record, folder / "x_info.json")
    result = parse_emoctl("report", "diff", str(folder_a), str(folder_b))
    assert result.returncode == 1 and str(folder_a / "x_info.json") in " ".join(result.stderr.split())


def test_select_refuses_a_negative_seed_before_reading_the_store(tmp_path):
    from emoctl.commands.select import select_features

    with pytest.raises(ConfigError, match=r"--seed -1: the seed must be an integer >= 0"):
        select_features(str(tmp_path / "no_store"), str(SAE_MINI), str(tmp_path / "sel"), seed=-1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
@pytest.mark.parametrize("command, kwargs", [
    ("probes", {}), ("sae", {}), ("loader", {}), ("cosyvoice", {}), ("gpu", {"quick": True}),
])
def test_benchmarks_refuse_cuda_without_a_gpu_before_any_work(command, kwargs, tmp_path):
    import importlib

    module = importlib.import_module(f"emoctl.bench.{command}")
    bench = getattr(module, f"bench_{command}")
    if command == "gpu":
        kwargs["out"] = str(tmp_path / "b.md")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        bench(device="cuda", **kwargs)


@pytest.mark.parametrize("command, device, needle", [
    ("probes", "tpu", "is not a device"), ("sae", "gpu", "is not a device"), ("loader", "auto", "is not a device"),
    ("cosyvoice", "meta", "runs on cpu, cuda or cuda:N"), ("loader", "cuda:99", "cuda:99"),
])
def test_benchmarks_refuse_a_device_they_cannot_use(command, device, needle):
    import importlib

    bench = getattr(importlib.import_module(f"emoctl.bench.{command}"), f"bench_{command}")
    with pytest.raises(ConfigError, match=needle):
        bench(device=device)


def test_report_readme_checks_the_docs_pages_beside_the_readme_too(tmp_path, capsys):
    """Tables quoted by a page under docs/ are checked like README's, their report paths relative to README's
    folder; a page's mistyped marker is refused naming that page."""
    from emoctl.commands.report import readme_tables

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "t.md").write_text("# T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (tmp_path / "docs").mkdir()
    readme, page = tmp_path / "README.md", tmp_path / "docs" / "results.md"
    readme.write_text("# R\n")
    block = "<!-- table: reports/t.md #1 -->\n| a | b |\n|---|---|\n| 1 | {} |\n<!-- /table -->\n"
    page.write_text("# Results\n\n" + block.format(2))
    readme_tables(str(readme), check=True)
    assert "1 quoted tables equal their reports" in capsys.readouterr().out
    page.write_text("# Results\n\n" + block.format(9))
    with pytest.raises(SystemExit):
        readme_tables(str(readme), check=True)
    assert f"{page}:3: table #1 of reports/t.md differs" in capsys.readouterr().out
    readme_tables(str(readme))  # rewritten from the report
    assert page.read_text() == "# Results\n\n" + block.format(2)
    page.write_text("# Results\n\n" + block.format(9).replace("<!-- table:", "<!--  table:"))
    with pytest.raises(ConfigError, match=rf"{page}:3: .* looks like a table marker"):
        readme_tables(str(readme), check=True)


def test_table1_refuses_feature_sets_without_an_sae_digest_unless_asked(corpus_root, tmp_path):
    """Table 1 applies the same check as attribute: a set that records no digest is refused, unless asked, and the
    run then goes on (to the store, missing here)."""
    from emoctl.errors import StoreError
    from emoctl.commands.table1 import table1

    sel = _selection(tmp_path, lambda raw: raw["sae"].pop("digest"))
    kwargs = dict(sae=str(SAE_MINI), store=str(tmp_path / "no_store"), selection=str(sel), emotions=["Angry"],
                  corpus_root=str(corpus_root), out_dir=str(tmp_path / "t1"), progress=False)
    with pytest.raises(ConfigError, match=r"features_Angry.json records no SAE digest.*"
                                          r"--allow_unverified_features true"):
        table1(**kwargs)
    with pytest.raises(StoreError, match="no_store"):
        table1(**kwargs, allow_unverified_features=True)


def test_table1_refuses_latent_alphas_past_the_bound_before_reading_the_corpus(tmp_path):
    from emoctl.commands.table1 import table1

    with pytest.raises(ConfigError, match=r"sweep_alphas \{'sae_emotion': \[1e\+30\]\} steer latents too hard"):
        table1(sae=str(SAE_MINI), store=str(tmp_path / "s"), selection=str(SELECT_MINI),
               corpus_root=str(tmp_path / "no_corpus"), out_dir=str(tmp_path / "t1"),
               sweep_alphas={"sae_emotion": [4.0, 1e30]}, progress=False)
