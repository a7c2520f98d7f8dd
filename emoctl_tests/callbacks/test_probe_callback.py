"""ProbeCallback on the committed mini backbone and recognizer: per-emotion SER and probes, media, sanity skip."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from emoctl.callbacks.probe import ProbeCallback
from emoctl.errors import ConfigError
from emoctl_tests.helpers.condition_probe import ConditionProbe


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("probe")
    module = ConditionProbe()
    callback = ProbeCallback(n_texts=2, speakers=["0017", "0018"], n_audio=2)
    logger = pl.loggers.TensorBoardLogger(str(root), name="probe", version="v0")
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, limit_train_batches=1, limit_val_batches=1,
                         num_sanity_val_steps=1, logger=logger, callbacks=[callback], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    loader = DataLoader([torch.zeros(1)], batch_size=1)
    trainer.fit(module, loader, loader)
    return module, callback, trainer, root


def test_probe_runs_after_training_not_during_sanity_check(probed):
    module, callback, _, _ = probed
    # One validation after the single step; the sanity-check pass is skipped: 2 settings x 1 batch of 20 prompts.
    assert module.calls == 2
    assert callback.state_dict() == {"validations": 1}


def test_emotion_condition_is_heard_and_moves_the_probes(probed):
    _, callback, trainer, _ = probed
    steered, plain = callback.last_results["emotion_condition"], callback.last_results["neutral_condition"]
    assert steered["probe/emotion_condition/ser_acc"] >= 0.6
    assert plain["probe/neutral_condition/ser_acc/Neutral"] >= 0.5
    # Under the neutral condition the other targets are rarely recognized: accuracy near 1/5 of the set.
    assert plain["probe/neutral_condition/ser_acc"] <= 0.4
    f0 = {e: steered[f"probe/emotion_condition/f0_mean_hz/{e}"] for e in ("Sad", "Neutral", "Happy", "Surprise")}
    assert f0["Sad"] < f0["Neutral"] < f0["Happy"] < f0["Surprise"], f0
    assert trainer.callback_metrics["probe/emotion_condition/ser_acc"] == pytest.approx(
        steered["probe/emotion_condition/ser_acc"])


def test_audio_and_figures_reach_tensorboard(probed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    *_, root = probed
    events = EventAccumulator(str(root / "probe" / "v0"), size_guidance={"audio": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert "probe/emotion_condition/audio/Neutral" in tags["audio"]
    assert {"probe/emotion_condition/f0_contours", "probe/emotion_condition/spectrograms"} <= set(tags["images"])


def test_bad_settings_and_models_without_probe_methods_are_clear_errors():
    with pytest.raises(ConfigError, match="every_n_validations"):
        ProbeCallback(every_n_validations=0)
    with pytest.raises(ConfigError, match="non-empty"):
        ProbeCallback(texts=["  "])
    callback = ProbeCallback(n_texts=1)

    class Plain(pl.LightningModule):
        pass

    with pytest.raises(ConfigError, match="probe_settings"):
        callback.on_validation_epoch_end(pl.Trainer(accelerator="cpu", logger=False), Plain())
