"""Crafted ``cosyvoice.yaml`` files in a CosyVoice release folder: none runs code, none hangs, each is refused
with one paragraph naming the file and the key.

The payloads are the ones HyperPyYAML-style building let through: an upstream helper
(``matcha.utils.instantiators.instantiate_callbacks``) that hands a hydra ``_target_`` to ``hydra.utils.instantiate``
(which then opens a file, or ``torch.load``s pickle bytes carried in the YAML with ``weights_only`` off), calls and
bindings at positions where the release has plain values or another class, unsafe YAML tags, and alias or
``!ref`` bombs. Each writes a marker file if it runs; the marker must never exist.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from emoctl.backbones.loading import load_backbone
from emoctl.errors import ConfigError
from emoctl_tests.harness.reliability_cosyvoice import (EXPANSIONS, bad_inputs, gadget, payloads, release_copy, replace_section,
                                   torch_load_target, write_harvest_recipe)


@pytest.fixture
def crafted(cosyvoice_release, tmp_path):
    """A copy of the random release (weights symlinked) whose cosyvoice.yaml a test rewrites."""
    return release_copy(cosyvoice_release, tmp_path / "release")


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


@pytest.mark.parametrize("name", list(payloads(Path("marker"))))
def test_crafted_cosyvoice_yaml_never_runs_its_payload(crafted, tmp_path, name):
    marker = tmp_path / "payload_ran"
    rewrite, fragments = payloads(marker)[name]
    yaml_path = crafted / "cosyvoice.yaml"
    yaml_path.write_text(rewrite(yaml_path.read_text(encoding="utf-8")), encoding="utf-8")
    try:
        _refused(crafted, fragments)
    finally:
        assert not marker.exists(), f"the payload ran: {name}"


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_a_wrong_value_in_cosyvoice_yaml_is_one_paragraph_naming_the_key(crafted, name):
    rewrite, fragments = bad_inputs()[name]
    yaml_path = crafted / "cosyvoice.yaml"
    yaml_path.write_text(rewrite(yaml_path.read_text(encoding="utf-8")), encoding="utf-8")
    _refused(crafted, fragments)


@pytest.mark.parametrize("name", list(EXPANSIONS))
def test_a_billion_laughs_cosyvoice_yaml_is_refused_in_well_under_a_second(crafted, name):
    """Ten levels of ten: 10^10 values if expanded (without a bound, building llm never returns); a 1 MiB file
    and a recursive alias likewise."""
    from emoctl.backbones.cosyvoice_instruct.config import CosyVoiceConfig

    rewrite, fragments = EXPANSIONS[name]
    yaml_path = crafted / "cosyvoice.yaml"
    yaml_path.write_text(rewrite(yaml_path.read_text(encoding="utf-8")), encoding="utf-8")
    _refused(crafted, fragments, seconds=30)
    start = time.perf_counter()
    with pytest.raises(ConfigError):
        CosyVoiceConfig.read(yaml_path)
    assert time.perf_counter() - start < 0.5


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
    from emoctl_tests.helpers.cli import run_emoctl

    marker = tmp_path / "payload_ran"
    yaml_path = crafted / "cosyvoice.yaml"
    yaml_path.write_text(replace_section(yaml_path.read_text(encoding="utf-8"), "llm",
                                          gadget(0, torch_load_target(marker))), encoding="utf-8")
    recipe = write_harvest_recipe(tmp_path, crafted)
    result = run_emoctl("harvest", "--config", str(recipe), timeout=300)
    assert not marker.exists()
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    paragraph = result.stderr[result.stderr.rindex("emoctl harvest: error:"):]
    assert str(yaml_path) in paragraph and "llm.callbacks_cfg.content.cb._target_" in paragraph, paragraph
