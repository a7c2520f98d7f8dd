"""``IndexTTS2``: the released IndexTTS2 GPT (upstream's ``UnifiedVoice``) behind emoctl's backbone contract.

What the adapter adds to upstream, and why:

* **Batched, KV-cached generation.**  Upstream generates one utterance at a time through Hugging Face's
  ``generate``, whose cache hand-off broke in transformers 5.18+ (see :mod:`.upstream`).  The adapter runs its
  own decode loop over upstream's modules: upstream's ``prepare_gpt_inputs`` left-pads the prompts, every
  decode step feeds one token per row through the cache, and Hugging Face's own logits processors
  (repetition penalty, temperature, top-k, top-p) choose the tokens, so a batch of one equals upstream's
  ``inference_speech`` token for token.  Prompt b of a seeded call draws from its own generator seeded
  ``seed + b``: a batch's tokens equal each prompt generated alone with its seed.
* **Phases.**  The prefill, every decode step and the teacher-forced passes (``teacher_forced`` and the
  latent pass of ``vocode``) declare their phase to the hook manager.
* **Conditioning as data.**  The voice is a reference clip (``VoiceClip``); the emotion is upstream's
  8-way emotion vector with its weight (``EmotionVector``, order happy, angry, sad, afraid, disgusted,
  melancholic, surprised, calm) or an emotion reference clip (``EmotionClip``).

Mel positions: upstream's cached decode puts generated token k at mel position k + 2, while training and the
teacher-forced latent pass put it at k + 1 (the start token is at 0).  ``mel_positions="released"`` (the
default) keeps the released behaviour; ``"training"`` decodes at the training positions, where recorded
decode states equal a teacher-forced pass of the same tokens.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from torch import nn

from emoctl.backbones.base import Backbone, Generation, Prompt, TeacherForcedOutput, lockstep_decode_rows
from emoctl.backbones.conditions import EmotionClip, EmotionCondition, EmotionVector, VoiceClip
from emoctl.backbones.hf_compat import gpt2_cache_argument
from emoctl.backbones.checkpoint_files import load_strict, load_torch_file, refuse_non_finite_file
from emoctl.backbones.hooks import HookManager, Phase
from emoctl.backbones.indextts2.features import MAX_REFERENCE_SECONDS, SemanticFeatures, SpeakerStyle
from emoctl.backbones.indextts2.release import ReleaseFolder
from emoctl.backbones.sampling import Sampling
from emoctl.errors import ConfigError, first_line
from emoctl.backbones.indextts2.upstream import require_indextts
from emoctl.backbones.indextts2.vocoder import S2MelVocoder, SemanticTokenizer

log = logging.getLogger(__name__)

#: upstream's emotion axes, in emo_vector order
EMOTION_AXES = ("happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm")
#: ESD's emotions on those axes; Neutral is the zero vector (upstream's "no emotion vector": the voice's own)
ESD_AXES = {"Happy": "happy", "Angry": "angry", "Sad": "sad", "Surprise": "surprised"}
#: weight of an ESD emotion's one-hot vector: upstream's web UI caps the summed emotion weight at 0.8
DEFAULT_EMOTION_WEIGHT = 0.8
#: upstream splits text into segments of at most this many BPE tokens; the adapter takes one segment
MAX_TEXT_TOKENS_PER_SEGMENT = 120
SAMPLE_RATE = 22050  # s2mel and BigVGAN
SEMANTIC_TOKEN_RATE = 50.0  # MaskGCT codes per second: one per w2v-BERT frame (16 kHz, stride 320); s2mel makes
# 1.72 mel frames of 256 samples at 22050 Hz of each (vocoder.CODES_TO_MEL), 50.08 codes per second of audio
_CACHE_SLOTS = 256


@dataclass(frozen=True)
class _Clip:
    """A reference recording's w2v-BERT features and CAMPPlus style (computed once per file)."""

    features: torch.Tensor  # (1, T, 1024)
    style: torch.Tensor  # (1, 192)


class IndexTTS2(Backbone):
    """IndexTTS2's GPT with its conditioners, text tokenizer, semantic tokenizer and vocoder chain."""

    kind: ClassVar[str] = "indextts2"
    voice_kinds: ClassVar[tuple[str, ...]] = (VoiceClip.kind,)
    corpus_voice_kind: ClassVar[str] = VoiceClip.kind
    emotion_kinds: ClassVar[tuple[str, ...]] = (EmotionVector.kind, EmotionClip.kind)
    sampling_settings: ClassVar[tuple[str, ...]] = ("temperature", "top_k", "top_p", "repetition_penalty",
                                                    "num_beams", "length_penalty")

    def __init__(self, release: ReleaseFolder, device: str | torch.device = "cpu", *,
                 emotion_weight: float = DEFAULT_EMOTION_WEIGHT,
                 mel_positions: Literal["released", "training"] = "released") -> None:
        super().__init__()
        from indextts.gpt.model_v2 import UnifiedVoice

        if mel_positions not in ("released", "training"):
            raise ConfigError(f"mel_positions must be 'released' or 'training', got {mel_positions!r}.")
        self.release, self.mel_positions = release, mel_positions
        self.emotion_weight = float(emotion_weight)
        settings = release.settings  # config.yaml checked as data: types, keys, files inside the folder
        device = torch.device(device)
        self.features = SemanticFeatures(release.path("hf_cache/w2v-bert-2.0"), release.file("w2v_stat"), device)
        self.features.check_files()  # a damaged w2v-BERT folder is refused before the GPT is built
        self.text_tokenizer = release.text_tokenizer()
        try:
            self.gpt = UnifiedVoice(**settings.gpt)
        except Exception as err:  # a combination of checked values upstream still refuses
            raise ConfigError(f"{release.path('config.yaml')}: upstream's UnifiedVoice refuses the gpt section: "
                              f"{first_line(err)}. Use the config.yaml that was released with gpt.pth.") from None
        self._load_gpt_weights(release.file("gpt_checkpoint"))
        self.gpt.eval().requires_grad_(False)
        self.style = SpeakerStyle(release.path("hf_cache/campplus_cn_common.bin"), device)
        emo_num = list(settings.emo_num)
        emo_matrix = self._load_table(release.file("emo_matrix"), (sum(emo_num), self.gpt.model_dim))
        spk_matrix = self._load_table(release.file("spk_matrix"), (sum(emo_num), None))
        self.register_buffer("emo_matrix", emo_matrix, persistent=False)
        self.register_buffer("spk_matrix", spk_matrix, persistent=False)
        self.emo_num = emo_num
        self.hidden_size = int(self.gpt.model_dim)
        self.num_layers = len(self.gpt.gpt.h)
        self.vocab_size = int(self.gpt.number_mel_codes)
        self.sample_rate = SAMPLE_RATE
        self.token_rate = SEMANTIC_TOKEN_RATE
        self.max_text_tokens = min(int(self.gpt.max_text_tokens), MAX_TEXT_TOKENS_PER_SEGMENT)
        hookpoints: dict[str, nn.Module] = {f"resid_pre.{i}": block for i, block in enumerate(self.gpt.gpt.h)}
        attention = {f"attn_out.{i}": block.attn for i, block in enumerate(self.gpt.gpt.h)}  # GPT2Attention
        hookpoints.update(attention)
        hookpoints["lm_out"] = self.gpt.mel_head
        self.hooks = HookManager(hookpoints, outputs=attention)
        self._cache_argument = gpt2_cache_argument()
        self._clips: OrderedDict[tuple, _Clip] = OrderedDict()
        self._conditions: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self._tokenizer: Any = None
        self._vocoder: Any = None
        self.vocode_seed: int | None = 0  # s2mel's sampler starts from noise: a fixed seed makes audio repeatable
        self.to(device)

    # ------------------------------------------------------------- loading
    def _load_gpt_weights(self, path: Path) -> None:
        """gpt.pth into upstream's UnifiedVoice (:mod:`emoctl.backbones.checkpoint_files`: weights-only, every key
        and shape as config.yaml describes, every float finite)."""
        state = load_torch_file(path, f"cannot read the GPT checkpoint {path}",
                                "Copy gpt.pth again from the IndexTeam/IndexTTS-2 release.")
        state = state["model"] if isinstance(state, dict) and "model" in state else state
        load_strict(self.gpt, state, path, "config.yaml", "Use the config.yaml that was released with this gpt.pth.")
        refuse_non_finite_file(state, path)

    @staticmethod
    def _load_table(path: Path, shape: tuple[int, int | None]) -> torch.Tensor:
        table = load_torch_file(path, f"cannot read {path} as a tensor file",
                                "Copy it again from the IndexTeam/IndexTTS-2 release.")
        if not isinstance(table, torch.Tensor) or table.ndim != 2 or table.shape[0] != shape[0] or (
                shape[1] is not None and table.shape[1] != shape[1]):
            got = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
            raise ConfigError(f"{path} should be a ({shape[0]}, {shape[1] or 'd'}) tensor (one row per emotion "
                              f"entry of config.yaml's emo_num), got {got}.")
        refuse_non_finite_file([table], path)
        return table.float()

    # ------------------------------------------------------------ identity
    @property
    def device(self) -> torch.device:
        return self.gpt.mel_head.weight.device

    @property
    def backbone_id(self) -> str:
        return f"indextts2@{self.release.digest[:12]}"

    @property
    def neutral_emotion(self) -> EmotionCondition:
        """The zero emotion vector: upstream then conditions on the voice clip's own emotion."""
        return EmotionVector((0.0,) * len(EMOTION_AXES), 1.0)

    def condition_for(self, emotion: str) -> EmotionCondition:
        """ESD's Neutral is the zero vector; Happy, Angry, Sad and Surprise are one-hot on upstream's axes at
        weight ``emotion_weight`` (0.8 unless the loader was told otherwise)."""
        if emotion == "Neutral":
            return self.neutral_emotion
        axis = ESD_AXES.get(emotion)
        if axis is None:
            raise ConfigError(f"the indextts2 backbone has no condition for emotion {emotion!r}; it maps "
                              f"Neutral, {', '.join(ESD_AXES)} to emotion vectors (axes {', '.join(EMOTION_AXES)}); "
                              "give other emotions as an EmotionVector or an EmotionClip.")
        values = tuple(1.0 if a == axis else 0.0 for a in EMOTION_AXES)
        return EmotionVector(values, self.emotion_weight)

    @property
    def speech_tokenizer(self) -> Any:
        if self._tokenizer is None:

            self._tokenizer = SemanticTokenizer.from_release(self.release, self.device, self.features)
        return self._tokenizer

    # ---------------------------------------------------------- conditions
    def check_prompts(self, prompts: Sequence[Prompt]) -> None:
        super().check_prompts(prompts)
        for prompt in prompts:
            if isinstance(prompt.emotion, EmotionVector) and len(prompt.emotion.values) != len(EMOTION_AXES):
                raise ConfigError(f"IndexTTS2's emotion vector has {len(EMOTION_AXES)} weights ("
                                  f"{', '.join(EMOTION_AXES)}), got {len(prompt.emotion.values)} in "
                                  f"{prompt.utt_id or prompt.text[:30]!r}.")
            for path in (prompt.voice.path, getattr(prompt.emotion, "path", None)):
                if path is not None and not os.path.isfile(path):
                    raise ConfigError(f"reference clip {path} does not exist (prompt "
                                      f"{prompt.utt_id or prompt.text[:30]!r}).")

    def _clip(self, path: str, rate: int | None) -> _Clip:
        """Features and style of a reference clip, loaded as upstream loads it: voice clips through librosa at
        its default 22050 Hz, emotion clips at 16 kHz, both cut to 15 s."""
        import librosa

        if self.features.device != self.device:  # the module was moved (a Lightning trainer does that)
            self.features.to(self.device)
            self.style.to(self.device)
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, rate, str(self.device))
        if key not in self._clips:
            try:
                wave, sr = librosa.load(path, sr=rate) if rate else librosa.load(path)
            except Exception as err:
                raise ConfigError(f"cannot read reference clip {path}: {err}") from None
            wave = wave[:int(MAX_REFERENCE_SECONDS * sr)]
            self._clips[key] = _Clip(self.features(wave, sr).to(self.device), self.style(wave, sr).to(self.device))
            while len(self._clips) > _CACHE_SLOTS:
                self._clips.popitem(last=False)
        else:
            self._clips.move_to_end(key)
        return self._clips[key]

    def _emotion_vector(self, prompt: Prompt, speaker: _Clip) -> torch.Tensor:
        """(1, d) ``emovec`` exactly as upstream's ``infer_generator`` builds it.

        Upstream always has an emotion reference: the EmotionClip, or else the voice clip itself, read again at
        16 kHz (so its features differ slightly from the voice's, which come through a 22050 Hz read); it
        merges the two conditioners' outputs by the clip's weight (1 for the voice), then mixes an emotion
        vector's table rows in by their weights."""
        spk = speaker.features
        spk_len = torch.tensor([spk.shape[-1]], device=self.device)  # upstream passes the feature width here
        emotion = prompt.emotion
        reference = emotion.path if isinstance(emotion, EmotionClip) else prompt.voice.path
        emo = self._clip(reference, 16000).features
        alpha = emotion.weight if isinstance(emotion, EmotionClip) else 1.0
        merged = self.gpt.merge_emovec(spk, emo, spk_len, torch.tensor([emo.shape[-1]], device=self.device),
                                       alpha=alpha)
        if isinstance(emotion, EmotionClip):
            return merged
        assert isinstance(emotion, EmotionVector)
        scale = max(0.0, min(1.0, emotion.weight))
        values = list(emotion.values)
        if scale != 1.0:  # upstream scales and truncates to 4 decimals
            values = [int(x * scale * 10000) / 10000 for x in values]
        weights = torch.tensor(values, device=self.device)
        rows = []
        for emo_rows, spk_rows in zip(self.emo_matrix.split(self.emo_num), self.spk_matrix.split(self.emo_num)):
            nearest = torch.argmax(nn.functional.cosine_similarity(speaker.style.float(), spk_rows.float(), dim=1))
            rows.append(emo_rows[nearest].unsqueeze(0))
        mixed = (weights.unsqueeze(1) * torch.cat(rows, 0)).sum(0, keepdim=True)
        return mixed + (1 - weights.sum()) * merged

    def _conditioning(self, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(1, 34, d) prompt latents (speaker latents + emotion, two speed slots), the (1, 32, d) speaker
        latents and the (1, d) emotion vector, as ``inference_speech`` and the latent pass use them; kept per
        (voice clip, emotion condition), since a harvest asks for each pair once per text."""
        stat = os.stat(prompt.voice.path)
        key = (os.path.realpath(prompt.voice.path), stat.st_size, stat.st_mtime_ns, prompt.emotion.key,
               str(self.device))
        if key in self._conditions:
            self._conditions.move_to_end(key)
            return self._conditions[key]
        speaker = self._clip(prompt.voice.path, None)
        emovec = self._emotion_vector(prompt, speaker)
        spk = speaker.features
        latent = self.gpt.get_conditioning(spk.transpose(1, 2), torch.tensor([spk.shape[-1]], device=self.device))
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        conds = torch.cat([latent + emovec.unsqueeze(1), self.gpt.speed_emb(zero + 1).unsqueeze(1),
                           self.gpt.speed_emb(zero).unsqueeze(1)], dim=1)
        self._conditions[key] = (conds, latent, emovec)
        while len(self._conditions) > _CACHE_SLOTS:
            self._conditions.popitem(last=False)
        return conds, latent, emovec

    def text_ids(self, text: str) -> list[int]:
        """BPE ids of one segment (upstream upper-cases and tokenizes; text normalization is not applied: give
        numbers and abbreviations spelled out, as ESD's sentences are)."""
        ids = self.text_tokenizer.convert_tokens_to_ids(self.text_tokenizer.tokenize(text))
        if not ids:
            raise ConfigError(f"text {text!r} has no tokens.")
        if len(ids) > self.max_text_tokens:
            raise ConfigError(f"text {text[:40]!r}... has {len(ids)} BPE tokens; IndexTTS2 takes at most "
                              f"{self.max_text_tokens} per segment. Split it into sentences.")
        unknown = self.text_tokenizer.unk_token_id
        if unknown in ids:
            log.warning("text %r has %d unknown BPE token(s)", text, ids.count(unknown))
        return ids

    def _prompt_inputs(self, prompts: Sequence[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream's left-padded ``[pad][conditioning][text]`` embeddings (B, s, d) and mask (B, s + 1)."""
        conds = torch.cat([self._conditioning(p)[0] for p in prompts])
        texts = [torch.tensor(self.text_ids(p.text), dtype=torch.long) for p in prompts]
        padded = nn.utils.rnn.pad_sequence(texts, batch_first=True, padding_value=self.gpt.stop_text_token)
        _, embeds, mask = self.gpt.prepare_gpt_inputs(conds, padded.to(self.device))
        return embeds, mask

    # ----------------------------------------------------------- generation
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Speech-token logits of GPT states, through upstream's final norm and head (``lm_out`` fires)."""
        return self.gpt.mel_head(self.gpt.final_norm(hidden))

    def _run(self, embeds: torch.Tensor, mask: torch.Tensor, cache: Any = None) -> Any:
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1]:]
        return self.gpt.gpt(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=True,
                            return_dict=True, **{self._cache_argument: cache})

    def _processors(self, settings: Sampling, mask: torch.Tensor, min_tokens_to_keep: int = 1) -> Any:
        """Hugging Face's own logits processors, in the order ``generate`` builds them (so a batch of one
        chooses exactly what upstream's ``inference_speech`` would)."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        processors = LogitsProcessorList()
        if settings.repetition_penalty != 1.0:
            padding = (mask != 0).int().argmax(dim=1)
            processors.append(RowRepetitionPenalty(settings.repetition_penalty, padding))
        if not settings.greedy:
            if settings.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k:
                processors.append(TopKLogitsWarper(top_k=settings.top_k, min_tokens_to_keep=min_tokens_to_keep))
            if settings.top_p is not None and settings.top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p=settings.top_p, min_tokens_to_keep=min_tokens_to_keep))
        return processors

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling | None = None, **overrides: object
                 ) -> Generation:
        """Speech tokens for a batch, KV-cached: prefill over the left-padded prompts, then one token a row
        per decode step, until every row has drawn the stop token or ``max_new_tokens`` (at most the model's
        ``max_mel_tokens``) is reached.  ``num_beams > 1`` runs Hugging Face's beam search (beam sampling when
        temperature > 0, upstream's default with 3 beams)."""
        settings = self.sampling(sampling, **overrides)
        self.check_prompts(prompts)
        embeds, mask = self._prompt_inputs(prompts)
        generators = None
        if settings.seed is not None:
            generators = [torch.Generator(device=self.device).manual_seed(settings.seed + b)
                          for b in range(len(prompts))]
        if settings.num_beams > 1:
            return self._beam_generate(embeds, mask, settings, generators)
        return self._sample_generate(embeds, mask, settings, generators)

    def _prefill(self, embeds: torch.Tensor, mask: torch.Tensor, beams: int = 1) -> tuple[torch.Tensor, Any]:
        """Append the start-of-speech token (mel position 0) and run the prompt: last logits and the cache."""
        start = self.gpt.mel_embedding(torch.tensor([[self.gpt.start_mel_token]], device=self.device)) + \
            self.gpt.mel_pos_embedding(torch.zeros(1, 1, device=self.device))
        embeds = torch.cat([embeds, start.expand(embeds.shape[0], 1, -1)], dim=1)
        with self.hooks.phase(Phase.PREFILL, beams=beams):
            out = self._run(embeds, mask)
            logits = self._logits(out.last_hidden_state)[:, -1].float()
        return logits, getattr(out, self._cache_argument)

    def _decode(self, tokens: torch.Tensor, mask: torch.Tensor, cache: Any, step: int, active: torch.Tensor | None,
                beams: int = 1) -> torch.Tensor:
        """Feed generated token ``step`` of every row (R,) through the cache; the next logits (R, V)."""
        offset = 2 if self.mel_positions == "released" else 1
        feed = self.gpt.mel_embedding(tokens[:, None]) + \
            self.gpt.mel_pos_embedding.get_fixed_embedding(step + offset, self.device)
        with self.hooks.phase(Phase.DECODE, step=step, active=active, beams=beams):
            out = self._run(feed, mask, cache)
            return self._logits(out.last_hidden_state)[:, -1].float()

    def _budget(self, settings: Sampling) -> int:
        return self.speech_token_cap(settings.max_new_tokens)

    def speech_token_cap(self, max_new_tokens: int) -> int:
        """``max_new_tokens``, or the GPT's mel position table (``max_mel_tokens``) where that is shorter."""
        return min(int(max_new_tokens), int(self.gpt.max_mel_tokens))

    @staticmethod
    def _draw(probs: torch.Tensor, n: int, generators: list[torch.Generator] | None) -> torch.Tensor:
        """``n`` draws without replacement per row; row b from its own generator when seeded."""
        if generators is None:
            return torch.multinomial(probs, n)
        return torch.cat([torch.multinomial(probs[b:b + 1], n, generator=g) for b, g in enumerate(generators)])

    def _sample_generate(self, embeds: torch.Tensor, mask: torch.Tensor, settings: Sampling,
                         generators: list[torch.Generator] | None) -> Generation:
        """Sampling or greedy decoding, as Hugging Face's ``_sample`` does it (finished rows are fed the pad
        token, which upstream sets to the stop token)."""
        B, s = embeds.shape[:2]
        stop = int(self.gpt.stop_mel_token)
        prefill = (mask[:, :s + 1] != 0).sum(1).tolist()
        logits, cache = self._prefill(embeds, mask)
        ids = torch.ones(B, s + 1, dtype=torch.long, device=self.device)  # upstream's fake prompt ids
        ids[:, -1] = self.gpt.start_mel_token
        processors = self._processors(settings, mask)
        budget = self._budget(settings)
        tokens = torch.full((B, budget), stop, dtype=torch.long, device=self.device)
        lengths = torch.full((B,), budget, dtype=torch.long, device=self.device)
        active = torch.ones(B, dtype=torch.bool, device=self.device)
        for step in range(budget):
            scores = processors(ids, logits)
            if settings.greedy:
                choice = scores.argmax(-1)
            else:
                choice = self._draw(torch.softmax(scores, dim=-1), 1, generators).squeeze(1)
            choice = torch.where(active, choice, stop)
            stopped = active & (choice == stop)
            lengths[stopped] = step
            active &= ~stopped
            tokens[:, step] = choice
            ids = torch.cat([ids, choice[:, None]], dim=1)
            if step == budget - 1 or not bool(active.any()):
                break
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
            logits = self._decode(choice, mask, cache, step, active.clone())
        finished = (~active).tolist()
        n = lengths.tolist()
        return Generation(tokens=[tokens[b, :n[b]].cpu() for b in range(B)], prefill_lengths=prefill,
                          finished=finished, decode_rows=lockstep_decode_rows(n, finished))

    def _beam_generate(self, embeds: torch.Tensor, mask: torch.Tensor, settings: Sampling,
                       generators: list[torch.Generator] | None) -> Generation:
        """Hugging Face's beam search (transformers 5.x ``_beam_search``, ``early_stopping=False``) over B x K
        rows, prompt-major, so that a batch of one returns what upstream's ``inference_speech`` returns.

        Each prompt keeps 2K candidates a step (sampled without replacement from its accumulated scores, or
        the top 2K when greedy); the best K that did not stop keep running, and stopped ones among the top K
        join its finished hypotheses, scored by summed log-probability / length ** length_penalty.  Every
        hypothesis carries the hooked row of each of its decode steps, so ``decode_rows`` follow the returned
        one through the reorderings."""
        # Not shared with MiniTTS._beam_generate: this loop reproduces Hugging Face's arithmetic exactly (float32
        # scores, the -1e9 sentinel, HF's logits processors, a generator per prompt, the max-length stop) so that
        # it equals upstream token for token (emoctl_tests/backbones/test_contract_indextts2.py); the mini TTS
        # scores in float64 with its own filter and one generator, and its tokens would change under this loop.
        K, (B, s) = settings.num_beams, embeds.shape[:2]
        R, V, stop = B * K, self.vocab_size, int(self.gpt.stop_mel_token)
        prefill = (mask[:, :s + 1] != 0).sum(1).tolist()
        mask = mask.repeat_interleave(K, dim=0)
        logits, cache = self._prefill(embeds.repeat_interleave(K, dim=0), mask, beams=K)
        prompt_ids = torch.ones(R, s + 1, dtype=torch.long, device=self.device)
        prompt_ids[:, -1] = self.gpt.start_mel_token
        processors = self._processors(settings, mask, min_tokens_to_keep=2)
        L, lp, big = self._budget(settings), settings.length_penalty, -1.0e9
        run_tokens = torch.full((B, K, L), stop, dtype=torch.long, device=self.device)
        run_rows = torch.full((B, K, L), -1, dtype=torch.long, device=self.device)
        run_scores = torch.zeros(B, K, device=self.device)
        run_scores[:, 1:] = big  # all beams start equal: expand from the first only
        done_tokens, done_rows = run_tokens.clone(), run_rows.clone()
        done_scores = torch.full((B, K), big, device=self.device)
        done = torch.zeros(B, K, dtype=torch.bool, device=self.device)
        improvable = torch.ones(B, 1, dtype=torch.bool, device=self.device)
        top_k_mask = torch.arange(2 * K, device=self.device) < K
        gather = lambda t, i: t.gather(1, i.view(*i.shape, *([1] * (t.ndim - 2))).expand(*i.shape, *t.shape[2:]))  # noqa: E731
        for step in range(L):
            logp = processors(torch.cat([prompt_ids, run_tokens.view(R, L)[:, :step]], dim=1),
                              torch.log_softmax(logits, dim=-1))
            total = (logp.view(B, K, V) + run_scores[:, :, None]).view(B, K * V)
            if settings.greedy:
                cand_scores, cand = total.topk(2 * K, dim=1)
            else:
                cand = self._draw(torch.softmax(total, dim=-1), 2 * K, generators)
                cand_scores, order = total.gather(1, cand).sort(dim=1, descending=True)
                cand = cand.gather(1, order)
            parent, token = cand // V, cand % V  # (B, 2K)
            cand_tokens, cand_rows = gather(run_tokens, parent), gather(run_rows, parent)
            cand_tokens[:, :, step] = token
            hits = (token == stop) | (step + 1 >= L)
            # the best K that did not stop keep running
            running = cand_scores + hits.float() * big
            keep = running.topk(K, dim=1).indices
            run_tokens, run_rows, run_scores = gather(cand_tokens, keep), gather(cand_rows, keep), gather(running, keep)
            run_parent = gather(parent, keep)
            # stopped candidates among the top K join the finished ones
            finished_now = hits & top_k_mask
            scored = cand_scores / ((step + 1) ** lp) + (~improvable).float() * big + (~finished_now).float() * big
            best = torch.cat([done_scores, scored], dim=1).topk(K, dim=1).indices
            done_tokens = gather(torch.cat([done_tokens, cand_tokens], dim=1), best)
            done_rows = gather(torch.cat([done_rows, cand_rows], dim=1), best)
            done_scores = gather(torch.cat([done_scores, scored], dim=1), best)
            done = gather(torch.cat([done, finished_now], dim=1), best)
            worst = torch.where(done, done_scores.min(dim=1, keepdim=True).values, big)
            improvable &= (run_scores[:, :1] / ((step + 1) ** lp) > worst).any(dim=1, keepdim=True)
            if not bool(improvable.any()) or bool(hits.all()):
                break
            flat_parent = (run_parent + torch.arange(B, device=self.device)[:, None] * K).view(R)
            cache.reorder_cache(flat_parent)
            run_rows[:, :, step] = torch.arange(R, device=self.device).view(B, K)  # decode step `step` runs here
            mask = torch.cat([mask, mask.new_ones(R, 1)], dim=1)
            logits = self._decode(run_tokens[:, :, step].reshape(R), mask, cache, step, None, beams=K)
        tokens, decode_rows, finished = [], [], []
        for b in range(B):
            hyp = done_tokens[b, 0]
            stops = (hyp == stop).nonzero()
            n = int(stops[0, 0]) if stops.numel() else L
            tokens.append(hyp[:n].cpu())
            finished.append(bool(stops.numel()))
            decode_rows.append(done_rows[b, 0, :n if stops.numel() else max(n - 1, 0)].cpu())
        return Generation(tokens=tokens, prefill_lengths=prefill, finished=finished, decode_rows=decode_rows,
                          beams=K)

    # -------------------------------------------------------- teacher forcing
    @torch.no_grad()
    def _teacher_forced_inputs(self, prompts: Sequence[Prompt], targets: Sequence[torch.Tensor]
                               ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """``[pad][conditioning][text][start, targets][pad]`` embeddings, mask, prefix width and targets."""
        g = self.gpt
        prefixes, mels, wanted = [], [], []
        for prompt, target in zip(prompts, targets):
            conds = self._conditioning(prompt)[0][0]  # (34, d)
            text = torch.tensor([g.start_text_token, *self.text_ids(prompt.text), g.stop_text_token],
                                device=self.device)
            text_emb = g.text_embedding(text) + g.text_pos_embedding.emb(torch.arange(len(text), device=self.device))
            prefixes.append(torch.cat([conds, text_emb]))
            target = torch.as_tensor(target, dtype=torch.long, device=self.device).reshape(-1)
            if target.numel() and (int(target.min()) < 0 or int(target.max()) >= g.start_mel_token):
                raise ConfigError(f"speech tokens must lie in [0, {g.start_mel_token}), got "
                                  f"[{int(target.min())}, {int(target.max())}].")
            if target.numel() + 1 > g.max_mel_tokens:
                raise ConfigError(f"{target.numel()} speech tokens exceed the model's max_mel_tokens="
                                  f"{g.max_mel_tokens}.")
            inputs = torch.cat([torch.tensor([g.start_mel_token], device=self.device), target])
            mels.append(g.mel_embedding(inputs) + g.mel_pos_embedding.emb(torch.arange(len(inputs),
                                                                                       device=self.device)))
            wanted.append(torch.cat([target, torch.tensor([g.stop_mel_token], device=self.device)]))
        P, M, B, d = max(len(p) for p in prefixes), max(len(m) for m in mels), len(prompts), self.hidden_size
        embeds = torch.zeros(B, P + M, d, device=self.device)
        mask = torch.zeros(B, P + M, dtype=torch.long, device=self.device)
        out_targets = torch.full((B, M), -100, dtype=torch.long, device=self.device)
        for b, (prefix, mel, target) in enumerate(zip(prefixes, mels, wanted)):
            embeds[b, P - len(prefix):P], embeds[b, P:P + len(mel)] = prefix, mel
            mask[b, P - len(prefix):P + len(mel)] = 1
            out_targets[b, :len(target)] = target
        return embeds, mask, P, out_targets

    def teacher_forced(self, prompts: Sequence[Prompt], targets: Sequence[torch.Tensor]) -> TeacherForcedOutput:
        """Logits (B, T + 1, V) of ``targets`` then stop, in the training layout (mel positions from 0), in
        phase ``teacher_forced``."""
        self.check_prompts(prompts)
        if len(prompts) != len(targets):
            raise ConfigError(f"teacher_forced got {len(prompts)} prompts but {len(targets)} targets.")
        with torch.no_grad():
            embeds, mask, P, out_targets = self._teacher_forced_inputs(prompts, targets)
        with self.hooks.phase(Phase.TEACHER_FORCED):
            hidden = self.gpt.gpt(inputs_embeds=embeds, attention_mask=mask, use_cache=False,
                                  return_dict=True).last_hidden_state
            logits = self._logits(hidden[:, P:])
        return TeacherForcedOutput(logits.float(), out_targets)

    # --------------------------------------------------------------- vocoder
    @property
    def vocoder(self) -> Any:
        if self._vocoder is None:

            self._vocoder = S2MelVocoder(self.release, self.device, tokenizer=self.speech_tokenizer,
                                         style=self.style)
        return self._vocoder

    @torch.no_grad()
    def latent(self, tokens: torch.Tensor, prompt: Prompt) -> torch.Tensor:
        """(1, T, d) GPT latents of one utterance's tokens: upstream's teacher-forced latent pass (its
        ``UnifiedVoice.forward``, training positions), declared phase ``teacher_forced``."""
        conds, speaker_latent, emovec = self._conditioning(prompt)
        spk = self._clip(prompt.voice.path, None).features
        text = torch.tensor([self.text_ids(prompt.text)], device=self.device)
        codes = torch.as_tensor(tokens, dtype=torch.long, device=self.device).reshape(1, -1)
        lengths = torch.tensor([spk.shape[-1]], device=self.device)
        with self.hooks.phase(Phase.TEACHER_FORCED):
            return self.gpt(speaker_latent, text, torch.tensor([text.shape[1]], device=self.device), codes,
                            torch.tensor([codes.shape[1]], device=self.device), spk, cond_mel_lengths=lengths,
                            emo_cond_mel_lengths=lengths, emo_vec=emovec,
                            use_speed=torch.zeros(1, dtype=torch.long, device=self.device))

    def vocode(self, tokens: torch.Tensor, prompt: Prompt) -> tuple[np.ndarray, int]:
        """Waveform at 22050 Hz: the latent pass, then upstream's s2mel (conditioned on the voice clip) and
        BigVGAN."""
        self.check_prompts([prompt])
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        if tokens.numel() == 0:
            raise ConfigError("vocode needs at least one speech token.")
        import librosa

        latent = self.latent(tokens, prompt)
        wave, rate = librosa.load(prompt.voice.path)
        reference = self.vocoder.reference(wave[:int(MAX_REFERENCE_SECONDS * rate)], rate)
        audio = self.vocoder.synthesize(tokens.to(self.device), latent, reference, seed=self.vocode_seed)
        return np.asarray(audio, dtype=np.float32), self.sample_rate


def load_indextts2(path: str | None, device: torch.device) -> IndexTTS2:
    """``load_backbone("indextts2", folder)``: check the release folder, then build on ``device``."""

    if path is None:
        raise ConfigError("the indextts2 backbone has no embedded default; set backbone.path to the folder of the "
                          "IndexTeam/IndexTTS-2 release (config.yaml, gpt.pth, ..., hf_cache/).")
    require_indextts()
    release = ReleaseFolder.open(path)
    return IndexTTS2(release, device)


class RowRepetitionPenalty:
    """Hugging Face's repetition penalty (a seen token's logit divided by the penalty when positive, multiplied
    when negative), ignoring each row's own number of leading ids: a batch's left padding.

    transformers' ``RepetitionPenaltyLogitsProcessor`` takes a per-row ``prompt_ignore_length`` in 5.24 but
    refuses a tensor in 5.17 (the H200 image's); this is the same arithmetic for any version, so a batch of one
    chooses what upstream's ``inference_speech`` chooses and a padded row what it would choose alone.
    """

    def __init__(self, penalty: float, ignore: torch.Tensor) -> None:
        if not penalty > 0:
            raise ValueError(f"repetition_penalty must be positive, got {penalty}")
        self.penalty = float(penalty)
        self.ignore = ignore

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        ids = input_ids.clamp(max=vocab).masked_fill(positions[None, :] < self.ignore.to(input_ids.device)[:, None],
                                                     vocab)  # ignored or out-of-vocabulary ids land in column V
        seen = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
        seen = seen.scatter_(1, ids, True)[:, :vocab]
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)
