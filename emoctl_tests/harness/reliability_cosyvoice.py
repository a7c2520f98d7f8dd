"""Reliability cases of CosyVoice release folders a user brings: crafted and damaged ``cosyvoice.yaml`` files.

Imported by ``reliability_cases.py``, which registers its cases; it must not import that module. Each case
harvests from a copy of the session's random-weight release (``cosyvoice_release``; cosyvoice.yaml copied, every
other file symlinked) whose cosyvoice.yaml a damage rewrites, with a small CPU recipe written beside it. The error
must come while the backbone is built, before any utterance is generated, and no payload may run. The same
rewrites feed ``load_backbone`` in ``emoctl_tests/backbones/test_crafted_cosyvoice.py``.
"""
from __future__ import annotations

import base64
import pickle
import re
from pathlib import Path
from typing import Callable

PLACEHOLDERS: dict[str, str] = {
    "cv_recipe": "`{tmp}/harvest_cosyvoice.yaml`: a CPU harvest of `{bad}` (resid_pre.1, 8 tokens, 4 held-out "
                 "sentences of the built-in corpus, Neutral and Angry, batch 2) into `{tmp}/store`",
}

ALSO_TESTED: dict[str, list[tuple[str, str]]] = {
    "backbone folders": [
        ("backbones/test_crafted_cosyvoice.py", "test_a_wrong_value_in_cosyvoice_yaml_is_one_paragraph_naming_the_key"),
        ("backbones/test_crafted_cosyvoice.py", "test_a_billion_laughs_cosyvoice_yaml_is_refused_in_well_under_a_second"),
        ("backbones/test_crafted_cosyvoice.py", "test_the_released_layout_still_builds_and_keys_never_built_stay_data"),
        ("backbones/test_contract_cosyvoice2.py", "test_release_errors_name_every_missing_file_and_refuse_unfit_weights"),
        ("backbones/test_contract_cosyvoice2.py", "test_the_training_examples_encoder_form_is_read_too"),
    ],
    "security": [
        ("backbones/test_crafted_cosyvoice.py", "test_crafted_cosyvoice_yaml_never_runs_its_payload"),
        ("backbones/test_crafted_cosyvoice.py", "test_emoctl_harvest_prints_one_paragraph_and_the_payload_never_runs"),
        ("backbones/test_contract_cosyvoice2.py", "test_the_release_files_are_read_as_data"),
    ],
}

GADGET = "matcha.utils.instantiators.instantiate_callbacks"


class _OpensMarker:
    """Unpickling this opens (creates) ``path`` for writing: a stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def gadget(indent: int, inner: str) -> str:
    """``!new:`` of the upstream helper with a DictConfig whose one entry is the hydra mapping ``inner``."""
    pad = " " * indent
    body = "\n".join(pad + "            " + line for line in inner.splitlines())
    return (f"!new:{GADGET}\n{pad}    callbacks_cfg: !new:omegaconf.DictConfig\n{pad}        content:\n"
            f"{pad}            cb:\n{body}")


def open_target(marker: Path) -> str:
    return f"    _target_: builtins.open\n    file: '{marker}'\n    mode: 'w'"


def torch_load_target(marker: Path) -> str:
    payload = base64.b64encode(pickle.dumps(_OpensMarker(marker))).decode()
    return ("    _target_: torch.load\n    weights_only: false\n    f:\n        _target_: io.BytesIO\n"
            f"        initial_bytes:\n            _target_: base64.b64decode\n            s: '{payload}'")


def nested_target(marker: Path) -> str:
    return ("    _target_: builtins.dict\n    deep:\n        _target_: builtins.list\n        _args_:\n"
            "            - - _target_: builtins.open\n"
            f"                file: '{marker}'\n                mode: 'w'")


def replace_section(text: str, key: str, value: str) -> str:
    """``text`` with top-level ``key``'s whole block replaced by ``key: value``."""
    block = re.compile(rf"^{key}:.*?(?=^\S)", re.S | re.M)
    assert block.search(text), key
    return block.sub(lambda _: f"{key}: {value}\n\n", text, count=1)


def replace_in(text: str, start: str, old: str, new: str) -> str:
    """``text`` with the first ``old`` after the line that starts with ``start`` replaced by ``new``."""
    at = text.index(start)
    end = text.index(old, at)
    return text[:end] + new + text[end + len(old):]


def payloads(marker: Path) -> dict[str, tuple[Callable, tuple[str, ...]]]:
    """Each crafted file (a rewrite of the released text) and the fragments its error must hold."""
    return {
        "the upstream gadget instantiate_callbacks as llm, its _target_ builtins.open writing a file": (
            lambda t: replace_section(t, "llm", gadget(0, open_target(marker))),
            ("llm.callbacks_cfg.content.cb._target_", "builtins.open", "never")),
        "the gadget as llm, its _target_ torch.load of pickle bytes carried in the YAML": (
            lambda t: replace_section(t, "llm", gadget(0, torch_load_target(marker))),
            ("llm.callbacks_cfg.content.cb._target_", "torch.load", "never")),
        "the gadget as llm.text_encoder, with a _target_ nested inside its own": (
            lambda t: replace_in(t, "llm:", "!new:cosyvoice.transformer.encoder.ConformerEncoder",
                                 gadget(4, nested_target(marker)) + "\n    __was_text_encoder:"),
            ("llm.text_encoder.callbacks_cfg.content.cb._target_", "builtins.dict")),
        "the gadget bound with !name: as get_tokenizer": (
            lambda t: replace_section(t, "get_tokenizer",
                                      gadget(0, open_target(marker)).replace("!new:", "!name:", 1)),
            ("get_tokenizer.callbacks_cfg.content.cb._target_",)),
        "the gadget at hift.f0_predictor": (
            lambda t: replace_in(t, "hift:", "!new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor",
                                 gadget(4, open_target(marker)) + "\n    __was_f0_predictor:"),
            ("hift.f0_predictor.callbacks_cfg.content.cb._target_",)),
        "a _target_ deep inside a plain argument (hift.istft_params.hop_len)": (
            lambda t: t.replace("hop_len: 4", f"hop_len:\n            x:\n                _target_: builtins.open\n"
                                f"                file: '{marker}'"),
            ("hift.istft_params.hop_len.x._target_",)),
        "an !apply: call inside llm (llm.text_encoder.num_blocks)": (
            lambda t: replace_in(t, "llm:", "num_blocks: 2", f"num_blocks: !apply:pathlib.Path.touch ['{marker}']"),
            ("llm.text_encoder.num_blocks is !apply:pathlib.Path.touch", "a call emoctl never makes there",
             "an integer")),
        "!!python/object/apply:os.system as sample_rate": (
            lambda t: t.replace("sample_rate: 22050",
                                f"sample_rate: !!python/object/apply:os.system ['touch {marker}']"),
            ("python/object/apply:os.system", "never runs what it names")),
        "a !new: of an allowed-package function at flow.length_regulator": (
            lambda t: replace_in(t, "flow:", "!new:cosyvoice.flow.length_regulator.InterpolateRegulator",
                                 "!new:cosyvoice.utils.common.ras_sampling"),
            ("flow.length_regulator is !new:cosyvoice.utils.common.ras_sampling",
             "emoctl builds only cosyvoice.flow.length_regulator.InterpolateRegulator")),
        "a !name: binding at llm.text_encoder, where the release builds a class": (
            lambda t: replace_in(t, "llm:", "!new:cosyvoice.transformer.encoder.ConformerEncoder",
                                 "!name:cosyvoice.utils.common.ras_sampling"),
            ("llm.text_encoder is !name:cosyvoice.utils.common.ras_sampling",
             "emoctl builds only cosyvoice.transformer.encoder.ConformerEncoder")),
        "another function bound at get_tokenizer": (
            lambda t: t.replace("!name:whisper.tokenizer.get_tokenizer",
                                "!name:cosyvoice.tokenizer.tokenizer.get_tokenizer"),
            ("get_tokenizer is !name:cosyvoice.tokenizer.tokenizer.get_tokenizer",
             "emoctl binds only whisper.tokenizer.get_tokenizer")),
        "CosyVoice2's Qwen2LM as llm": (
            lambda t: t.replace("!new:cosyvoice.llm.llm.TransformerLM", "!new:cosyvoice.llm.llm.Qwen2LM"),
            ("llm is !new:cosyvoice.llm.llm.Qwen2LM", "cosyvoice.llm.llm.TransformerLM", "Qwen2LM is another model")),
        "a _target_ in train_conf, a key the adapter never builds": (
            lambda t: t + f"train_conf:\n    optim:\n        _target_: builtins.open\n        file: '{marker}'\n",
            ("train_conf.optim._target_",)),
    }


def bad_inputs() -> dict[str, tuple[Callable, tuple[str, ...]]]:
    """Wrong values at the right positions: each one paragraph naming the key and what is right."""
    return {
        "attention_heads: 3 in llm.text_encoder, of width 128": (
            lambda t: replace_in(t, "llm:", "attention_heads: 2", "attention_heads: 3"),
            ("llm.text_encoder: attention_heads 3 does not divide output_size 128",)),
        "DictConfig content that is a string, not a mapping": (
            lambda t: re.sub(r"content:\n(?: {16}.*\n)+", "content: payload\n", t, count=1),
            ("flow.decoder.cfm_params.content is 'payload' (str)", "a mapping of sigma_min")),
        "an extra key in the DictConfig content": (
            lambda t: replace_in(t, "flow:", "sigma_min: 1e-06", "sigma_min: 1e-06\n                payload: {a: 1}"),
            ("flow.decoder.cfm_params.content has argument(s) payload",)),
        "an OmegaConf interpolation (the oc.env resolver) as the DictConfig's solver": (
            lambda t: t.replace("solver: 'euler'", "solver: '${oc.env:HOME}'"),
            ("flow.decoder.cfm_params.content.solver is '${oc.env:HOME}'", "'euler'")),
        "num_blocks: two": (
            lambda t: replace_in(t, "llm:", "num_blocks: 2", "num_blocks: two"),
            ("llm.text_encoder.num_blocks is 'two' (str)", "an integer in [1, 256]")),
        "dropout_rate: .nan": (
            lambda t: replace_in(t, "flow:", "dropout_rate: 0.1", "dropout_rate: .nan"),
            ("flow.encoder.dropout_rate is nan", "a number in [0, 1]")),
        "normalize_before: 1": (
            lambda t: replace_in(t, "llm:", "normalize_before: True", "normalize_before: 1"),
            ("llm.text_encoder.normalize_before is 1 (int)", "true or false")),
        "the estimator's channels: 32, not a list": (
            lambda t: t.replace("channels: [32]", "channels: 32"),
            ("flow.decoder.estimator.channels is 32 (int)", "a list of 1 to 16 integers")),
        "an unknown argument in llm.text_encoder": (
            lambda t: replace_in(t, "llm:", "static_chunk_size: 1", "static_chunk_size: 1\n        payload: 1"),
            ("llm.text_encoder has argument(s) payload", "exactly input_size")),
        "hift without audio_limit": (
            lambda t: replace_in(t, "hift:", "    audio_limit: 0.99\n", ""),
            ("hift lacks audio_limit", "a number in [0, 1]")),
        "resblock_kernel_sizes longer than resblock_dilation_sizes (upstream zips them)": (
            lambda t: t.replace("resblock_kernel_sizes: [3]", "resblock_kernel_sizes: [3, 7]"),
            ("hift: resblock_kernel_sizes, resblock_dilation_sizes have lengths 2, 1",)),
        "a ConditionalDecoder at hift.f0_predictor": (
            lambda t: t.replace("!new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor",
                                "!new:cosyvoice.flow.decoder.ConditionalDecoder"),
            ("hift.f0_predictor is !new:cosyvoice.flow.decoder.ConditionalDecoder",
             "emoctl builds only cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor")),
        "a !ref to the !apply: key __set_seed1 as hift.sampling_rate": (
            lambda t: t.replace("sampling_rate: !ref <sample_rate>", "sampling_rate: !ref <__set_seed1>"),
            ("hift.sampling_rate is !apply:random.seed", "an integer")),
    }


def alias_bomb() -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def ref_bomb() -> str:
    lines = ["r0: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"r{i}: [{', '.join([f'!ref <r{i - 1}>'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"




def huge(text: str) -> str:
    return text + "padding: '" + "x" * (1 << 20) + "'\n"


def recursive(text: str) -> str:
    return text + "loop: &loop [*loop]\n"


def _static_chunk(value: str) -> Callable[[str], str]:
    return lambda t: t.replace("    static_chunk_size: 1\n", f"    static_chunk_size: {value}\n", 1)


EXPANSIONS: dict[str, tuple[Callable[[str], str], tuple[str, ...]]] = {
    "a billion-laughs alias bomb (10 levels of 10) at llm.text_encoder.static_chunk_size": (
        lambda t: alias_bomb() + _static_chunk("*a9")(t), ("expands to more than 100,000 values",
                                                          "once its aliases are followed")),
    "a billion-leaf !ref chain (10 levels of 10) at llm.text_encoder.static_chunk_size": (
        lambda t: ref_bomb() + _static_chunk("!ref <r9>")(t), ("expands to more than 100,000 values",
                                                              "once its !ref references are followed")),
    "1 MiB of padding": (huge, ("a cosyvoice.yaml is a few kB",)),
    "a recursive alias": (recursive, ("recursive",)),
}
"""Files that would expand without bound (or nearly): refused before anything is built."""


# ------------------------------------------------------------------------------------------ catalogue setups

def release_copy(release: Path, target: Path) -> Path:
    """A copy of ``release`` whose cosyvoice.yaml is copied and whose other files are symlinks."""
    target.mkdir(parents=True)
    for item in release.iterdir():
        if item.name == "cosyvoice.yaml":
            (target / item.name).write_text(item.read_text(encoding="utf-8"), encoding="utf-8")
        else:
            (target / item.name).symlink_to(item)
    return target


def _setup(rewrite: Callable[..., str], what: str, marker: bool = False
           ) -> Callable[[Path, dict[str, str]], dict[str, str]]:
    def setup(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
        bad = release_copy(Path(values["cosyvoice_release"]), case_dir / "release")
        yaml_path = bad / "cosyvoice.yaml"
        yaml_path.write_text(rewrite(yaml_path.read_text(encoding="utf-8")), encoding="utf-8")
        return {"bad": str(bad), "cv_recipe": str(write_harvest_recipe(case_dir, bad))}
    setup.__doc__ = (f"`{{bad}}` is a copy of the random-weight CosyVoice release whose cosyvoice.yaml has "
                     f"{what}{' (a payload that would create `{tmp}/pwned`)' if marker else ''}; `{{cv_recipe}}` "
                     "harvests from it.")
    return setup


def nothing_run_or_generated(case_dir: Path, values: dict[str, str]) -> None:
    """No payload ran (`{tmp}/pwned` absent) and no store was started."""
    assert not (case_dir / "pwned").exists(), "the crafted cosyvoice.yaml's payload ran"
    assert not (case_dir / "store").exists(), "the harvest started despite the crafted cosyvoice.yaml"


def _literal(fragment: str) -> str:
    return fragment.replace("{", "{{").replace("}", "}}")


HARVEST = ("harvest", "--config", "{cv_recipe}")


def register(case) -> None:
    marker_payloads = payloads(Path("{tmp}/pwned"))
    for what in marker_payloads:
        case("security", f"CosyVoice cosyvoice.yaml: {what}", HARVEST,
             ("{bad}/cosyvoice.yaml", *map(_literal, marker_payloads[what][1])),
             setup=_marker_setup(what), check=nothing_run_or_generated, needs=("cosyvoice_release",))
    for group in (bad_inputs(), EXPANSIONS):
        for what, (rewrite, fragments) in group.items():
            case("backbone folders", f"CosyVoice cosyvoice.yaml: {what}", HARVEST,
                 ("{bad}/cosyvoice.yaml", *map(_literal, fragments)), setup=_setup(rewrite, what),
                 check=nothing_run_or_generated, needs=("cosyvoice_release",))


def _marker_setup(what: str) -> Callable[[Path, dict[str, str]], dict[str, str]]:
    """A setup whose payload writes ``case_dir/pwned`` (the marker path is known only in the setup)."""
    def setup(case_dir: Path, values: dict[str, str]) -> dict[str, str]:
        return _setup(payloads(case_dir / "pwned")[what][0], what)(case_dir, values)
    setup.__doc__ = _setup(lambda t: t, what, marker=True).__doc__
    return setup


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
