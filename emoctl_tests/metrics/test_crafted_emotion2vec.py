"""An emotion2vec folder a user brings never runs code: crafted configs, hub indexes and weights are refused in one
paragraph naming the file and the key, and the marker their code would write is never written.

The folders are random-weight emotion2vec folders in the released format (funasr's own Emotion2vec class, written
at test time), each damaged by one payload writer of ``reliability_evaluation.py`` (the catalogue runs the same
folders through ``emoctl evaluate``). A control test feeds the code-running payloads to funasr's own
``AutoModel``, where they do run: the marker check can fail.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from emoctl.errors import ConfigError
from emoctl.metrics.emotion2vec import Emotion2Vec
from emoctl.metrics.emotion2vec_folder import write_random_emotion2vec
from emoctl_tests.harness.reliability_evaluation import MARKER, PAYLOADS, config_outside, other_config, pickled_weights, remote_code, \
    truncated_weights


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return write_random_emotion2vec(tmp_path_factory.mktemp("e2v") / "emotion2vec_tiny")


def _copy(clean, tmp_path):
    folder = tmp_path / "e2v"
    shutil.copytree(clean, folder)
    return folder


def _clip() -> list[np.ndarray]:
    t = np.arange(16000) / 16000
    return [(0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)]


def _one_paragraph(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_a_crafted_emotion2vec_folder_is_refused_and_never_runs(name, clean, tmp_path):
    folder = _copy(clean, tmp_path)
    fragment = PAYLOADS[name](folder, tmp_path / MARKER)
    with pytest.raises(ConfigError) as err:
        Emotion2Vec(folder)(_clip(), 16000)  # construction refuses; scoring is never reached
    message = _one_paragraph(err)
    assert str(folder) in message and fragment in message, message
    assert not (tmp_path / MARKER).exists(), "the crafted folder's code was executed"


@pytest.mark.parametrize("payload", [remote_code, other_config, config_outside])
def test_the_payloads_really_run_through_funasrs_own_loader(payload, clean, tmp_path):
    """Control: funasr's AutoModel, given the same folder, runs the payload (so the marker check above can fail)."""
    from funasr import AutoModel

    folder = _copy(clean, tmp_path)
    payload(folder, tmp_path / MARKER)
    threads = torch.get_num_threads()
    try:
        AutoModel(model=str(folder), disable_update=True, device="cpu", ncpu=threads, disable_log=True)
    except Exception:  # noqa: BLE001 (only whether the code ran matters here)
        pass
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / MARKER).exists()


def test_a_pickle_in_model_pt_is_refused_in_one_paragraph(clean, tmp_path):
    folder = _copy(clean, tmp_path)
    pickled_weights(folder, tmp_path / MARKER)
    with pytest.raises(ConfigError) as err:
        Emotion2Vec(folder)
    message = _one_paragraph(err)
    assert f"{folder / 'model.pt'} holds pickled Python objects" in message and "weights-only" in message, message
    assert not (tmp_path / MARKER).exists()


def test_a_truncated_model_pt_is_one_paragraph(clean, tmp_path):
    folder = _copy(clean, tmp_path)
    truncated_weights(folder, tmp_path / MARKER)
    with pytest.raises(ConfigError) as err:
        Emotion2Vec(folder)  # at construction: before any clip is read
    message = _one_paragraph(err)
    assert f"{folder / 'model.pt'} is truncated or damaged" in message and "PytorchStreamReader" in message, message
    (folder / "model.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ConfigError, match="model.pt is not a torch weights file|model.pt is truncated or damaged"):
        Emotion2Vec(folder)


def test_a_clean_folder_still_scores_and_unknown_keys_are_named(clean, tmp_path):
    """The released files (with the hub's configuration.json) score; a key outside the released config is named."""
    import json

    folder = _copy(clean, tmp_path)
    (folder / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "emotion-recognition", "model": {"type": "funasr"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"token_list": "tokens.txt"}}}))
    out = Emotion2Vec(folder)(_clip(), 16000)
    assert out.probs.shape == (1, 5) and torch.isfinite(out.probs).all()
    text = (folder / "config.yaml").read_text(encoding="utf-8")
    (folder / "config.yaml").write_text(text + "extra_setting: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top-level key 'extra_setting' is not part of a released emotion2vec "
                                          "config; emoctl reads only model, model_conf, tokenizer, tokenizer_conf"):
        Emotion2Vec(folder)
    # the released config's `1e-05` (no dot) is read as a number, as funasr's OmegaConf reads it
    (folder / "config.yaml").write_text(text.replace("norm_eps: 1.0e-05", "norm_eps: 1e-05"), encoding="utf-8")
    assert "norm_eps: 1e-05" in (folder / "config.yaml").read_text(encoding="utf-8")
    assert Emotion2Vec(folder).folder.model_conf["norm_eps"] == 1e-05
