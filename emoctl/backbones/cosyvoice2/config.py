"""CosyVoice2's ``cosyvoice2.yaml`` and its Qwen2 folder (``CosyVoice-BlankEN``), read as data.

The yaml goes through the same reader as CosyVoice-300M's (:mod:`emoctl.backbones.cosyvoice_instruct.config`:
HyperPyYAML's tags recorded, never run; every built position checked against an allow-list of the released
layout before any constructor runs), with CosyVoice2's :data:`LAYOUT`.  Three things differ from upstream's
loading, each because upstream's way would run or fetch more than the release's weights:

* ``llm.llm`` is ``Qwen2Encoder(pretrain_path)``, which upstream builds with ``Qwen2ForCausalLM.from_pretrained``
  (the folder's 988 MB ``model.safetensors``, in bfloat16).  emoctl builds the same class (upstream's methods,
  upstream's state-dict keys) around ``Qwen2ForCausalLM(config)`` from ``CosyVoice-BlankEN/config.json``; every
  weight then comes from ``llm.pt``, which upstream also loads over it, strictly.
* ``config.json`` is read as JSON against an allow-list of Qwen2 keys (:func:`read_qwen2_config`): an
  ``auto_map`` (remote code), a quantization or attention-implementation override is refused.
* ``qwen_pretrain_path`` is the release's own ``CosyVoice-BlankEN`` whatever the file says, as upstream's
  ``CosyVoice2`` overrides it; the text tokenizer is upstream's ``QwenTokenizer`` on that folder, after its
  ``tokenizer_config.json`` is checked to name Qwen2's tokenizer class and nothing to import.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from emoctl.backbones.cosyvoice_instruct.config import (
    HIFT, Arg, Bool, CosyVoiceConfig, DictConfigOf, Float, Function, Int, IntList, Module, Optional, Record, Str,
    Text)
from emoctl.backbones.cosyvoice_instruct.upstream import import_upstream
from emoctl.errors import ConfigError

QWEN_FOLDER = "CosyVoice-BlankEN"
QWEN_FILES = ("config.json", "tokenizer_config.json", "vocab.json", "merges.txt")
MAX_JSON_BYTES = 1 << 20
_FIX = "Use the CosyVoice-BlankEN folder of the CosyVoice2-0.5B release."

_SIZE, _VOCAB, _BLOCKS, _RATE = Int(), Int(1, 1 << 20), Int(1, 256), Float()


def _divides(args: dict[str, Any]) -> str:
    if args["output_size"] % args["attention_heads"]:
        return (f"attention_heads {args['attention_heads']} does not divide output_size {args['output_size']} "
                "(the release uses 8 heads of width 512)")
    if args["output_size"] != 512:
        return (f"output_size is {args['output_size']}; upstream's UpsampleConformerEncoder is hard-wired to 512 "
                "channels (its up-sampling layers), as the release gives")
    return ""


LLM = Module("cosyvoice.llm.llm.Qwen2LM", {
    "llm_input_size": _SIZE, "llm_output_size": _SIZE, "speech_token_size": _VOCAB,
    "length_normalized_loss": Bool(), "lsm_weight": _RATE, "mix_ratio": IntList(Int(1, 1 << 10), max_len=2),
    "llm": Module("cosyvoice.llm.llm.Qwen2Encoder", {"pretrain_path": Text()},
                  factory=lambda pretrain_path: offline_qwen2_encoder(Path(pretrain_path))),
    "sampling": Function("cosyvoice.utils.common.ras_sampling", {
        "top_p": _RATE, "top_k": Int(1, 1 << 20), "win_size": Int(1, 1 << 16), "tau_r": _RATE}),
}, check=lambda a: "" if a["llm_input_size"] == a["llm_output_size"] else
    "llm_input_size and llm_output_size differ; both are the Qwen2 model's hidden size",
    note=" (CosyVoice-300M's TransformerLM is another model)")

FLOW = Module("cosyvoice.flow.flow.CausalMaskedDiffWithXvec", {
    "input_size": _SIZE, "output_size": _SIZE, "spk_embed_dim": _SIZE, "output_type": Str(("mel",)),
    "vocab_size": _VOCAB, "input_frame_rate": Int(1, 1000), "only_mask_loss": Bool(),
    "token_mel_ratio": Int(1, 16), "pre_lookahead_len": Int(0, 64),
    "encoder": Module("cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder", {
        "output_size": _SIZE, "attention_heads": Int(1, 1024), "linear_units": _SIZE, "num_blocks": _BLOCKS,
        "dropout_rate": _RATE, "positional_dropout_rate": _RATE, "attention_dropout_rate": _RATE,
        "normalize_before": Bool(), "input_layer": Str(("linear",)), "pos_enc_layer_type": Str(("rel_pos_espnet",)),
        "selfattention_layer_type": Str(("rel_selfattn",)), "input_size": _SIZE, "use_cnn_module": Bool(),
        "macaron_style": Bool(),
        # the training example gives use_dynamic_chunk, the release static_chunk_size: only streaming reads them
        "use_dynamic_chunk": Optional(Bool()), "static_chunk_size": Optional(Int(0, 1 << 16))}, _divides),
    "decoder": Module("cosyvoice.flow.flow_matching.CausalConditionalCFM", {
        "in_channels": _SIZE, "n_spks": Int(1, 1 << 16), "spk_emb_dim": _SIZE,
        "cfm_params": DictConfigOf(Record({
            "sigma_min": _RATE, "solver": Str(("euler",)), "t_scheduler": Str(("cosine",)),
            "training_cfg_rate": _RATE, "inference_cfg_rate": Float(0.0, 100.0), "reg_loss_type": Str(("l1",))})),
        "estimator": Module("cosyvoice.flow.decoder.CausalConditionalDecoder", {
            "in_channels": _SIZE, "out_channels": _SIZE, "channels": IntList(_SIZE), "dropout": _RATE,
            "attention_head_dim": _SIZE, "n_blocks": _BLOCKS, "num_mid_blocks": _BLOCKS, "num_heads": Int(1, 1024),
            "act_fn": Str(("gelu",)), "static_chunk_size": Int(0, 1 << 16),
            "num_decoding_left_chunks": Int(-1, 1 << 10)}),
    }),
})

TOKENIZER = Function("cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer",
                     {"token_path": Text(), "skip_special_tokens": Bool()})

LAYOUT: dict[str, Arg] = {"llm": LLM, "flow": FLOW, "hift": HIFT, "get_tokenizer": TOKENIZER}
"""Every top-level key the adapter builds from cosyvoice2.yaml, and what it may be."""


# ------------------------------------------------------------------------------- CosyVoice-BlankEN

#: config.json keys a Qwen2 checkpoint writes; anything else (auto_map, quantization_config, an attention
#: implementation) would change what transformers builds or imports, and is refused.
QWEN2_KEYS = frozenset({
    "architectures", "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act",
    "hidden_size", "initializer_range", "intermediate_size", "max_position_embeddings", "max_window_layers",
    "model_type", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "rope_theta",
    "rope_scaling", "rope_parameters", "sliding_window", "tie_word_embeddings", "torch_dtype", "dtype",
    "transformers_version", "use_cache", "use_sliding_window", "vocab_size", "layer_types", "head_dim"})
_QWEN2_INTS = {"hidden_size": (1, 1 << 16), "intermediate_size": (1, 1 << 18), "num_hidden_layers": (1, 256),
               "num_attention_heads": (1, 1024), "num_key_value_heads": (1, 1024), "vocab_size": (1, 1 << 22),
               "max_position_embeddings": (1, 1 << 22)}


def read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A small JSON object, or one error naming the file and the fix."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ConfigError(f"{path} is {path.stat().st_size:,} bytes; {what} is a few kB. {fix}")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read {path} ({what}): {' '.join(str(err).split())}. {fix}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not {what} (its top level is not an object). {fix}")
    return data


def read_qwen2_config(path: Path) -> Any:
    """``CosyVoice-BlankEN/config.json`` as a ``Qwen2Config``, every key allow-listed and the sizes checked."""
    data = read_json(path, "a Qwen2 config.json", _FIX)
    if data.get("model_type") != "qwen2":
        raise ConfigError(f"{path} has model_type {data.get('model_type')!r}; CosyVoice2's LLM is a Qwen2 model "
                          f"(model_type 'qwen2'). {_FIX}")
    unknown = sorted(set(data) - QWEN2_KEYS)
    if unknown:
        raise ConfigError(f"{path} has key(s) {', '.join(unknown)}, which a Qwen2 config.json does not need and "
                          "which can make transformers import code or build another model (auto_map, "
                          f"quantization_config, attention overrides); emoctl reads only {', '.join(sorted(QWEN2_KEYS))}."
                          f" {_FIX}")
    for key, (low, high) in _QWEN2_INTS.items():
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{path} {key} is {value!r}; a Qwen2 config gives an integer in [{low}, {high}]. {_FIX}")
    if data["hidden_size"] % data["num_attention_heads"] or data["num_attention_heads"] % data["num_key_value_heads"]:
        raise ConfigError(f"{path}: num_attention_heads {data['num_attention_heads']} must divide hidden_size "
                          f"{data['hidden_size']} and be a multiple of num_key_value_heads "
                          f"{data['num_key_value_heads']}. {_FIX}")
    if data.get("hidden_act", "silu") != "silu" or data.get("use_sliding_window", False):
        raise ConfigError(f"{path}: CosyVoice2's Qwen2 uses hidden_act 'silu' without a sliding window; this file "
                          f"gives hidden_act {data.get('hidden_act')!r}, use_sliding_window "
                          f"{data.get('use_sliding_window')!r}. {_FIX}")
    from transformers import Qwen2Config

    kept = {k: v for k, v in data.items() if k not in ("architectures", "transformers_version", "torch_dtype", "dtype")}
    return Qwen2Config(**kept)


def check_tokenizer_config(folder: Path) -> None:
    """``tokenizer_config.json`` names Qwen2's tokenizer and nothing to import (no ``auto_map``)."""
    path = folder / "tokenizer_config.json"
    data = read_json(path, "a tokenizer_config.json", _FIX)
    if data.get("tokenizer_class") not in ("Qwen2Tokenizer", "Qwen2TokenizerFast"):
        raise ConfigError(f"{path} names tokenizer_class {data.get('tokenizer_class')!r}; CosyVoice2's text "
                          f"tokenizer is Qwen2Tokenizer. {_FIX}")
    if "auto_map" in data:
        raise ConfigError(f"{path} has an auto_map, which names code to import with the tokenizer; Qwen2's "
                          f"tokenizer needs none and emoctl imports none. {_FIX}")


@functools.cache
def _offline_encoder_class() -> type:
    """Upstream's ``Qwen2Encoder`` built from a config instead of ``from_pretrained``: its methods and state-dict
    keys unchanged (``model.*``)."""
    from torch import nn
    from transformers import Qwen2ForCausalLM

    upstream = import_upstream("cosyvoice.llm.llm").Qwen2Encoder

    class OfflineQwen2Encoder(upstream):  # type: ignore[misc, valid-type]
        def __init__(self, config: Any) -> None:
            nn.Module.__init__(self)
            self.model = Qwen2ForCausalLM(config)

    return OfflineQwen2Encoder


def offline_qwen2_encoder(folder: Path) -> Any:
    """``Qwen2Encoder`` of random weights shaped by ``folder/config.json`` (llm.pt then fills every weight)."""
    return _offline_encoder_class()(read_qwen2_config(folder / "config.json"))


@dataclass(frozen=True)
class CosyVoice2Config(CosyVoiceConfig):
    """A read ``cosyvoice2.yaml`` whose ``qwen_pretrain_path`` is the release's own Qwen2 folder."""

    qwen_folder: Path = field(default=Path(QWEN_FOLDER))
    layout: ClassVar[Mapping[str, Arg]] = LAYOUT

    @classmethod
    def read(cls, path: str | Path) -> CosyVoice2Config:  # type: ignore[override]
        base = CosyVoiceConfig.read(path)
        folder = Path(path).parent / QWEN_FOLDER
        return cls(base.path, {**base.data, "qwen_pretrain_path": str(folder)}, folder)

    def plan(self, key: str) -> Any:
        """The checked plan; the Qwen2 folder it names must be the release's own (``!ref <qwen_pretrain_path>``)."""
        plan = super().plan(key)
        named = {"llm": lambda p: p.args["llm"].args["pretrain_path"], "get_tokenizer": lambda p: p.args["token_path"]}
        if key in named and named[key](plan) != str(self.qwen_folder):
            where = "llm.llm.pretrain_path" if key == "llm" else "get_tokenizer.token_path"
            raise ConfigError(f"{self.path} {where} is {named[key](plan)!r}; emoctl reads the Qwen2 model of the "
                              f"release folder itself ({self.qwen_folder}), so the file must give "
                              "!ref <qwen_pretrain_path> there, as released.")
        return plan

    def text_tokenizer(self) -> Any:
        """Upstream's ``QwenTokenizer`` on the release's Qwen2 folder (its class checked first)."""
        args = self.plan("get_tokenizer").args
        check_tokenizer_config(self.qwen_folder)
        tokenizer = import_upstream("cosyvoice.tokenizer.tokenizer").QwenTokenizer
        try:
            return tokenizer(token_path=str(self.qwen_folder), skip_special_tokens=args["skip_special_tokens"])
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot build the Qwen2 text tokenizer from {self.qwen_folder}: "
                              f"{' '.join(str(err).split())[:300]}. {_FIX}") from None

    @property
    def qwen_config(self) -> Any:
        return read_qwen2_config(self.qwen_folder / "config.json")

    def check_sizes(self) -> None:
        """The yaml's LLM width is the Qwen2 model's, as upstream's Linear layers assume."""
        args = self.plan("llm").args
        hidden = self.qwen_config.hidden_size
        if args["llm_input_size"] != hidden:
            raise ConfigError(f"{self.path} llm.llm_input_size is {args['llm_input_size']} but "
                              f"{self.qwen_folder / 'config.json'} gives hidden_size {hidden}; they are one width. "
                              "Use the cosyvoice2.yaml and CosyVoice-BlankEN of one release.")

