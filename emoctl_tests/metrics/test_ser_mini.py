"""The embedded SER: the committed checkpoint on fresh eSpeak clips, embeddings, batching, persistence, errors,
the recipe through the CLI, and a tiny training run.

The fresh clips come from ``build_corpus`` with a seed the checkpoint never
saw (other sentences, other prosody jitter), two speakers, five emotions.
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from data_modules.ser_corpus import SERCorpusDataModule
from emoctl.callbacks.export import export_callbacks
from emoctl.corpus.build import build_corpus
from emoctl.corpus.esd import list_corpus_clips, read_wave
from emoctl.errors import ConfigError
from emoctl.emotions import ESD_EMOTIONS
from emoctl.metrics.ser_mini import (DEFAULT_MINI_SER_DIR, LogMelConfig, MiniSER, MiniSERConfig,
                                     load_mini_ser, save_mini_ser)
from emoctl.metrics.ser_mini_module import MiniSERModule
from emoctl.training import OptimizerConfig
from emoctl_tests.helpers.cli import RECIPES, parse_emoctl

FRESH_SEED = 20240917  # not the committed checkpoint's corpus seed (0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fresh_corpus(tmp_path_factory) -> Path:
    """2 speakers x 5 emotions x 2 sentences = 20 clips the recognizer has never heard."""
    return build_corpus(str(tmp_path_factory.mktemp("fresh") / "corpus"), n_sentences=2, speakers=2,
                        seed=FRESH_SEED, progress=False)


@pytest.fixture(scope="module")
def fresh_clips(fresh_corpus):
    clips = list_corpus_clips(fresh_corpus)
    waves = [read_wave(c.path)[0] for c in clips]
    return clips, waves, read_wave(clips[0].path)[1]


@pytest.fixture(scope="module")
def ser() -> MiniSER:
    return load_mini_ser()


def test_committed_checkpoint_is_small_and_documented():
    sizes = {p.name: p.stat().st_size for p in DEFAULT_MINI_SER_DIR.iterdir()}
    assert sizes["model.safetensors"] < 2_000_000
    training = json.loads((DEFAULT_MINI_SER_DIR / "training.json").read_text())
    assert training["data"]["corpus"]["seed"] == 0 and training["data"]["codec_digest"]
    # The committed checkpoint's measured test accuracy (0.934 original, 0.908 round trip, 12000 steps): the
    # issue's 90% on the corpus's test clips, under the corpus's own ceiling (`emoctl corpus ceiling`: 0.965).
    assert training["test"]["original"]["accuracy"] >= 0.90
    assert training["test"]["roundtrip"]["accuracy"] >= 0.88


def test_committed_checkpoint_recognizes_fresh_espeak_clips(ser, fresh_clips):
    clips, waves, rate = fresh_clips
    result = ser(waves, rate)
    assert result.probs.shape == (len(clips), 5) and result.labels == ESD_EMOTIONS
    torch.testing.assert_close(result.probs.sum(1), torch.ones(len(clips)))
    accuracy = np.mean([p == c.emotion for p, c in zip(result.predicted(), clips)])
    # measured 0.80 on these 20 clips with the committed checkpoint (chance is 0.2)
    assert accuracy >= 0.6, (accuracy, result.predicted(), [c.emotion for c in clips])  # chance is 0.2


def test_embeddings_group_by_emotion(ser, fresh_clips):
    clips, waves, rate = fresh_clips
    emb = torch.nn.functional.normalize(ser(waves, rate).embeddings, dim=1)
    assert emb.shape == (len(clips), ser.config.embedding_dim)
    cos = emb @ emb.T
    emotion = np.array([c.emotion for c in clips])
    same = torch.from_numpy(emotion[:, None] == emotion[None, :])
    off_diagonal = ~torch.eye(len(clips), dtype=torch.bool)
    assert cos[same & off_diagonal].mean() > cos[~same].mean() + 0.3  # measured 0.82 vs 0.28


def test_any_sample_rate_and_batching_match_one_by_one(ser, fresh_clips):
    _, waves, rate = fresh_clips
    batch = ser(waves[:6], rate)
    for i, wave in enumerate(waves[:6]):
        one = ser([wave], rate)
        torch.testing.assert_close(one.probs[0], batch.probs[i], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(one.embeddings[0], batch.embeddings[i], atol=1e-4, rtol=1e-4)
    # 22.05 kHz gives (nearly) the 16 kHz answer: the recognizer resamples.
    import torchaudio
    up = [torchaudio.functional.resample(torch.from_numpy(w), rate, 22050) for w in waves[:6]]
    other = ser(up, 22050)
    diff = (other.probs - batch.probs).abs()
    assert diff.max() < 0.2 and diff.mean() < 0.05  # measured 0.045 and 0.004 on all 20 clips


def test_save_load_round_trip_is_identical(ser, fresh_clips, tmp_path):
    _, waves, rate = fresh_clips
    path = save_mini_ser(ser.net, tmp_path / "copy", metadata={"note": "test"})
    again = load_mini_ser(path)
    a, b = ser(waves[:4], rate), again(waves[:4], rate)
    assert torch.equal(a.probs, b.probs) and torch.equal(a.embeddings, b.embeddings)
    assert again.metadata == {"note": "test"}
    assert not list(tmp_path.glob(".*partial"))  # no staging left behind
    with pytest.raises(ConfigError, match="No mini SER checkpoint"):
        load_mini_ser(tmp_path / "nowhere")


@pytest.mark.parametrize("wave, rate, message", [
    (np.zeros(0, np.float32), 16000, "empty"),
    (np.array([0.0, np.nan, 0.1] * 100, np.float32), 16000, "NaN"),
    (np.zeros((800, 2), np.float32), 16000, "mono"),
    (np.zeros(800, np.float32), 0, "sample_rate"),
    (np.zeros(800, np.complex64), 16000, "dtype"),
])
def test_bad_audio_is_a_clear_error(ser, wave, rate, message):
    with pytest.raises(ConfigError, match=message):
        ser([wave], rate)


def test_bad_call_shapes_are_clear_errors(ser):
    with pytest.raises(ConfigError, match="wrap a single"):
        ser(np.zeros(800, np.float32), 16000)
    with pytest.raises(ConfigError, match="sample rates"):
        ser([np.zeros(800, np.float32)] * 2, [16000])


def test_recipe_loads_through_the_cli():
    result = parse_emoctl("fit", "--config", str(RECIPES / "ser_mini.yaml"), "--print_config")
    assert result.returncode == 0, result.stderr
    assert "MiniSERModule" in result.stdout and "SERCorpusDataModule" in result.stdout


def test_tiny_training_run_lowers_the_loss(fresh_corpus, tmp_path):
    pl.seed_everything(0)
    features = LogMelConfig(n_mels=32)
    data = SERCorpusDataModule(str(fresh_corpus), codec_dir=None, cache_dir=str(tmp_path / "cache"),
                               features=features, val_split="test", batch_size=8, workers=1)
    model = MiniSERModule(MiniSERConfig(features=features, channels=32, embedding_dim=16, dropout=0.0),
                          optimizer=OptimizerConfig(lr=3e-3, weight_decay=0.01, warmup_steps=0, min_lr_fraction=0.02),
                          time_masks=0, freq_masks=0, label_smoothing=0.0,
                          train_crop_frames=None, export_dir=str(tmp_path / "export"))
    data.prepare_data()
    data.setup("fit")
    assert len(list((tmp_path / "cache").glob(".ser-mels-*.npz"))) == 1
    train = data.splits["train"]
    batch = train[list(range(len(train)))]
    model.net.set_normalization(*data.feature_stats())

    def loss() -> float:
        # Batch statistics of all ten clips (train mode, dropout 0): running statistics after a few dozen
        # steps on ten clips are too noisy to judge the weights by.
        model.net.train()
        with torch.no_grad():
            logits, _ = model.net(batch.logmel, batch.lengths)
        return float(torch.nn.functional.cross_entropy(logits, batch.labels))

    before = loss()
    trainer = pl.Trainer(max_steps=100, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=export_callbacks(model))
    trainer.fit(model, datamodule=data)
    after = loss()
    assert after < 0.85 * before, (before, after)  # seeded; no learning leaves it near ln 5 = 1.61
    exported = load_mini_ser(model.exported)
    assert exported.metadata["test"]["original"]["clips"] == len(data.splits["test"]) == 10
    assert "roundtrip" not in exported.metadata["test"]
    assert (model.exported / "test_report.md").is_file()


def test_data_and_model_front_ends_must_agree(fresh_corpus, tmp_path):
    data = SERCorpusDataModule(str(fresh_corpus), codec_dir=None, cache_dir=str(tmp_path / "cache"),
                               features=LogMelConfig(n_mels=32), val_split="test", batch_size=4)
    model = MiniSERModule(MiniSERConfig(features=LogMelConfig(n_mels=40), channels=8, embedding_dim=8))
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigError, match="data.features"):
        trainer.fit(model, datamodule=data)
