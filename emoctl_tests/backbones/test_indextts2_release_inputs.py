"""A damaged IndexTTS2 release folder is one paragraph from ``load_backbone``, raised before upstream's classes run.

Each damage (``reliability_indextts2.DAMAGES``: config.yaml types, interpolations, path keys, the text model, the
w2v-BERT folder) is applied to a copy of the session's random-weight release; the same damages run through
``emoctl harvest`` in the reliability catalogue.
"""
from __future__ import annotations

import time

import pytest
import yaml

from emoctl.backbones.loading import load_backbone
from emoctl.errors import ConfigError
from emoctl_tests.harness.reliability_indextts2 import DAMAGES, read_config, release_copy, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("what", list(DAMAGES))
def test_a_damaged_release_is_one_paragraph_through_load_backbone(indextts2_release, tmp_path, what):
    damage, fragments = DAMAGES[what]
    bad = release_copy(indextts2_release, tmp_path / "release")
    damage(bad)
    with pytest.raises(ConfigError) as err:
        load_backbone("indextts2", str(bad))
    message = str(err.value)
    assert "\n" not in message.strip(), message
    assert [f for f in (f.format(bad=bad) for f in fragments) if f not in message] == [], message


def test_the_released_config_reads_as_checked_data(indextts2_release):
    """The random release's config.yaml (the released layout) passes, and what the adapter reads is its data."""
    from omegaconf import DictConfig, OmegaConf

    from emoctl.backbones.indextts2.random_release import EMO_NUM, RandomReleaseSize, release_config
    from emoctl.backbones.indextts2.release import ReleaseFolder

    release = ReleaseFolder.open(indextts2_release)
    expected = release_config(RandomReleaseSize.tiny())
    assert release.settings.gpt == expected["gpt"] and release.settings.emo_num == EMO_NUM
    assert release.settings.files == {"dataset.bpe_model": "bpe.model", "gpt_checkpoint": "gpt.pth",
                                      "w2v_stat": "wav2vec2bert_stats.pt", "s2mel_checkpoint": "s2mel.pth",
                                      "emo_matrix": "feat2.pt", "spk_matrix": "feat1.pt"}
    assert release.file("emo_matrix") == indextts2_release / "feat2.pt"
    assert isinstance(release.config, DictConfig) and OmegaConf.to_container(release.config) == expected


def test_an_interpolation_anywhere_in_config_yaml_is_refused(indextts2_release, tmp_path):
    """Deep in the s2mel section (read only when vocoding) or as a mapping key, ``${...}`` is refused at open."""
    from emoctl.backbones.indextts2.release import ReleaseFolder

    for where, edit in {
        "s2mel.DiT.depth": lambda cfg: cfg["s2mel"]["DiT"].__setitem__("depth", "${oc.env:HOME}"),
        "s2mel.length_regulator.sampling_ratios[2]":
            lambda cfg: cfg["s2mel"]["length_regulator"]["sampling_ratios"].__setitem__(2, "${gpt.layers}"),
        "semantic_codec (a key)": lambda cfg: cfg["semantic_codec"].__setitem__("${oc.env:HOME}", 1),
    }.items():
        bad = release_copy(indextts2_release, tmp_path / where.split()[0])
        cfg = read_config(bad)
        edit(cfg)
        write_config(bad, cfg)
        with pytest.raises(ConfigError, match="interpolation") as err:
            ReleaseFolder.open(bad)
        assert where in str(err.value) and str(bad / "config.yaml") in str(err.value)


def test_a_yaml_alias_bomb_in_config_yaml_is_refused_quickly(indextts2_release, tmp_path):
    """Nine levels of nine aliases expand to 387 million values; reading them as OmegaConf would never end."""
    bad = release_copy(indextts2_release, tmp_path / "release")
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    text = (bad / "config.yaml").read_text(encoding="utf-8") + "\n".join(lines) + "\nbomb: *a8\n"
    (bad / "config.yaml").write_text(text, encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_backbone("indextts2", str(bad))
    assert time.perf_counter() - start < 20


def test_python_tags_in_config_yaml_build_nothing(indextts2_release, tmp_path):
    """``!!python/object/apply`` would call os.system under an unsafe loader; here it is a refused tag."""
    bad = release_copy(indextts2_release, tmp_path / "release")
    marker = tmp_path / "pwned"
    text = (bad / "config.yaml").read_text(encoding="utf-8")
    (bad / "config.yaml").write_text(text + f"\nevil: !!python/object/apply:os.system ['touch {marker}']\n",
                                     encoding="utf-8")
    with pytest.raises(ConfigError, match="not plain YAML data"):
        load_backbone("indextts2", str(bad))
    assert not marker.exists()
    yaml.safe_load(text)  # the rest of the file is fine
