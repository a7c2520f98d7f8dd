"""IndexTTS2's speech side (emoctl.backbones.indextts2.vocoder) against upstream's own modules.

A random release folder (upstream's formats, upstream's constructors) is written once per session.  The
expected values are re-derived here step by step with upstream's classes loaded straight from the folder, as
``IndexTTS2._load_*``, ``_get_speaker_conditioning`` and ``infer_generator`` do, so the wrappers are shown
to add nothing to upstream's chain and to drop nothing from it.
"""
from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from emoctl.backbones.base import SpeechTokenizer
from emoctl.backbones.indextts2.release import RELEASE_FILES, ReleaseFolder
from emoctl.backbones.indextts2.vocoder import (DIFFUSION_STEPS, INFERENCE_CFG_RATE, S2MelVocoder, SemanticTokenizer,
                                                SpeakerReference)
from emoctl.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

RATE = 22050  # the recording's rate: upstream loads reference clips at 22050 Hz (librosa's default)
SECONDS = 2.0
N_CODES = 30


@pytest.fixture(scope="module")
def release(indextts2_release) -> ReleaseFolder:
    """The session's random release folder (conftest.py; written by write_random_release)."""
    return ReleaseFolder.open(indextts2_release)


@pytest.fixture(scope="module")
def recording() -> np.ndarray:
    """2 s of a rising chirp plus a little noise, at 22050 Hz."""
    t = np.arange(int(SECONDS * RATE)) / RATE
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * (150 * t + 300 * t ** 2)) + 0.02 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def tokenizer(release) -> SemanticTokenizer:
    return SemanticTokenizer.from_release(release)


@pytest.fixture(scope="module")
def vocoder(release, tokenizer) -> S2MelVocoder:
    return S2MelVocoder(release, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def upstream(release) -> SimpleNamespace:
    """The chain's models, loaded from the folder the way upstream's IndexTTS2._load_* load them."""
    import safetensors.torch
    from indextts.s2mel.modules.audio import mel_spectrogram
    from indextts.s2mel.modules.bigvgan import bigvgan
    from indextts.s2mel.modules.campplus.DTDNN import CAMPPlus
    from indextts.s2mel.modules.commons import MyModel, load_checkpoint2
    from indextts.utils.maskgct_utils import build_semantic_codec
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

    cfg = release.config
    w2v_dir = release.path("hf_cache/w2v-bert-2.0")
    stats = torch.load(release.path("wav2vec2bert_stats.pt"))
    codec = build_semantic_codec(cfg.semantic_codec)
    safetensors.torch.load_model(codec, str(release.path("hf_cache/semantic_codec_model.safetensors")))
    s2mel, _, _, _ = load_checkpoint2(MyModel(cfg.s2mel, use_gpt_latent=True), None, str(release.path("s2mel.pth")),
                                      load_only_params=True, ignore_modules=[], is_distributed=False)
    s2mel.models["cfm"].estimator.setup_caches(max_batch_size=1, max_seq_length=8192)
    campplus = CAMPPlus(feat_dim=80, embedding_size=192)
    campplus.load_state_dict(torch.load(release.path("hf_cache/campplus_cn_common.bin"), map_location="cpu"))
    vocoder = bigvgan.BigVGAN.from_pretrained(str(release.path("hf_cache/bigvgan")), use_cuda_kernel=False)
    vocoder.remove_weight_norm()
    return SimpleNamespace(
        extractor=SeamlessM4TFeatureExtractor.from_pretrained(str(w2v_dir)),
        w2v=Wav2Vec2BertModel.from_pretrained(str(w2v_dir)).eval(),
        mean=stats["mean"], std=torch.sqrt(stats["var"]), codec=codec.eval(), s2mel=s2mel.eval(),
        campplus=campplus.eval(), bigvgan=vocoder.eval(),
        # the released config's s2mel spect_params (fmax "None" -> None), uncentred, as upstream's mel_fn
        mel_fn=partial(mel_spectrogram, n_fft=1024, win_size=1024, hop_size=256, num_mels=80, sampling_rate=22050,
                       fmin=0, fmax=None, center=False))


@torch.no_grad()
def upstream_speaker(up: SimpleNamespace, wave: np.ndarray) -> dict[str, torch.Tensor]:
    """IndexTTS2._get_speaker_conditioning on a 22050 Hz clip, line by line."""
    import torchaudio

    audio = torch.tensor(wave).unsqueeze(0)
    audio_22k = torchaudio.transforms.Resample(RATE, 22050)(audio)
    audio_16k = torchaudio.transforms.Resample(RATE, 16000)(audio)
    inputs = up.extractor(audio_16k, sampling_rate=16000, return_tensors="pt")
    out = up.w2v(input_features=inputs["input_features"], attention_mask=inputs["attention_mask"],
                 output_hidden_states=True)
    spk_cond_emb = (out.hidden_states[17] - up.mean) / up.std
    codes, s_ref = up.codec.quantize(spk_cond_emb)
    ref_mel = up.mel_fn(audio_22k.float())
    feat = torchaudio.compliance.kaldi.fbank(audio_16k, num_mel_bins=80, dither=0, sample_frequency=16000)
    feat = feat - feat.mean(dim=0, keepdim=True)
    style = up.campplus(feat.unsqueeze(0))
    prompt_condition = up.s2mel.models["length_regulator"](s_ref, ylens=torch.LongTensor([ref_mel.size(2)]),
                                                           n_quantizers=3, f0=None)[0]
    return {"codes": codes, "style": style, "prompt_condition": prompt_condition, "ref_mel": ref_mel}


@torch.no_grad()
def upstream_synthesis(up: SimpleNamespace, speaker: dict, codes: torch.Tensor, latent: torch.Tensor,
                       seed: int) -> np.ndarray:
    """The s2mel + BigVGAN part of IndexTTS2.infer_generator, line by line, noise seeded globally."""
    codes = codes.unsqueeze(0)
    code_lens = torch.LongTensor([codes.shape[1]])
    latent = up.s2mel.models["gpt_layer"](latent)
    s_infer = up.codec.quantizer.vq2emb(codes.unsqueeze(1)).transpose(1, 2) + latent
    target_lengths = (code_lens * 1.72).long()
    cond = up.s2mel.models["length_regulator"](s_infer, ylens=target_lengths, n_quantizers=3, f0=None)[0]
    cat_condition = torch.cat([speaker["prompt_condition"], cond], dim=1)
    torch.manual_seed(seed)
    vc_target = up.s2mel.models["cfm"].inference(cat_condition, torch.LongTensor([cat_condition.size(1)]),
                                                 speaker["ref_mel"], speaker["style"], None, 25,
                                                 inference_cfg_rate=0.7)
    vc_target = vc_target[:, :, speaker["ref_mel"].size(-1):]
    wav = up.bigvgan(vc_target.float()).squeeze().unsqueeze(0)
    return torch.clamp(wav, -1.0, 1.0)[0].numpy()


@pytest.fixture(scope="module")
def clip(recording) -> np.ndarray:
    """The speaker reference of the vocoder tests: the recording's first second (keeps the DiT's input short)."""
    return recording[:RATE]


@pytest.fixture(scope="module")
def upstream_reference(upstream, clip) -> dict[str, torch.Tensor]:
    return upstream_speaker(upstream, clip)


@pytest.fixture(scope="module")
def codes_and_latent() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 8192, (N_CODES,), generator=g), torch.randn(1, N_CODES, 1280, generator=g)


def clone_release(release: ReleaseFolder, folder: Path, replace: dict[str, bytes | None]) -> ReleaseFolder:
    """A folder of links to ``release``'s files, with the files in ``replace`` written anew (None: left out)."""
    for name in RELEASE_FILES:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name not in replace:
            target.symlink_to(release.path(name))
        elif replace[name] is not None:
            target.write_bytes(replace[name])
    return ReleaseFolder(folder)


# ---------------------------------------------------------------- tokenizer
def test_tokenizer_gives_upstream_codes_at_w2v_bert_frame_rate(tokenizer, recording, upstream):
    codes = tokenizer.encode(recording, RATE)
    # w2v-BERT's feature extractor: 25 ms fbank frames every 10 ms of the 16 kHz audio, stacked in pairs
    samples_16k = int(SECONDS * 16000)
    assert codes.shape == (((1 + (samples_16k - 400) // 160) // 2),) == (99,)
    assert codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 8192
    assert len(set(codes.tolist())) > 20  # a random codec still spreads a chirp over many codes
    upstream_codes = upstream_speaker(upstream, recording)["codes"]  # semantic_codec.quantize(spk_cond_emb)
    assert torch.equal(codes, upstream_codes.reshape(-1))
    assert torch.equal(tokenizer.encode(recording, RATE), codes)
    assert isinstance(tokenizer, SpeechTokenizer)


def test_tokenizer_resamples_other_rates(tokenizer, recording):
    import torchaudio

    at_16k = torchaudio.transforms.Resample(RATE, 16000)(torch.tensor(recording).unsqueeze(0))[0].numpy()
    assert torch.equal(tokenizer.encode(at_16k, 16000), tokenizer.encode(recording, RATE))


def test_tokenizer_digest_is_stable_and_follows_the_codec(release, tokenizer, tmp_path):
    digest = tokenizer.digest
    assert isinstance(digest, str) and len(digest) == 32 and int(digest, 16) >= 0
    assert SemanticTokenizer.from_release(release).digest == digest
    codec = bytearray(release.path("hf_cache/semantic_codec_model.safetensors").read_bytes())
    codec[-1] ^= 1  # one bit of one weight
    changed = clone_release(release, tmp_path, {"hf_cache/semantic_codec_model.safetensors": bytes(codec)})
    assert SemanticTokenizer.from_release(changed).digest != digest


def test_tokenizer_refuses_what_upstream_would_cut(tokenizer):
    with pytest.raises(ConfigError, match="at most 15 s"):
        tokenizer.encode(np.zeros(16 * 16000, np.float32), 16000)


def test_pickled_tokenizer_gives_the_same_codes(tokenizer, recording):
    codes = tokenizer.encode(recording, RATE)  # models loaded before pickling
    blob = pickle.dumps(tokenizer)
    assert len(blob) < 100_000  # paths and config only: the loaded models stay behind
    clone = pickle.loads(blob)
    assert clone.digest == tokenizer.digest
    assert torch.equal(clone.encode(recording, RATE), codes)


# ------------------------------------------------------------------ vocoder
@pytest.fixture(scope="module")
def seeded_audio(vocoder, clip, codes_and_latent) -> np.ndarray:
    codes, latent = codes_and_latent
    return vocoder.synthesize(codes, latent, vocoder.reference(clip, RATE), seed=11)


def test_reference_is_upstream_speaker_conditioning(vocoder, clip, upstream_reference):
    ref = vocoder.reference(clip, RATE)
    assert isinstance(ref, SpeakerReference)
    frames = 1 + (clip.size + 2 * 384 - 1024) // 256  # uncentred STFT after (n_fft - hop) / 2 reflect padding
    assert ref.ref_mel.shape == (1, 80, frames) and ref.frames == frames == 86
    assert ref.prompt_condition.shape == (1, frames, 512)
    assert ref.style.shape == (1, 192)
    for name in ("style", "prompt_condition", "ref_mel"):
        torch.testing.assert_close(getattr(ref, name), upstream_reference[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vocoder.style(clip, RATE), upstream_reference["style"], rtol=1e-5, atol=1e-5)


def test_synthesize_is_upstream_chain(vocoder, seeded_audio, upstream, upstream_reference, codes_and_latent):
    codes, latent = codes_and_latent
    assert (vocoder.diffusion_steps, vocoder.inference_cfg_rate) == (DIFFUSION_STEPS, INFERENCE_CFG_RATE) == (25, 0.7)
    audio = seeded_audio
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32 and audio.ndim == 1
    # int(30 * 1.72) = 51 mel frames past the reference, BigVGAN's 256 samples a frame
    assert audio.size == int(N_CODES * 1.72) * 256 == 51 * 256 == vocoder.mel_frames(N_CODES) * 256
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert float(np.sqrt(np.mean(audio ** 2))) > 1e-3
    expected = upstream_synthesis(upstream, upstream_reference, codes, latent, seed=11)
    np.testing.assert_allclose(audio, expected, rtol=0, atol=1e-5)


def test_seed_fixes_the_noise_without_touching_the_callers_rng(vocoder, clip, seeded_audio, codes_and_latent):
    codes, latent = codes_and_latent
    ref = vocoder.reference(clip, RATE)
    torch.manual_seed(11)
    state = torch.get_rng_state()
    np.testing.assert_array_equal(vocoder.synthesize(codes, latent, ref, seed=11), seeded_audio)
    assert torch.equal(torch.get_rng_state(), state)
    # no seed: the noise comes from torch's global RNG, as upstream's; seeded alike, it is the same noise
    np.testing.assert_array_equal(vocoder.synthesize(codes, latent, ref), seeded_audio)
    assert not torch.equal(torch.get_rng_state(), state)


def test_synthesize_refuses_bad_inputs(vocoder, clip, codes_and_latent):
    codes, latent = codes_and_latent
    ref = SpeakerReference(torch.zeros(1, 192), torch.zeros(1, 4, 512), torch.zeros(1, 80, 4))
    with pytest.raises(ConfigError, match="start and stop tokens"):
        vocoder.synthesize(torch.cat([codes, torch.tensor([8193])]), torch.randn(1, N_CODES + 1, 1280), ref)
    with pytest.raises(ConfigError, match=r"\(1, 30, 1280\)"):
        vocoder.synthesize(codes, latent[:, :-1], ref)
    with pytest.raises(ConfigError, match="SpeakerReference"):
        vocoder.synthesize(codes, latent, {"style": ref.style})
    with pytest.raises(ConfigError, match="at least"):
        vocoder.reference(clip[:100], RATE)


# ------------------------------------------------------------------ errors
def test_corrupt_or_missing_s2mel_checkpoint_names_the_file(release, tmp_path):
    good = release.path("s2mel.pth").read_bytes()
    corrupt = clone_release(release, tmp_path / "corrupt", {"s2mel.pth": good[:4096]})
    with pytest.raises(ConfigError, match="cannot read") as err:
        S2MelVocoder(corrupt).s2mel
    assert str(corrupt.path("s2mel.pth")) in str(err.value)

    missing = clone_release(release, tmp_path / "missing", {"s2mel.pth": None})
    with pytest.raises(ConfigError, match="s2mel.pth"):
        ReleaseFolder.open(missing.root)
    with pytest.raises(ConfigError, match="is missing") as err:
        S2MelVocoder(missing).s2mel
    assert str(missing.path("s2mel.pth")) in str(err.value)


def test_s2mel_checkpoint_with_other_keys_is_refused(release, tmp_path):
    """Upstream's load_checkpoint2 would skip these silently and leave random DiT weights."""
    net = torch.load(release.path("s2mel.pth"))["net"]
    del net["gpt_layer"]
    net["cfm"]["estimator.x_embedder.bias"] = torch.zeros(7)
    path = tmp_path / "mismatch.pth"
    torch.save({"net": net}, path)
    mismatch = clone_release(release, tmp_path / "mismatch", {"s2mel.pth": path.read_bytes()})
    with pytest.raises(ConfigError, match="does not match config.yaml") as err:
        S2MelVocoder(mismatch).s2mel
    message = str(err.value)
    assert str(mismatch.path("s2mel.pth")) in message
    assert "'gpt_layer' is absent" in message and "estimator.x_embedder.bias is (7,)" in message


@pytest.mark.parametrize("name, load", [
    ("hf_cache/semantic_codec_model.safetensors", lambda release: SemanticTokenizer.from_release(release).codec),
    ("hf_cache/campplus_cn_common.bin", lambda release: S2MelVocoder(release).campplus),
    ("hf_cache/bigvgan/bigvgan_generator.pt", lambda release: S2MelVocoder(release).bigvgan),
])
def test_corrupt_auxiliary_model_names_the_file(release, tmp_path, name, load):
    broken = clone_release(release, tmp_path, {name: release.path(name).read_bytes()[:2048]})
    with pytest.raises(ConfigError, match="copy") as err:
        load(broken)
    assert str(broken.path(name).parent) in str(err.value)
