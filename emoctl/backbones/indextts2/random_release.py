"""A release folder of random weights in upstream's formats, for tests and benchmarks.

No IndexTTS2 weights can be had offline, yet the adapter must be tested on the real upstream classes and the
real checkpoint layout.  This writes exactly what a user's folder holds (``release.py``), with every model
built by upstream's (or transformers') own constructors at a chosen size and saved the way upstream loads it:
``gpt.pth`` is ``UnifiedVoice.state_dict()``, ``s2mel.pth`` is ``{"net": {module: state_dict}}``, BigVGAN is a
``{"generator": ...}`` file beside its ``config.json``, w2v-BERT a ``save_pretrained`` folder.

``RandomReleaseSize.full()`` is the released shape (24 x 1280 GPT, 866 M parameters); ``tiny()`` keeps what the
vocoder chain fixes (GPT width 1280, w2v-BERT width 1024 and its 17th hidden state) and shrinks the rest.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from emoctl.backbones.indextts2.vocoder import write_random_vocoder_chain
from emoctl.backbones.random_weights import set_stop_logit

# Upstream's emotion table split (config.yaml emo_num): happy, angry, sad, afraid, disgusted, melancholic,
# surprised, calm.
EMO_NUM = (3, 17, 2, 8, 4, 5, 10, 24)


@dataclass(frozen=True)
class RandomReleaseSize:
    """The sizes that differ between the released model and a test-sized one."""

    gpt_layers: int = 2
    gpt_heads: int = 20
    text_vocab: int = 256
    max_text_tokens: int = 120
    max_mel_tokens: int = 400
    cond_size: int = 128  # conformer output_size of the speaker and emotion conditioners
    cond_units: int = 256
    cond_heads: int = 4
    cond_blocks: int = 1
    emo_cond_blocks: int = 1
    emo_cond_units: int = 256
    emo_cond_heads: int = 4
    w2v_layers: int = 17  # upstream reads hidden_states[17]
    w2v_heads: int = 4
    w2v_units: int = 64
    dit_depth: int = 2
    wavenet_layers: int = 2
    codec_layers: int = 2
    seed: int = 0
    stop_spread: float = 1.8  # std of the stop token's logit: larger ends random utterances sooner

    @classmethod
    def tiny(cls) -> RandomReleaseSize:
        return cls()

    @classmethod
    def released_gpt(cls) -> RandomReleaseSize:
        """The released GPT and conditioners (what decoding costs), with the tiny feature extractor and
        vocoder chain (which do not run while decoding): the benchmark's and the full-size test's shape."""
        full = cls.full()
        return dataclasses.replace(cls.tiny(), **{k: getattr(full, k) for k in (
            "gpt_layers", "gpt_heads", "text_vocab", "max_text_tokens", "max_mel_tokens", "cond_size", "cond_units",
            "cond_heads", "cond_blocks", "emo_cond_blocks", "emo_cond_units", "emo_cond_heads")})

    @classmethod
    def full(cls) -> RandomReleaseSize:
        return cls(gpt_layers=24, gpt_heads=20, text_vocab=12000, max_text_tokens=600, max_mel_tokens=1815,
                   cond_size=512, cond_units=2048, cond_heads=8, cond_blocks=6, emo_cond_blocks=4, emo_cond_units=1024,
                   emo_cond_heads=4, w2v_layers=24,
                   w2v_heads=16, w2v_units=4096, dit_depth=13, wavenet_layers=8, codec_layers=12)


def release_config(size: RandomReleaseSize) -> dict[str, Any]:
    """config.yaml in the released layout, at ``size``."""
    return {
        "dataset": {"bpe_model": "bpe.model", "sample_rate": 24000, "squeeze": False,
                    "mel": {"sample_rate": 24000, "n_fft": 1024, "hop_length": 256, "win_length": 1024,
                            "n_mels": 100, "mel_fmin": 0, "normalize": False}},
        "gpt": {
            "model_dim": 1280, "max_mel_tokens": size.max_mel_tokens, "max_text_tokens": size.max_text_tokens,
            "heads": size.gpt_heads, "use_mel_codes_as_input": True, "mel_length_compression": 1024,
            "layers": size.gpt_layers, "number_text_tokens": size.text_vocab, "number_mel_codes": 8194,
            "start_mel_token": 8192, "stop_mel_token": 8193, "start_text_token": 0, "stop_text_token": 1,
            "train_solo_embeddings": False, "condition_type": "conformer_perceiver",
            "condition_module": {"output_size": size.cond_size, "linear_units": size.cond_units,
                                 "attention_heads": size.cond_heads, "num_blocks": size.cond_blocks,
                                 "input_layer": "conv2d2", "perceiver_mult": 2},
            "emo_condition_module": {"output_size": size.cond_size, "linear_units": size.emo_cond_units,
                                     "attention_heads": size.emo_cond_heads, "num_blocks": size.emo_cond_blocks,
                                     "input_layer": "conv2d2", "perceiver_mult": 2},
        },
        "semantic_codec": {"codebook_size": 8192, "hidden_size": 1024, "codebook_dim": 8, "vocos_dim": 384,
                           "vocos_intermediate_dim": 2048, "vocos_num_layers": size.codec_layers},
        "s2mel": {
            "preprocess_params": {"sr": 22050, "spect_params": {"n_fft": 1024, "win_length": 1024,
                                                                "hop_length": 256, "n_mels": 80, "fmin": 0,
                                                                "fmax": "None"}},
            "dit_type": "DiT", "reg_loss_type": "l1", "style_encoder": {"dim": 192},
            "length_regulator": {"channels": 512, "is_discrete": False, "in_channels": 1024,
                                 "content_codebook_size": 2048, "sampling_ratios": [1, 1, 1, 1],
                                 "vector_quantize": False, "n_codebooks": 1, "quantizer_dropout": 0.0,
                                 "f0_condition": False, "n_f0_bins": 512},
            "DiT": {"hidden_dim": 512, "num_heads": 8, "depth": size.dit_depth, "class_dropout_prob": 0.1,
                    "block_size": 8192, "in_channels": 80, "style_condition": True, "final_layer_type": "wavenet",
                    "target": "mel", "content_dim": 512, "content_codebook_size": 1024, "content_type": "discrete",
                    "f0_condition": False, "n_f0_bins": 512, "content_codebooks": 1, "is_causal": False,
                    "long_skip_connection": True, "zero_prompt_speech_token": False, "time_as_token": False,
                    "style_as_token": False, "uvit_skip_connection": True, "add_resblock_in_transformer": False},
            "wavenet": {"hidden_dim": 512, "num_layers": size.wavenet_layers, "kernel_size": 5,
                        "dilation_rate": 1, "p_dropout": 0.2, "style_condition": True},
        },
        "gpt_checkpoint": "gpt.pth", "w2v_stat": "wav2vec2bert_stats.pt", "s2mel_checkpoint": "s2mel.pth",
        "emo_matrix": "feat2.pt", "spk_matrix": "feat1.pt", "emo_num": list(EMO_NUM),
        "qwen_emo_path": "qwen0.6bemo4-merge/",
        "vocoder": {"type": "bigvgan", "name": "nvidia/bigvgan_v2_22khz_80band_256x"},
        "version": 2.0,
    }


_BPE_TEXT = [
    "THE BIRCH CANOE SLID ON THE SMOOTH PLANKS.", "GLUE THE SHEET TO THE DARK BLUE BACKGROUND.",
    "IT IS EASY TO TELL THE DEPTH OF A WELL.", "THESE DAYS A CHICKEN LEG IS A RARE DISH.",
    "RICE IS OFTEN SERVED IN ROUND BOWLS.", "THE JUICE OF LEMONS MAKES FINE PUNCH.",
    "THE BOX WAS THROWN BESIDE THE PARKED TRUCK.", "THE HOGS WERE FED CHOPPED CORN AND GARBAGE.",
    "FOUR HOURS OF STEADY WORK FACED US.", "A LARGE SIZE IN STOCKINGS IS HARD TO SELL.",
    "KIDS ARE TALKING BY THE DOOR.", "GO NOW, WE WAIT HERE QUIETLY.", "VIVIAN JUDGED THE JAZZ QUIZ.",
]


def write_voice_clip(path: Path, seconds: float = 3.0, f0: float = 150.0, seed: int = 0) -> Path:
    """A gliding tone with a little noise at 22050 Hz: a reference clip for w2v-BERT and CAMPPlus to hear."""
    import numpy as np
    import soundfile as sf

    rate = 22050
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (f0 + 30 * t) * t) + 0.02 * np.random.default_rng(seed).standard_normal(t.size)
    sf.write(path, wave.astype(np.float32), rate)
    return path


def write_bpe(path: Path, vocab: int) -> None:
    """A sentencepiece BPE model of ``vocab`` pieces over upper-case English (upstream upper-cases text)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_BPE_TEXT * 20), model_writer=model, vocab_size=vocab,
                                   model_type="bpe", character_coverage=1.0, bos_id=0, eos_id=1, unk_id=2,
                                   pad_id=-1, hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(model.getvalue())


def write_random_release(folder: str | Path, size: RandomReleaseSize | None = None) -> Path:
    """Write a complete release folder of random weights at ``size`` (default: tiny) and return it."""
    from omegaconf import OmegaConf

    size = size or RandomReleaseSize.tiny()
    root = Path(folder)
    (root / "hf_cache").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(size.seed)
    cfg = release_config(size)
    OmegaConf.save(OmegaConf.create(cfg), root / "config.yaml")
    write_bpe(root / "bpe.model", min(size.text_vocab, 256))
    _write_gpt(root, cfg, size)
    _write_conditioning_tables(root)
    _write_w2v_bert(root / "hf_cache" / "w2v-bert-2.0", size)
    _write_campplus(root / "hf_cache" / "campplus_cn_common.bin")
    _write_vocoder_chain(root, cfg)
    (root / "random_release.json").write_text(json.dumps({"random": True, **asdict(size)}, indent=1))
    return root


def _write_gpt(root: Path, cfg: dict[str, Any], size: RandomReleaseSize) -> None:
    from indextts.gpt.model_v2 import UnifiedVoice

    gpt = UnifiedVoice(**cfg["gpt"])
    # GPT2Model's init leaves LayerNorms at identity and biases at 0; perturb every parameter a little so that
    # a random model's hidden states depend on all of them (a wrong key or a skipped bias would then show)
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if "speed_emb" in name:
                p.normal_(std=0.02)
            elif p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.02)
        _make_utterances_end(gpt, size.stop_spread)
    torch.save(gpt.state_dict(), root / "gpt.pth")


def _make_utterances_end(gpt: Any, spread: float = 1.8) -> None:
    """Give the stop token a state-dependent logit of mean 0 and std ``spread`` (see
    :func:`emoctl.backbones.random_weights.set_stop_logit`), over the GPT's states for random mel codes."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, gpt.number_mel_codes - 2, (4, 64), generator=g)
    states = gpt.final_norm(gpt.gpt(inputs_embeds=gpt.mel_embedding(tokens) + gpt.mel_pos_embedding(tokens)
                                    ).last_hidden_state).reshape(-1, gpt.model_dim)
    set_stop_logit(states, gpt.mel_head.weight, gpt.mel_head.bias, gpt.stop_mel_token, spread, g)


def _write_conditioning_tables(root: Path) -> None:
    n = sum(EMO_NUM)
    torch.save(torch.randn(n, 192), root / "feat1.pt")  # speaker styles (CAMPPlus space), one per emotion entry
    torch.save(torch.randn(n, 1280) * 0.1, root / "feat2.pt")  # emotion vectors in the GPT's width
    torch.save({"mean": torch.randn(1024) * 0.1, "var": torch.rand(1024) + 0.5}, root / "wav2vec2bert_stats.pt")


def _write_w2v_bert(folder: Path, size: RandomReleaseSize) -> None:
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    config = Wav2Vec2BertConfig(hidden_size=1024, num_hidden_layers=size.w2v_layers,
                                num_attention_heads=size.w2v_heads, intermediate_size=size.w2v_units)
    Wav2Vec2BertModel(config).save_pretrained(folder)
    SeamlessM4TFeatureExtractor().save_pretrained(folder)


def _write_campplus(path: Path) -> None:
    from indextts.s2mel.modules.campplus.DTDNN import CAMPPlus

    torch.save(CAMPPlus(feat_dim=80, embedding_size=192).state_dict(), path)


def _write_vocoder_chain(root: Path, cfg: dict[str, Any]) -> None:
    """s2mel.pth, the MaskGCT semantic codec and BigVGAN (written by emoctl.backbones.indextts2.vocoder's
    counterpart below)."""

    write_random_vocoder_chain(root, cfg)
