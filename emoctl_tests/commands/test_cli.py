"""The ``emoctl`` command: every recipe loads through it, and bad input gives a one-paragraph error."""
from __future__ import annotations

import yaml
import pytest

from emoctl_tests.helpers.cli import RECIPES, assert_one_paragraph_error, parse_emoctl, run_emoctl

ALL_RECIPES = sorted(RECIPES.glob("*.yaml"))


def test_overview_lists_trainer_commands_and_tools():
    result = run_emoctl("--help")
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "bench", "bench sae", "inspect recovery"):
        assert command in result.stdout


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=lambda p: p.name)
def test_every_recipe_resolves_through_the_cli(recipe):
    """A recipe that drifts from the code (renamed argument, moved class) fails here, not for a user."""
    result = parse_emoctl("fit", "--config", str(recipe), "--print_config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    written = yaml.safe_load(recipe.read_text())
    assert resolved["model"]["class_path"].endswith(written["model"]["class_path"].split(".")[-1])
    # Values given in the recipe survive resolution unchanged.
    for key, value in written["model"]["init_args"].get("sae", {}).items():
        assert resolved["model"]["init_args"]["sae"][key] == value
    assert resolved["trainer"]["use_distributed_sampler"] is False


def test_configs_merge_in_order_and_dotted_overrides_win(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("trainer:\n  max_steps: 7\nmodel:\n  init_args:\n    sae:\n      k: 3\n")
    result = parse_emoctl("fit", "--config", str(RECIPES / "sae_demo.yaml"), "--config", str(extra),
                        "--model.init_args.sae.d_sae=128", "--print_config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["trainer"]["max_steps"] == 7
    assert resolved["model"]["init_args"]["sae"]["k"] == 3
    assert resolved["model"]["init_args"]["sae"]["d_sae"] == 128
    assert resolved["model"]["init_args"]["sae"]["d_in"] == 64  # untouched value from the first file


def test_model_help_documents_arguments_from_docstrings():
    result = parse_emoctl("fit", "--model.help", "emoctl.sae.module.SAEModule")
    assert result.returncode == 0, result.stderr
    assert "warmup_steps" in result.stdout and "linear learning-rate warm-up" in result.stdout
    assert "dead_tokens" in result.stdout


def test_unknown_key_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "sae_demo.yaml").read_text().replace("warmup_steps:", "warmup_stepz:"))
    assert_one_paragraph_error(run_emoctl("fit", "--config", str(bad)), "warmup_stepz")


def test_wrong_type_names_the_key():
    assert_one_paragraph_error(run_emoctl("fit", "--config", str(RECIPES / "sae_demo.yaml"), "--trainer.max_steps=many"),
                         "max_steps")


def test_missing_config_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert_one_paragraph_error(run_emoctl("fit", "--config", str(missing)), "nope.yaml")


@pytest.mark.parametrize("value, refused", [("-1e30", True), ("-1E+30", True), ("-5e3", True), ("-.5", False),
                                            ("-4e1", False)])
def test_a_negative_value_in_any_spelling_reaches_the_tool_as_a_value(value, refused, tmp_path):
    """argparse reads ``-1e30`` as an option, and would say that --alpha "expected one argument"."""
    result = parse_emoctl("attribute", "--sae", str(tmp_path / "no_sae"), "--selection", str(tmp_path / "no_sel"),
                          "--out_dir", str(tmp_path / "out"), "--alpha", value, "--seed", "-2")
    message = " ".join(result.stderr.split())
    assert result.returncode == 1 and "expected one argument" not in message, message
    assert ("alpha=" in message) == refused and "seed=-2" in message, message


def test_unknown_command_lists_the_commands():
    assert_one_paragraph_error(run_emoctl("fitt"), "fitt", "fit")


@pytest.mark.parametrize("override, needle", [
    ("--model.init_args.sae.k=0", "model.sae.k"),
    ("--model.init_args.sae.k=600", "d_sae"),
    ("--model.init_args.lr=-1", "model.lr"),
    ("--data.init_args.batch_size=0", "data.batch_size"),
    ("--data.init_args.val_fraction=1.5", "data.val_fraction"),
])
def test_errors_raised_while_building_the_recipes_classes_are_one_paragraph(override, needle, tmp_path):
    """jsonargparse wraps a class's own ConfigError in its union-type error; the user sees ours, once."""
    assert_one_paragraph_error(run_emoctl("fit", "--config", str(RECIPES / "sae_demo.yaml"), override,
                                    f"--trainer.default_root_dir={tmp_path}"), needle)


@pytest.mark.parametrize("command", [
    ["select", "--store", "no_store", "--sae", "no_sae", "--out_dir"],
    ["steer", "emoshift", "--layer", "no_layer", "--out_dir"],
    ["report", "table1", "--sae", "x", "--store", "y", "--selection", "z", "--out_dir"],
    ["inspect", "emotionality", "--out_dir"],
    ["attribute", "--sae", "x", "--selection", "y", "--out_dir"],
    ["evaluate", "--audio", ".", "--manifest", "m.csv", "--out"],
], ids=lambda c: " ".join(c[:2]))
def test_an_output_folder_blocked_by_a_file_fails_before_any_work(command, tmp_path):
    """Checked first, so the error is about the folder even though every input here is missing too."""
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    assert_one_paragraph_error(run_emoctl(*command, str(blocker / "out")), f"{blocker} is a file, not a folder")


def test_file_system_errors_are_one_paragraph_naming_the_file(tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    assert_one_paragraph_error(run_emoctl("corpus", "build", "--root", str(blocker / "corpus"), "--n_sentences", "5",
                                    "--speakers", "1"), str(blocker))
