"""Catalogue cases of hand-edited inputs: feature sets for ``emoctl attribute``, report records for ``report diff``,
README's table markers, and command-line values of ``select`` and the benchmarks.

Each refusal comes before the backbone loads or anything is generated: the attribute cases name a backbone folder
that does not exist, so a refusal that came after loading would name that folder instead.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

PLACEHOLDERS: dict[str, str] = {
    "sel": "a copy of `{select_mini}` with features_Angry.json edited as the case says",
    "record": "a report record (`a_info.json`) edited as the case says; `{good}` is a well-formed one",
    "readme": "a README.md quoting table #1 of reports/t.md beside it, with its marker mistyped",
}

ALSO_TESTED: dict[str, list[tuple[str, str]]] = {
    "7": [("reliability/test_hand_edited_inputs.py", "test_a_hand_edited_feature_set_is_refused_naming_the_file_and_entry"),
          ("reliability/test_hand_edited_inputs.py", "test_attribute_refuses_edited_sets_and_absurd_alpha_before_the_backbone_loads"),
          ("reliability/test_hand_edited_inputs.py", "test_a_feature_set_without_an_sae_digest_is_applied_only_when_asked"),
          ("reliability/test_hand_edited_inputs.py", "test_a_mistyped_table_marker_is_refused_not_left_out_of_the_check")],
    "4": [("reliability/test_hand_edited_inputs.py", "test_report_diff_names_a_record_of_the_wrong_shape")],
}

ATTRIBUTE = ("attribute", "--sae", "{sae_mini}", "--selection", "{sel}", "--out_dir", "{tmp}/attr",
             "--backbone.path", "{tmp}/no_backbone")
"""`emoctl attribute` on the edited selection, with a backbone folder that does not exist (see the module)."""


def _edit_feature_set(change: Callable[[dict[str, Any]], None], doc: str):
    """A setup that copies `{select_mini}` to `{sel}` and applies ``change`` to features_Angry.json's JSON."""

    def setup(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
        sel = case_dir / "sel"
        shutil.copytree(values["select_mini"], sel)
        path = sel / "features_Angry.json"
        raw = json.loads(path.read_text())
        change(raw)
        path.write_text(json.dumps(raw, indent=1))
        return {"sel": str(sel)}

    setup.__doc__ = f"`{{select_mini}}` copy (`{{sel}}`) whose features_Angry.json {doc}."
    return setup


def _set_first_id(value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        raw["features"][0]["id"] = value
        raw["feature_ids"][0] = value
    return change


def _edit_ids_only(raw: dict[str, Any]) -> None:
    raw["feature_ids"][0] = 7


def _repeat_first(raw: dict[str, Any]) -> None:
    raw["features"][1] = dict(raw["features"][0])
    raw["feature_ids"][1] = raw["feature_ids"][0]


def _emotion(name: str) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        raw["emotion"] = name
    return change


def _drop_digest(raw: dict[str, Any]) -> None:
    del raw["sae"]["digest"]


def _record(body: Any, doc: str):
    """A setup that writes ``body`` as `{record}` and a well-formed record as `{good}`."""

    def setup(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
        (case_dir / "a_info.json").write_text(json.dumps(body))
        (case_dir / "good_info.json").write_text(json.dumps({"provenance": {"seeds": {"sampling": 0}}, "outputs": {}}))
        return {"record": str(case_dir / "a_info.json"), "good": str(case_dir / "good_info.json")}

    setup.__doc__ = f"`{{record}}` {doc}; `{{good}}` is a well-formed record."
    return setup


def _readme(marker: str):
    """A setup: README.md whose marker line 3 is ``marker``, quoting reports/t.md with one cell edited."""

    def setup(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
        (case_dir / "reports").mkdir()
        (case_dir / "reports" / "t.md").write_text("# T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
        (case_dir / "README.md").write_text(f"# R\n\n{marker}\n| a | b |\n|---|---|\n| 1 | 9 |\n<!-- /table -->\n")
        return {"readme": str(case_dir / "README.md")}

    setup.__doc__ = (f"`{{readme}}`: line 3 is `{marker}`, the mistyped marker of a table whose cell differs from "
                     "reports/t.md's.")
    return setup


def register(case) -> None:
    """Add this surface's cases to the catalogue."""
    file = "{sel}/features_Angry.json"
    for value, label in [(3.7, "3.7"), (True, "true"), ("seven", '"seven"'), ([3], "[3]"), (None, "null"),
                         (-1, "-1"), (1024, "1024 (= d_sae)")]:
        case("7", f"feature set with latent id {label}: attribute", ATTRIBUTE,
             (file, "features[0]", "latent id", "JSON integer in 0 .. 1023"),
             setup=_edit_feature_set(_set_first_id(value), f"has the first latent id {json.dumps(value)}"))
    case("7", "feature set whose feature_ids were edited but not features: attribute", ATTRIBUTE,
         (file, "`feature_ids` [7, 383", "disagree"),
         setup=_edit_feature_set(_edit_ids_only, "has `feature_ids[0]` changed to 7 and `features` left alone"))
    case("7", "feature set with a latent listed twice: attribute", ATTRIBUTE,
         (file, "[579]", "more than once"),
         setup=_edit_feature_set(_repeat_first, "lists its first latent twice"))
    case("7", "feature set whose emotion names another emotion: attribute", ATTRIBUTE,
         (file, "'Sad'", "files it under another emotion"),
         setup=_edit_feature_set(_emotion("Sad"), "says `emotion: Sad`"))
    case("7", "feature set with an empty emotion: attribute", ATTRIBUTE,
         (file, "`emotion` must be a non-empty string"),
         setup=_edit_feature_set(_emotion(""), "says `emotion: \"\"`"))
    case("7", "feature set without its SAE digest: attribute", ATTRIBUTE,
         (file, "records no SAE digest", "--allow_unverified_features true"),
         setup=_edit_feature_set(_drop_digest, "has no `sae.digest`"))
    case("7", "feature set without its SAE digest, applied when asked: attribute reaches the backbone",
         (*ATTRIBUTE, "--allow_unverified_features", "true"), ("{tmp}/no_backbone",),
         setup=_edit_feature_set(_drop_digest, "has no `sae.digest`"))
    plain = ("attribute", "--sae", "{sae_mini}", "--selection", "{select_mini}", "--out_dir", "{tmp}/attr",
             "--backbone.path", "{tmp}/no_backbone")
    for alpha in ("1e30", "-1e30", "5000"):
        case("7", f"attribute --alpha={alpha}", (*plain, f"--alpha={alpha}"), ("alpha=", "|α| <= 1000", "4 to 40"))
    case("7", "attribute --alpha -1e30 (a negative value in scientific notation, as its own argument)",
         (*plain, "--alpha", "-1e30"), ("alpha=-1e+30", "|α| <= 1000"))
    case("7", "attribute --alphas {Angry: 1e30}", (*plain, "--alphas", "{{Angry: 1e30}}"), ("alphas=", "|α| <= 1000"))
    case("7", "attribute --seed -1", (*plain, "--seed", "-1"), ("seed=-1",))
    case("7", "report table1 --sweep_alphas {sae_emotion: [4, 1e30]} (checked before the corpus is read)",
         ("report", "table1", "--sae", "{sae_mini}", "--store", "{store}", "--selection", "{select_mini}",
          "--out_dir", "{tmp}/t", "--corpus_root", "{tmp}/no_corpus", "--sweep_alphas", "{{sae_emotion: [4, 1e30]}}"),
         ("sweep_alphas", "sae_emotion", "|α| <= 1000"))

    for marker, label in [("<!--  table: reports/t.md #1 -->", "two spaces"),
                          ("<!-- table reports/t.md #1 -->", "no colon"),
                          ("<!-- Table: reports/t.md #1 -->", "capital T"),
                          ("<!-- tabel: reports/t.md #1 -->", "a swapped letter"),
                          ("<!--table: reports/t.md #1-->", "no spaces")]:
        case("7", f"README table marker with {label}: report readme --check",
             ("report", "readme", "--readme", "{readme}", "--check", "true"),
             ("{readme}:3", "looks like a table marker"), setup=_readme(marker))

    for body, doc in [([1, 2], "is a JSON list"), ("hello", "is a JSON string"),
                      ({"provenance": [1], "outputs": {}}, "has a list as its provenance"),
                      ({"provenance": "x", "outputs": {}}, "has a string as its provenance"),
                      ({"provenance": {}, "outputs": ["t.csv"]}, "has a list as its outputs"),
                      ({"provenance": {}, "outputs": {"../../etc/hostname": "00"}}, "has an output outside its folder")]:
        case("4", f"report record that {doc}: report diff",
             ("report", "diff", "{record}", "{good}"), ("{record}",), setup=_record(body, doc))

    case("7", "select --seed -1", ("select", "--store", "{store}", "--sae", "{sae}", "--out_dir", "{tmp}/sel",
                                   "--progress", "false", "--seed", "-1"), ("--seed -1", ">= 0"))
    for args in [("probes", "--device", "cuda"), ("probes", "--device", "tpu"), ("sae", "--device", "gpu"),
                 ("loader", "--device", "cuda:99"), ("cosyvoice", "--device", "cuda"),
                 ("gpu", "--device", "tpu", "--quick", "true", "--out", "{tmp}/b.md")]:
        case("7", f"bench {' '.join(args[:3])}", ("bench", *args), (f"bench {args[0]} --device '{args[2]}'",))
