"""A CosyVoice2 release folder of random weights, in upstream's formats, for tests and benchmarks.

``cosyvoice2.yaml`` is written in the released HyperPyYAML form (``!new:`` / ``!name:`` / ``!ref`` tags, the
``!ref <chunk_size> * <token_mel_ratio>`` product, ``qwen_pretrain_path: ''``) at a chosen size;
``CosyVoice-BlankEN/`` holds a Qwen2 ``config.json`` of that size and a small byte-level BPE tokenizer in Qwen2's
file layout (``vocab.json``, ``merges.txt``, ``tokenizer_config.json``); ``llm.pt``, ``flow.pt`` and ``hift.pt``
are the state dicts of upstream's own classes built from them.  The speech tokenizer is a small ONNX graph with
v2's interface ((1, 128, frames) log-mel at 100 frames a second to (1, ceil(frames / 4)) tokens in [0, 6561):
25 a second) and CAMPPlus the 300M writer's.  Nothing here is a trained model: it proves the code paths, shapes
and equalities.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emoctl.backbones.cosyvoice2.config import QWEN_FOLDER, CosyVoice2Config
from emoctl.backbones.cosyvoice_instruct.random_release import write_campplus_onnx, write_speech_tokenizer_onnx
from emoctl.backbones.random_weights import set_stop_logit
from emoctl.numerics import private_rng

SPEECH_TOKENS = 6561  # speech_tokenizer_v2's codebook (3^8 FSQ levels)
DROPPED_ID_LOGIT = -30.0  # the ids above stop (unused, bistream's fill) almost never drawn by a random head


@dataclass(frozen=True)
class RandomReleaseSize:
    """The sizes that differ between the released model and a test-sized one (vocabularies: see the writer)."""

    d: int = 64
    heads: int = 4
    kv_heads: int = 2
    units: int = 128
    layers: int = 2
    flow_units: int = 64
    flow_blocks: int = 1
    flow_channels: int = 32
    hift_channels: int = 32
    text_vocab: int = 512  # the Qwen2 embedding rows (the tiny tokenizer uses 279 of them)
    stop_spread: float = 2.6  # std of the stop token's logit: larger ends random utterances sooner

    @classmethod
    def tiny(cls) -> RandomReleaseSize:
        return cls()

    @classmethod
    def full(cls) -> RandomReleaseSize:
        """The released LLM's shape (Qwen2.5-0.5B: 24 layers at 896, 14 heads, 2 KV heads, the 151,936-row
        embedding) with the tiny flow and HiFT."""
        return cls(d=896, heads=14, kv_heads=2, units=4864, layers=24, text_vocab=151_936)


_YAML = """\
# A CosyVoice2 cosyvoice2.yaml of random weights written by emoctl (released layout, test sizes).
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]
__set_seed4: !apply:torch.cuda.manual_seed_all [1986]
sample_rate: 24000
llm_input_size: {d}
llm_output_size: {d}
spk_embed_dim: 192
qwen_pretrain_path: ''
token_frame_rate: 25
token_mel_ratio: 2
chunk_size: 25
num_decoding_left_chunks: -1

llm: !new:cosyvoice.llm.llm.Qwen2LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: 6561
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [5, 15]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec
    input_size: 512
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 6561
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: 512
        attention_heads: 8
        linear_units: {flow_units}
        num_blocks: {flow_blocks}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: 512
        use_cnn_module: False
        macaron_style: False
        static_chunk_size: !ref <chunk_size>
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [{flow_channels}]
            dropout: 0.0
            attention_head_dim: 16
            n_blocks: 1
            num_mid_blocks: 1
            num_heads: 2
            act_fn: 'gelu'
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: {hift_channels}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3]
    resblock_dilation_sizes: [[1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: {hift_channels}

get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
allowed_special: 'all'
"""


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE writes bytes as (GPT-2's convention, which Qwen2 keeps):
    printable Latin-1 bytes stand for themselves, the rest map to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


# merges over common English letter pairs, so the tiny tokenizer's ids are not just bytes
_MERGES = ("t h", "h e", "i n", "e r", "a n", "Ġ t", "o n", "r e", "Ġ a", "e n", "a t", "o r", "e d", "Ġ s",
           "i s", "Ġ th", "Ġ w", "e s", "a r", "o u", "l e", "i t", "n d")


def write_qwen2_folder(folder: Path, size: RandomReleaseSize) -> Path:
    """``CosyVoice-BlankEN`` at ``size``: Qwen2's config.json and a byte-level BPE in Qwen2's tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    for merge in _MERGES:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
    endoftext = len(vocab)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768, "errors": "replace", "bos_token": None,
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": None, "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(endoftext): {"content": "<|endoftext|>", "special": True, "lstrip": False,
                                                  "rstrip": False, "normalized": False, "single_word": False}},
    }, indent=1), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": size.d,
        "intermediate_size": size.units, "num_hidden_layers": size.layers, "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads, "vocab_size": size.text_vocab, "max_position_embeddings": 32768,
        "max_window_layers": size.layers, "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "sliding_window": 32768, "use_sliding_window": False, "tie_word_embeddings": True, "attention_dropout": 0.0,
        "bos_token_id": endoftext, "eos_token_id": endoftext, "initializer_range": 0.02, "use_cache": True,
        "torch_dtype": "bfloat16"}, indent=1), encoding="utf-8")
    return folder


def write_random_release(folder: str | Path, size: RandomReleaseSize | None = None, seed: int = 0) -> Path:
    """Write a complete release folder of random weights at ``size`` (default: tiny) and return it."""
    size = size or RandomReleaseSize.tiny()
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    (root / "cosyvoice2.yaml").write_text(_YAML.format(**vars(size)), encoding="utf-8")
    write_qwen2_folder(root / QWEN_FOLDER, size)
    cfg = CosyVoice2Config.read(root / "cosyvoice2.yaml")
    with private_rng():
        torch.manual_seed(seed)
        llm = cfg.build("llm")
        _make_utterances_end(llm, size.stop_spread)
        torch.save(llm.state_dict(), root / "llm.pt")
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with private_rng():  # the flow's CFM reseeds every global generator (upstream's fixed noise)
            flow = cfg.build("flow")
            torch.manual_seed(seed + 1)
            torch.save(flow.state_dict(), root / "flow.pt")
            hift = cfg.build("hift")
            torch.save({f"generator.{k}": v for k, v in hift.state_dict().items()}, root / "hift.pt")  # as released
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    rng = np.random.default_rng(seed)
    write_speech_tokenizer_onnx(root / "speech_tokenizer_v2.onnx", rng, codes=SPEECH_TOKENS, stride=4)
    write_campplus_onnx(root / "campplus.onnx", rng)
    return root


@torch.no_grad()
def _make_utterances_end(llm: torch.nn.Module, spread: float) -> None:
    """A stop logit of mean 0 and std ``spread`` over the LLM's states for random speech tokens
    (:func:`emoctl.backbones.random_weights.set_stop_logit`), and the two ids above stop far below the rest."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, llm.speech_token_size, (4, 64), generator=g)
    states, _ = llm.llm(llm.speech_embedding(tokens), torch.full((4,), 64, dtype=torch.int32))
    head = llm.llm_decoder
    set_stop_logit(states.reshape(-1, states.shape[-1]), head.weight, head.bias, llm.speech_token_size, spread, g)
    head.weight[llm.speech_token_size + 1:] = 0.0
    head.bias[llm.speech_token_size + 1:] = DROPPED_ID_LOGIT
