"""Reliability cases of IndexTTS2 release folders a user brings: config.yaml, bpe.model and the w2v-BERT folder.

Imported by ``reliability_cases.py``, which registers its cases; it must not import that module. Each case
harvests with ``recipes/harvest_indextts2.yaml`` shrunk to CPU and one prompt, pointed at a damaged copy of the
session's random-weight release (``indextts2_release``): small files are copied, big ones symlinked. The error
must come while the backbone is built, before any utterance is generated. The damage writers are also used by
``emoctl_tests/backbones/test_indextts2_release_inputs.py`` and ``test_crafted_files.py``, which feed the same folders to
``load_backbone``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
SMALL_SUFFIXES = (".yaml", ".json", ".model")
"""Files of a release that a copy duplicates (and a damage may edit); every other file is symlinked."""

PLACEHOLDERS: dict[str, str] = {
    "idx_recipe": "recipes/harvest_indextts2.yaml",
    "small": "`{tmp}/small.yaml`: overrides of `{idx_recipe}` that harvest one held-out sentence of a corpus "
             "folder that does not exist, for speaker 0011, on CPU, 4 tokens, greedy, with `{bad}` as "
             "backbone.path and the store in `{tmp}/store` (the backbone is built first, so a damaged folder is "
             "reported before the corpus is read)",
}

ALSO_TESTED: dict[str, list[tuple[str, str]]] = {
    "backbone folders": [
        ("backbones/test_indextts2_release_inputs.py", "test_a_damaged_release_is_one_paragraph_through_load_backbone"),
        ("backbones/test_indextts2_release_inputs.py", "test_an_interpolation_anywhere_in_config_yaml_is_refused"),
        ("backbones/test_indextts2_release_inputs.py", "test_a_yaml_alias_bomb_in_config_yaml_is_refused_quickly"),
    ],
    "security": [
        ("backbones/test_crafted_files.py", "test_paths_config_yaml_names_outside_the_release_are_never_read"),
        ("backbones/test_crafted_files.py",
         "test_crafted_vocoder_weights_are_refused_even_when_torch_defaults_to_full_unpickling"),
        ("backbones/test_indextts2_release_inputs.py", "test_python_tags_in_config_yaml_build_nothing"),
    ],
}


# ------------------------------------------------------------------------------------------ damaged copies

def release_copy(release: Path, target: Path) -> Path:
    """A copy of ``release`` at ``target`` whose small files (config.yaml, JSON, bpe.model) are copied and whose
    weights are symlinks to the originals (a release of random weights is 1 GB)."""
    for original in sorted(release.rglob("*")):
        path = target / original.relative_to(release)
        if original.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if original.suffix in SMALL_SUFFIXES:
            shutil.copyfile(original, path)
        else:
            os.symlink(original, path)
    return target


def read_config(folder: Path) -> dict:
    import yaml

    return yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))


def write_config(folder: Path, cfg: dict) -> None:
    import yaml

    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")


def edit_config(folder: Path, edit: Callable[[dict], object]) -> None:
    cfg = read_config(folder)
    edit(cfg)
    write_config(folder, cfg)


def replace_file(folder: Path, name: str, content: bytes) -> None:
    """``name`` in the copy becomes a real file holding ``content`` (not the symlink to the original)."""
    path = folder / name
    path.unlink()
    path.write_bytes(content)


def _set(section: str | None, key: str, value: object) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        edit_config(folder, lambda cfg: (cfg[section] if section else cfg).__setitem__(key, value))
    return damage


def _truncated_w2v(folder: Path) -> None:
    name = "hf_cache/w2v-bert-2.0/model.safetensors"
    replace_file(folder, name, (folder / name).read_bytes()[:100_000])


def _emo_entry_string(folder: Path) -> None:
    edit_config(folder, lambda cfg: cfg["emo_num"].__setitem__(2, "2"))


DAMAGES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    # name: (damage, fragments the one-paragraph error holds, {bad} the damaged folder)
    "gpt.layers: two": (_set("gpt", "layers", "two"), ("{bad}/config.yaml", "gpt.layers", "'two'", "integer")),
    "gpt.heads: 2.5": (_set("gpt", "heads", 2.5), ("{bad}/config.yaml", "gpt.heads", "2.5", "integer")),
    "gpt.heads: 3 (does not divide the width)": (_set("gpt", "heads", 3),
                                                 ("{bad}/config.yaml", "gpt.heads = 3", "model_dim = 1280")),
    "gpt given as a list": (_set(None, "gpt", [2, 1280]), ("{bad}/config.yaml", "gpt = [2, 1280]", "mapping")),
    "an unknown gpt key": (_set("gpt", "n_layers", 2), ("{bad}/config.yaml", "n_layers", "UnifiedVoice")),
    "semantic_codec.codebook_size: 8192.5": (_set("semantic_codec", "codebook_size", 8192.5),
                                             ("{bad}/config.yaml", "semantic_codec.codebook_size", "8192.5",
                                              "positive integer")),
    "an emotion count as a string": (_emo_entry_string, ("{bad}/config.yaml", "emo_num[2] = '2'", "8 positive")),
    "emo_num given as a string": (_set(None, "emo_num", "3, 17, 2"), ("{bad}/config.yaml", "emo_num", "list of 8")),
    "an OmegaConf resolver ${oc.env:HOME} as w2v_stat": (
        _set(None, "w2v_stat", "${oc.env:HOME}"), ("{bad}/config.yaml", "w2v_stat", "${{oc.env:HOME}}",
                                                   "interpolation")),
    "an OmegaConf interpolation ${gpt.layers}": (
        _set("gpt", "heads", "${gpt.layers}"), ("{bad}/config.yaml", "gpt.heads", "interpolation")),
    "bpe_model given as an int": (_set("dataset", "bpe_model", 7),
                                  ("{bad}/config.yaml", "dataset.bpe_model = 7", "file name")),
    "bpe_model naming no file": (_set("dataset", "bpe_model", "tokenizer.model"),
                                 ("{bad}/config.yaml", "dataset.bpe_model", "{bad}/tokenizer.model is missing")),
    "bpe.model garbage": (lambda f: replace_file(f, "bpe.model", b"\x00garbage\x01" * 40),
                          ("{bad}/bpe.model", "could not parse ModelProto")),
    "bpe.model empty": (lambda f: replace_file(f, "bpe.model", b""), ("{bad}/bpe.model", "empty")),
    "w2v-BERT model.safetensors truncated": (_truncated_w2v, ("{bad}/hf_cache/w2v-bert-2.0/model.safetensors",
                                                              "safetensors")),
    "w2v-BERT model.safetensors garbage": (
        lambda f: replace_file(f, "hf_cache/w2v-bert-2.0/model.safetensors", b"garbage " * 100),
        ("{bad}/hf_cache/w2v-bert-2.0/model.safetensors", "safetensors")),
    "w2v-BERT config.json garbage": (
        lambda f: replace_file(f, "hf_cache/w2v-bert-2.0/config.json", b"{not json"),
        ("{bad}/hf_cache/w2v-bert-2.0/config.json", "JSON")),
    "w2v-BERT config.json a list": (
        lambda f: replace_file(f, "hf_cache/w2v-bert-2.0/config.json", b"[1, 2]"),
        ("{bad}/hf_cache/w2v-bert-2.0/config.json", "not a JSON object")),
}
"""Damages of the backbone-folder class: config.yaml types and interpolations, the text model, w2v-BERT."""


def _escape_relative(folder: Path) -> None:
    edit_config(folder, lambda cfg: cfg["dataset"].__setitem__("bpe_model", "../../../../etc/hostname"))


def _escape_absolute(folder: Path) -> None:
    """gpt_checkpoint names the original release's gpt.pth by its absolute path (a file that would load)."""
    edit_config(folder, lambda cfg: cfg.__setitem__("gpt_checkpoint", str((folder / "gpt.pth").resolve())))


def _escape_after_normalisation(folder: Path) -> None:
    """emo_matrix is ``hf_cache/../../<folder name>-outside/feat2.pt``: a plausible start, outside once
    normalised (the file exists there, and would load)."""
    outside = folder.parent / f"{folder.name}-outside"
    outside.mkdir(exist_ok=True)
    shutil.copyfile((folder / "feat2.pt").resolve(), outside / "feat2.pt")
    edit_config(folder, lambda cfg: cfg.__setitem__("emo_matrix", f"hf_cache/../../{outside.name}/feat2.pt"))


ESCAPES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "`bpe_model: ../../../../etc/hostname`": (_escape_relative, ("{bad}/config.yaml", "dataset.bpe_model",
                                                                 "outside the release folder")),
    "gpt_checkpoint as an absolute path to a loadable gpt.pth": (_escape_absolute, (
        "{bad}/config.yaml", "gpt_checkpoint", "absolute path", "inside the release folder")),
    "emo_matrix climbing out after normalisation (`hf_cache/../../x/feat2.pt`)": (_escape_after_normalisation, (
        "{bad}/config.yaml", "emo_matrix", "outside the release folder")),
}
"""Damages of the security class: paths config.yaml names that leave the folder (each would be read today)."""


# ------------------------------------------------------------------------------------------ catalogue setups

def harvest_overrides(path: Path, release: Path, store: Path) -> Path:
    """The overrides of recipes/harvest_indextts2.yaml that make one small CPU harvest of ``release``."""
    path.write_text(json.dumps({
        "trainer": {"accelerator": "cpu", "callbacks": [{"class_path": "emoctl.callbacks.ActivationHarvester",
                                                         "init_args": {"path": str(store), "hookpoint": "resid_pre.1",
                                                                       "phases": ["decode"]}}]},
        "model": {"init_args": {"backbone": {"kind": "indextts2", "path": str(release), "device": "cpu"},
                                "max_new_tokens": 4, "num_beams": 1}},
        "data": {"init_args": {"esd": {"root": str(path.parent / "no_corpus"), "split": "held_out", "limit": 1},
                               "speakers": ["0011"], "batch_size": 2}}}))
    return path


def _setup(damage: Callable[[Path], None], what: str) -> Callable[[Path, dict[str, str]], dict[str, str]]:
    def setup(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
        bad = release_copy(Path(values["indextts2_release"]), case_dir / "release")
        damage(bad)
        return {"bad": str(bad), "idx_recipe": str(REPO / "recipes" / "harvest_indextts2.yaml"),
                "small": str(harvest_overrides(case_dir / "small.yaml", bad, case_dir / "store"))}
    setup.__doc__ = (f"`{{bad}}` is a copy of the random-weight IndexTTS2 release (small files copied, weights "
                     f"symlinked) with {what}; `{{small}}` points the harvest at it.")
    return setup


def nothing_generated(case_dir: Path, values: dict[str, str]) -> None:
    """No store was started: the folder was refused while the backbone was built."""
    assert not (case_dir / "store").exists(), "the harvest started despite the damaged release"


HARVEST = ("harvest", "--config", "{idx_recipe}", "--config", "{small}")


def register(case) -> None:
    for what, (damage, expect) in DAMAGES.items():
        case("backbone folders", f"IndexTTS2 config/inputs: {what}", HARVEST, expect,
             setup=_setup(damage, what), check=nothing_generated, needs=("indextts2_release",))
    for what, (damage, expect) in ESCAPES.items():
        case("security", f"IndexTTS2 config.yaml path leaving the folder: {what}", HARVEST, expect,
             setup=_setup(damage, what), check=nothing_generated, needs=("indextts2_release",))
