"""The calibration's arithmetic: the monotone fit, its inverse (α for an intensity), the file and its refusals."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from emoctl.errors import ConfigError
from emoctl.evaluation.calibration import (Calibration, Curve, CurvePoint, alphas_for_intensity, build_curve,
                                           check_alpha_or_intensity, monotone_fit)


def test_monotone_fit_pools_adjacent_violators_by_weight():
    # 0.5 then 0.3 violate the order: pooled to their weighted mean, the rest untouched.
    assert monotone_fit([0.1, 0.5, 0.3, 0.7], [1, 1, 1, 1]) == pytest.approx([0.1, 0.4, 0.4, 0.7])
    assert monotone_fit([0.1, 0.5, 0.3, 0.7], [1, 3, 1, 1]) == pytest.approx([0.1, 0.45, 0.45, 0.7])
    # A fall at the end (EmoShift past its peak) is flattened into the peak, never turned into a rise.
    assert monotone_fit([0.0, 0.6, 0.9, 0.3], [2, 2, 2, 2]) == pytest.approx([0.0, 0.6, 0.6, 0.6])
    already = [0.0, 0.2, 0.2, 0.9]
    assert monotone_fit(already, [1, 1, 1, 1]) == pytest.approx(already)
    with pytest.raises(ConfigError, match="finite"):
        monotone_fit([0.1, math.nan], [1, 1])


def _point(alpha: float, fit: float, p: float | None = None, n: int = 8) -> CurvePoint:
    p = fit if p is None else p
    return CurvePoint(alpha, n, p, p - 0.1, p + 0.1, p, 0.0, 1.0, fit, 1.0, 0.8, 1.0)


def _curve(*pairs: tuple[float, float], method: str = "sae_emotion", emotion: str = "Angry") -> Curve:
    return Curve(method, emotion, tuple(_point(a, f) for a, f in pairs))


def test_alpha_for_inverts_the_fit_linearly_between_grid_points_and_takes_the_smallest_alpha():
    curve = _curve((0, 0.1), (4, 0.5), (8, 0.5), (12, 0.9))
    assert curve.reached == (0.1, 0.9)
    assert curve.alpha_for(0.1) == 0          # the unsteered reading: no steering
    assert curve.alpha_for(0.5) == 4          # reached first at 4; 8 gives no more
    assert curve.alpha_for(0.3) == pytest.approx(2.0)
    assert curve.alpha_for(0.7) == pytest.approx(10.0)
    assert curve.alpha_for(0.9) == 12
    for p in np.linspace(0.1, 0.9, 17):      # the inverse reproduces the fit wherever the fit rises
        alpha = curve.alpha_for(float(p))
        assert np.interp(alpha, [0, 4, 8, 12], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(p)


@pytest.mark.parametrize("intensity, needle", [
    (0.95, "intensity 0.95 for Angry by sae_emotion is outside what the calibration reached: P(Angry) from 0.100 "
           "(unsteered) to 0.900 (α = 12"),
    (0.05, "Choose an intensity in [0.100, 0.900], or calibrate with a wider alpha grid"),
    (math.nan, "must be a finite probability"),
])
def test_an_intensity_the_calibration_did_not_reach_is_refused_with_the_range(intensity, needle):
    with pytest.raises(ConfigError) as refused:
        _curve((0, 0.1), (4, 0.5), (12, 0.9)).alpha_for(intensity)
    assert needle in str(refused.value)


def test_a_curve_must_start_unsteered_rise_in_alpha_and_have_a_monotone_fit():
    with pytest.raises(ConfigError, match="must rise from 0"):
        _curve((2, 0.1), (4, 0.5))
    with pytest.raises(ConfigError, match="must rise from 0"):
        _curve((0, 0.1), (4, 0.5), (4, 0.6))
    with pytest.raises(ConfigError, match="non-decreasing"):
        _curve((0, 0.1), (4, 0.5), (8, 0.4))


def test_build_curve_means_intervals_fit_roughness_and_reversals_from_clip_rows():
    rng = np.random.default_rng(0)
    means = {0.0: 0.1, 2.0: 0.6, 4.0: 0.4, 8.0: 0.8}   # one reversal, at α = 4
    rows = {a: [{"p_target": float(np.clip(m + rng.normal(0, 0.05), 0, 1)), "ser_hit": float(i % 2 == 0),
                 "wer": 1.0 + a / 10, "spk_sim": 0.8, "finished": 1.0 if a < 8 else float(i < 3)}
                for i in range(8)] for a, m in means.items()}
    curve = build_curve("global", "Sad", rows, n_bootstrap=500)
    p = [float(np.mean([r["p_target"] for r in rows[a]])) for a in sorted(rows)]
    assert [pt.alpha for pt in curve.points] == [0.0, 2.0, 4.0, 8.0]
    assert [pt.p_target for pt in curve.points] == pytest.approx(p)
    assert all(pt.p_target_low < pt.p_target < pt.p_target_high for pt in curve.points)
    assert [pt.fit for pt in curve.points] == pytest.approx(monotone_fit(p, [8, 8, 8, 8]))
    assert curve.points[1].fit == curve.points[2].fit == pytest.approx((p[1] + p[2]) / 2)
    assert curve.reversals == 1
    assert curve.roughness == pytest.approx(np.sqrt(np.mean((np.array(p) - monotone_fit(p, [1] * 4)) ** 2)))
    assert curve.points[-1].finished == pytest.approx(3 / 8) and curve.points[0].wer == pytest.approx(1.0)
    assert curve.points[1].accuracy == 0.5
    with pytest.raises(ConfigError, match="no unsteered clips"):
        build_curve("global", "Sad", {2.0: rows[2.0]})


def _calibration() -> Calibration:
    return Calibration("mini-tts@abc", "mini-ser", (_curve((0, 0.1), (4, 0.5), (12, 0.9)),
                                                    _curve((0, 0.2), (2, 0.8), method="emoshift")), {"seed": 0})


def test_the_calibration_file_round_trips_and_refuses_another_backbone_and_damage(tmp_path, capsys):
    path = tmp_path / "calibration.json"
    calibration = _calibration()
    calibration.save(path)
    assert Calibration.load(path) == calibration and Calibration.load(tmp_path) == calibration
    raw = json.loads(path.read_text())
    assert raw["format"] == "emoctl-calibration" and "biased on synthetic speech" in raw["warning"]
    chosen = alphas_for_intensity(path, "sae_emotion", ["Angry"], 0.7, "mini-tts@abc")
    assert chosen["Angry"].alpha == pytest.approx(8.0)
    assert "intensity 0.7 -> α = 8 for Angry by sae_emotion" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="calibrates backbone mini-tts@abc, but steering runs on indextts2@x"):
        alphas_for_intensity(path, "sae_emotion", ["Angry"], 0.7, "indextts2@x")
    with pytest.raises(ConfigError, match=r"no curve for global/Angry \(it has sae_emotion/Angry, emoshift/Angry\)"):
        alphas_for_intensity(path, "global", ["Angry"], 0.7, "mini-tts@abc")
    for bad in (0.0, 1.0, True, -0.2):
        with pytest.raises(ConfigError, match="strictly between 0 and 1"):
            alphas_for_intensity(path, "sae_emotion", ["Angry"], bad, "mini-tts@abc")
    raw["curves"][0]["points"][0].pop("fit")
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="damaged calibration file"):
        Calibration.load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        Calibration.load(path)
    with pytest.raises(ConfigError, match="no calibration file at"):
        Calibration.load(tmp_path / "elsewhere")


def test_alpha_and_intensity_are_one_or_the_other():
    check_alpha_or_intensity(True, None, None, "cmd")
    check_alpha_or_intensity(False, [0.3, 0.6], "cal.json", "cmd")
    with pytest.raises(ConfigError, match="give α or an intensity, not both"):
        check_alpha_or_intensity(True, 0.5, "cal.json", "cmd")
    with pytest.raises(ConfigError, match="needs --calibration"):
        check_alpha_or_intensity(False, 0.5, None, "cmd")
    with pytest.raises(ConfigError, match="only read with an intensity"):
        check_alpha_or_intensity(True, None, "cal.json", "cmd")
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        check_alpha_or_intensity(False, [0.3, 1.5], "cal.json", "cmd")
