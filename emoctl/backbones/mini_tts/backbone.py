"""``MiniTTS``: emoctl's embedded TTS backbone (mini LM + WORLD speech codec).

It is small enough to train on a laptop CPU within an hour (see
``recipes/mini_tts.yaml``), yet has the parts the steering methods touch in a
real LLM-TTS: a GPT2 residual stream with per-block hookpoints, an ``lm_out``
hookpoint before the speech-token head, batched KV-cached generation with
prefill and decode phases, a teacher-forced pass, and a vocoder.

A saved model is a folder::

    config.json        format, model shape, tokenizer, speakers, emotions, digests, metadata
    model.safetensors  LM weights (float32)
    codec/             the speech codec (SpeechCodec.save), when the model has one
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Sequence

import numpy as np
import torch

from emoctl.backbones.base import Backbone, Generation, Prompt, TeacherForcedOutput, lockstep_decode_rows
from emoctl.backbones.conditions import EmotionLabel
from emoctl.backbones.checkpoint_files import refuse_non_finite_file
from emoctl.backbones.hooks import HookManager, Phase
from emoctl.backbones.sampling import Sampling
from emoctl.backbones.mini_tts.codec import SAMPLE_RATE, SpeechCodec
from emoctl.backbones.mini_tts.lm import IGNORE_INDEX, MiniTTSConfig, MiniTTSLM
from emoctl.backbones.mini_tts.text import PAD_ID, TextTokenizer, tokenizer_from_config
from emoctl.errors import ConfigError
from emoctl.io.fsio import atomic_folder
from emoctl.io.formats import read_versioned_json

FORMAT_NAME = "emoctl.mini_tts"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CODEC_DIR = "codec"


@dataclass
class EncodedPrompts:
    """Prompts as id tensors; the text is left-padded so every start-of-speech token lines up."""

    speaker_ids: torch.Tensor  # (B,) int64
    emotion_ids: torch.Tensor  # (B,) int64
    text_ids: torch.Tensor  # (B, L) int64, PAD_ID on the left of shorter texts
    text_mask: torch.Tensor  # (B, L) bool, True on real text

    @property
    def padded(self) -> bool:
        return not bool(self.text_mask.all())

    @property
    def prefix_lengths(self) -> list[int]:
        """Real prompt positions per utterance: speaker, emotion, text, start of speech."""
        return (self.text_mask.sum(1) + 3).tolist()

    def prefix_mask(self) -> torch.Tensor:
        """(B, L + 3) attention mask of the prefix: 1 except on text padding."""
        ones = self.text_mask.new_ones(self.text_mask.shape[0], 1)
        return torch.cat([ones, ones, self.text_mask, ones], dim=1).long()


class FactorizedTeacherForced(NamedTuple):
    """Teacher-forced factorized log-probabilities and their targets (STOP after the last token)."""

    env_logp: torch.Tensor  # (B, T + 1, n_env_codes + 1)
    f0_logp: torch.Tensor  # (B, T + 1, n_f0_bins)
    targets: torch.Tensor  # (B, T + 1) int64, IGNORE_INDEX after STOP


class MiniTTS(Backbone):
    """The mini LM with its tokenizer, speaker and emotion tables and (optionally) its codec.

    Voices and emotions are names (ESD's speakers and five emotions); sampling implements temperature,
    top-k, top-p and beams (beam search when greedy, beam sampling otherwise).
    """

    kind: ClassVar[str] = "mini_tts"
    sampling_settings: ClassVar[tuple[str, ...]] = ("temperature", "top_k", "top_p", "num_beams", "length_penalty")

    def __init__(self, lm: MiniTTSLM, tokenizer: TextTokenizer, speakers: Sequence[str], emotions: Sequence[str],
                 codec: SpeechCodec | None = None, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        if len(speakers) != lm.n_speakers or len(emotions) != lm.n_emotions:
            raise ConfigError(f"the LM has {lm.n_speakers} speaker and {lm.n_emotions} emotion embeddings, but "
                              f"{len(speakers)} speakers and {len(emotions)} emotions were named.")
        if len(set(speakers)) != len(speakers) or len(set(emotions)) != len(emotions):
            raise ConfigError(f"speaker and emotion names must be distinct, got {list(speakers)} and {list(emotions)}.")
        if tokenizer.vocab_size != lm.text_vocab_size:
            raise ConfigError(f"the text tokenizer has {tokenizer.vocab_size} ids but the LM's text embedding has "
                              f"{lm.text_vocab_size} rows.")
        if codec is not None and (codec.n_env_codes, codec.n_f0_bins) != (lm.config.n_env_codes, lm.config.n_f0_bins):
            raise ConfigError(f"the codec has {codec.n_env_codes} envelope codes x {codec.n_f0_bins} F0 bins but the "
                              f"LM was built for {lm.config.n_env_codes} x {lm.config.n_f0_bins}.")
        self.lm = lm
        self.tokenizer = tokenizer
        self._speakers, self._emotions = list(speakers), list(emotions)
        self._speaker_ids = {name: i for i, name in enumerate(self._speakers)}
        self._emotion_ids = {name: i for i, name in enumerate(self._emotions)}
        self.codec = codec
        self.metadata = dict(metadata or {})
        self.hidden_size = lm.config.d_model
        self.num_layers = lm.config.n_layer
        self.vocab_size = lm.config.speech_vocab_size + 1  # logit classes: speech tokens then STOP
        self.stop_token = lm.config.stop_token
        self.sample_rate = codec.sample_rate if codec is not None else SAMPLE_RATE
        self.token_rate = float(codec.frame_rate if codec is not None else SpeechCodec.frame_rate)  # 50: 20 ms frames
        points: dict[str, torch.nn.Module] = {f"resid_pre.{i}": block for i, block in enumerate(lm.gpt.h)}
        attention = {f"attn_out.{i}": block.attn for i, block in enumerate(lm.gpt.h)}  # GPT2Attention's output
        points.update(attention)
        points["lm_out"] = lm.lm_out
        self.hooks = HookManager(points, outputs=attention)
        self._checkpoint_digest: str | None = None  # set by load() and save(): backbone_id never rehashes

    # ------------------------------------------------------------ identity
    @property
    def speakers(self) -> list[str]:
        return list(self._speakers)

    @property
    def emotions(self) -> list[str]:
        return list(self._emotions)

    @property
    def device(self) -> torch.device:
        return self.lm.start_of_speech.device

    @property
    def weights_digest(self) -> str:
        """SHA-256 of the LM's tensors (names, dtypes, shapes, bytes), in hex."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.lm.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    @property
    def backbone_id(self) -> str:
        """``mini-tts@<digest>`` of the checkpoint it was loaded from or last saved to (verified then, so no
        read rehashes the weights); a model built in memory and never saved digests its weights each time."""
        return f"mini-tts@{(self._checkpoint_digest or self.weights_digest)[:12]}"

    @property
    def neutral_emotion(self) -> EmotionLabel | None:
        return EmotionLabel("Neutral") if "Neutral" in self._emotions else None

    def speech_token_cap(self, max_new_tokens: int) -> int:
        """``max_new_tokens``, or the speech position table (``max_speech_tokens``) where that is shorter."""
        return min(int(max_new_tokens), self.lm.config.max_speech_tokens)

    @property
    def speech_tokenizer(self) -> SpeechCodec | None:
        """The WORLD codec: its tokens are this backbone's speech tokens (None without a codec)."""
        return self.codec

    def _require_codec(self, what: str) -> SpeechCodec:
        if self.codec is None:
            raise ConfigError(f"this MiniTTS has no speech codec, so it cannot {what}; load a saved model folder "
                              "with a codec/ subfolder, or pass codec=SpeechCodec.load(...) when building it.")
        return self.codec

    # -------------------------------------------------------------- inputs
    def encode_prompts(self, prompts: Sequence[Prompt]) -> EncodedPrompts:
        """Check names and text, and turn prompts into id tensors on the model's device."""
        Backbone.check_prompts(self, prompts)  # voices and emotions by name only, and names it knows
        speaker_ids, emotion_ids, texts = [], [], []
        for prompt in prompts:
            ids = self._text_ids(prompt)
            speaker_ids.append(self._speaker_ids[prompt.voice.name])
            emotion_ids.append(self._emotion_ids[prompt.emotion.name])
            texts.append(ids)
        width = max(len(ids) for ids in texts)
        text_ids = torch.full((len(texts), width), PAD_ID, dtype=torch.long)
        for row, ids in enumerate(texts):
            text_ids[row, width - len(ids):] = torch.tensor(ids)
        device = self.device
        return EncodedPrompts(torch.tensor(speaker_ids, device=device), torch.tensor(emotion_ids, device=device),
                              text_ids.to(device), (text_ids != PAD_ID).to(device))

    def check_prompts(self, prompts: Sequence[Prompt]) -> None:
        """Names and condition kinds (as every backbone), and text this tokenizer can spell within the limit."""
        super().check_prompts(prompts)
        for prompt in prompts:
            self._text_ids(prompt)

    def _text_ids(self, prompt: Prompt) -> list[int]:
        where = f" (utterance {prompt.utt_id})" if prompt.utt_id else ""
        ids = self.tokenizer.encode(prompt.text)  # raises ConfigError naming the text and its characters
        if len(ids) > self.lm.config.max_text_tokens:
            raise ConfigError(f"text{where} has {len(ids)} tokens, more than max_text_tokens="
                              f"{self.lm.config.max_text_tokens}: {prompt.text[:60]!r}...; split it.")
        return ids

    def pad_targets(self, targets: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad 1-D speech-token tensors: (speech (B, T) int64, lengths (B,) int64)."""
        lengths = []
        for i, t in enumerate(targets):
            if t.ndim != 1 or t.is_floating_point():
                raise ConfigError(f"target {i} must be a 1-D integer tensor of speech tokens, got dtype {t.dtype} "
                                  f"and shape {tuple(t.shape)}.")
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.stop_token):
                raise ConfigError(f"target {i} has tokens outside [0, {self.stop_token}) (min {int(t.min())}, max "
                                  f"{int(t.max())}); pass speech tokens without STOP, which is appended for you.")
            lengths.append(t.numel())
        speech = torch.zeros(len(targets), max(lengths, default=0), dtype=torch.long)
        for row, t in enumerate(targets):
            speech[row, :t.numel()] = t
        return speech.to(self.device), torch.tensor(lengths, device=self.device)

    # ------------------------------------------------------ teacher forcing
    def teacher_forced_factors(self, prompts: Sequence[Prompt] | EncodedPrompts, speech: torch.Tensor,
                               speech_lengths: torch.Tensor) -> FactorizedTeacherForced:
        """Factorized log-probabilities of every speech token and of STOP, in one forward pass.

        ``speech`` (B, T) is right-padded; row i's tokens are ``speech[i, :speech_lengths[i]]``.
        Declares phase ``teacher_forced``; gradients flow (steering layers train through it).
        """
        encoded = prompts if isinstance(prompts, EncodedPrompts) else self.encode_prompts(prompts)
        B, T = speech.shape
        prefix = self.lm.embed_prefix(encoded.speaker_ids, encoded.emotion_ids, encoded.text_ids, encoded.text_mask)
        embeds = torch.cat([prefix, self.lm.embed_speech(speech, first_position=1)], dim=1)  # (B, P + T, d)
        mask = None
        if encoded.padded:  # right padding of the speech needs no mask: causal attention never looks ahead
            mask = torch.cat([encoded.prefix_mask(), speech.new_ones(B, T)], dim=1)
        with self.hooks.phase(Phase.TEACHER_FORCED):
            out = self.lm(embeds, attention_mask=mask, speech_from=prefix.shape[1] - 1)
        steps = torch.arange(T + 1, device=speech.device)  # (T + 1,)
        targets = torch.cat([speech, speech.new_zeros(B, 1)], dim=1)  # (B, T + 1)
        targets = torch.where(steps < speech_lengths[:, None], targets, IGNORE_INDEX)
        targets = torch.where(steps == speech_lengths[:, None], self.stop_token, targets)
        return FactorizedTeacherForced(out.env_logp, out.f0_logp, targets)

    def teacher_forced_nll(self, prompts: Sequence[Prompt], speech: torch.Tensor, lengths: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact per-token NLL from the factorized heads, without building the 8193-way distribution."""
        out = self.teacher_forced_factors(prompts, speech, lengths)
        return self.lm.nll(out.env_logp, out.f0_logp, out.targets).float(), out.targets != IGNORE_INDEX

    def teacher_forced(self, prompts: Sequence[Prompt], targets: Sequence[torch.Tensor]) -> TeacherForcedOutput:
        """Log-probabilities over speech tokens + STOP at every target position, (B, T + 1, vocab_size)."""
        if len(prompts) != len(targets):
            raise ConfigError(f"teacher_forced got {len(prompts)} prompts but {len(targets)} targets.")
        speech, lengths = self.pad_targets(targets)
        out = self.teacher_forced_factors(prompts, speech, lengths)
        return TeacherForcedOutput(self.lm.token_log_probs(out.env_logp, out.f0_logp), out.targets)

    # ----------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling | None = None, **overrides: object
                 ) -> Generation:
        """Speech tokens for a batch with a KV cache: sampling, greedy (temperature 0), or beams.

        Text is left-padded, so every row's start-of-speech token sits in the last
        prefix column and all rows decode in lockstep.  The prefill forward runs in
        phase ``prefill``; decode step k (k = 0, 1, ...) feeds each row's token k and
        runs in phase ``decode`` (with ``active`` marking rows that have not stopped,
        and ``beams`` rows per prompt under beam search).  Generation is cut at
        ``min(max_new_tokens, max_speech_tokens)``.
        """
        settings = self.sampling(sampling, **overrides)
        encoded = self.encode_prompts(prompts)
        generator = None
        if settings.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        if settings.num_beams > 1:
            return self._beam_generate(encoded, settings, generator)
        budget = self.speech_token_cap(settings.max_new_tokens)
        B = len(prompts)
        prefix = self.lm.embed_prefix(encoded.speaker_ids, encoded.emotion_ids, encoded.text_ids, encoded.text_mask)
        mask = encoded.prefix_mask() if encoded.padded else None
        with self.hooks.phase(Phase.PREFILL):
            out = self.lm(prefix, attention_mask=mask, use_cache=True, speech_from=prefix.shape[1] - 1)
        tokens = torch.zeros(B, budget, dtype=torch.long, device=self.device)
        lengths = torch.full((B,), budget, dtype=torch.long, device=self.device)
        active = torch.ones(B, dtype=torch.bool, device=self.device)
        for step in range(budget):
            logp = self.lm.token_log_probs(out.env_logp[:, -1], out.f0_logp[:, -1])  # (B, V + 1)
            choice = self._choose(logp, settings, generator)  # (B,)
            stopped = active & (choice == self.stop_token)
            lengths[stopped] = step
            active &= ~stopped
            tokens[:, step] = torch.where(active, choice, 0)
            if step == budget - 1 or not bool(active.any()):
                break
            feed = self.lm.embed_speech(tokens[:, step:step + 1], first_position=step + 1)  # (B, 1, d)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
            with self.hooks.phase(Phase.DECODE, step=step, active=active.clone()):
                out = self.lm(feed, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True)
        finished = (~active).tolist()  # rows still active ran out of budget before STOP
        n = lengths.tolist()
        return Generation(tokens=[tokens[i, :n[i]].cpu() for i in range(B)], prefill_lengths=encoded.prefix_lengths,
                          finished=finished, decode_rows=lockstep_decode_rows(n, finished))

    def _filtered(self, logp: torch.Tensor, settings: Sampling) -> torch.Tensor:
        """Logits (R, V + 1) after temperature, top-k and top-p; removed tokens are -inf."""
        logits = logp / settings.temperature
        if settings.top_k is not None and settings.top_k < logits.shape[-1]:
            kth = logits.topk(settings.top_k, dim=-1).values[:, -1:]  # (R, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if settings.top_p is not None and settings.top_p < 1:
            ordered, order = logits.sort(dim=-1, descending=True)
            before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass of the better tokens
            drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= settings.top_p)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits

    def _choose(self, logp: torch.Tensor, settings: Sampling, generator: torch.Generator | None) -> torch.Tensor:
        """Next token id per row, (B,), from the joint distribution over speech tokens + STOP."""
        if settings.greedy:
            return logp.argmax(-1)
        return torch.multinomial(torch.softmax(self._filtered(logp, settings), dim=-1), 1,
                                 generator=generator).squeeze(-1)

    def _beam_generate(self, encoded: EncodedPrompts, settings: Sampling, generator: torch.Generator | None
                       ) -> Generation:
        """Beam search (greedy) or beam sampling over B x K rows, prompt-major, with Hugging Face's scoring.

        A hypothesis' score is its summed log-probability divided by length ** length_penalty; a prompt is
        done once K hypotheses have stopped and no running beam can beat the worst of them.  Every running
        row remembers the hooked row of each of its decode steps, so the returned hypothesis's
        ``decode_rows`` follow its ancestry through the reorderings.
        """
        # Not shared with IndexTTS2._beam_generate, which must equal upstream's Hugging Face beam search token for
        # token (emoctl_tests/backbones/test_contract_indextts2.py): float32 scores with HF's -1e9 sentinel, HF's
        # logits processors, one generator per prompt and HF's max-length stop. This one scores in float64 over
        # the factorized (envelope, F0) vocabulary with its own top-k/top-p filter and one generator per batch.
        # One shared loop would change either IndexTTS2's equality with upstream or the mini TTS's tokens (and
        # every stored number computed from them).
        K, B = settings.num_beams, encoded.speaker_ids.shape[0]
        R, V1 = B * K, self.vocab_size
        budget = self.speech_token_cap(settings.max_new_tokens)
        expand = lambda t: t.repeat_interleave(K, dim=0)  # noqa: E731
        prefix = self.lm.embed_prefix(expand(encoded.speaker_ids), expand(encoded.emotion_ids),
                                      expand(encoded.text_ids), expand(encoded.text_mask))
        mask = expand(encoded.prefix_mask()) if encoded.padded else None
        with self.hooks.phase(Phase.PREFILL, beams=K):
            out = self.lm(prefix, attention_mask=mask, use_cache=True, speech_from=prefix.shape[1] - 1)
        scores = torch.zeros(B, K, dtype=torch.float64, device=self.device)
        scores[:, 1:] = float("-inf")  # all beams start identical: expand from beam 0 only
        history = torch.zeros(R, 0, dtype=torch.long, device=self.device)  # tokens of each running hypothesis
        rows = torch.zeros(R, 0, dtype=torch.long)  # hooked row of each of its decode steps
        done = [False] * B
        kept: list[list[tuple[float, torch.Tensor, torch.Tensor, bool]]] = [[] for _ in range(B)]

        def normalized(score: float, length: int) -> float:
            return score / max(length, 1) ** settings.length_penalty

        for step in range(budget):
            logp = self.lm.token_log_probs(out.env_logp[:, -1], out.f0_logp[:, -1]).double()  # (R, V + 1)
            if not settings.greedy:
                logp = self._filtered(logp, settings).log_softmax(-1)
            total = (scores.reshape(R, 1) + logp).reshape(B, K * V1)
            if settings.greedy:
                cand_score, cand = total.topk(2 * K, dim=1)
            else:
                probs = torch.softmax(total, dim=1).nan_to_num(0.0).float()
                # filtered tokens get a negligible weight so 2K draws without replacement always exist; they
                # carry score -inf and are never taken
                probs = probs + (probs == 0) * 1e-30
                cand = torch.multinomial(probs, 2 * K, generator=generator)
                cand_score = total.gather(1, cand)
                cand_score, order = cand_score.sort(dim=1, descending=True)
                cand = cand.gather(1, order)
            parents = torch.zeros(R, dtype=torch.long, device=self.device)
            chosen = torch.zeros(R, dtype=torch.long, device=self.device)
            new_scores = torch.full((B, K), float("-inf"), dtype=torch.float64, device=self.device)
            for b in range(B):
                slot = 0
                for rank, (score, index) in enumerate(zip(cand_score[b].tolist(), cand[b].tolist())):
                    if slot == K or score == float("-inf"):
                        break
                    parent, token = b * K + index // V1, index % V1
                    if done[b]:  # keep the rows busy with anything; they are never returned
                        parents[b * K + slot], chosen[b * K + slot] = parent, 0
                        slot += 1
                        continue
                    if token == self.stop_token:
                        if rank < K:  # as Hugging Face: a stop counts only among the best K candidates
                            kept[b].append((normalized(score, step), history[parent].cpu(), rows[parent], True))
                        continue
                    parents[b * K + slot], chosen[b * K + slot] = parent, token
                    new_scores[b, slot] = score
                    slot += 1
                while slot < K:  # fewer live candidates than beams: pad with a dead copy
                    parents[b * K + slot], chosen[b * K + slot] = b * K, 0
                    slot += 1
                if not done[b] and len(kept[b]) >= K:
                    kept[b] = sorted(kept[b], key=lambda h: -h[0])[:K]
                    best_running = normalized(float(new_scores[b].max()), step + 1)
                    done[b] = best_running <= kept[b][-1][0]
            scores = new_scores
            history = torch.cat([history[parents], chosen[:, None]], dim=1)
            rows = rows[parents.cpu()]
            if all(done) or step == budget - 1:
                break
            rows = torch.cat([rows, torch.arange(R)[:, None]], dim=1)  # decode step `step` runs in row r
            feed = self.lm.embed_speech(chosen[:, None], first_position=step + 1)  # (R, 1, d)
            cache = out.past_key_values
            cache.reorder_cache(parents)
            if mask is not None:
                mask = torch.cat([mask[parents], mask.new_ones(R, 1)], dim=1)
            with self.hooks.phase(Phase.DECODE, step=step, beams=K):
                out = self.lm(feed, attention_mask=mask, past_key_values=cache, use_cache=True)
        tokens, decode_rows, finished = [], [], []
        for b in range(B):
            pool = list(kept[b])
            if not done[b]:  # budget reached: running beams compete, unfinished
                for j in range(K):
                    r = b * K + j
                    if scores[b, j] > float("-inf"):
                        pool.append((normalized(float(scores[b, j]), history.shape[1]), history[r].cpu(), rows[r],
                                     False))
            score, hyp, hyp_rows, stopped = max(pool, key=lambda h: h[0])
            tokens.append(hyp)
            decode_rows.append(hyp_rows[:hyp.numel() if stopped else max(hyp.numel() - 1, 0)].clone())
            finished.append(stopped)
        return Generation(tokens=tokens, prefill_lengths=encoded.prefix_lengths, finished=finished,
                          decode_rows=decode_rows, beams=K)

    # --------------------------------------------------------------- vocoder
    def vocode(self, tokens: torch.Tensor, prompt: Prompt) -> tuple[np.ndarray, int]:
        """WORLD synthesis of one utterance's tokens.

        The codec has no speaker input: a speaker's timbre and pitch are in the
        tokens themselves, so the prompt is only checked.
        """
        Backbone.check_prompts(self, [prompt])
        return self._require_codec("vocode").decode(torch.as_tensor(tokens).cpu())

    # ---------------------------------------------------------- persistence
    def config_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the model and trace where it came from (``config.json``)."""
        return {
            "format": FORMAT_NAME, "version": FORMAT_VERSION,
            "model": asdict(self.lm.config),
            "text_tokenizer": self.tokenizer.to_config(),
            "speakers": self._speakers, "emotions": self._emotions,
            "weights_digest": self.weights_digest,
            "codec_digest": self.codec.digest if self.codec is not None else None,
            "metadata": self.metadata,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the model folder atomically: a crash leaves the previous folder, never half of a new one."""
        from safetensors.torch import save_file

        target = Path(directory)
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.lm.state_dict().items()}
        with atomic_folder(target) as staging:
            save_file(tensors, str(staging / WEIGHTS_FILE))
            if self.codec is not None:
                self.codec.save(staging / CODEC_DIR)
            (staging / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        self._checkpoint_digest = json.loads((target / CONFIG_FILE).read_text())["weights_digest"]
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> MiniTTS:
        """Read a folder written by :meth:`save`; the model comes back frozen and in eval mode."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(directory)
        if not folder.is_dir():
            raise ConfigError(f"no MiniTTS checkpoint folder at {folder}. Train one with "
                              "`emoctl fit --config recipes/mini_tts.yaml` or fix the path.")
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ConfigError(f"MiniTTS checkpoint {folder} lacks {path.name}; it needs {CONFIG_FILE} and "
                                  f"{WEIGHTS_FILE} (written by MiniTTS.save). Re-export the model.")
        config = read_versioned_json(config_path, FORMAT_NAME, FORMAT_VERSION, "re-export the model")
        try:
            model_config = MiniTTSConfig(**config["model"])
            tokenizer = tokenizer_from_config(config["text_tokenizer"])
            speakers, emotions = config["speakers"], config["emotions"]
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{config_path} is missing or has a malformed entry ({err}); re-export the model.") from None
        lm = MiniTTSLM(model_config, text_vocab_size=tokenizer.vocab_size, n_speakers=len(speakers),
                       n_emotions=len(emotions))
        try:
            state = load_file(str(weights_path))
        except (SafetensorError, OSError) as err:
            raise ConfigError(f"cannot read {weights_path} ({err}); the file is damaged, re-export the model.") from None
        refuse_non_finite_file(state, weights_path)
        try:
            lm.load_state_dict(state, strict=True)
        except RuntimeError as err:
            summary = " ".join(str(err).split())[:400]
            raise ConfigError(f"the weights in {weights_path} do not match the model described in {config_path}: "
                              f"{summary}. The two files come from different models; re-export them together.") from None
        codec = None
        if config.get("codec_digest") is not None:
            codec = SpeechCodec.load(folder / CODEC_DIR)
            if codec.digest != config["codec_digest"]:
                raise ConfigError(f"the codec in {folder / CODEC_DIR} (digest {codec.digest}) is not the one this "
                                  f"model was trained with ({config['codec_digest']}); restore the original codec/.")
        model = cls(lm, tokenizer, speakers, emotions, codec=codec, metadata=config.get("metadata"))
        digest = model.weights_digest  # hashed once, here
        if config.get("weights_digest") not in (None, digest):
            raise ConfigError(f"{weights_path} does not match the digest recorded in {config_path}; the weights were "
                              "changed or mixed up. Re-export the model.")
        model._checkpoint_digest = digest
        return model.to(device).eval().requires_grad_(False)
