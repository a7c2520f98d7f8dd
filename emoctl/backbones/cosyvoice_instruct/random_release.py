"""A CosyVoice-300M-Instruct release folder of random weights, in upstream's formats, for tests and benchmarks.

``cosyvoice.yaml`` is written in the released HyperPyYAML form (``!new:`` / ``!name:`` / ``!ref`` tags) at a
chosen size; ``llm.pt``, ``flow.pt`` and ``hift.pt`` are the state dicts of upstream's own classes built from
it (so their key layout is upstream's); the two ONNX front ends are small graphs with the real models' input
and output layout (the tokenizer: (1, 128, frames) log-mel and its length to (1, ceil(frames / 2)) tokens in
[0, 4096); CAMPPlus: (1, frames, 80) fbank to a (1, 192) x-vector); ``spk2info.pt`` maps two English voice
ids to x-vectors.  Nothing here is a trained model: it proves the code paths, shapes and equalities.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emoctl.numerics import private_rng
from emoctl.backbones.cosyvoice_instruct.config import CosyVoiceConfig
from emoctl.backbones.random_weights import set_stop_logit

SPEAKERS = ("英文女", "英文男")  # the release's English voices


@dataclass(frozen=True)
class RandomReleaseSize:
    """The sizes that differ between the released model and a test-sized one (vocabularies stay released)."""

    text_dim: int = 64
    d: int = 128
    heads: int = 2
    units: int = 256
    text_blocks: int = 2
    llm_blocks: int = 2
    flow_dim: int = 64
    flow_blocks: int = 1
    flow_channels: int = 32
    hift_channels: int = 32
    stop_spread: float = 1.8  # std of the stop token's logit: larger ends random utterances sooner

    @classmethod
    def tiny(cls) -> RandomReleaseSize:
        return cls()

    @classmethod
    def full(cls) -> RandomReleaseSize:
        """The released LLM (310.7M parameters; what decoding and EmoShift cost) with the tiny flow and HiFT."""
        return cls(text_dim=512, d=1024, heads=16, units=4096, text_blocks=6, llm_blocks=14)


_YAML = """\
# A CosyVoice-300M-Instruct cosyvoice.yaml of random weights written by emoctl (released layout, test sizes).
__set_seed1: !apply:random.seed [1986]
sample_rate: 22050
text_encoder_input_size: {text_dim}
llm_input_size: {d}
llm_output_size: {d}
spk_embed_dim: 192

llm: !new:cosyvoice.llm.llm.TransformerLM
    text_encoder_input_size: !ref <text_encoder_input_size>
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    text_token_size: 51866
    speech_token_size: 4096
    length_normalized_loss: True
    lsm_weight: 0
    spk_embed_dim: !ref <spk_embed_dim>
    text_encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        input_size: !ref <text_encoder_input_size>
        output_size: {d}
        attention_heads: {heads}
        linear_units: {units}
        num_blocks: {text_blocks}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.0
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        use_cnn_module: False
        macaron_style: False
        use_dynamic_chunk: False
        use_dynamic_left_chunk: False
        static_chunk_size: 1
    llm: !new:cosyvoice.transformer.encoder.TransformerEncoder
        input_size: !ref <llm_input_size>
        output_size: !ref <llm_output_size>
        attention_heads: {heads}
        linear_units: {units}
        num_blocks: {llm_blocks}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.0
        input_layer: 'linear_legacy'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        static_chunk_size: 1
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: {flow_dim}
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 4096
    input_frame_rate: 50
    only_mask_loss: True
    encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        output_size: {flow_dim}
        attention_heads: 2
        linear_units: {units}
        num_blocks: {flow_blocks}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: {flow_dim}
        use_cnn_module: False
        macaron_style: False
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: 80
        sampling_ratios: [1, 1, 1, 1]
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
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
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [{flow_channels}]
            dropout: 0.0
            attention_head_dim: 16
            n_blocks: 1
            num_mid_blocks: 1
            num_heads: 2
            act_fn: 'gelu'

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: {hift_channels}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 8]
    upsample_kernel_sizes: [16, 16]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3]
    resblock_dilation_sizes: [[1, 3, 5]]
    source_resblock_kernel_sizes: [7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: {hift_channels}

get_tokenizer: !name:whisper.tokenizer.get_tokenizer
    multilingual: True
    num_languages: 100
    language: 'en'
    task: 'transcribe'
allowed_special: 'all'
"""


def write_random_release(folder: str | Path, size: RandomReleaseSize | None = None, seed: int = 0) -> Path:
    """Write a complete release folder of random weights at ``size`` (default: tiny) and return it."""
    size = size or RandomReleaseSize.tiny()
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    (root / "cosyvoice.yaml").write_text(_YAML.format(**vars(size)), encoding="utf-8")
    cfg = CosyVoiceConfig.read(root / "cosyvoice.yaml")
    with private_rng():
        torch.manual_seed(seed)
        llm = cfg.build("llm")
        _make_utterances_end(llm, size.stop_spread)
        torch.save(llm.state_dict(), root / "llm.pt")
        torch.save(cfg.build("flow").state_dict(), root / "flow.pt")
        hift = cfg.build("hift")
        torch.save({f"generator.{k}": v for k, v in hift.state_dict().items()}, root / "hift.pt")  # as released
        torch.save({name: {"embedding": torch.randn(1, 192)} for name in SPEAKERS}, root / "spk2info.pt")
    rng = np.random.default_rng(seed)
    write_speech_tokenizer_onnx(root / "speech_tokenizer_v1.onnx", rng)
    write_campplus_onnx(root / "campplus.onnx", rng)
    return root


@torch.no_grad()
def _make_utterances_end(llm: torch.nn.Module, spread: float) -> None:
    """Give the stop token a state-dependent logit of mean 0 and std ``spread`` (see
    :func:`emoctl.backbones.random_weights.set_stop_logit`), over the LLM's states for random speech tokens."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, llm.speech_token_size, (4, 64), generator=g)
    x = llm.speech_embedding(tokens)
    states, _ = llm.llm(x, torch.full((4,), 64, dtype=torch.int32))
    set_stop_logit(states.reshape(-1, states.shape[-1]), llm.llm_decoder.weight, llm.llm_decoder.bias,
                   llm.speech_token_size, spread, g)


def write_speech_tokenizer_onnx(path: Path, rng: np.random.Generator, codes: int = 4096, stride: int = 2) -> Path:
    """An ONNX graph with the tokenizer's interface: feats (1, 128, T) float32 and feats_length (1,) int32 to
    indices (1, ceil(T / stride)) int64: a strided convolution, a projection to ``codes`` and an argmax (stride 2:
    v1's 50 tokens a second from 100 mel frames; stride 4: v2's 25)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels = 32
    weights = [numpy_helper.from_array(rng.standard_normal((channels, 128, 3)).astype(np.float32), "conv_w"),
               numpy_helper.from_array(rng.standard_normal((channels, codes)).astype(np.float32), "proj_w"),
               numpy_helper.from_array(np.zeros((1, channels, 1), dtype=np.float32), "zero")]
    nodes = [helper.make_node("Conv", ["feats", "conv_w"], ["conv"], strides=[stride], pads=[1, 1]),
             helper.make_node("Cast", ["feats_length"], ["length_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["length_f", "zero"], ["length_zero"]),  # the length is an input upstream feeds
             helper.make_node("Add", ["conv", "length_zero"], ["hidden"]),
             helper.make_node("Transpose", ["hidden"], ["frames"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["frames", "proj_w"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["indices"], axis=2, keepdims=0)]
    graph = helper.make_graph(nodes, f"speech_tokenizer_stride{stride}_random",
                              [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
                               helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1])],
                              [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, "T2"])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def write_campplus_onnx(path: Path, rng: np.random.Generator) -> Path:
    """An ONNX graph with CAMPPlus's interface: fbank (1, T, 80) float32 to a (1, 192) x-vector (mean over
    frames, then a projection)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(rng.standard_normal((80, 192)).astype(np.float32) * 0.1, "proj_w")]
    nodes = [helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "proj_w"], ["output"])]
    graph = helper.make_graph(nodes, "campplus_random",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", 80])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 192])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path
