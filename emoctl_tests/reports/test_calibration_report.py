"""``emoctl calibrate``'s settings: every bad value refused in one paragraph before anything is loaded or spoken.
(The run end to end, and steering by its intensities, is in emoctl_tests/steering/test_sae_steering_mini.py,
beside the SAE and store it calibrates.)"""
from __future__ import annotations

import pytest

from emoctl.errors import ConfigError
from emoctl.reports.calibration import DEFAULT_ALPHAS, CalibrationSettings
from emoctl_tests.helpers.cli import RECIPES, assert_one_paragraph_error, parse_emoctl

PREFIX = "emoctl calibrate: error:"


def test_the_recipe_parses_to_the_settings_it_documents():
    settings = CalibrationSettings(methods=["emoshift", "global"], alphas={"global": [8.0, 2.0]})
    assert settings.grids == {"emoshift": DEFAULT_ALPHAS["emoshift"], "global": [2.0, 8.0]}
    assert settings.protocol.split == "evaluation"


@pytest.mark.parametrize("args, needle", [
    (["--methods", '["cocoemo"]'], "name each of emoshift, sae_emotion, global, random_sae"),
    (["--emotions", '["Neutral"]'], "not Neutral"),
    (["--emotions", '["Sad", "Sad"]'], "name each target emotion once"),
    (["--alphas", '{"global": [0.0, 4.0]}'], "give distinct finite α > 0"),
    (["--alphas", '{"global": [4.0, 4.0]}'], "give distinct finite α > 0"),
    (["--alphas", '{"sae_emotion": [5000]}'], "steers latents too hard"),
    (["--alphas", '{"other": [1]}'], "alphas has no method ['other']"),
    (["--protocol.split", "test"], "runs on the evaluation sentences"),
    (["--store", "null"], "method global needs store"),
    (["--layer", "null"], "method emoshift needs layer"),
])
def test_a_bad_setting_gets_one_paragraph(tmp_path, args, needle):
    recipe = str(RECIPES / "evaluation" / "calibrate_mini.yaml")
    result = parse_emoctl("calibrate", "--config", recipe, "--out_dir", str(tmp_path / "o"), *args)
    assert_one_paragraph_error(result, needle, prefix=PREFIX)
    assert not (tmp_path / "o").exists()


def test_settings_refuse_a_method_without_its_inputs():
    with pytest.raises(ConfigError, match=r"methods \['sae_emotion'\] need sae and selection"):
        CalibrationSettings(methods=["sae_emotion"], sae=None)
