"""``emoctl calibrate``'s settings: every bad value refused in one paragraph before anything is loaded or spoken;
CoCoEmo's directions calibrated and steered by intensity. (The run end to end for the SAE-side methods, and
steering by their intensities, is in emoctl_tests/steering/test_sae_steering_mini.py, beside the SAE and store
it calibrates.)"""
from __future__ import annotations

import pytest

from emoctl.backbones.loading import load_backbone
from emoctl.errors import ConfigError
from emoctl.evaluation.calibration import Calibration, alphas_for_intensity
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.reports.calibration import DEFAULT_ALPHAS, CalibrationSettings, run_calibration
from emoctl.synthesis import SamplingConfig
from emoctl_tests.helpers.cli import RECIPES, assert_one_paragraph_error, parse_emoctl

PREFIX = "emoctl calibrate: error:"


def test_the_recipe_parses_to_the_settings_it_documents():
    settings = CalibrationSettings(methods=["emoshift", "global"], alphas={"global": [8.0, 2.0]})
    assert settings.grids == {"emoshift": DEFAULT_ALPHAS["emoshift"], "global": [2.0, 8.0]}
    assert settings.protocol.split == "evaluation"


@pytest.mark.parametrize("args, needle", [
    (["--methods", '["random"]'], "name each of emoshift, sae_emotion, global, random_sae, cocoemo"),
    (["--methods", '["cocoemo"]', "--directions", "null"], "method cocoemo needs directions"),
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


@pytest.mark.usefixtures("one_thread")
def test_cocoemo_is_calibrated_and_steered_by_intensity(corpus_root, tmp_path, capsys):
    """CoCoEmo's committed directions calibrated for Angry on two held-out voices, then an intensity inside the
    reached range gives an α on the grid's scale; the file names the method."""
    run_calibration(CalibrationSettings(
        methods=["cocoemo"], emotions=["Angry"], alphas={"cocoemo": [2.0, 4.0]}, corpus_root=str(corpus_root),
        out_dir=str(tmp_path / "c"), n_bootstrap=50, progress=False,
        protocol=EvaluationProtocol(split="evaluation", speakers=["0019", "0020"], n_texts=2,
                                    sampling=SamplingConfig(max_new_tokens=300))))
    calibration = Calibration.load(tmp_path / "c" / "calibration.json")
    (curve,) = calibration.curves
    assert (curve.method, curve.emotion) == ("cocoemo", "Angry")
    assert [p.alpha for p in curve.points] == [0.0, 2.0, 4.0]
    top = max(p.fit for p in curve.points)
    assert top > curve.points[0].fit  # steering raised P(Angry) over the unsteered clips
    middle = (curve.points[0].fit + top) / 2
    choice = alphas_for_intensity(str(tmp_path / "c"), "cocoemo", ["Angry"], middle, load_backbone().backbone_id)
    assert 0.0 < choice["Angry"].alpha <= 4.0
