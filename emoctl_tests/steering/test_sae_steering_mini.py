"""The SAE seed's method end to end on the committed mini backbone.

Harvest decode-phase resid_pre.5 (small grid), fit the SAE with the real recipe, select emotion features,
then: suppressing Angry with negative α on Angry-condition prompts lowers the recognizer's P(Angry), and
inducing it on Neutral prompts raises it; Table 1 runs end to end on a tiny grid.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emoctl_tests.helpers.cli import RECIPES, run_emoctl
from emoctl.backbones.base import Prompt
from emoctl.backbones.loading import load_backbone
from emoctl.metrics.loading import load_recognizer
from emoctl.sae.export import load_pretrained
from emoctl.commands.select import select_features
from emoctl.selection.feature_set import feature_set_path
from emoctl.steering import SAEFeatureSteering, steer
from emoctl.synthesis import synthesize

TEST_SPEAKERS = ["0017", "0018"]  # held out from the harvest below


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_root):
    root = tmp_path_factory.mktemp("sae_mini")
    overrides = root / "small.yaml"
    overrides.write_text(json.dumps({"data": {"init_args": {"build": {"init_args": {
        "corpus": {"n_sentences": 300, "seed": 0, "split": "train", "limit": 12},
        "speakers": ["0011", "0012", "0013", "0014"]}}}}}))
    result = run_emoctl("fit", "--config", str(RECIPES / "sae_mini.yaml"), "--config", str(overrides),
                        f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}",
                        "--trainer.logger.init_args.version=v0", "--trainer.max_steps=400",
                        "--trainer.val_check_interval=200", f"--data.init_args.path={root / 'store'}",
                        "--data.init_args.batch_size=512", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    sae_dir = root / "sae_mini" / "v0" / "sae"
    sets = select_features(str(root / "store"), str(sae_dir), str(root / "select"), progress=False)
    return root, sae_dir, sets


def test_selection_finds_emotion_features_with_real_paired_evidence(trained):
    root, _, sets = trained
    assert set(sets) == {"Angry", "Happy", "Sad", "Surprise"}
    for emotion, fs in sets.items():
        top = fs.features[0]
        assert len(fs.features) == 6
        # 12 texts x 4 speakers = 48 pairs: the best feature fires in clearly more emotional utterances.
        assert top.delta >= 0.3 and top.p_value < 1e-3, (emotion, top)
        assert feature_set_path(root / "select", emotion).is_file()


@pytest.fixture(scope="module")
def angry_runs(trained, corpus_root):
    _, sae_dir, sets = trained
    torch.set_num_threads(2)
    tts, sae = load_backbone("mini_tts"), load_pretrained(sae_dir)
    record = json.loads((Path(corpus_root) / "corpus.json").read_text())
    texts = record["sentences"][17:17 + 4]  # test split: never seen by the backbone or the SAE
    recognizer = load_recognizer("mini")
    features = sets["Angry"].feature_ids

    def p_angry(condition: str, alpha: float) -> np.ndarray:
        prompts = [Prompt(t, s, condition) for t in texts for s in TEST_SPEAKERS]
        with steer(tts, SAEFeatureSteering(sae, features, alpha)):
            clips = synthesize(tts, prompts, seed=0)
        return recognizer([c.wave for c in clips], [c.sample_rate for c in clips]).prob_of("Angry").numpy()

    return {key: p_angry(*key) for key in [("Angry", 0.0), ("Angry", -8.0), ("Neutral", 0.0), ("Neutral", 4.0)]}


def test_suppression_with_negative_alpha_lowers_p_target(angry_runs):
    before, after = angry_runs[("Angry", 0.0)], angry_runs[("Angry", -8.0)]
    assert before.mean() > 0.5, before          # the condition alone is heard as Angry
    assert after.mean() < before.mean() - 0.25, (before.mean(), after.mean())
    assert (after < before).mean() >= 0.75      # paired: most utterances individually


def test_induction_with_positive_alpha_raises_p_target(angry_runs):
    # Induction needs a smaller α than suppression with this small SAE: measured mean P(Angry) on these 8
    # Neutral prompts was 0.08 unsteered, 0.62 at α=4, 0.47 at 6, 0.23 at 8, 0.07 at 10 (past α≈8 the
    # steered states no longer reach the stop token and clips run to the length cap).
    before, after = angry_runs[("Neutral", 0.0)], angry_runs[("Neutral", 4.0)]
    assert after.mean() > before.mean() + 0.25, (before.mean(), after.mean())
    assert (after > before).mean() >= 0.75, (before, after)  # paired: most utterances individually


def test_table1_runs_end_to_end_and_writes_its_reports(trained, corpus_root, tmp_path):
    root, sae_dir, _ = trained
    out = tmp_path / "reports"
    rate_sets = select_features(str(root / "store"), str(sae_dir), str(tmp_path / "select_rate"), score="rate",
                                n_bootstrap=200, n_stability=20, progress=False)
    result = run_emoctl("report", "table1", "--sae", str(sae_dir), "--store", str(root / "store"),
                        "--selection", str(root / "select"), "--corpus_root", str(corpus_root),
                        "--selections", json.dumps({"rate": str(tmp_path / "select_rate")}),
                        "--out_dir", str(out), "--emotions", '["Sad"]', "--protocol.speakers", '["0017"]',
                        "--protocol.n_texts", "2",
                        "--sweep_texts", "1",
                        "--sweep_alphas", '{"random_sae": [8], "global": [8], "sae_emotion": [8]}',
                        "--save_audio", "true", "--progress", "false", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "table1.md").read_text()
    for label in ("Unsteered", "Random SAE", "Global steering", "SAE-Emotion", "SAE-Emotion (rate)", "Emo-SIM",
                  "DNSMOS", "## Selection scores", "## Paired comparisons"):
        assert label in table
    rows = (out / "table1.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 5  # header + (induction, suppression) x 5 methods (the rate variant included)
    clips = (out / "table1_clips.csv").read_text().splitlines()
    assert len(clips) == 1 + 2 * 5 * 2
    assert (out / "alpha_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / ".partial").exists()  # the blocks kept for a resume go once the report is written
    info = json.loads((out / "table1_info.json").read_text())
    assert info["alphas"] == {"random_sae": 8.0, "global": 8.0, "sae_emotion": 8.0, "sae_emotion:rate": 8.0}
    assert info["selection_score"] == "any_step"
    assert info["selections"]["rate"]["features"]["Sad"] == rate_sets["Sad"].feature_ids
    # The selection-score section: overlap of the two sets, as the files say.
    overlap = len(set(rate_sets["Sad"].feature_ids) & set(info["features"]["Sad"]))
    assert f"| Sad | {overlap} | " in table
    # Paired comparisons: one row per (direction, pair) on the 2 shared clips; Emo-SIM difference from the clips.
    import csv

    paired = list(csv.DictReader((out / "table1_paired.csv").open()))
    pairs = {(r["direction"], r["method_a"], r["method_b"]) for r in paired}
    assert ("induction", "sae_emotion", "global") in pairs and ("suppression", "sae_emotion:rate", "sae_emotion") in pairs
    by_method = {}
    for clip in csv.DictReader((out / "table1_clips.csv").open()):
        by_method.setdefault((clip["direction"], clip["method"]), []).append(float(clip["emo_sim_matched"]))
    row = next(r for r in paired if (r["direction"], r["method_a"], r["method_b"]) == ("induction", "sae_emotion", "global"))
    assert int(row["n"]) == 2 and float(row["emo_sim_p"]) >= 0.5  # two clips: a sign-flip p cannot go below 0.5
    assert float(row["emo_sim_diff"]) == pytest.approx(np.mean(by_method[("induction", "sae_emotion")])
                                                       - np.mean(by_method[("induction", "global")]), abs=1e-9)
    # What made it: every input by content digest, under the title and in the record.
    from emoctl.io.provenance import digest_path

    inputs = info["provenance"]["inputs"]
    assert set(inputs) == {"backbone", "sae", "feature_sets", "feature_sets_rate", "store", "corpus", "recognizer"}
    assert inputs["sae"]["digest"] == digest_path(sae_dir)
    assert inputs["backbone"]["id"] == load_backbone("mini_tts").backbone_id
    from emoctl.metrics.ser_mini import DEFAULT_MINI_SER_DIR

    assert inputs["recognizer"]["digest"] == digest_path(DEFAULT_MINI_SER_DIR)
    assert info["provenance"]["protocol"]["speakers"] == ["0017"] and info["provenance"]["seeds"]["sampling"] == 0
    assert table.splitlines()[2].startswith("*Made with* backbone `") and "table1_info.json" in table.splitlines()[2]
    assert set(info["outputs"]) == {"table1.csv", "table1_clips.csv", "table1_paired.csv", "alpha_sweep.csv"}
    # --save_audio kept every scored clip, and they make a blind listening site (emoctl listen build)
    from emoctl.reports.listening import build_listening_site

    kept = list(csv.DictReader((out / "table1_clips.csv").open()))
    assert all(c["audio"] and (out / c["audio"]).is_file() for c in kept)
    site = build_listening_site(str(out), str(tmp_path / "listening"), raters=2, seed=0,
                                methods=["unsteered", "sae_emotion"])
    assert site["prompts"] == 4 and site["items_per_page"] == 4 * 2 + 2  # 2 directions x 2 clips; 2 checks
    assert len(list((tmp_path / "listening" / "site" / "audio").glob("*.flac"))) == 4 * 2


def _clip_rows(path: Path) -> list[dict]:
    import csv

    return list(csv.DictReader(path.open()))


def test_calibration_then_steering_by_intensity_end_to_end(trained, corpus_root, tmp_path, capsys):
    """``emoctl calibrate`` on EmoShift, SAE-Emotion and Global (the store's mean differences) for Sad; the curves
    hold the clips' numbers; ``steer emoshift --intensities`` and ``report schedules --intensity`` steer at the α
    the calibration's inverse gives; Global runs in the schedules report."""
    from emoctl.commands.steer import emoshift_sweep
    from emoctl.evaluation.calibration import Calibration, monotone_fit
    from emoctl.evaluation.protocol import EvaluationProtocol
    from emoctl.reports.calibration import CalibrationSettings, run_calibration
    from emoctl.reports.schedules import SchedulesSettings, run_schedules
    from emoctl.synthesis import SamplingConfig

    root, sae_dir, _ = trained
    sampling = SamplingConfig(max_new_tokens=200, batch_size=4)
    protocol = EvaluationProtocol(speakers=["0017"], n_texts=2, split="evaluation", sampling=sampling)
    cal = tmp_path / "calibration"
    run_calibration(CalibrationSettings(sae=str(sae_dir), selection=str(root / "select"), store=str(root / "store"),
                                        corpus_root=str(corpus_root), out_dir=str(cal), emotions=["Sad"],
                                        alphas={"emoshift": [2.0], "sae_emotion": [4.0, 8.0], "global": [8.0]},
                                        protocol=protocol, n_bootstrap=200, progress=False))
    calibration = Calibration.load(cal)
    assert calibration.backbone_id == load_backbone("mini_tts").backbone_id and calibration.recognizer == "mini-ser"
    curves = {c.method: c for c in calibration.curves}
    assert {m: [p.alpha for p in c.points] for m, c in curves.items()} == {
        "emoshift": [0, 2], "sae_emotion": [0, 4, 8], "global": [0, 8]}
    clips = _clip_rows(cal / "calibration_clips.csv")
    for method, curve in curves.items():
        assert curve.points[0] == curves["emoshift"].points[0]  # α = 0: the same unsteered clips for every method
        for point in curve.points:
            label = "unsteered" if point.alpha == 0 else f"{method}@{point.alpha:g}"
            mine = [r for r in clips if r["method"] == label]
            assert point.n == len(mine) == 2
            assert point.p_target == pytest.approx(np.mean([float(r["p_target"]) for r in mine]))
            assert point.accuracy == pytest.approx(np.mean([float(r["ser_hit"]) for r in mine]))
            assert point.wer == pytest.approx(np.mean([float(r["wer"]) for r in mine]))
        assert [p.fit for p in curve.points] == pytest.approx(
            monotone_fit([p.p_target for p in curve.points], [p.n for p in curve.points]))
    top = curves["sae_emotion"].points[-1]
    assert (f"| SAE-Emotion | Sad | 8 | 2 | {top.p_target:.3f} [{top.p_target_low:.3f}, {top.p_target_high:.3f}] | "
            f"{top.fit:.3f} |") in (cal / "calibration.md").read_text()
    assert (cal / "calibration.png").read_bytes()[:4] == b"\x89PNG" and not (cal / ".partial").exists()
    low, high = curves["emoshift"].reached
    assert high > low + 0.2, (low, high)  # the layer raises P(Sad): a curve to invert

    # steer emoshift at a calibrated intensity: the α is the inverse's, printed, recorded and used on every clip.
    intensity = round((low + high) / 2, 4)
    alpha = curves["emoshift"].alpha_for(intensity)
    assert 0 < alpha < 2
    capsys.readouterr()
    emoshift_sweep("emoctl/assets/emoshift_mini", corpus_root=str(corpus_root), out_dir=str(tmp_path / "sweep"),
                   emotions=["Sad"], intensities=[intensity], calibration=str(cal),
                   protocol=EvaluationProtocol(speakers=["0017"], n_texts=1, sampling=sampling), progress=False)
    assert f"intensity {intensity:g} -> α = {alpha:.4g} for Sad by emoshift" in capsys.readouterr().out
    info = json.loads((tmp_path / "sweep" / "emoshift_sweep_info.json").read_text())
    assert info["intensities"] == {f"{intensity:g}": {"Sad": pytest.approx(alpha)}}
    steered = [r for r in _clip_rows(tmp_path / "sweep" / "emoshift_sweep_clips.csv")
               if r["method"] == f"intensity={intensity:g}"]
    assert steered and all(float(r["alpha"]) == pytest.approx(alpha) for r in steered)
    assert "calibration" in info["provenance"]["inputs"]

    # report schedules: Global switched on mid-utterance, and EmoShift at the calibrated intensity.
    schedule = {"switch": {"at_s": 0.6}}
    short = EvaluationProtocol(speakers=["0017"], n_texts=1, sampling=SamplingConfig(max_new_tokens=100))
    common = dict(sae=str(sae_dir), selection=str(root / "select"), store=str(root / "store"),
                  corpus_root=str(corpus_root), emotions=["Sad"], schedule=schedule, protocol=short, n_bootstrap=50,
                  progress=False)
    run_schedules(SchedulesSettings(out_dir=str(tmp_path / "sched_global"), methods=["emoshift", "global"],
                                    alphas={"emoshift": 2.0, "global": 8.0}, **common))
    info = json.loads((tmp_path / "sched_global" / "schedules_info.json").read_text())
    assert info["methods"]["global"] == {"hookpoint": "resid_pre.5", "alphas": {"Sad": 8.0}}
    assert info["tokens_kept_before_switch"] == {"emoshift/Sad": 1, "global/Sad": 1}
    assert "| Global steering | Sad |" in (tmp_path / "sched_global" / "schedules.md").read_text()
    run_schedules(SchedulesSettings(out_dir=str(tmp_path / "sched_intensity"), methods=["emoshift"],
                                    intensity=intensity, calibration=str(cal), **common))
    info = json.loads((tmp_path / "sched_intensity" / "schedules_info.json").read_text())
    assert info["methods"]["emoshift"]["alphas"] == {"Sad": pytest.approx(alpha)} and info["intensity"] == intensity
    rows = [r for r in _clip_rows(tmp_path / "sched_intensity" / "schedules_clips.csv") if r["method"] == "switched"]
    assert rows and all(float(r["alpha"]) == pytest.approx(alpha) for r in rows)
