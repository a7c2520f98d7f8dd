"""``CosyVoiceInstruct``: the released CosyVoice-300M-Instruct LLM (upstream's ``TransformerLM``) behind emoctl's
backbone contract.

What the adapter adds to upstream, and why:

* **The sequence inference sees, in training too.**  Upstream's ``TransformerLM.forward`` (its training pass)
  puts a speaker embedding after ``sos`` and has no instruction; its instruct inference
  (``frontend_instruct``) drops the speaker embedding and prepends ``instruction<endofprompt>`` to the text.
  :meth:`teacher_forced` builds the inference layout ``[sos][enc(instruction + text)][task][speech]``, so an
  EmoSteer layer trained on it meets the same states when it steers generation.
* **Batched, KV-cached decoding** over upstream's modules (its embedding, encoder layers and final norm are
  called directly): left-padded prompts with per-row masks, one cached position per row and step, and
  upstream's repetition-aware sampling per row with the row's own generator (:mod:`.ras`), so prompt b of a
  seeded batch equals that prompt decoded alone with seed + b, and a batch of one equals upstream's
  ``TransformerLM.inference`` under ``torch.manual_seed(seed)``.
* **Conditioning as data** (:mod:`.family`, shared with CosyVoice2).  Emotion is an :class:`InstructText` (ESD's
  emotions map to the instructions the loader was given, ``family.DEFAULT_INSTRUCTIONS`` otherwise); the voice
  is a ``spk2info`` name or a reference clip (CAMPPlus x-vector).  The LLM hears no voice in instruct mode; the
  flow does.
* **Steering from outside.**  ``llm.pt`` loads strictly into the unmodified LLM; steering layers act through
  hooks on ``llm.encoders[L]`` (``resid_pre.L``), the output of its ``self_attn`` (``attn_out.L``) and
  ``llm_decoder`` (``lm_out``: (B, T, d) when teacher forced, (B, d) at every generation step, as upstream calls
  it).
"""
from __future__ import annotations

import logging
from typing import ClassVar, Mapping, Sequence

import torch
from torch import nn

from emoctl.numerics import private_rng
from emoctl.backbones.base import Generation, Prompt, TeacherForcedOutput, lockstep_decode_rows
from emoctl.backbones.conditions import VoiceClip, VoiceName
from emoctl.backbones.cosyvoice_instruct import ras
from emoctl.backbones.cosyvoice_instruct.family import CosyVoiceFamily
from emoctl.backbones.cosyvoice_instruct.release import CosyVoiceRelease, digest_files
from emoctl.backbones.cosyvoice_instruct.speech_models import CampPlus, OnnxSpeechTokenizer
from emoctl.backbones.cosyvoice_instruct.vocoder import FlowHiftVocoder
from emoctl.backbones.checkpoint_files import load_torch_file
from emoctl.backbones.hooks import HookManager, Phase
from emoctl.backbones.sampling import Sampling
from emoctl.errors import ConfigError
from emoctl.backbones.cosyvoice_instruct.upstream import require_cosyvoice

log = logging.getLogger(__name__)

#: the marker upstream's instruct front end (``frontend_instruct``) appends to the instruction
END_OF_PROMPT = "<endofprompt>"
MIN_TOKEN_TEXT_RATIO = 2  # upstream's inference: at least 2 speech tokens per text token ...
MAX_TOKEN_TEXT_RATIO = 20  # ... and at most 20
SAMPLE_RATE = 22050  # flow and HiFT


class CosyVoiceInstruct(CosyVoiceFamily):
    """CosyVoice-300M-Instruct's LLM with its text tokenizer, speech tokenizer, CAMPPlus, flow and HiFT."""

    kind: ClassVar[str] = "cosyvoice"
    voice_kinds: ClassVar[tuple[str, ...]] = (VoiceClip.kind, VoiceName.kind)
    end_of_prompt: ClassVar[str] = END_OF_PROMPT

    def __init__(self, release: CosyVoiceRelease, device: str | torch.device = "cpu", *,
                 instructions: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.release = release
        cfg = release.config
        for key in ("flow", "hift"):  # the vocoder builds them later: check them now, so errors come first
            cfg.plan(key)
        with private_rng():
            self.llm = cfg.build("llm")  # only upstream's TransformerLM, every argument checked first
        release.load_weights(self.llm, "llm.pt", "LLM")
        self.llm.eval().requires_grad_(False)
        self.upstream_sampling = self._sampling_from(cfg.sampling())
        self.text_tokenizer = cfg.text_tokenizer()
        self.allowed_special = cfg.allowed_special
        self._init_conditions(instructions)
        self.spk2info = self._load_spk2info()
        self.hidden_size = int(self.llm.llm_decoder.in_features)
        self.num_layers = len(self.llm.llm.encoders)
        self.stop_token = int(self.llm.speech_token_size)
        self.vocab_size = self.stop_token + 1
        self.sample_rate = SAMPLE_RATE
        # The release's own rate: its flow reads input_frame_rate speech tokens a second (50 in CosyVoice-300M's
        # cosyvoice.yaml, the rate of speech_tokenizer_v1.onnx; CosyVoice2's 25 Hz tokens are another model).
        self.token_rate = float(cfg.plan("flow").args["input_frame_rate"])
        hookpoints: dict[str, nn.Module] = {f"resid_pre.{i}": block for i, block in enumerate(self.llm.llm.encoders)}
        # The layer's self_attn returns (x_att, new_att_cache); x_att is what the layer adds to its residual.
        attention = {f"attn_out.{i}": block.self_attn for i, block in enumerate(self.llm.llm.encoders)}
        hookpoints.update(attention)
        hookpoints["lm_out"] = self.llm.llm_decoder
        self.hooks = HookManager(hookpoints, outputs=attention)
        self._tokenizer = OnnxSpeechTokenizer(release.path("speech_tokenizer_v1.onnx"),
                                              self._tokenizer_digest(), self.stop_token, device)
        self.campplus = CampPlus(release.path("campplus.onnx"))
        self.to(device)

    # ------------------------------------------------------------- loading
    def _load_spk2info(self) -> dict[str, torch.Tensor]:
        path = self.release.path("spk2info.pt")
        info = load_torch_file(path, f"cannot read {path}", "Copy it again from the release.")
        voices = {}
        for name, entry in (info.items() if isinstance(info, dict) else ()):
            embedding = entry.get("embedding") if isinstance(entry, dict) else None
            if not isinstance(embedding, torch.Tensor) or embedding.numel() != 192:
                raise ConfigError(f"{path}: speaker {name!r} has no 192-d 'embedding' (the CAMPPlus x-vector).")
            voices[str(name)] = embedding.reshape(1, 192).float()
        if not voices:
            raise ConfigError(f"{path} holds no speakers; it should map speaker ids to {{'embedding': (1, 192)}}.")
        return voices

    def _tokenizer_digest(self) -> str:

        return digest_files([("speech_tokenizer_v1.onnx", self.release.path("speech_tokenizer_v1.onnx"))])

    # ------------------------------------------------------------ identity
    @property
    def backbone_id(self) -> str:
        return f"cosyvoice@{self.release.digest[:12]}"

    @property
    def speakers(self) -> list[str]:
        return list(self.spk2info)

    # ---------------------------------------------------------- conditions
    def text_ids(self, text: str) -> list[int]:
        """Whisper BPE ids, as upstream's front end encodes (text normalization is not applied: give numbers
        spelled out, as ESD's sentences are)."""
        ids = self.text_tokenizer.encode(text, allowed_special=self.allowed_special)
        if not ids:
            raise ConfigError(f"text {text!r} has no tokens.")
        return ids

    def xvector(self, voice: VoiceName | VoiceClip) -> torch.Tensor:
        """(1, 192) x-vector of the voice: its spk2info entry, or CAMPPlus on the reference clip (kept per file)."""
        if isinstance(voice, VoiceName):
            return self.spk2info[voice.name]
        return self.clip_xvector(voice)

    # ----------------------------------------------------------- LLM passes
    def _prefixes(self, prompts: Sequence[Prompt]) -> tuple[list[torch.Tensor], list[int]]:
        """Per prompt, ``[sos][enc(instruction<endofprompt> text)][task]`` (P_b, d) and its text-token count.

        The text encoder runs once over the right-padded batch: it is causal (chunk size 1, as upstream's
        ``encode`` calls it), so padding never reaches a real position."""
        llm = self.llm
        ids, text_lengths = zip(*(self._prompt_ids(p) for p in prompts))
        lengths = torch.tensor([len(i) for i in ids], dtype=torch.int32, device=self.device)
        padded = nn.utils.rnn.pad_sequence([torch.tensor(i) for i in ids], batch_first=True).to(self.device)
        encoded, encoded_lengths = llm.encode(llm.text_embedding(padded), lengths)
        sos = llm.llm_embedding.weight[llm.sos_eos].reshape(1, -1)
        task = llm.llm_embedding.weight[llm.task_id].reshape(1, -1)
        prefixes = [torch.cat([sos, encoded[b, :int(encoded_lengths[b])], task]) for b in range(len(prompts))]
        return prefixes, list(text_lengths)

    def _run(self, x: torch.Tensor, mask: torch.Tensor, caches: list[torch.Tensor] | None
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Upstream's LLM (embed, encoder layers, final norm) over ``x`` (B, T, d) with attention ``mask``
        (B, T, K) and per-layer KV caches (B, heads, K - T, 2 d_k); returns hidden states and the new caches."""
        llm = self.llm.llm
        ones = torch.ones(x.shape[0], 1, x.shape[1], dtype=torch.bool, device=x.device)
        x, _, _ = llm.embed(x, ones, 0)
        pos_emb = llm.embed.position_encoding(offset=0, size=mask.shape[2])
        empty = torch.zeros(0, 0, 0, 0, device=x.device)
        new_caches = []
        for i, layer in enumerate(llm.encoders):
            x, _, cache, _ = layer(x, mask, pos_emb, att_cache=caches[i] if caches is not None else empty)
            new_caches.append(cache)
        if llm.normalize_before:
            x = llm.after_norm(x)
        return x, new_caches

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling | None = None, **overrides: object
                 ) -> Generation:
        """Speech tokens for a batch: prefill over the left-padded prompts, then one cached token per row and
        step until every row has drawn the stop token or reached its limit (``max_new_tokens`` and upstream's
        20 tokens per text token).  Temperature 1 with top-p/top-k/RAS is upstream's sampler (the release's
        settings are ``upstream_sampling``); temperature 0 is greedy; other temperatures scale the logits before
        that sampler (upstream has no temperature)."""
        settings = self.sampling(sampling, **overrides)  # refuses num_beams: upstream decodes one hypothesis
        self.check_prompts(prompts)
        B = len(prompts)
        prefixes, text_lengths = self._prefixes(prompts)
        P = max(len(p) for p in prefixes)
        x = torch.zeros(B, P, self.hidden_size, device=self.device)
        valid = torch.zeros(B, P, dtype=torch.bool, device=self.device)
        for b, prefix in enumerate(prefixes):
            x[b, P - len(prefix):], valid[b, P - len(prefix):] = prefix, True
        causal = torch.ones(P, P, dtype=torch.bool, device=self.device).tril()
        generators = None
        if settings.seed is not None:
            generators = [torch.Generator(device=self.device).manual_seed(settings.seed + b) for b in range(B)]
        limits = [min(settings.max_new_tokens, int(n * MAX_TOKEN_TEXT_RATIO)) for n in text_lengths]
        minimum = [int(n * MIN_TOKEN_TEXT_RATIO) for n in text_lengths]
        rules = ras.RasSettings(settings.top_p, settings.top_k, settings.ras_window, settings.ras_tau)
        histories: list[list[int]] = [[] for _ in range(B)]
        finished = [False] * B
        active = [True] * B  # a Python list: reading it per row never waits on the device
        with self.hooks.phase(Phase.PREFILL):
            hidden, caches = self._run(x, causal[None] & valid[:, None, :], None)
            logp = self._logp(hidden, settings.temperature)
        for step in range(max(limits)):
            if step == 0:
                logp[:, self.stop_token] = -float("inf")  # upstream forces a first token
            rows = [b for b in range(B) if active[b]]
            if settings.greedy:
                chosen = ras.greedy(logp, histories, self.stop_token, minimum, rows)
            else:
                chosen = ras.draw(logp, histories, self.stop_token, minimum, rules, generators, rows)
            for b, token in chosen.items():
                if token == self.stop_token:
                    finished[b] = True
                    active[b] = False
                    continue
                histories[b].append(token)
                if len(histories[b]) >= limits[b]:
                    active[b] = False  # cut at its limit, like upstream's loop: the last token is never fed
            if not any(active):
                break
            feed = torch.tensor([h[-1] if h else 0 for h in histories], device=self.device)
            valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool, device=self.device)], dim=1)
            with self.hooks.phase(Phase.DECODE, step=step, active=torch.tensor(active, device=self.device)):
                hidden, caches = self._run(self.llm.speech_embedding(feed)[:, None], valid[:, None, :], caches)
                logp = self._logp(hidden, settings.temperature)
        tokens = [torch.tensor(h, dtype=torch.long) for h in histories]
        lengths = [len(h) for h in histories]
        return Generation(tokens=tokens, prefill_lengths=[len(p) for p in prefixes], finished=finished,
                          decode_rows=lockstep_decode_rows(lengths, finished))

    # -------------------------------------------------------- teacher forcing
    def teacher_forced(self, prompts: Sequence[Prompt], targets: Sequence[torch.Tensor]) -> TeacherForcedOutput:
        """Logits (B, T + 1, V) of ``targets`` then stop, over the sequence instruct inference runs
        (``[sos][enc(instruction + text)][task][targets]``, no speaker embedding), in phase ``teacher_forced``.
        Gradients flow through the hooks (EmoShift trains through them); upstream's weights stay frozen."""
        x, valid, out_targets, P = self._teacher_forced_inputs(prompts, targets)
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=self.device).tril()
        with self.hooks.phase(Phase.TEACHER_FORCED):
            hidden, _ = self._run(x, causal[None] & valid[:, None, :], None)
            logits = self.llm.llm_decoder(hidden[:, P - 1:])
        return TeacherForcedOutput(logits.float(), out_targets)

    # --------------------------------------------------------------- vocoder
    def _build_vocoder(self) -> FlowHiftVocoder:
        return FlowHiftVocoder(self.release, self.device)


def load_cosyvoice(path: str | None, device: torch.device, instructions: Mapping[str, str] | None = None
                   ) -> CosyVoiceInstruct:
    """``load_backbone("cosyvoice", folder)``: check the release folder, then build on ``device``."""

    if path is None:
        raise ConfigError("the cosyvoice backbone has no embedded default; set backbone.path to the folder of the "
                          "FunAudioLLM/CosyVoice-300M-Instruct release (cosyvoice.yaml, llm.pt, ...).")
    require_cosyvoice()
    return CosyVoiceInstruct(CosyVoiceRelease.open(path), device, instructions=instructions)
