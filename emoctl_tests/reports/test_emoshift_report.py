"""EmoShift reports on the committed mini backbone: a layer trained here (backbone told Neutral) steers emotion.

The cheapest honest setup measured: a 20-sentence eSpeak corpus of one speaker's Happy and Sad clips (40 clips;
2 test-split sentences held out), tokenized with the backbone's codec, one short CPU training of a full-rank
EmoSteer layer through Lightning, then the real ``emoshift_sweep`` (α ∈ {0, 2}) on the held-out sentences with
the embedded recognizer, Whisper and Resemblyzer.  Neutral clips are left out of the training data: Neutral is
the identity, so they would cost forward passes and teach the layer nothing.
"""
from __future__ import annotations

import csv
import json
import dataclasses
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from emoctl_tests.helpers.cli import REPO
from emoctl.backbones.loading import BackboneSpec
from emoctl.callbacks.export import export_callbacks
from emoctl.emosteer.layer import EmoSteerConfig
from emoctl.training import OptimizerConfig
from emoctl.errors import ConfigError

BACKBONE = REPO / "emoctl" / "assets" / "mini_tts"
EMOTIONS = ["Happy", "Sad"]
SPEAKERS = ["0011", "0012"]  # 0011 trained on; 0012 only through the backbone
STEPS = 300
SAMPLING = dict(max_new_tokens=300, batch_size=5)  # 8 prompts: batches of 5 + 3, the hook per batch


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(corpus root, layer folder, seconds per stage) of a layer trained with the backbone told Neutral."""
    from data_modules.tts_corpus import TTSCorpusDataModule
    from emoctl.corpus.build import build_corpus
    from emoctl.emosteer.module import EmoShiftModule

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("emoshift")
    timings = {}
    start = time.perf_counter()
    root = build_corpus(str(tmp / "corpus"), n_sentences=20, speakers=2, workers=1, progress=False)
    timings["corpus"] = time.perf_counter() - start
    pl.seed_everything(0, verbose=False)
    data = TTSCorpusDataModule(str(root), backbone=BackboneSpec(path=str(BACKBONE)), batch_size=8, speakers=["0011"],
                               emotions=EMOTIONS, tokenize_workers=1, max_speech_tokens=400)
    module = EmoShiftModule(EmoSteerConfig(hidden_size=192), BackboneSpec(path=str(BACKBONE)), condition="neutral",
                            optimizer=OptimizerConfig(lr=1.0, warmup_steps=5))
    trainer = pl.Trainer(accelerator="cpu", max_steps=STEPS, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp / "run",
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=export_callbacks(module))
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    timings["tokenize+train"] = time.perf_counter() - start
    torch.set_num_threads(threads)
    return root, tmp / "run" / "emosteer", timings


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_sweep_lifts_accuracy_above_unsteered_and_alpha_zero_is_the_unsteered_row(trained, tmp_path):
    from emoctl.evaluation.emoshift_setup import SteeringSetup, target_prompts
    from emoctl.evaluation.scoring import References, Scorers, score_clips
    from emoctl.evaluation.protocol import EvaluationProtocol
    from emoctl.commands.steer import emoshift_sweep
    from emoctl.synthesis import SamplingConfig

    root, layer, timings = trained
    start = time.perf_counter()
    protocol = EvaluationProtocol(speakers=list(SPEAKERS), n_texts=2, sampling=SamplingConfig(**SAMPLING))
    emoshift_sweep(str(layer), corpus_root=str(root), out_dir=str(tmp_path), alphas=[0.0, 2.0], emotions=EMOTIONS,
                   protocol=protocol, progress=False)
    timings["sweep"] = time.perf_counter() - start
    assert {p.name for p in tmp_path.iterdir()} >= {"emoshift_sweep.md", "emoshift_sweep.csv", "emoshift_sweep.png",
                                                    "emoshift_sweep_clips.csv", "emoshift_sweep_info.json"}
    from emoctl.io.provenance import digest_path

    record = json.loads((tmp_path / "emoshift_sweep_info.json").read_text())["provenance"]
    assert set(record["inputs"]) == {"backbone", "layer", "corpus", "recognizer"}
    assert record["inputs"]["layer"]["digest"] == digest_path(layer)
    assert record["protocol"]["alphas"] == [0.0, 2.0]
    summary = {(r["emotion"], r["method"]): r for r in _rows(tmp_path / "emoshift_sweep.csv")}
    assert set(summary) == {(e, m) for e in [*EMOTIONS, "all"] for m in ("unsteered", "alpha=0", "alpha=2")}
    # α = 0 attaches the layer at zero intensity: every clip's every score equals the no-hook row's, as written.
    clips = _rows(tmp_path / "emoshift_sweep_clips.csv")
    unsteered = [r for r in clips if r["method"] == "unsteered"]
    zero = [r for r in clips if r["method"] == "alpha=0"]
    assert len(unsteered) == len(zero) == 2 * 2 * 2
    drop = ("method",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in zero] == \
        [{k: v for k, v in r.items() if k not in drop} for r in unsteered]
    assert {k: v for k, v in summary[("all", "alpha=0")].items() if k != "method"} == \
        {k: v for k, v in summary[("all", "unsteered")].items() if k != "method"}
    # The layer alone carries the emotion: told Neutral, the backbone is heard as Happy/Sad only when steered.
    base, steered = float(summary[("all", "unsteered")]["ser_hit"]), float(summary[("all", "alpha=2")]["ser_hit"])

    # The emotion-condition setting for the record: the backbone told the target emotion, unsteered and steered.
    setup = dataclasses.replace(SteeringSetup.load(str(layer)), condition="emotion")
    texts = list(dict.fromkeys(r["text"] for r in unsteered))
    prompts, targets = target_prompts(setup, EMOTIONS, texts, SPEAKERS, "cond")
    scorers = Scorers.load("mini", None, asr=None, speaker=None, dnsmos=False)
    record = json.loads((root / "corpus.json").read_text())
    refs = References(root, record["sentences"], SPEAKERS, scorers, split="test")
    emotion_condition = {}
    for alpha in (None, 2.0):
        hits = [r["ser_hit"] for r in score_clips(setup.synthesize(prompts, targets, alpha, 0,
                                                                   SamplingConfig(**SAMPLING)), targets, scorers, refs)]
        emotion_condition[alpha] = sum(hits) / len(hits)
    print(f"\nSER accuracy on {EMOTIONS} (8 held-out clips each): neutral condition unsteered {base:.3f}, "
          f"steered α=2 {steered:.3f}; emotion condition unsteered {emotion_condition[None]:.3f}, steered α=2 "
          f"{emotion_condition[2.0]:.3f}. Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    assert steered >= base + 0.35, (base, steered)
    assert steered >= 0.5, steered


def test_sweep_and_compound_refuse_bad_input(trained, tmp_path):
    from emoctl.evaluation.protocol import EvaluationProtocol
    from emoctl.commands.steer import emoshift_compound, emoshift_sweep

    root, layer, _ = trained
    with pytest.raises(ConfigError, match="alphas must be a non-empty list of finite values >= 0"):
        emoshift_sweep(str(layer), corpus_root=str(root), out_dir=str(tmp_path), alphas=[-1.0])
    with pytest.raises(ConfigError, match=r"protocol.speakers \['9999'\] are not voices of this backbone"):
        emoshift_sweep(str(layer), corpus_root=str(root), out_dir=str(tmp_path),
                       protocol=EvaluationProtocol(speakers=["9999"]))
    with pytest.raises(ConfigError, match="protocol.text_offset=999 leaves no test sentences"):
        emoshift_compound(str(layer), corpus_root=str(root), out_dir=str(tmp_path),
                          protocol=EvaluationProtocol(text_offset=999))
    with pytest.raises(ConfigError, match="backbone.kind is 'indextts2'"):
        emoshift_sweep(str(layer), corpus_root=str(root), out_dir=str(tmp_path),
                       backbone=BackboneSpec(kind="indextts2"))
    with pytest.raises(ConfigError, match="no EmoSteer layer"):
        emoshift_compound(str(tmp_path / "missing"), corpus_root=str(root), out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="weights >= 0"):
        emoshift_compound(str(layer), corpus_root=str(root), out_dir=str(tmp_path), mixtures=[{"Happy": -1.0}])
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_best_alpha_takes_the_most_accurate_alpha_within_the_wer_bound():
    from emoctl.reports.emoshift_sweep import best_alpha

    def row(method, alpha, acc, wer):
        return {"emotion": "all", "method": method, "alpha": alpha, "ser_hit": acc, "wer": wer}

    summary = [row("unsteered", 0.0, 0.1, 0.20), row("alpha=0", 0.0, 0.1, 0.20), row("alpha=1", 1.0, 0.5, 0.22),
               row("alpha=2", 2.0, 0.8, 0.30), row("alpha=3", 3.0, 0.8, 0.31), row("alpha=4", 4.0, 0.9, 0.90),
               {"emotion": "Happy", "method": "alpha=4", "alpha": 4.0, "ser_hit": 1.0, "wer": 0.0}]
    assert best_alpha(summary, max_wer_increase=0.15) == 2.0  # 4 is more accurate but breaks WER; 2 beats 3 on ties
    assert best_alpha(summary, max_wer_increase=1.0) == 4.0
    assert best_alpha(summary, max_wer_increase=0.05) == 1.0
    with pytest.raises(ConfigError, match="no unsteered row"):
        best_alpha(summary[1:])


def test_cli_tools_are_registered_and_report_a_missing_layer(tmp_path):
    from emoctl_tests.helpers.cli import run_emoctl

    for group, name in (("steer", "emoshift"), ("steer", "compound"), ("report", "emoshift")):
        out = run_emoctl(group, name, "--layer", str(tmp_path / "nope"), "--corpus_root", str(tmp_path))
        assert out.returncode == 1 and "no EmoSteer layer" in out.stderr, (group, name, out.stderr[-500:])
