"""``CosyVoice2Instruct``: the released CosyVoice2 LLM (upstream's ``Qwen2LM``, a Qwen2 model over text and
speech tokens) behind emoctl's backbone contract.

What the adapter adds to upstream, and why:

* **Upstream's instruct2 sequence, in training too.**  ``frontend_instruct2`` gives the LLM
  ``instruction<|endofprompt|>`` as prompt text and no prompt speech, so inference runs
  ``[sos][Qwen embed(instruction<|endofprompt|> text)][task][speech]``.  :meth:`teacher_forced` builds exactly
  that (upstream's training forward interleaves text and speech at random in half of its rows and has no
  instruction), so an EmoSteer layer trained on it meets the states it steers.
* **Batched, KV-cached decoding** through the Qwen2 model of ``llm.pt`` (``Qwen2Model`` called directly with a
  left-padded batch, a (B, K) padding mask, per-row position ids and one ``DynamicCache``), with upstream's
  repetition-aware sampling per row and the row's own generator (:mod:`emoctl.backbones.cosyvoice_instruct.ras`),
  so prompt b of a seeded batch equals that prompt alone with seed + b, and a batch of one equals upstream's
  ``Qwen2LM.inference`` under ``torch.manual_seed(seed)``.  Upstream's own loop hands ``Qwen2Encoder`` a (1, 1)
  mask at every cached step; transformers 5 pads a short mask with False, so there every step attends to the
  first position only (emoctl_tests/backbones/test_contract_cosyvoice2.py pins this).  The adapter's mask
  covers every cached position, as the loop means and as transformers 4 read it.
* **Upstream's length and token rules**, per row: at least 2 and at most 20 decode steps per text token
  (upstream counts steps), no stop before the minimum (redrawn, as upstream redraws), and an id above the stop
  token (the unused id and bistream's fill token) is dropped, the row's previous input fed again, as upstream
  does.  At the first step upstream would feed its whole prompt again; the adapter redraws instead (the one
  place it differs, and only where upstream's first draw is such an id).
* **Conditioning as data.**  Emotion is an :class:`InstructText` (ESD's emotions map to the instructions the
  loader was given, the English defaults of :mod:`emoctl.backbones.cosyvoice_instruct.family` otherwise); the voice is a reference clip, whose CAMPPlus
  x-vector conditions the flow.  The LLM hears no voice in instruct2 mode.
* **Steering from outside.**  ``llm.pt`` loads strictly into the unmodified LLM; steering acts through hooks on
  the Qwen2 decoder layers (``resid_pre.L``: the input of ``layers[L]``), their ``self_attn`` output before the
  residual add (``attn_out.L``: CoCoEmo's hookpoint on CosyVoice2) and ``llm_decoder`` (``lm_out``).
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from emoctl.backbones.base import Generation, Prompt, TeacherForcedOutput
from emoctl.backbones.conditions import VoiceClip
from emoctl.backbones.cosyvoice2.release import CosyVoice2Release
from emoctl.backbones.cosyvoice2.vocoder import CausalFlowHiftVocoder
from emoctl.backbones.cosyvoice_instruct import ras
from emoctl.backbones.cosyvoice_instruct.family import CosyVoiceFamily
from emoctl.backbones.cosyvoice_instruct.release import digest_files
from emoctl.backbones.cosyvoice_instruct.speech_models import CampPlus, OnnxSpeechTokenizer
from emoctl.backbones.cosyvoice_instruct.upstream import require_cosyvoice
from emoctl.backbones.hf_compat import qwen2_cache_argument
from emoctl.backbones.hooks import HookManager, Phase
from emoctl.backbones.sampling import Sampling
from emoctl.errors import ConfigError
from emoctl.numerics import private_rng

log = logging.getLogger(__name__)

#: the marker upstream's instruct2 front end (``frontend_instruct2``) appends to the instruction
END_OF_PROMPT = "<|endofprompt|>"
MIN_TOKEN_TEXT_RATIO = 2  # upstream's inference: at least 2 decode steps per text token ...
MAX_TOKEN_TEXT_RATIO = 20  # ... and at most 20


class CosyVoice2Instruct(CosyVoiceFamily):
    """CosyVoice2's LLM with its Qwen2 text tokenizer, speech tokenizer v2, CAMPPlus, causal flow and HiFT."""

    kind: ClassVar[str] = "cosyvoice2"
    voice_kinds: ClassVar[tuple[str, ...]] = (VoiceClip.kind,)
    end_of_prompt: ClassVar[str] = END_OF_PROMPT

    def __init__(self, release: CosyVoice2Release, device: str | torch.device = "cpu", *,
                 instructions: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.release = release
        cfg = release.config
        for key in ("flow", "hift"):  # the vocoder builds them later: check them now, so errors come first
            cfg.plan(key)
        cfg.check_sizes()
        with private_rng():
            self.llm = cfg.build("llm")  # upstream's Qwen2LM around upstream's Qwen2Encoder, arguments checked
        release.load_weights(self.llm, "llm.pt", "LLM")
        self.llm.eval().requires_grad_(False)
        self.qwen = self.llm.llm.model.model  # the Qwen2Model: embed_tokens, layers, norm
        self.upstream_sampling = self._sampling_from(cfg.sampling())
        self.text_tokenizer = cfg.text_tokenizer()
        self._init_conditions(instructions)
        self.hidden_size = int(self.llm.llm_decoder.in_features)
        self.num_layers = len(self.qwen.layers)
        self.stop_token = int(self.llm.speech_token_size)
        self.vocab_size = int(self.llm.llm_decoder.out_features)  # speech tokens, stop, two ids upstream drops
        self.sample_rate = int(cfg.plan("hift").args["sampling_rate"])
        self.token_rate = float(cfg.plan("flow").args["input_frame_rate"])  # 25 in the release
        hookpoints: dict[str, nn.Module] = {f"resid_pre.{i}": layer for i, layer in enumerate(self.qwen.layers)}
        # Qwen2Attention returns (attn_output, attn_weights); attn_output is what the layer adds to its residual.
        attention = {f"attn_out.{i}": layer.self_attn for i, layer in enumerate(self.qwen.layers)}
        hookpoints.update(attention)
        hookpoints["lm_out"] = self.llm.llm_decoder
        self.hooks = HookManager(hookpoints, outputs=attention)
        tokenizer_path = release.path("speech_tokenizer_v2.onnx")
        self._tokenizer = OnnxSpeechTokenizer(tokenizer_path, digest_files([("speech_tokenizer_v2.onnx",
                                                                             tokenizer_path)], release=release.repo),
                                              self.stop_token, device)
        self.campplus = CampPlus(release.path("campplus.onnx"))
        self.to(device)

    # ------------------------------------------------------------ identity
    @property
    def backbone_id(self) -> str:
        return f"cosyvoice2@{self.release.digest[:12]}"

    # ---------------------------------------------------------- conditions
    def text_ids(self, text: str) -> list[int]:
        """Qwen2 BPE ids, as upstream's front end encodes (its text normalization is not applied: give numbers
        spelled out, as ESD's sentences are)."""
        ids = self.text_tokenizer.encode(text)
        if not ids:
            raise ConfigError(f"text {text!r} has no tokens.")
        return ids

    # ----------------------------------------------------------- LLM passes
    def _prefixes(self, prompts: Sequence[Prompt]) -> tuple[list[torch.Tensor], list[int]]:
        """Per prompt, ``[sos][embed(instruction<|endofprompt|> text)][task]`` (P_b, d) and its text-token count."""
        llm = self.llm
        sos = llm.llm_embedding.weight[llm.sos_eos].reshape(1, -1)
        task = llm.llm_embedding.weight[llm.task_id].reshape(1, -1)
        prefixes, text_lengths = [], []
        for prompt in prompts:
            ids, n = self._prompt_ids(prompt)
            text = self.qwen.embed_tokens(torch.tensor(ids, device=self.device))
            prefixes.append(torch.cat([sos, text, task]))
            text_lengths.append(n)
        return prefixes, text_lengths

    def _run(self, x: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        """The Qwen2 model over ``x`` (B, T, d) appended to ``cache``: ``valid`` (B, K) marks every real position
        so far (cached and new), ``positions`` (B, T) are the new positions' RoPE indices."""
        out = self.qwen(inputs_embeds=x, attention_mask=valid, position_ids=positions, use_cache=cache is not None,
                        **({qwen2_cache_argument(): cache} if cache is not None else {}))
        return out.last_hidden_state

    def _left_padded(self, rows: Sequence[torch.Tensor], width: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows`` (n_b, d) left-padded to (B, width, d), and the (B, width) mask of real positions."""
        width = width or max(len(r) for r in rows)
        x = torch.zeros(len(rows), width, self.hidden_size, device=self.device)
        valid = torch.zeros(len(rows), width, dtype=torch.bool, device=self.device)
        for b, row in enumerate(rows):
            x[b, width - len(row):], valid[b, width - len(row):] = row, True
        return x, valid

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling | None = None, **overrides: object
                 ) -> Generation:
        """Speech tokens for a batch: prefill over the left-padded prompts, then one cached position per row and
        step until every row has drawn the stop token or run its steps (``max_new_tokens`` and upstream's 20 per
        text token).  Temperature 1 with top-p/top-k/RAS is upstream's sampler (the release's settings are
        ``upstream_sampling``); temperature 0 is greedy over speech tokens; other temperatures scale the logits
        before that sampler (upstream has no temperature)."""
        from transformers import DynamicCache

        settings = self.sampling(sampling, **overrides)  # refuses num_beams: upstream decodes one hypothesis
        self.check_prompts(prompts)
        B, stop = len(prompts), self.stop_token
        prefixes, text_lengths = self._prefixes(prompts)
        x, valid = self._left_padded(prefixes)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        generators = None
        if settings.seed is not None:
            generators = [torch.Generator(device=self.device).manual_seed(settings.seed + b) for b in range(B)]
        limits = [min(settings.max_new_tokens, int(n * MAX_TOKEN_TEXT_RATIO)) for n in text_lengths]
        minimum = [int(n * MIN_TOKEN_TEXT_RATIO) for n in text_lengths]
        rules = ras.RasSettings(settings.top_p, settings.top_k, settings.ras_window, settings.ras_tau)
        histories: list[list[int]] = [[] for _ in range(B)]
        fed_at: list[list[int]] = [[] for _ in range(B)]  # the decode step that fed each kept token
        ended_at = [0] * B  # the step at which each row stopped or ran out of steps
        finished = [False] * B
        active = [True] * B  # a Python list: reading it per row never waits on the device
        cache = DynamicCache()
        with self.hooks.phase(Phase.PREFILL):
            logp = self._logp(self._run(x, valid, positions, cache), settings.temperature)
        for step in range(max(limits)):
            rows = [b for b in range(B) if active[b]]
            # upstream counts steps, not tokens: before step min_len a drawn stop is drawn again
            may_stop = [0 if step >= minimum[b] else len(histories[b]) + 1 for b in range(B)]
            chosen = self._draw(logp, histories, may_stop, rules, generators, rows, settings.greedy)
            for _ in range(ras.MAX_TRIALS):  # step 0: upstream would feed its whole prompt again; redraw
                again = [b for b in rows if step == 0 and chosen[b] > stop]
                if not again:
                    break
                chosen.update(self._draw(logp, histories, may_stop, rules, generators, again, settings.greedy))
            for b, token in chosen.items():
                if token == stop:
                    finished[b], active[b], ended_at[b] = True, False, step
                    continue
                if token < stop:  # an id above stop is dropped and the previous input fed again, as upstream
                    histories[b].append(token)
                    fed_at[b].append(step)
                if step + 1 >= limits[b]:
                    active[b], ended_at[b] = False, step  # out of steps, like upstream's loop
            if not any(active):
                break
            feed = torch.tensor([h[-1] if h else 0 for h in histories], device=self.device)
            valid = torch.cat([valid, torch.ones(B, 1, dtype=torch.bool, device=self.device)], dim=1)
            positions = positions[:, -1:] + 1
            with self.hooks.phase(Phase.DECODE, step=step, active=torch.tensor(active, device=self.device)):
                hidden = self._run(self.llm.speech_embedding(feed)[:, None], valid, positions, cache)
                logp = self._logp(hidden, settings.temperature)
        tokens = [torch.tensor(h, dtype=torch.long) for h in histories]
        # each kept token was fed by the decode pass of the step that drew it, unless the row ended at that step
        # (a token drawn at the last step is never fed, as upstream's loop never feeds it)
        decode_steps = [torch.tensor([s for s in steps if s < end], dtype=torch.long)
                        for steps, end in zip(fed_at, ended_at)]
        decode_rows = [torch.full((len(steps),), b, dtype=torch.long) for b, steps in enumerate(decode_steps)]
        return Generation(tokens=tokens, prefill_lengths=[len(p) for p in prefixes], finished=finished,
                          decode_rows=decode_rows, decode_steps=decode_steps)

    def _draw(self, logp: torch.Tensor, histories: list[list[int]], may_stop: list[int], rules: ras.RasSettings,
              generators: list[torch.Generator] | None, rows: list[int], greedy: bool) -> dict[int, int]:
        if greedy:  # over speech tokens and stop: greedy would repeat a dropped id forever
            return ras.greedy(logp[:, :self.stop_token + 1], histories, self.stop_token, may_stop, rows)
        return ras.draw(logp, histories, self.stop_token, may_stop, rules, generators, rows)

    # -------------------------------------------------------- teacher forcing
    def teacher_forced(self, prompts: Sequence[Prompt], targets: Sequence[torch.Tensor]) -> TeacherForcedOutput:
        """Logits (B, T + 1, V) of ``targets`` then stop, over the sequence instruct2 inference runs
        (``[sos][embed(instruction<|endofprompt|> text)][task][targets]``), in phase ``teacher_forced``.
        Gradients flow through the hooks; upstream's weights stay frozen."""
        x, valid, out_targets, P = self._teacher_forced_inputs(prompts, targets)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        with self.hooks.phase(Phase.TEACHER_FORCED):
            hidden = self._run(x, valid, positions, None)
            logits = self.llm.llm_decoder(hidden[:, P - 1:])
        return TeacherForcedOutput(logits.float(), out_targets)

    # --------------------------------------------------------------- vocoder
    def _build_vocoder(self) -> CausalFlowHiftVocoder:
        return CausalFlowHiftVocoder(self.release, self.device)


def load_cosyvoice2(path: str | None, device: torch.device, instructions: Mapping[str, str] | None = None
                    ) -> CosyVoice2Instruct:
    """``load_backbone("cosyvoice2", folder)``: check the release folder, then build on ``device``."""
    if path is None:
        raise ConfigError("the cosyvoice2 backbone has no embedded default; set backbone.path to the folder of the "
                          "FunAudioLLM/CosyVoice2-0.5B release (cosyvoice2.yaml, llm.pt, CosyVoice-BlankEN/, ...).")
    require_cosyvoice()
    with private_rng():
        return CosyVoice2Instruct(CosyVoice2Release.open(path), device, instructions=instructions)
