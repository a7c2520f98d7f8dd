"""Reliability cases of ``emoctl evaluate``: emotion2vec folders a user brings, clips and manifests.

Imported by ``reliability_cases.py``, which registers its cases; it must not import that module. The payload
writers are also used by ``emoctl_tests/metrics/test_crafted_emotion2vec.py``, which feeds the same folders to the Python API and, as a
control, to funasr's own ``AutoModel`` (where the payloads do run).
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

MARKER = "pwned"
"""The file a payload creates when its code runs, inside the case's folder."""

PLACEHOLDERS: dict[str, str] = {
    "e2v_clip": "a folder `{tmp}/audio` with one 1 s, 16 kHz clip `c0.wav` (a 220 Hz tone with a little noise) and "
                "its manifest `{tmp}/manifest.csv` (columns clip, text, speaker, target_emotion)",
}

ALSO_TESTED: dict[str, list[tuple[str, str]]] = {
    "security": [("metrics/test_crafted_emotion2vec.py", "test_a_crafted_emotion2vec_folder_is_refused_and_never_runs"),
                 ("metrics/test_crafted_emotion2vec.py", "test_the_payloads_really_run_through_funasrs_own_loader"),
                 ("metrics/test_crafted_emotion2vec.py", "test_a_pickle_in_model_pt_is_refused_in_one_paragraph")],
    "evaluation folders": [
        ("metrics/test_crafted_emotion2vec.py", "test_a_truncated_model_pt_is_one_paragraph"),
        ("metrics/test_crafted_emotion2vec.py", "test_a_clean_folder_still_scores_and_unknown_keys_are_named"),
        ("metrics/test_metrics.py", "test_a_dc_only_clip_counts_as_silence_in_every_metric"),
        ("metrics/test_metrics.py", "test_whisper_transcribes_a_clip_longer_than_its_window_in_windows"),
        ("metrics/test_metrics.py", "test_a_manifest_saved_with_a_byte_order_mark_is_read"),
    ],
}


# ------------------------------------------------------------------------------------------ payload writers

class PickledPayload:
    """Unpickling this calls ``open(marker, "w")``: the smallest code execution a pickle can smuggle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _config(folder: Path) -> dict:
    import yaml

    return yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))


def _write_config(path: Path, cfg: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")


def _evil_spec(folder: Path, marker: Path) -> str:
    """A feature_encoder_spec that creates ``marker`` when evaluated and then gives the folder's real layers."""
    spec = _config(folder)["model_conf"]["modalities"]["audio"]["feature_encoder_spec"]
    return f"open({str(marker)!r}, 'w').close() or {spec}"


def _evil_module(folder: Path, marker: Path) -> Path:
    """A Python file that creates ``marker``; its name is new to the process, so an import really runs it."""
    path = folder / f"evil_{uuid.uuid4().hex[:12]}.py"
    path.write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    return path


def remote_code(folder: Path, marker: Path) -> str:
    """config.yaml sets ``trust_remote_code: true`` and ``remote_code`` to a Python file of the folder."""
    cfg = _config(folder)
    cfg.update(trust_remote_code=True, remote_code=str(_evil_module(folder, marker)))
    _write_config(folder / "config.yaml", cfg)
    return "trust_remote_code"


def nested_remote_code(folder: Path, marker: Path) -> str:
    """config.yaml's ``model_conf.modalities.audio`` carries ``remote_code`` (and ``trust_remote_code``)."""
    cfg = _config(folder)
    cfg["model_conf"]["modalities"]["audio"].update(remote_code=str(_evil_module(folder, marker)),
                                                    trust_remote_code=True)
    _write_config(folder / "config.yaml", cfg)
    return "model_conf.modalities.audio.remote_code"


def other_config(folder: Path, marker: Path) -> str:
    """configuration.json's ``file_path_metas.config`` is ``evil.yaml``, whose feature_encoder_spec is Python
    that creates the marker (config.yaml itself is clean)."""
    cfg = _config(folder)
    cfg["model_conf"]["modalities"]["audio"]["feature_encoder_spec"] = _evil_spec(folder, marker)
    _write_config(folder / "evil.yaml", cfg)
    (folder / "configuration.json").write_text(json.dumps({"framework": "pytorch", "file_path_metas": {
        "init_param": "model.pt", "config": "evil.yaml", "tokenizer_conf": {"token_list": "tokens.txt"}}}))
    return "file_path_metas.config"


def config_outside(folder: Path, marker: Path) -> str:
    """configuration.json's ``file_path_metas.config`` is ``../outside/config.yaml``, a config outside the
    folder whose feature_encoder_spec is Python that creates the marker."""
    outside = folder.parent / "outside"
    outside.mkdir(exist_ok=True)
    cfg = _config(folder)
    cfg["model_conf"]["modalities"]["audio"]["feature_encoder_spec"] = _evil_spec(folder, marker)
    _write_config(outside / "config.yaml", cfg)
    (folder / "configuration.json").write_text(json.dumps({"file_path_metas": {
        "init_param": "model.pt", "config": "../outside/config.yaml", "tokenizer_conf": {"token_list": "tokens.txt"}}}))
    return "../outside/config.yaml"


def python_object_tag(folder: Path, marker: Path) -> str:
    """config.yaml holds a ``!!python/object/apply:builtins.open`` tag that would create the marker."""
    text = (folder / "config.yaml").read_text(encoding="utf-8")
    (folder / "config.yaml").write_text(text + f"hook: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n",
                                        encoding="utf-8")
    return "!!python/object"


def tokenizer_file(folder: Path, marker: Path) -> str:
    """config.yaml's ``tokenizer_conf.seg_dict`` names another file of the folder for funasr to read."""
    (folder / "seg_dict").write_text("a a\n", encoding="utf-8")
    cfg = _config(folder)
    cfg["tokenizer_conf"]["seg_dict"] = "seg_dict"
    _write_config(folder / "config.yaml", cfg)
    return "tokenizer_conf.seg_dict"


def interpolation(folder: Path, marker: Path) -> str:
    """config.yaml's ``model_conf.extractor_mode`` is an OmegaConf interpolation (``${oc.env:HOME}``)."""
    cfg = _config(folder)
    cfg["model_conf"]["extractor_mode"] = "${oc.env:HOME}"
    _write_config(folder / "config.yaml", cfg)
    return "model_conf.extractor_mode"


def pickled_weights(folder: Path, marker: Path) -> str:
    """model.pt is a torch.save archive of the real weights plus a pickled object that creates the marker."""
    import torch

    state = torch.load(folder / "model.pt", weights_only=True)
    torch.save({**state, "hook": PickledPayload(marker)}, folder / "model.pt")
    return "pickled Python objects"


def truncated_weights(folder: Path, marker: Path) -> str:
    """model.pt cut to half its bytes (an interrupted download)."""
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[: len(data) // 2])
    return "truncated or damaged"


PAYLOADS: dict[str, Callable[[Path, Path], str]] = {
    "remote_code": remote_code, "nested remote_code": nested_remote_code, "configuration.json names evil.yaml":
    other_config, "configuration.json points outside": config_outside, "!!python/object": python_object_tag,
    "tokenizer_conf names a file": tokenizer_file, "OmegaConf interpolation": interpolation,
}
"""Crafted folders (each returns a fragment its refusal names); the first four run code through AutoModel."""


# ------------------------------------------------------------------------------------------ setups

def write_clip(path: Path, seconds: float = 1.0, rate: int = 16000, offset: float = 0.0, amplitude: float = 0.3
               ) -> Path:
    """A tone with a little noise (or, with amplitude 0, the constant ``offset``) as a 16-bit WAV."""
    import soundfile as sf

    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(0).standard_normal(t.size)
    wave = offset + amplitude * (np.sin(2 * np.pi * 220 * t) + 0.03 * noise)
    sf.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
    return path


def _clip_and_manifest(case_dir: Path, manifest_text: str = "clip,text,speaker,target_emotion\n"
                       "c0.wav,Hello there.,0011,Angry\n", **clip) -> dict[str, str]:
    audio = case_dir / "audio"
    audio.mkdir(exist_ok=True)
    write_clip(audio / "c0.wav", **clip)
    (case_dir / "manifest.csv").write_text(manifest_text, encoding="utf-8")
    return {"audio": str(audio), "manifest": str(case_dir / "manifest.csv")}


def _folder_setup(payload: Callable[[Path, Path], str]) -> Callable[[Path, dict[str, str]], dict[str, str]]:
    def setup(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
        from emoctl.metrics.emotion2vec_folder import write_random_emotion2vec

        folder = write_random_emotion2vec(case_dir / "e2v")
        fragment = payload(folder, case_dir / MARKER)
        return {**_clip_and_manifest(case_dir), "bad": str(folder), "fragment": fragment}

    setup.__doc__ = (f"`{{bad}}` is a random-weight emotion2vec folder in the released format (tiny size) in which "
                     f"{payload.__doc__[0].lower()}{payload.__doc__[1:]} The clip and manifest are `{{e2v_clip}}`.")
    return setup


def dc_clip(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
    """`{audio}/c0.wav` is 1 s of the constant 0.25 (a DC offset and no signal); `{manifest}` lists it."""
    return _clip_and_manifest(case_dir, amplitude=0.0, offset=0.25)


def bom_manifest(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
    """`{manifest}` is `{e2v_clip}`'s manifest saved with a UTF-8 byte order mark, as spreadsheet programs save CSV."""
    return _clip_and_manifest(case_dir, "\ufeffclip,text,speaker,target_emotion\nc0.wav,Hello there.,0011,Angry\n")


def long_clip(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
    """`{audio}/c0.wav` is a 60 s tone (two of Whisper's 30 s windows; 16 + 8 tokens a second of it is 496 tokens,
    more than Whisper's 448-token context holds); `{manifest}` lists it."""
    return _clip_and_manifest(case_dir, seconds=60.0, amplitude=0.05)


def not_run(case_dir: Path, values: dict[str, str]) -> None:
    """The crafted folder's code never ran: no marker file."""
    assert not (case_dir / MARKER).exists(), "the crafted folder's code was executed"


def wrote_one_row(case_dir: Path, values: dict[str, str]) -> None:
    """clips.csv holds one scored row for c0.wav."""
    import csv

    with open(case_dir / "out" / "clips.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["clip"] for r in rows] == ["c0.wav"], rows


EVALUATE = ("evaluate", "--audio", "{audio}", "--manifest", "{manifest}", "--out", "{tmp}/out", "--threads", "1")
E2V = (*EVALUATE, "--asr", "none", "--speaker", "none", "--dnsmos", "false", "--ser", "emotion2vec",
       "--ser_model_dir", "{bad}")
QUICK = (*EVALUATE, "--speaker", "none", "--dnsmos", "false")


def register(case) -> None:
    """The evaluation-folder cases (and the code-execution payloads, under security)."""
    for name, payload in PAYLOADS.items():
        case("security", f"emotion2vec folder, {name}: evaluate", E2V, ("{bad}", "{fragment}"),
             setup=_folder_setup(payload), check=not_run)
    case("security", "emotion2vec model.pt with a pickled object: evaluate", E2V,
         ("{bad}/model.pt", "{fragment}", "weights-only"), setup=_folder_setup(pickled_weights), check=not_run)
    case("evaluation folders", "truncated emotion2vec model.pt: evaluate", E2V, ("{bad}/model.pt", "{fragment}"),
         setup=_folder_setup(truncated_weights))
    case("evaluation folders", "DC-only clip (constant offset): evaluate refuses it as silence",
         (*QUICK, "--asr", "none", "--ser", "mini"), ("{audio}/c0.wav", "silence", "mean"), setup=dc_clip)
    case("evaluation folders", "manifest CSV with a UTF-8 byte order mark: evaluate reads it",
         (*QUICK, "--asr", "none", "--ser", "mini"), ("wrote",), ok=True, setup=bom_manifest, check=wrote_one_row)
    case("evaluation folders", "60 s clip: evaluate transcribes it in Whisper's 30 s windows", QUICK,
         ("wrote",), ok=True, setup=long_clip, check=wrote_one_row)
