"""Crafted ``cosyvoice.yaml`` files in a CosyVoice release folder: none runs code, none hangs, each is refused
with one paragraph naming the file and the key.

The payloads are the ones HyperPyYAML-style building let through: an upstream helper
(``matcha.utils.instantiators.instantiate_callbacks``) that hands a hydra ``_target_`` to ``hydra.utils.instantiate``
(which then opens a file, or ``torch.load``s pickle bytes carried in the YAML with ``weights_only`` off), calls and
bindings at positions where the release has plain values or another class, unsafe YAML tags, and alias or
``!ref`` bombs. Each writes a marker file if it runs; the marker must never exist.
"""
from __future__ import annotations

import base64
import pickle
import re
import signal
import time
from pathlib import Path

import pytest

from emoctl.backbones.loading import load_backbone
from emoctl.errors import ConfigError

GADGET = "matcha.utils.instantiators.instantiate_callbacks"


class _OpensMarker:
    """Unpickling this opens (creates) ``path`` for writing: a stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _gadget(indent: int, inner: str) -> str:
    """``!new:`` of the upstream helper with a DictConfig whose one entry is the hydra mapping ``inner``."""
    pad = " " * indent
    body = "\n".join(pad + "            " + line for line in inner.splitlines())
    return (f"!new:{GADGET}\n{pad}    callbacks_cfg: !new:omegaconf.DictConfig\n{pad}        content:\n"
            f"{pad}            cb:\n{body}")


def _open_target(marker: Path) -> str:
    return f"    _target_: builtins.open\n    file: '{marker}'\n    mode: 'w'"


def _torch_load_target(marker: Path) -> str:
    payload = base64.b64encode(pickle.dumps(_OpensMarker(marker))).decode()
    return ("    _target_: torch.load\n    weights_only: false\n    f:\n        _target_: io.BytesIO\n"
            f"        initial_bytes:\n            _target_: base64.b64decode\n            s: '{payload}'")


def _nested_target(marker: Path) -> str:
    return ("    _target_: builtins.dict\n    deep:\n        _target_: builtins.list\n        _args_:\n"
            "            - - _target_: builtins.open\n"
            f"                file: '{marker}'\n                mode: 'w'")


def _replace_section(text: str, key: str, value: str) -> str:
    """``text`` with top-level ``key``'s whole block replaced by ``key: value``."""
    block = re.compile(rf"^{key}:.*?(?=^\S)", re.S | re.M)
    assert block.search(text), key
    return block.sub(lambda _: f"{key}: {value}\n\n", text, count=1)


def _replace_in(text: str, start: str, old: str, new: str) -> str:
    """``text`` with the first ``old`` after the line that starts with ``start`` replaced by ``new``."""
    at = text.index(start)
    end = text.index(old, at)
    return text[:end] + new + text[end + len(old):]


def _payloads(marker: Path) -> dict[str, tuple[callable, tuple[str, ...]]]:
    """Each crafted file (a rewrite of the released text) and the fragments its error must hold."""
    return {
        "gadget opening a file as llm": (
            lambda t: _replace_section(t, "llm", _gadget(0, _open_target(marker))),
            ("llm.callbacks_cfg.content.cb._target_", "builtins.open", "never")),
        "gadget torch.loading embedded pickle bytes as llm": (
            lambda t: _replace_section(t, "llm", _gadget(0, _torch_load_target(marker))),
            ("llm.callbacks_cfg.content.cb._target_", "torch.load", "never")),
        "gadget with a _target_ nested deep inside an argument": (
            lambda t: _replace_in(t, "llm:", "!new:cosyvoice.transformer.encoder.ConformerEncoder",
                                  _gadget(4, _nested_target(marker)) + "\n    __was_text_encoder:"),
            ("llm.text_encoder.callbacks_cfg.content.cb._target_", "builtins.dict")),
        "gadget bound by !name: as get_tokenizer": (
            lambda t: _replace_section(t, "get_tokenizer", _gadget(0, _open_target(marker)).replace("!new:", "!name:",
                                                                                                      1)),
            ("get_tokenizer.callbacks_cfg.content.cb._target_",)),
        "gadget at another position (hift.f0_predictor)": (
            lambda t: _replace_in(t, "hift:", "!new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor",
                                  _gadget(4, _open_target(marker)) + "\n    __was_f0_predictor:"),
            ("hift.f0_predictor.callbacks_cfg.content.cb._target_",)),
        "a _target_ deep inside a plain argument": (
            lambda t: t.replace("hop_len: 4", f"hop_len:\n            x:\n                _target_: builtins.open\n"
                                f"                file: '{marker}'"),
            ("hift.istft_params.hop_len.x._target_",)),
        "!apply: inside llm": (
            lambda t: _replace_in(t, "llm:", "num_blocks: 2", f"num_blocks: !apply:pathlib.Path.touch ['{marker}']"),
            ("llm.text_encoder.num_blocks is !apply:pathlib.Path.touch", "a call emoctl never makes there",
             "an integer")),
        "!!python/object/apply:os.system": (
            lambda t: t.replace("sample_rate: 22050", f"sample_rate: !!python/object/apply:os.system ['touch {marker}']"),
            ("python/object/apply:os.system", "never runs what it names")),
        "!new: of an allowed-package function at another position": (
            lambda t: _replace_in(t, "flow:", "!new:cosyvoice.flow.length_regulator.InterpolateRegulator",
                                  "!new:cosyvoice.utils.common.ras_sampling"),
            ("flow.length_regulator is !new:cosyvoice.utils.common.ras_sampling",
             "emoctl builds only cosyvoice.flow.length_regulator.InterpolateRegulator")),
        "!name: at a position the release builds a class": (
            lambda t: _replace_in(t, "llm:", "!new:cosyvoice.transformer.encoder.ConformerEncoder",
                                  "!name:cosyvoice.utils.common.ras_sampling"),
            ("llm.text_encoder is !name:cosyvoice.utils.common.ras_sampling",
             "emoctl builds only cosyvoice.transformer.encoder.ConformerEncoder")),
        "another function bound at get_tokenizer": (
            lambda t: t.replace("!name:whisper.tokenizer.get_tokenizer", "!name:cosyvoice.tokenizer.tokenizer.get_tokenizer"),
            ("get_tokenizer is !name:cosyvoice.tokenizer.tokenizer.get_tokenizer",
             "emoctl binds only whisper.tokenizer.get_tokenizer")),
        "another class as llm (CosyVoice2's Qwen2LM)": (
            lambda t: t.replace("!new:cosyvoice.llm.llm.TransformerLM", "!new:cosyvoice.llm.llm.Qwen2LM"),
            ("llm is !new:cosyvoice.llm.llm.Qwen2LM", "cosyvoice.llm.llm.TransformerLM", "Qwen2LM is another model")),
        "a _target_ in a key the adapter never builds": (
            lambda t: t + f"train_conf:\n    optim:\n        _target_: builtins.open\n        file: '{marker}'\n",
            ("train_conf.optim._target_",)),
    }


def _bad_inputs() -> dict[str, tuple[callable, tuple[str, ...]]]:
    """Wrong values at the right positions: each one paragraph naming the key and what is right."""
    return {
        "attention_heads 3 does not divide the width": (
            lambda t: _replace_in(t, "llm:", "attention_heads: 2", "attention_heads: 3"),
            ("llm.text_encoder: attention_heads 3 does not divide output_size 128",)),
        "DictConfig content that is not a mapping": (
            lambda t: re.sub(r"content:\n(?: {16}.*\n)+", "content: payload\n", t, count=1),
            ("flow.decoder.cfm_params.content is 'payload' (str)", "a mapping of sigma_min")),
        "DictConfig content with an extra key": (
            lambda t: _replace_in(t, "flow:", "sigma_min: 1e-06", "sigma_min: 1e-06\n                payload: {a: 1}"),
            ("flow.decoder.cfm_params.content has argument(s) payload",)),
        "an interpolation in DictConfig content": (
            lambda t: t.replace("solver: 'euler'", "solver: '${oc.env:HOME}'"),
            ("flow.decoder.cfm_params.content.solver is '${oc.env:HOME}'", "'euler'")),
        "num_blocks as a word": (
            lambda t: _replace_in(t, "llm:", "num_blocks: 2", "num_blocks: two"),
            ("llm.text_encoder.num_blocks is 'two' (str)", "an integer in [1, 256]")),
        "dropout_rate as NaN": (
            lambda t: _replace_in(t, "flow:", "dropout_rate: 0.1", "dropout_rate: .nan"),
            ("flow.encoder.dropout_rate is nan", "a number in [0, 1]")),
        "normalize_before as 1": (
            lambda t: _replace_in(t, "llm:", "normalize_before: True", "normalize_before: 1"),
            ("llm.text_encoder.normalize_before is 1 (int)", "true or false")),
        "channels not a list": (
            lambda t: t.replace("channels: [32]", "channels: 32"),
            ("flow.decoder.estimator.channels is 32 (int)", "a list of 1 to 16 integers")),
        "an unknown argument": (
            lambda t: _replace_in(t, "llm:", "static_chunk_size: 1", "static_chunk_size: 1\n        payload: 1"),
            ("llm.text_encoder has argument(s) payload", "exactly input_size")),
        "a missing argument": (
            lambda t: _replace_in(t, "hift:", "    audio_limit: 0.99\n", ""),
            ("hift lacks audio_limit", "a number in [0, 1]")),
        "lists upstream zips of different lengths": (
            lambda t: t.replace("resblock_kernel_sizes: [3]", "resblock_kernel_sizes: [3, 7]"),
            ("hift: resblock_kernel_sizes, resblock_dilation_sizes have lengths 2, 1",)),
        "a wrong class at a position": (
            lambda t: t.replace("!new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor",
                                "!new:cosyvoice.flow.decoder.ConditionalDecoder"),
            ("hift.f0_predictor is !new:cosyvoice.flow.decoder.ConditionalDecoder",
             "emoctl builds only cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor")),
        "a !ref to a key that is a call": (
            lambda t: t.replace("sampling_rate: !ref <sample_rate>", "sampling_rate: !ref <__set_seed1>"),
            ("hift.sampling_rate is !apply:random.seed", "an integer")),
    }


@pytest.fixture
def crafted(cosyvoice_release, tmp_path):
    """A copy of the random release (weights symlinked) whose cosyvoice.yaml a test rewrites."""
    folder = tmp_path / "release"
    folder.mkdir()
    for item in cosyvoice_release.iterdir():
        if item.name == "cosyvoice.yaml":
            (folder / item.name).write_text(item.read_text(encoding="utf-8"), encoding="utf-8")
        else:
            (folder / item.name).symlink_to(item)
    return folder


def _refused(folder: Path, fragments: tuple[str, ...], seconds: int = 60) -> str:
    """load_backbone's ConfigError for ``folder``, one paragraph naming the file and holding ``fragments``."""
    def too_slow(*_):
        raise TimeoutError(f"load_backbone did not return in {seconds} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(seconds)
    try:
        with pytest.raises(ConfigError) as err:
            load_backbone("cosyvoice", str(folder))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    message = str(err.value)
    assert "\n" not in message and str(folder / "cosyvoice.yaml") in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.mark.parametrize("name", list(_payloads(Path("marker"))))
def test_crafted_cosyvoice_yaml_never_runs_its_payload(crafted, tmp_path, name):
    marker = tmp_path / "payload_ran"
    rewrite, fragments = _payloads(marker)[name]
    yaml_path = crafted / "cosyvoice.yaml"
    yaml_path.write_text(rewrite(yaml_path.read_text(encoding="utf-8")), encoding="utf-8")
    try:
        _refused(crafted, fragments)
    finally:
        assert not marker.exists(), f"the payload ran: {name}"


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_a_wrong_value_in_cosyvoice_yaml_is_one_paragraph_naming_the_key(crafted, name):
    rewrite, fragments = _bad_inputs()[name]
    yaml_path = crafted / "cosyvoice.yaml"
    yaml_path.write_text(rewrite(yaml_path.read_text(encoding="utf-8")), encoding="utf-8")
    _refused(crafted, fragments)


def _alias_bomb() -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def _ref_bomb() -> str:
    lines = ["r0: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"r{i}: [{', '.join([f'!ref <r{i - 1}>'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("bomb, where", [
    (lambda t: _alias_bomb() + t.replace("    static_chunk_size: 1\n", "    static_chunk_size: *a9\n", 1),
     "once its aliases are followed"),
    (lambda t: _ref_bomb() + t.replace("    static_chunk_size: 1\n", "    static_chunk_size: !ref <r9>\n", 1),
     "once its !ref references are followed"),
])
def test_a_billion_laughs_cosyvoice_yaml_is_refused_in_well_under_a_second(crafted, bomb, where):
    """Ten levels of ten: 10^10 values if expanded. Without a bound, building llm never returns."""
    from emoctl.backbones.cosyvoice_instruct.config import CosyVoiceConfig

    yaml_path = crafted / "cosyvoice.yaml"
    yaml_path.write_text(bomb(yaml_path.read_text(encoding="utf-8")), encoding="utf-8")
    _refused(crafted, ("expands to more than 100,000 values", where), seconds=30)
    start = time.perf_counter()
    with pytest.raises(ConfigError):
        CosyVoiceConfig.read(yaml_path)
    assert time.perf_counter() - start < 0.5


def test_a_huge_or_recursive_cosyvoice_yaml_is_refused(crafted):
    yaml_path = crafted / "cosyvoice.yaml"
    released = yaml_path.read_text(encoding="utf-8")
    yaml_path.write_text(released + "padding: '" + "x" * (1 << 20) + "'\n", encoding="utf-8")
    _refused(crafted, ("a cosyvoice.yaml is a few kB",))
    yaml_path.write_text(released + "loop: &loop [*loop]\n", encoding="utf-8")
    _refused(crafted, ("recursive",))


def test_the_released_layout_still_builds_and_keys_never_built_stay_data(crafted, tmp_path):
    """The release's own extras (its seeding calls, data-pipeline bindings, train_conf) load untouched."""
    marker = tmp_path / "ran"
    yaml_path = crafted / "cosyvoice.yaml"
    yaml_path.write_text(yaml_path.read_text(encoding="utf-8") + (
        f"__set_seed2: !apply:pathlib.Path.touch ['{marker}']\n"
        "parquet_opener: !name:cosyvoice.dataset.processor.parquet_opener\n"
        "tokenize: !name:cosyvoice.dataset.processor.tokenize\n"
        "    get_tokenizer: !ref <get_tokenizer>\n    allowed_special: !ref <allowed_special>\n"
        "data_pipeline: [!ref <parquet_opener>, !ref <tokenize>]\n"
        "train_conf:\n    optim: adam\n    optim_conf:\n        lr: 0.001\n"), encoding="utf-8")
    backbone = load_backbone("cosyvoice", str(crafted))
    assert type(backbone.llm).__name__ == "TransformerLM" and not marker.exists()
    assert (backbone.upstream_sampling.top_k, backbone.upstream_sampling.ras_window) == (25, 10)


def test_emoctl_harvest_prints_one_paragraph_and_the_payload_never_runs(crafted, tmp_path):
    """The gadget through ``emoctl harvest --config``: the user sees emoctl's paragraph, no traceback."""
    from conftest import run_emoctl

    marker = tmp_path / "payload_ran"
    yaml_path = crafted / "cosyvoice.yaml"
    yaml_path.write_text(_replace_section(yaml_path.read_text(encoding="utf-8"), "llm",
                                          _gadget(0, _torch_load_target(marker))), encoding="utf-8")
    recipe = write_harvest_recipe(tmp_path, crafted)
    result = run_emoctl("harvest", "--config", str(recipe), timeout=300)
    assert not marker.exists()
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    paragraph = result.stderr[result.stderr.rindex("emoctl harvest: error:"):]
    assert str(yaml_path) in paragraph and "llm.callbacks_cfg.content.cb._target_" in paragraph, paragraph


def write_harvest_recipe(folder: Path, release: Path) -> Path:
    """A small CPU harvest of the CosyVoice release at ``release`` into a store inside ``folder``."""
    recipe = folder / "harvest_cosyvoice.yaml"
    recipe.write_text(f"""\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  logger: false
  enable_model_summary: false
  default_root_dir: {folder / 'runs'}
  callbacks:
    - class_path: emoctl.callbacks.ActivationHarvester
      init_args:
        path: {folder / 'store'}
        hookpoint: resid_pre.1
        phases: [decode]
        dtype: float32
model:
  class_path: emoctl.harvest.HarvestModule
  init_args:
    backbone:
      kind: cosyvoice
      path: {release}
      device: cpu
    max_new_tokens: 8
    seed: 0
data:
  class_path: data_modules.PromptGridDataModule
  init_args:
    corpus:
      n_sentences: 4
      seed: 0
      split: held_out
    speakers: null
    emotions: [Neutral, Angry]
    batch_size: 2
""", encoding="utf-8")
    return recipe
