"""emotion2vec through funasr on its real model class: a folder in the released format (random weights, written
at test time) loaded through emoctl's recognizer exactly as a user's folder is loaded."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from emoctl.errors import ConfigError
from emoctl.metrics.emotion2vec import Emotion2Vec, map_to_esd
from emoctl.metrics.emotion2vec_folder import (Emotion2VecSize, check_feature_encoder_spec, release_config,
                                               write_random_emotion2vec)
from emoctl.metrics.emo_sim import emo_sim_matched, emo_sim_prototype, emotion_prototypes
from emoctl.emotions import ESD_EMOTIONS


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_random_emotion2vec(tmp_path_factory.mktemp("e2v") / "emotion2vec_tiny")


@pytest.fixture(scope="module")
def recognizer(folder):
    return Emotion2Vec(folder)


def _clips(n: int, seconds: float = 1.0, rate: int = 16000) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    return [(0.3 * np.sin(2 * np.pi * (120 + 40 * i) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
            for i in range(n)]


def test_five_esd_probabilities_from_the_nine_and_embeddings_of_the_model_width(folder, recognizer):
    waves = _clips(3)
    out = recognizer(waves, 16000)
    assert out.probs.shape == (3, 5) and out.labels == ESD_EMOTIONS
    torch.testing.assert_close(out.probs.sum(1), torch.ones(3))
    assert out.embeddings.shape == (3, release_config(Emotion2VecSize.tiny())["model_conf"]["embed_dim"])
    # the five are funasr's nine scores renormalized over the mapped classes, read from funasr's own AutoModel
    # on the same (clean) folder: emoctl builds the model itself, and gets the numbers funasr's loader gets
    from funasr import AutoModel

    threads = torch.get_num_threads()
    auto = AutoModel(model=str(folder), disable_update=True, device="cpu", ncpu=threads, disable_log=True)
    raw = auto.generate(waves[0], fs=16000, granularity="utterance", extract_embedding=True, disable_pbar=True)[0]
    torch.set_num_threads(threads)
    nine = torch.tensor([raw["scores"]], dtype=torch.float32)
    torch.testing.assert_close(out.probs[:1], map_to_esd(nine, raw["labels"]))
    # the utterance embedding is the mean of the 50 Hz frame features (what funasr's "utterance" gives)
    torch.testing.assert_close(out.embeddings[0], torch.as_tensor(np.asarray(raw["feats"], dtype=np.float32)),
                               atol=1e-5, rtol=1e-5)
    frames = recognizer.frame_features(waves[0], 16000)
    assert abs(frames.shape[0] - 50) <= 1 and frames.shape[1] == out.embeddings.shape[1]  # 1 s at 50 Hz
    torch.testing.assert_close(frames.mean(0), out.embeddings[0], atol=1e-5, rtol=1e-5)


def test_a_batch_equals_each_clip_alone_and_other_rates_are_resampled(recognizer):
    waves = _clips(3, seconds=0.8)
    batch = recognizer(waves, 16000)
    for i, wave in enumerate(waves):
        alone = recognizer([wave], 16000)
        torch.testing.assert_close(batch.probs[i], alone.probs[0])
        torch.testing.assert_close(batch.embeddings[i], alone.embeddings[0])
    import librosa

    at_22k = librosa.resample(waves[0], orig_sr=16000, target_sr=22050)
    assert recognizer([at_22k], 22050).embeddings.shape == batch.embeddings[:1].shape


def test_emo_sim_as_each_seed_defines_it_on_utterance_embeddings(recognizer):
    """Matched (EmoShift: cosine to the reference clip of the same text) and prototype (SAE seed: cosine to the
    mean embedding of the target emotion's reference clips), both on the frame-mean utterance embeddings."""
    out = recognizer(_clips(4), 16000)
    e = out.embeddings
    matched = emo_sim_matched(e[:2], e[2:], recognizer.name)
    expected = torch.nn.functional.cosine_similarity(e[:2], e[2:], dim=1)
    torch.testing.assert_close(matched.values, expected)
    assert emo_sim_matched(e[:1], e[:1], recognizer.name).values.item() == pytest.approx(1.0, abs=1e-6)
    prototypes = emotion_prototypes(e[2:], ["Angry", "Angry"])
    proto = emo_sim_prototype(e[:2], ["Angry", "Sad"], prototypes, recognizer.name)
    assert proto.values[0].item() == pytest.approx(torch.nn.functional.cosine_similarity(
        e[0], e[2:].mean(0), dim=0).item(), abs=1e-6)
    assert torch.isnan(proto.values[1])  # no Sad reference: NaN, never a silent number


def test_threads_are_left_as_the_caller_set_them(folder):
    before = torch.get_num_threads()
    Emotion2Vec(folder)(_clips(1), 16000)
    assert torch.get_num_threads() == before  # funasr would set 4 unless told otherwise


def test_weights_that_do_not_fit_the_config_are_refused(folder, tmp_path):
    """funasr only warns when checkpoint keys are missing or mis-shaped and runs with random weights; emoctl
    checks the loaded weights itself."""
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    state = torch.load(broken / "model.pt", weights_only=True)
    name = next(k for k in state if k.startswith("blocks.0"))
    del state[name]
    torch.save(state, broken / "model.pt")
    with pytest.raises(ConfigError, match=rf"model.pt does not fit.*{name}"):
        Emotion2Vec(broken)(_clips(1), 16000)
    state = torch.load(folder / "model.pt", weights_only=True)
    state["proj.weight"] = torch.zeros(4, state["proj.weight"].shape[1])  # a head of another size
    torch.save({"model": state}, broken / "model.pt")  # funasr's wrapped form is unwrapped too
    with pytest.raises(ConfigError, match="model.pt does not fit.*proj.weight"):
        Emotion2Vec(broken)(_clips(1), 16000)


def test_folder_errors_name_the_files_and_refuse_code_in_the_config(folder, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(folder / "config.yaml", partial)
    with pytest.raises(ConfigError, match="lacks model.pt, tokens.txt"):
        Emotion2Vec(partial)
    crafted = tmp_path / "crafted"
    shutil.copytree(folder, crafted)
    text = (crafted / "config.yaml").read_text(encoding="utf-8")
    spec = release_config(Emotion2VecSize.tiny())["model_conf"]["modalities"]["audio"]["feature_encoder_spec"]
    (crafted / "config.yaml").write_text(text.replace(spec, '__import__("os").getcwd()'), encoding="utf-8")
    with pytest.raises(ConfigError, match="funasr evaluates this string as Python"):
        Emotion2Vec(crafted)
    assert check_feature_encoder_spec("[(512, 10, 5)] + [(512, 3, 2)] * 4", "x") == [(512, 10, 5)] + [(512, 3, 2)] * 4


def test_evaluate_scores_with_emotion2vec_and_says_so(folder, tmp_path):
    """``emoctl evaluate --ser emotion2vec --ser_model_dir DIR`` (the function the command runs)."""
    import soundfile as sf

    from emoctl.commands.evaluate import evaluate

    audio = tmp_path / "audio"
    audio.mkdir()
    for i, wave in enumerate(_clips(2)):
        sf.write(audio / f"c{i}.wav", wave, 16000)
    (tmp_path / "manifest.csv").write_text("clip,text,speaker,target_emotion\nc0.wav,Hello there.,0011,Angry\n"
                                           "c1.wav,Hello there.,0011,Neutral\n")
    evaluate(audio, tmp_path / "manifest.csv", tmp_path / "out", asr="none", speaker="none", dnsmos=False,
             ser="emotion2vec", ser_model_dir=folder)
    assert "SER and Emo-SIM: emotion2vec_tiny" in (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert "ser_hit" in (tmp_path / "out" / "clips.csv").read_text(encoding="utf-8").splitlines()[0]


@pytest.mark.slow
def test_plus_base_size_builds_and_loads_at_the_published_size(tmp_path):
    root = write_random_emotion2vec(tmp_path / "plus_base", Emotion2VecSize.plus_base())
    state = torch.load(root / "model.pt", weights_only=True)
    assert sum(v.numel() for v in state.values()) == 93_178_133
    out = Emotion2Vec(root)(_clips(2, seconds=2.0), 16000)
    assert out.embeddings.shape == (2, 768) and torch.isfinite(out.probs).all()


def test_probe_callback_and_emoshift_sweep_score_with_emotion2vec(folder, corpus_root, tmp_path):
    """The validation-time probes and a report take recognizer: emotion2vec with its folder, end to end, and
    the report names the recognizer that scored it."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from emoctl.callbacks.probe import ProbeCallback
    from emoctl.evaluation.protocol import EvaluationProtocol
    from emoctl.commands.steer import emoshift_sweep
    from emoctl.synthesis import SamplingConfig
    from emoctl_tests.helpers.condition_probe import ConditionProbe

    callback = ProbeCallback(n_texts=1, speakers=["0017"], n_audio=0, recognizer="emotion2vec",
                             recognizer_dir=str(folder))
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, limit_train_batches=1, limit_val_batches=1,
                         num_sanity_val_steps=0, logger=False, callbacks=[callback], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    loader = DataLoader([torch.zeros(1)], batch_size=1)
    trainer.fit(ConditionProbe(), loader, loader)
    accuracy = callback.last_results["emotion_condition"]["probe/emotion_condition/ser_acc"]
    assert 0.0 <= accuracy <= 1.0
    protocol = EvaluationProtocol(speakers=["0017"], n_texts=1, reference_clips=1,
                                  sampling=SamplingConfig(max_new_tokens=200, batch_size=8))
    emoshift_sweep("emoctl/assets/emoshift_mini", corpus_root=str(corpus_root), alphas=[1.0],
                   out_dir=str(tmp_path / "sweep"), protocol=protocol, recognizer="emotion2vec",
                   recognizer_dir=str(folder), progress=False)
    text = (tmp_path / "sweep" / "emoshift_sweep.md").read_text(encoding="utf-8")
    assert "ecognizer `emotion2vec_tiny`" in text
    assert "unsteered: " in text and ": nan" not in text  # no α = 0 in this sweep: the trend cites the unsteered row


def test_bench_ser_times_both_recognizers_on_the_same_clips(folder):
    from emoctl.bench.ser import TABLE1_CLIPS, bench_ser

    rows = bench_ser(n_clips=2, seconds=0.5, repeats=1, emotion2vec_dir=str(folder))
    assert [r["row"] for r in rows] == ["embedded mini SER", "emotion2vec (emotion2vec_tiny)"]
    assert rows[0]["ratio"] == 1.0 and all(r["s_per_clip"] > 0 for r in rows)
    assert rows[1]["table1_min"] == pytest.approx(rows[1]["s_per_clip"] * TABLE1_CLIPS / 60)
    with pytest.raises(ConfigError, match="n_clips"):
        bench_ser(n_clips=0)
