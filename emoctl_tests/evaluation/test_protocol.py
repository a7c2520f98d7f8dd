"""The evaluation protocol: its checks, the voices and sentences it picks, and its recipes under recipes/evaluation/."""
from __future__ import annotations

import pytest
import yaml

from emoctl_tests.helpers.cli import RECIPES, parse_emoctl
from emoctl.errors import ConfigError
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.synthesis import SamplingConfig

EVALUATION_RECIPES = sorted((RECIPES / "evaluation").glob("*.yaml"))


def test_every_bad_value_is_named_in_one_error():
    with pytest.raises(ConfigError) as caught:
        EvaluationProtocol(n_texts=0, text_offset=-1, split="train", reference_clips=0, held_out_speakers=0,
                           speakers=[], sampling=SamplingConfig(seed=3))
    message = str(caught.value)
    for needle in ("n_texts=0", "text_offset=-1", "split='train'", "reference_clips=0", "held_out_speakers=0",
                   "speakers=[]", "sampling.seed=3"):
        assert needle in message, message


def test_voices_default_to_the_held_out_speakers_and_unknown_ones_are_refused():
    from emoctl.backbones.loading import load_backbone

    backbone = load_backbone("mini_tts")
    assert EvaluationProtocol().voices(backbone) == backbone.speakers[-4:]
    assert EvaluationProtocol(held_out_speakers=2).voices(backbone) == backbone.speakers[-2:]
    assert EvaluationProtocol(speakers=["0011"]).voices(backbone) == ["0011"]
    with pytest.raises(ConfigError, match=r"protocol.speakers \['x'\] are not voices"):
        EvaluationProtocol(speakers=["0011", "x"]).voices(backbone)


def test_text_window_is_offset_into_the_split(corpus_root):
    from emoctl.evaluation.texts import split_sentences

    test, record = split_sentences(corpus_root, "test", 10)
    assert EvaluationProtocol(n_texts=2, text_offset=3).texts(corpus_root)[0] == test[3:5]
    evaluation, _ = split_sentences(corpus_root, "evaluation", 4)
    assert EvaluationProtocol(split="evaluation", n_texts=4).texts(corpus_root)[0] == evaluation
    assert evaluation[0] != test[0]  # the splits are disjoint sentence lists
    with pytest.raises(ConfigError, match="text_offset=100000 leaves no test sentences"):
        EvaluationProtocol(text_offset=100000).texts(corpus_root)


def _assert_survives(written, resolved, where: str) -> None:
    """Every value a recipe writes is the resolved value (mappings may gain defaults the recipe leaves out)."""
    if isinstance(written, dict):
        assert isinstance(resolved, dict), where
        for key, value in written.items():
            assert key in resolved, f"{where}.{key}"
            _assert_survives(value, resolved[key], f"{where}.{key}")
    else:
        assert resolved == written, where


@pytest.mark.parametrize("recipe", EVALUATION_RECIPES, ids=lambda p: p.name)
def test_every_evaluation_recipe_resolves_through_its_command(recipe):
    """recipes/evaluation/<group>_<name>_*.yaml holds the arguments of `emoctl <group> <name>` (or of `emoctl
    <group>` for a command without subcommands, such as calibrate); a recipe that drifts from the report's
    signature fails here, and every value it writes reaches the protocol unchanged."""
    from emoctl.cli import TOOLS

    group, name = recipe.stem.split("_")[:2]
    command = [group] if "" in TOOLS[group] else [group, name]
    result = parse_emoctl(*command, "--config", str(recipe), "--print_config")
    assert result.returncode == 0, result.stderr
    resolved, written = yaml.safe_load(result.stdout), yaml.safe_load(recipe.read_text())
    _assert_survives(written, resolved, recipe.name)
    if "protocol" not in written:  # the paired utterances of `inspect layers` / `extract` are not a protocol
        assert "sampling" in written and "seed" in written, recipe.name
        SamplingConfig(**resolved["sampling"])
        return
    protocol = dict(resolved["protocol"])
    EvaluationProtocol(**{**protocol, "sampling": SamplingConfig(**protocol["sampling"])})  # passes its checks


def test_the_evaluation_recipes_cover_every_report_of_the_makefile():
    from emoctl_tests.helpers.cli import REPO

    makefile = (REPO / "Makefile").read_text()
    for recipe in EVALUATION_RECIPES:
        assert f"recipes/evaluation/{recipe.name}" in makefile, recipe.name
    assert len(EVALUATION_RECIPES) == 13  # ten on the mini TTS, two on CosyVoice, one on CosyVoice2
