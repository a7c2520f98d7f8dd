"""CoCoEmo's pipeline on the committed mini TTS from the command line: inspect layers -> extract -> steer.

The directions come from paired generations of training voices (train sentences); steering then speaks held-out
voices on test sentences, told Neutral, and the embedded recognizer must hear the target emotion more often than
in the same clips unsteered."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emoctl.backbones.base import Prompt
from emoctl.backbones.conditions import VoiceName
from emoctl.backbones.loading import load_backbone
from emoctl.cli import main
from emoctl.evaluation.texts import split_sentences
from emoctl.metrics.loading import load_recognizer
from emoctl.reports.layers import PairSettings, read_states
from emoctl.selection.layers import Discriminability
from emoctl.steering import SteeringVectors, steer, vector_steering
from emoctl.steering.vectors import mean_difference_vectors
from emoctl.synthesis import SamplingConfig, synthesize

POINTS = ["resid_pre.3", "attn_out.0", "attn_out.6", "attn_out.7"]
PAIRS = ["--speakers", '["0011", "0012", "0013"]', "--emotions", '["Angry", "Sad"]',
         "--n_train_texts", "6", "--progress", "false"]


@pytest.mark.usefixtures("one_thread")
def test_inspect_layers_then_extract_then_steer(corpus_root, tmp_path, capsys):
    root = ["--corpus_root", str(corpus_root)]
    assert main(["inspect", "layers", *root, *PAIRS, "--n_eval_texts", "4", "--hookpoints", json.dumps(POINTS),
                 "--out_dir", str(tmp_path / "layers")]) == 0
    for name in ("discriminability.json", "layers.md", "layers.png", "layers_info.json"):
        assert (tmp_path / "layers" / name).is_file()
    result = Discriminability.load(tmp_path / "layers" / "discriminability.json")
    assert [s.hookpoint for s in result.scores] == POINTS
    assert result.counts == {"train": {"Angry": 18, "Sad": 18}, "evaluation": {"Angry": 12, "Sad": 12}}
    assert max(s.accuracy for s in result.scores) > 0.6  # emotion separates somewhere
    top = result.top(3, "attn_out")
    assert "`" + top[0] + "`" in (tmp_path / "layers" / "layers.md").read_text()

    assert main(["extract", *root, *PAIRS, "--discriminability", str(tmp_path / "layers" / "discriminability.json"),
                 "--top", "3", "--out_dir", str(tmp_path / "dirs")]) == 0
    vectors = SteeringVectors.load(tmp_path / "dirs")
    assert vectors.hookpoints == top and vectors.emotions == ["Angry", "Sad"]
    assert vectors.metadata["layers_from"]["accuracy"] == {s.hookpoint: s.accuracy for s in result.scores
                                                           if s.hookpoint in top}
    # The file holds exactly the train pairs' mean differences (Eq. 6), from the same seeded generations.
    backbone = load_backbone()
    settings = PairSettings(corpus_root=str(corpus_root), speakers=["0011", "0012", "0013"],
                            emotions=["Angry", "Sad"], n_train_texts=6, progress=False)
    expected = mean_difference_vectors(read_states(backbone, settings, "train", top))
    for e in vectors.emotions:
        for h in top:
            torch.testing.assert_close(vectors.for_emotion(e)[h], expected.for_emotion(e)[h], atol=1e-5, rtol=0)

    # Steering held-out voices told Neutral makes the recognizer hear the emotion more often.
    texts, _ = split_sentences(corpus_root, "test", 3)
    prompts = [Prompt(t, VoiceName(s), "Neutral") for s in ("0019", "0020") for t in texts]
    recognizer, sampling = load_recognizer(), SamplingConfig(max_new_tokens=400)
    heard = {}
    for emotion, alpha in (("Angry", 0.0), ("Angry", 2.0), ("Sad", 2.0)):
        with steer(backbone, vector_steering(vectors, emotion, alpha)):
            clips = synthesize(backbone, prompts, seed=0, sampling=sampling)
        heard[emotion, alpha] = recognizer([c.wave for c in clips], clips[0].sample_rate).predicted()
    assert np.mean([p == "Angry" for p in heard["Angry", 2.0]]) > np.mean([p == "Angry" for p in heard["Angry", 0.0]])
    assert np.mean([p == "Sad" for p in heard["Sad", 2.0]]) > np.mean([p == "Sad" for p in heard["Angry", 0.0]])

    capsys.readouterr()
    assert main(["extract", *root, "--hookpoints", '["attn_out.1"]', "--out_dir", str(tmp_path / "x")]) == 1
    assert "name the layers one way" in capsys.readouterr().err
