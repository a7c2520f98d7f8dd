"""Mixed emotions scored as CoCoEmo scores them: the per-clip metrics by hand, the summary, the refusals, and one
small run of every mixing method on the committed mini TTS."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emoctl.backbones.base import Prompt
from emoctl.backbones.conditions import VoiceName
from emoctl.errors import ConfigError
from emoctl.evaluation.scoring import Measured, MeasuredClips, ReferenceSet, Utterance
from emoctl.metrics.ser import SERResult
from emoctl.reports.mixtures import (MixturesSettings, check_mixture, mixture_metrics, run_mixtures,
                                     summarize_mixtures)
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.synthesis import Clip, SamplingConfig

LABELS = ("Neutral", "Angry", "Happy", "Sad", "Surprise")


def measured(probs: list[list[float]], embeddings: list[list[float]]) -> MeasuredClips:
    clips = [Clip(Prompt("a b", VoiceName("0011"), "Neutral", utt_id=f"u{i}"), torch.arange(3), np.zeros(160, np.float32),
                  16000, True) for i in range(len(probs))]
    utterances = [Utterance(c.prompt.utt_id, "a b", "0011", c.wave, 16000) for c in clips]
    ser = SERResult(torch.tensor(probs), torch.tensor(embeddings), LABELS)
    return MeasuredClips(clips, Measured(utterances, ser, None, None, None, None))


def p(angry: float, sad: float) -> list[float]:
    rest = (1 - angry - sad) / 3
    return [rest, angry, rest, sad, rest]


def test_per_clip_metrics_by_hand():
    mix = check_mixture({"Angry": 3, "Sad": 1})  # normalized: 0.75 / 0.25
    assert mix == {"Angry": 0.75, "Sad": 0.25}
    steered = measured([p(0.6, 0.3), p(0.2, 0.5), p(0.15, 0.15)], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    unsteered = measured([p(0.1, 0.2), p(0.1, 0.1), p(0.1, 0.1)], [[0.0, 0.0]] * 3)
    refs = ReferenceSet(prototype={"Angry": torch.tensor([1.0, 0.0]), "Sad": torch.tensor([0.0, 1.0])})
    rows = mixture_metrics(steered, unsteered, mix, refs, scorers=None)
    first, second, third = rows
    assert first["tep"] == pytest.approx(0.45) and second["tep"] == pytest.approx(0.35)
    assert first["increase_Angry"] == pytest.approx(0.5) and first["increase_Sad"] == pytest.approx(0.1)
    assert first["rho"] == pytest.approx(1.0) and first["dominant_hit"] == 1.0  # Angry asked most, rose most
    assert second["rho"] == pytest.approx(-1.0) and second["dominant_hit"] == 0.0
    assert math.isnan(third["rho"]) and third["dominant_hit"] == 1.0  # a tie of increases: no ρ, a hit by isclose
    assert first["first_share"] == pytest.approx(0.5 / 0.6)
    reference = np.array([0.75, 0.25]) / np.linalg.norm([0.75, 0.25])  # E-SIM: weighted prototypes
    assert first["e_sim"] == pytest.approx(reference[0], abs=1e-6)
    assert second["e_sim"] == pytest.approx(reference[1], abs=1e-6)

    summary = summarize_mixtures([{"method": "cocoemo", "alpha": 2.0, **r} for r in rows], ["cocoemo"], [mix])
    (entry,) = summary
    assert entry["rho"] == pytest.approx(0.0) and entry["rho_n"] == 2  # the tie is left out, as CoCoEmo does
    assert entry["dominant_hit"] == pytest.approx(2 / 3)
    assert entry["tep"] == pytest.approx((0.45 + 0.35 + 0.15) / 3)


def test_refusals():
    with pytest.raises(ConfigError, match="mixture \\{'Angry': 0.5, 'Bored': 0.5\\}.*\\['Bored'\\] are not among"):
        check_mixture({"Angry": 0.5, "Bored": 0.5})
    with pytest.raises(ConfigError, match="proportions > 0"):
        check_mixture({"Angry": 1.0, "Sad": 0.0})
    with pytest.raises(ConfigError, match="method cocoemo needs directions"):
        MixturesSettings(methods=["cocoemo"], directions=None)
    with pytest.raises(ConfigError, match="must be finite and > 0"):
        MixturesSettings(alphas={"global": float("nan")})
    with pytest.raises(ConfigError, match="name each of emoshift, sae_emotion, global, cocoemo at most once"):
        MixturesSettings(methods=["emoshift", "emoshift"])


@pytest.mark.usefixtures("one_thread")
def test_every_mixing_method_runs_on_the_mini_tts(corpus_root, tmp_path):
    from emoctl.backbones.loading import load_backbone
    from emoctl.steering import SteeringVectors

    backbone = load_backbone()
    g = torch.Generator().manual_seed(0)
    small = {e: {"attn_out.0": 0.1 * torch.randn(backbone.hidden_size, generator=g)} for e in ("Angry", "Sad")}
    SteeringVectors(small, {"backbone": backbone.backbone_id}).save(tmp_path / "dirs")
    settings = MixturesSettings(methods=["emoshift", "sae_emotion", "cocoemo"], directions=str(tmp_path / "dirs"),
                                corpus_root=str(corpus_root), out_dir=str(tmp_path / "out"),
                                mixtures=[{"Angry": 0.75, "Sad": 0.25}, {"Angry": 0.25, "Sad": 0.75}],
                                protocol=EvaluationProtocol(speakers=["0019", "0020"], n_texts=1,
                                                            sampling=SamplingConfig(max_new_tokens=300)),
                                progress=False)
    summary = run_mixtures(settings)
    assert [r["method"] for r in summary] == ["emoshift", "sae_emotion", "cocoemo"]
    assert all(r["clips"] == 4 for r in summary)
    for name in ("mixtures.md", "mixtures.csv", "mixtures_clips.csv", "mixtures.png", "mixtures_info.json"):
        assert (tmp_path / "out" / name).is_file()
    text = (tmp_path / "out" / "mixtures.md").read_text()
    assert "| CoCoEmo | 2 |" in text and "| EmoShift | 2 |" in text
