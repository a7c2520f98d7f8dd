"""IndexTTS2's speech side: a recording's semantic tokens, and tokens plus GPT latents back to a waveform.

The GPT speaks MaskGCT semantic codes (RepCodec on standardized w2v-BERT features, about 50 a second), and
IndexTTS2 turns them into sound in three stages that upstream's ``IndexTTS2.infer_generator`` runs after the
GPT: the s2mel flow-matching model (DiT) turns codes plus GPT latents into an 80-band mel conditioned on the
speaker's reference mel and CAMPPlus style, and BigVGAN turns the mel into 22.05 kHz audio.  This module
builds those stages with upstream's own classes from the release folder (``release.py``) and runs them in
upstream's order with upstream's constants, so a clip vocoded here is the clip upstream would produce; it
adds input checks and errors a user can act on, and nothing else.

Everything loads on first use, so the objects are cheap to build and picklable (data-module workers hold a
:class:`SemanticTokenizer`).
"""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from emoctl.backbones.checkpoint_files import load_torch_file
from emoctl.backbones.indextts2.features import (HIDDEN_STATE, MAX_REFERENCE_SECONDS, W2V_SAMPLE_RATE,
                                                 SemanticFeatures, SpeakerStyle, check_wave, resample)
from emoctl.backbones.indextts2.release import RELEASE_FILES, ReleaseFolder, digest_files
from emoctl.errors import ConfigError, first_line
from emoctl.numerics import private_rng

SAMPLE_RATE = 22050  # upstream's s2mel/BigVGAN rate (infer_generator's sampling_rate)
DIFFUSION_STEPS = 25  # upstream's infer_generator constants
INFERENCE_CFG_RATE = 0.7
CODES_TO_MEL = 1.72  # mel frames per semantic code: (22050 / 256) / 50
GPT_LATENT_DIM = 1280  # s2mel's gpt_layer takes the GPT's 1280-wide hidden states
MIN_REFERENCE_SECONDS = 0.25  # shorter clips break the fbank / mel frames upstream computes

S2MEL = "s2mel.pth"
CODEC = "hf_cache/semantic_codec_model.safetensors"
CAMPPLUS = "hf_cache/campplus_cn_common.bin"
BIGVGAN_DIR = "hf_cache/bigvgan"
W2V_DIR = "hf_cache/w2v-bert-2.0"



def _bigvgan_package_config() -> Path:
    """The BigVGAN config.json upstream ships beside its BigVGAN code (nvidia/bigvgan_v2_22khz_80band_256x)."""
    from indextts.s2mel.modules.bigvgan import bigvgan

    return Path(bigvgan.__file__).parent / "config.json"


def _perturb_(module: torch.nn.Module, std: float = 0.02) -> None:
    """Give zero-initialized parameters and every bias/norm vector random values.

    Upstream's inits leave biases, norms and some projections at constants; a random checkpoint then
    hides a wrong key or a dropped bias.  Perturbing every parameter makes each one show in the output."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(std=std)
            elif p.ndim == 1:
                p.add_(torch.randn_like(p) * std)


def write_random_vocoder_chain(root: Path, cfg: dict[str, Any]) -> None:
    """Write random s2mel, semantic codec and BigVGAN weights into ``root`` in the formats upstream loads.

    ``s2mel.pth`` is ``{"net": {module: state_dict}}`` of ``MyModel(cfg["s2mel"], use_gpt_latent=True)`` (what
    ``load_checkpoint2`` reads), the codec a ``safetensors.torch.save_model`` file of ``RepCodec``, and BigVGAN
    the package's config.json beside ``{"generator": state_dict}`` (what ``BigVGAN.from_pretrained`` reads).
    Draws from torch's global RNG, so a seeded caller gets the same files every time."""
    import safetensors.torch
    from indextts.s2mel.modules.bigvgan import bigvgan
    from indextts.s2mel.modules.commons import MyModel
    from indextts.utils.maskgct_utils import build_semantic_codec
    from omegaconf import OmegaConf

    root = Path(root)
    conf = OmegaConf.create(cfg)
    (root / BIGVGAN_DIR).mkdir(parents=True, exist_ok=True)

    s2mel = MyModel(conf.s2mel, use_gpt_latent=True)
    _perturb_(s2mel)
    torch.save({"net": {name: module.state_dict() for name, module in s2mel.models.items()}}, root / S2MEL)

    codec = build_semantic_codec(conf.semantic_codec)
    _perturb_(codec)
    safetensors.torch.save_model(codec, str(root / CODEC))

    shutil.copyfile(_bigvgan_package_config(), root / BIGVGAN_DIR / "config.json")
    vocoder = bigvgan.BigVGAN(bigvgan.load_hparams_from_json(root / BIGVGAN_DIR / "config.json"))
    _perturb_(vocoder)  # with BigVGAN's own init this gives audio of RMS 0.03-0.05 from a speech-like log-mel
    torch.save({"generator": vocoder.state_dict()}, root / BIGVGAN_DIR / "bigvgan_generator.pt")


class SemanticTokenizer:
    """A recording to IndexTTS2's speech tokens: ``RepCodec.quantize`` codes of its w2v-BERT features.

    These are the codes the GPT generates and reads (upstream's ``semantic_codec.quantize(spk_cond_emb)``),
    so corpora tokenized with it can teacher-force the GPT.  Picklable; the models load on first use."""

    def __init__(self, codec_path: str | Path, codec_config: Mapping[str, Any], w2v_dir: str | Path,
                 stats_path: str | Path, device: str | torch.device = "cpu",
                 features: SemanticFeatures | None = None) -> None:
        """``features``: share a loaded w2v-BERT front end (the backbone's) instead of loading another."""
        from omegaconf import DictConfig, OmegaConf

        if isinstance(codec_config, DictConfig):
            codec_config = OmegaConf.to_container(codec_config, resolve=True)
        self.codec_path = str(codec_path)
        self.codec_config: dict[str, Any] = dict(codec_config)
        self.features = features if features is not None else SemanticFeatures(w2v_dir, stats_path, device)
        self.device = torch.device(device)
        self._codec: Any = None
        self._digest: str | None = None

    @classmethod
    def from_release(cls, release: ReleaseFolder, device: str | torch.device = "cpu",
                     features: SemanticFeatures | None = None) -> SemanticTokenizer:
        return cls(release.path(CODEC), release.config.semantic_codec, release.path(W2V_DIR),
                   release.file("w2v_stat"), device, features)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_codec": None}

    def to(self, device: str | torch.device) -> SemanticTokenizer:
        self.device = torch.device(device)
        self.features.to(self.device)
        if self._codec is not None:
            self._codec = self._codec.to(self.device)
        return self

    @property
    def digest(self) -> str:
        """blake2b of everything the codes depend on: codec weights and config, w2v-BERT model, its stats and
        feature extractor, and the hidden state read.  Hashed once per object (the w2v-BERT file is GBs)."""
        if self._digest is None:
            w2v = Path(self.features.w2v_dir)
            extra = json.dumps({"codec": self.codec_config, "hidden_state": HIDDEN_STATE}, sort_keys=True).encode()
            files = [Path(self.codec_path), Path(self.features.stats_path), w2v / "model.safetensors",
                     w2v / "config.json", w2v / "preprocessor_config.json"]
            self._digest = digest_files(((f.name, f) for f in files), extra)
        return self._digest

    @property
    def codec(self) -> Any:
        """Upstream's ``RepCodec`` (``build_semantic_codec``) with the release's weights, loaded as upstream does."""
        if self._codec is None:
            import safetensors.torch
            from indextts.utils.maskgct_utils import build_semantic_codec
            from omegaconf import OmegaConf

            path = Path(self.codec_path)
            if not path.is_file():
                raise ConfigError(f"the IndexTTS2 semantic codec {path} is missing; copy semantic_codec/"
                                  "model.safetensors of amphion/MaskGCT there (hf_cache/ of the checkpoint folder).")
            with private_rng():
                codec = build_semantic_codec(OmegaConf.create(self.codec_config))
            try:
                safetensors.torch.load_model(codec, str(path))
            except Exception as err:  # safetensors raises its own error type for a corrupt file
                raise ConfigError(
                    f"cannot load the IndexTTS2 semantic codec {path}: {first_line(err)}. It must be "
                    "semantic_codec/model.safetensors of amphion/MaskGCT, matching config.yaml's semantic_codec "
                    "section; copy that file there again.") from None
            self._codec = codec.eval().requires_grad_(False).to(self.device)
        return self._codec

    @torch.no_grad()
    def quantize(self, wave: np.ndarray, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Upstream's speaker-side codec pass: ``(spk_cond_emb (1, T, 1024), codes (1, T), S_ref (1, T, 1024))``,
        where ``codes, S_ref = semantic_codec.quantize(spk_cond_emb)``."""
        emb = self.features(wave, sample_rate)
        codes, quantized = self.codec.quantize(emb)
        return emb, codes, quantized

    def encode(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        """(T,) int64 semantic codes of one mono recording, on the CPU.

        Upstream cuts every clip it hears to 15 s (right for a speaker reference); tokens of a training target
        cut short would no longer match its text, so a longer recording is refused instead."""
        if sample_rate > 0 and np.asarray(wave).size > MAX_REFERENCE_SECONDS * sample_rate:
            raise ConfigError(f"IndexTTS2 speech tokens: the recording lasts {np.asarray(wave).size / sample_rate:.1f}"
                              f" s and the w2v-BERT front end reads at most {MAX_REFERENCE_SECONDS:g} s (upstream "
                              "cuts longer clips); split it or leave it out of the corpus.")
        _, codes, _ = self.quantize(wave, sample_rate)
        return codes.reshape(-1).to("cpu", torch.int64)


@dataclass(frozen=True)
class SpeakerReference:
    """The speaker side of upstream's s2mel inputs (``_get_speaker_conditioning``), computed once per clip."""

    style: torch.Tensor  # (1, 192) CAMPPlus embedding of the 16 kHz clip
    prompt_condition: torch.Tensor  # (1, F, 512) length-regulated semantic features of the clip
    ref_mel: torch.Tensor  # (1, 80, F) mel of the 22.05 kHz clip; the DiT continues it

    @property
    def frames(self) -> int:
        return int(self.ref_mel.shape[-1])


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the RNG that s2mel's noise comes from (``CFM.inference`` draws ``torch.randn`` from the global
    generator of the device) inside a fork, so the caller's RNG state is left as it was."""
    if seed is None:
        yield
        return
    devices = [] if device.type == "cpu" else [device]
    with torch.random.fork_rng(devices=devices, device_type="cuda" if device.type == "cpu" else device.type):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif device.type != "cpu":
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet_sampler() -> Iterator[None]:
    """Upstream's flow-matching sampler prints a 25-step progress bar for every clip; a report that vocodes
    hundreds of clips shows its own bar, so the sampler's is silenced while it runs (its steps are unchanged)."""
    import indextts.s2mel.modules.flow_matching as flow_matching

    original = flow_matching.tqdm
    flow_matching.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        flow_matching.tqdm = original


class S2MelVocoder:
    """Semantic codes and GPT latents to a 22.05 kHz waveform, with upstream's s2mel, CAMPPlus and BigVGAN.

    ``reference(wave, rate)`` computes a speaker clip's conditioning once; ``synthesize(codes, latent,
    reference)`` runs upstream's chain for one utterance.  Models load on first use."""

    sample_rate: int = SAMPLE_RATE

    def __init__(self, release: ReleaseFolder, device: str | torch.device = "cpu", *,
                 diffusion_steps: int = DIFFUSION_STEPS, inference_cfg_rate: float = INFERENCE_CFG_RATE,
                 tokenizer: SemanticTokenizer | None = None, style: SpeakerStyle | None = None) -> None:
        if int(diffusion_steps) < 1:
            raise ConfigError(f"diffusion_steps must be at least 1, got {diffusion_steps} (upstream uses "
                              f"{DIFFUSION_STEPS}).")
        if not float(inference_cfg_rate) >= 0:
            raise ConfigError(f"inference_cfg_rate must be >= 0, got {inference_cfg_rate} (upstream uses "
                              f"{INFERENCE_CFG_RATE}; 0 turns classifier-free guidance off).")
        self.release = release
        self.device = torch.device(device)
        self.diffusion_steps = int(diffusion_steps)
        self.inference_cfg_rate = float(inference_cfg_rate)
        # the speaker side needs the codec and w2v-BERT too: share the GPT adapter's tokenizer where it has one
        self.tokenizer = tokenizer if tokenizer is not None else SemanticTokenizer.from_release(release, device)
        mine, theirs = self.device, self.tokenizer.device
        if mine.type != theirs.type or (None not in (mine.index, theirs.index) and mine.index != theirs.index):
            raise ConfigError(f"the shared SemanticTokenizer runs on {self.tokenizer.device} and the vocoder on "
                              f"{self.device}; build both on one device (tokenizer.to(device) moves it).")
        # CAMPPlus too: share the GPT adapter's (it picks emotion-table rows by the same style)
        self.speaker_style = style if style is not None else SpeakerStyle(release.path(CAMPPLUS), device)
        self._s2mel: Any = None
        self._bigvgan: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_s2mel": None, "_bigvgan": None}

    # ------------------------------------------------------------------ models
    @property
    def s2mel(self) -> Any:
        """Upstream's ``MyModel(cfg.s2mel, use_gpt_latent=True)``, loaded as ``load_checkpoint2`` loads it but
        weights-only, caches set up."""
        if self._s2mel is None:
            from indextts.s2mel.modules.commons import MyModel

            path = self.release.file("s2mel_checkpoint")
            with private_rng():
                model = MyModel(self.release.config.s2mel, use_gpt_latent=True)
            net = _check_s2mel_checkpoint(path, model)
            _load_s2mel_weights(model, net)
            model = model.to(self.device)
            model.models["cfm"].estimator.setup_caches(max_batch_size=1, max_seq_length=8192)
            self._s2mel = model.eval().requires_grad_(False)
        return self._s2mel

    @property
    def campplus(self) -> Any:
        """Upstream's CAMPPlus speaker encoder (the s2mel style) with the release's weights."""
        return self.speaker_style.campplus

    @property
    def bigvgan(self) -> Any:
        """Upstream's BigVGAN from the local ``hf_cache/bigvgan`` folder, weight norm removed, as upstream runs it."""
        if self._bigvgan is None:
            from indextts.s2mel.modules.bigvgan import bigvgan

            folder = self.release.path(BIGVGAN_DIR)
            try:
                hparams = bigvgan.load_hparams_from_json(folder / "config.json")
                with private_rng():
                    model = bigvgan.BigVGAN(hparams, use_cuda_kernel=False)
                _load_bigvgan_weights(model, folder / "bigvgan_generator.pt")
            except Exception as err:  # missing/corrupt generator file or a config that does not match it
                raise ConfigError(
                    f"cannot load BigVGAN from {folder}: {first_line(err)}. The folder must hold config.json and "
                    "bigvgan_generator.pt of nvidia/bigvgan_v2_22khz_80band_256x; copy both there again.") from None
            model = model.to(self.device)
            model.remove_weight_norm()
            self._bigvgan = model.eval().requires_grad_(False)
        return self._bigvgan

    def _mel(self, audio_22k: torch.Tensor) -> torch.Tensor:
        """Upstream's ``mel_fn``: ``mel_spectrogram`` with config.yaml's s2mel spect_params, uncentred."""
        from indextts.s2mel.modules.audio import mel_spectrogram

        pre = self.release.config.s2mel["preprocess_params"]
        spect = pre["spect_params"]
        return mel_spectrogram(audio_22k, n_fft=spect["n_fft"], win_size=spect["win_length"],
                               hop_size=spect["hop_length"], num_mels=spect["n_mels"], sampling_rate=pre["sr"],
                               fmin=spect.get("fmin", 0),
                               fmax=None if spect.get("fmax", "None") == "None" else 8000, center=False)

    # ----------------------------------------------------------------- speaker
    @staticmethod
    def _check_reference(wave: np.ndarray, rate: int) -> np.ndarray:
        wave = check_wave(wave, rate, "IndexTTS2 speaker reference")
        if wave.size < MIN_REFERENCE_SECONDS * rate:
            raise ConfigError(f"IndexTTS2 speaker reference: the clip lasts {wave.size / rate:.3f} s; give at least "
                              f"{MIN_REFERENCE_SECONDS} s of the speaker (upstream uses up to 15 s).")
        return wave

    @torch.no_grad()
    def style(self, wave: np.ndarray, sample_rate: int) -> torch.Tensor:
        """(1, 192) CAMPPlus style of a speaker clip (the GPT adapter picks emotion-matrix rows by it)."""
        wave = self._check_reference(wave, sample_rate)
        return self.speaker_style.from_16k(resample(wave, sample_rate, W2V_SAMPLE_RATE))

    @torch.no_grad()
    def reference(self, wave: np.ndarray, sample_rate: int) -> SpeakerReference:
        """A speaker clip's s2mel conditioning, computed as upstream's ``_get_speaker_conditioning`` does."""
        wave = self._check_reference(wave, sample_rate)
        audio_22k = resample(wave, sample_rate, SAMPLE_RATE).to(self.device)
        audio_16k = resample(wave, sample_rate, W2V_SAMPLE_RATE).to(self.device)
        _, _, s_ref = self.tokenizer.quantize(wave, sample_rate)
        ref_mel = self._mel(audio_22k.float())
        ref_target_lengths = torch.LongTensor([ref_mel.size(2)]).to(self.device)
        style = self.speaker_style.from_16k(audio_16k)
        prompt_condition = self.s2mel.models["length_regulator"](s_ref, ylens=ref_target_lengths, n_quantizers=3,
                                                                 f0=None)[0]
        return SpeakerReference(style=style, prompt_condition=prompt_condition, ref_mel=ref_mel)

    # --------------------------------------------------------------- synthesis
    @staticmethod
    def mel_frames(n_codes: int) -> int:
        """Mel frames upstream's chain makes of ``n_codes`` codes (``(code_lens * 1.72).long()``, float32)."""
        return int((torch.LongTensor([n_codes]) * CODES_TO_MEL).long())

    def _check_inputs(self, codes: torch.Tensor, latent: torch.Tensor, reference: SpeakerReference) -> None:
        if not isinstance(reference, SpeakerReference):
            raise ConfigError(f"synthesize needs the SpeakerReference that S2MelVocoder.reference(wave, rate) "
                              f"returns, got {type(reference).__name__}.")
        if not isinstance(codes, torch.Tensor) or codes.ndim != 1 or codes.numel() == 0 \
                or codes.dtype not in (torch.int64, torch.int32):
            what = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ConfigError(f"synthesize needs a non-empty 1-D integer tensor of semantic codes, got {what}.")
        size = int(self.tokenizer.codec_config.get("codebook_size", 8192))
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= size:
            raise ConfigError(f"semantic codes must lie in [0, {size}), got values in [{low}, {high}]; strip the "
                              "GPT's start and stop tokens before vocoding.")
        if not isinstance(latent, torch.Tensor) or tuple(latent.shape) != (1, codes.numel(), GPT_LATENT_DIM):
            shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
            raise ConfigError(f"synthesize needs the GPT latent of shape (1, {codes.numel()}, {GPT_LATENT_DIM}) for "
                              f"{codes.numel()} codes (the GPT's forward over them), got {shape}.")
        if not torch.isfinite(latent).all():
            raise ConfigError("the GPT latent passed to synthesize has NaN or Inf values.")

    @torch.no_grad()
    def synthesize(self, codes: torch.Tensor, latent: torch.Tensor, reference: SpeakerReference,
                   seed: int | None = None) -> np.ndarray:
        """Float32 mono audio at :attr:`sample_rate` for one utterance, by upstream's s2mel + BigVGAN chain.

        ``codes`` (T,) are the GPT's semantic codes without start/stop tokens, ``latent`` (1, T, 1280) its
        hidden states over them.  The flow-matching sampler starts from Gaussian noise: ``seed`` fixes it
        (without touching the caller's RNG); None draws from torch's global RNG, as upstream does."""
        self._check_inputs(codes, latent, reference)
        s2mel, codec, vocoder = self.s2mel, self.tokenizer.codec, self.bigvgan
        dev = self.device
        codes = codes.to(dev, torch.long).unsqueeze(0)  # (1, T) as upstream's codes
        code_lens = torch.LongTensor([codes.shape[1]]).to(dev)
        latent = s2mel.models["gpt_layer"](latent.to(dev, torch.float32))  # upstream: autocast off here
        s_infer = codec.quantizer.vq2emb(codes.unsqueeze(1)).transpose(1, 2)
        s_infer = s_infer + latent
        target_lengths = (code_lens * CODES_TO_MEL).long()
        cond = s2mel.models["length_regulator"](s_infer, ylens=target_lengths, n_quantizers=3, f0=None)[0]
        cat_condition = torch.cat([reference.prompt_condition, cond], dim=1)
        with _seeded(seed, dev), _quiet_sampler():
            vc_target = s2mel.models["cfm"].inference(
                cat_condition, torch.LongTensor([cat_condition.size(1)]).to(dev), reference.ref_mel,
                reference.style, None, self.diffusion_steps, inference_cfg_rate=self.inference_cfg_rate)
        vc_target = vc_target[:, :, reference.ref_mel.size(-1):]
        wav = vocoder(vc_target.float()).squeeze().unsqueeze(0)
        wav = torch.clamp(wav, -1.0, 1.0)
        return wav.reshape(-1).to("cpu", torch.float32).numpy()


def _load_bigvgan_weights(model: Any, path: Path) -> None:
    """What upstream's ``BigVGAN.from_pretrained`` does with a local folder's generator file, but read
    weights-only (upstream calls ``torch.load`` with torch's default, which an environment variable can turn
    into full unpickling)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("generator"), dict):
        raise ValueError(f"{path.name} has no 'generator' state dict")
    try:
        model.load_state_dict(checkpoint["generator"])
    except RuntimeError:  # upstream's fallback: a generator saved with weight norm already removed
        model.remove_weight_norm()
        model.load_state_dict(checkpoint["generator"])


def _load_s2mel_weights(model: Any, net: dict[str, Any]) -> None:
    """Upstream's ``load_checkpoint2(model, None, path, load_only_params=True)`` on the ``net`` dict that
    :func:`_check_s2mel_checkpoint` read weights-only: DDP's ``module.`` prefix stripped, every key of the
    module's state of the same shape loaded (``strict=False``), then eval mode."""
    for name, module in model.models.items():
        if name not in net:
            continue
        stored = {k.removeprefix("module."): v for k, v in net[name].items()}
        own = module.state_dict()
        module.load_state_dict({k: v for k, v in stored.items() if k in own and v.shape == own[k].shape},
                               strict=False)
    model.eval()


def _check_s2mel_checkpoint(path: Path, model: Any) -> dict[str, Any]:
    """Refuse an s2mel.pth that upstream's ``load_checkpoint2`` would load only in part.

    ``load_checkpoint2`` silently skips missing modules, missing keys and shape mismatches (``strict=False``),
    which leaves random weights in the DiT and yields noise; this names the file and what does not match.
    Returns the file's ``net`` dict (read weights-only), for :func:`_load_s2mel_weights`."""
    fix = (f"Copy s2mel.pth of {RELEASE_FILES['s2mel.pth']} there again, next to the config.yaml of the same "
           "release (its s2mel section fixes the model's shapes).")
    if not path.is_file():
        raise ConfigError(f"the IndexTTS2 s2mel checkpoint {path} is missing. {fix}")
    # mmap reads only the key list of a large file; old pickles need the slow path
    state = load_torch_file(path, f"cannot read the IndexTTS2 s2mel checkpoint {path}", fix, mmap=True)
    net = state.get("net") if isinstance(state, dict) else None
    if not isinstance(net, dict):
        raise ConfigError(f"the IndexTTS2 s2mel checkpoint {path} has no 'net' dict of module weights, so it is "
                          f"not an s2mel checkpoint. {fix}")
    problems = []
    for name, module in model.models.items():
        if name not in net:
            problems.append(f"module '{name}' is absent")
            continue
        stored = {k.removeprefix("module."): v for k, v in net[name].items()}  # load_checkpoint2 strips DDP's
        for key, param in module.named_parameters():
            if key not in stored:
                problems.append(f"{name}.{key} is absent")
            elif tuple(stored[key].shape) != tuple(param.shape):
                problems.append(f"{name}.{key} is {tuple(stored[key].shape)}, config.yaml implies "
                                f"{tuple(param.shape)}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ConfigError(f"the IndexTTS2 s2mel checkpoint {path} does not match config.yaml's s2mel section: "
                          f"{shown}. {fix}")
    return net
