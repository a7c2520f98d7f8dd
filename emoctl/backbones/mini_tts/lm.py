"""The mini TTS language model: IndexTTS2's UnifiedVoice in miniature.

A transformers ``GPT2Model`` reads, as ``inputs_embeds``, one sequence per
utterance::

    [speaker, emotion, text_1 .. text_n, <start of speech>, s_1 .. s_T]

Text tokens carry their own position table, the start token and speech tokens
another (start at speech position 0, ``s_t`` at position t), and GPT2's own
``wpe`` returns zeros, as in IndexTTS2.  So a left-padded text changes no
position, and masked padding is invisible to the model.

Speech tokens are the codec's ``env_code * n_f0_bins + f0_bin``; their input
embedding is ``env_embedding[env] + f0_embedding[f0]``.  The output side is
factorized the same way: the final hidden state passes through ``lm_out`` (an
``nn.Identity``, the hookpoint where EmoShift inserts its layer) into an
envelope head over ``n_env_codes + 1`` classes (the last is STOP) and an F0
head over ``n_f0_bins``::

    log p(e, f) = log_softmax(env)[e] + log_softmax(f0)[f]
    log p(STOP) = log_softmax(env)[STOP]

These are log-probabilities of a proper distribution over ``vocab_size + 1``
tokens, because the F0 distribution sums to one under every envelope code.
Factorizing keeps the heads small (289 outputs instead of 8193) and lets F0,
the main carrier of emotion, be learned from every voiced frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model

from emoctl.backbones.hf_compat import gpt2_cache_argument
from emoctl.errors import ConfigError

IGNORE_INDEX = -100  # targets where nothing is predicted (padding), as in torch's cross_entropy

# transformers 5.x renames GPT2Model's ``past_key_values`` argument and output field to ``cache`` (the old
# name warns and goes in 5.40); use whichever this version has (emoctl.backbones.hf_compat).
_CACHE_ARGUMENT = gpt2_cache_argument()


@dataclass
class MiniTTSConfig:
    """Shape of the mini TTS language model (the sizes that do not come from the data)."""

    d_model: int = 224
    """Width of the residual stream."""
    n_layer: int = 8
    """Number of GPT2 blocks; hookpoints ``resid_pre.0`` .. ``resid_pre.{n_layer-1}``."""
    n_head: int = 7
    """Attention heads; must divide ``d_model``."""
    dropout: float = 0.1
    """Dropout on embeddings, attention weights and residual branches (training only)."""
    n_env_codes: int = 256
    """Spectral-envelope codes of the speech codec (the envelope head has one more class: STOP)."""
    n_f0_bins: int = 32
    """F0 bins of the speech codec (bin 0 is unvoiced)."""
    max_text_tokens: int = 200
    """Longest text (in tokenizer ids) the text position table covers."""
    max_speech_tokens: int = 1000
    """Longest utterance (in speech tokens, 20 s at 50 Hz) the speech position table covers."""
    attn_implementation: str = "sdpa"
    """transformers attention kernel: "sdpa" or "eager"."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "n_head", "n_env_codes", "max_text_tokens", "max_speech_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"MiniTTSConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.d_model % self.n_head:
            raise ConfigError(f"MiniTTSConfig.n_head={self.n_head} must divide d_model={self.d_model}.")
        if self.n_f0_bins < 2:
            raise ConfigError(f"MiniTTSConfig.n_f0_bins must be >= 2 (bin 0 is unvoiced), got {self.n_f0_bins}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"MiniTTSConfig.dropout must be in [0, 1), got {self.dropout}.")

    @property
    def speech_vocab_size(self) -> int:
        """Speech tokens of the codec; STOP is the id just after them."""
        return self.n_env_codes * self.n_f0_bins

    @property
    def stop_token(self) -> int:
        return self.speech_vocab_size


class LMOutput(NamedTuple):
    """Factorized next-token log-probabilities at the positions that predict speech."""

    env_logp: torch.Tensor  # (B, T, n_env_codes + 1) float32 (float64 for a float64 model); last class is STOP
    f0_logp: torch.Tensor  # (B, T, n_f0_bins)
    past_key_values: Any  # transformers Cache when use_cache, else None


class _ZeroPositions(nn.Module):
    """Stands in for GPT2's ``wpe``: positions come from the text and speech tables instead.

    Parameter-free, so nothing can train it and the checkpoint holds no table of zeros
    (IndexTTS2 does the same with ``null_position_embeddings``).
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        # Follows the model's .to(device, dtype), so the zeros never promote a bf16 or float64 stream.
        self.register_buffer("_like", torch.zeros(()), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self._like.new_zeros((*position_ids.shape, self.d_model))


class MiniTTSLM(nn.Module):
    """GPT2 over [speaker, emotion, text, start, speech] embeddings with factorized speech-token heads."""

    def __init__(self, config: MiniTTSConfig, *, text_vocab_size: int, n_speakers: int, n_emotions: int) -> None:
        super().__init__()
        if min(text_vocab_size, n_speakers, n_emotions) < 1:
            raise ConfigError(f"text_vocab_size, n_speakers and n_emotions must be >= 1, got {text_vocab_size}, "
                              f"{n_speakers}, {n_emotions}.")
        self.config = config
        self.text_vocab_size, self.n_speakers, self.n_emotions = text_vocab_size, n_speakers, n_emotions
        d = config.d_model
        self.speaker_embedding = nn.Embedding(n_speakers, d)
        self.emotion_embedding = nn.Embedding(n_emotions, d)
        self.text_embedding = nn.Embedding(text_vocab_size, d)
        self.text_pos_embedding = nn.Embedding(config.max_text_tokens, d)
        self.start_of_speech = nn.Parameter(torch.zeros(d))
        self.env_embedding = nn.Embedding(config.n_env_codes, d)
        self.f0_embedding = nn.Embedding(config.n_f0_bins, d)
        self.speech_pos_embedding = nn.Embedding(config.max_speech_tokens + 1, d)  # start token + tokens
        self.gpt = GPT2Model(GPT2Config(
            n_embd=d, n_layer=config.n_layer, n_head=config.n_head, vocab_size=1,
            n_positions=config.max_text_tokens + config.max_speech_tokens + 3,
            resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            bos_token_id=None, eos_token_id=None, attn_implementation=config.attn_implementation,
        ))
        self.gpt.wpe = _ZeroPositions(d)
        self.lm_out = nn.Identity()
        self.env_head = nn.Linear(d, config.n_env_codes + 1)
        self.f0_head = nn.Linear(d, config.n_f0_bins)
        for table in (self.speaker_embedding, self.emotion_embedding, self.text_embedding, self.text_pos_embedding,
                      self.env_embedding, self.f0_embedding, self.speech_pos_embedding):
            nn.init.normal_(table.weight, std=0.02)  # GPT2's initializer range
        nn.init.normal_(self.start_of_speech, std=0.02)

    # ----------------------------------------------------------------- inputs
    def embed_prefix(self, speaker_ids: torch.Tensor, emotion_ids: torch.Tensor, text_ids: torch.Tensor,
                     text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of ``[speaker, emotion, text, start]``, (B, n_text + 3, d).

        ``text_ids`` (B, L) are left-padded; ``text_mask`` (B, L) is True on real
        text.  Padding gets text position 0 and must be masked in attention.
        """
        B, L = text_ids.shape
        positions = torch.arange(L, device=text_ids.device).expand(B, L)  # (B, L)
        if text_mask is not None:
            positions = (positions - (~text_mask).sum(1, keepdim=True)).clamp(min=0)
        if L > self.config.max_text_tokens:
            raise ConfigError(f"text of {L} tokens is longer than the model's max_text_tokens="
                              f"{self.config.max_text_tokens}; split it into shorter sentences.")
        text = self.text_embedding(text_ids) + self.text_pos_embedding(positions)  # (B, L, d)
        start = (self.start_of_speech + self.speech_pos_embedding.weight[0]).expand(B, 1, -1)  # (B, 1, d)
        return torch.cat([self.speaker_embedding(speaker_ids)[:, None], self.emotion_embedding(emotion_ids)[:, None],
                          text, start], dim=1)

    def embed_speech(self, tokens: torch.Tensor, first_position: int = 1) -> torch.Tensor:
        """Embeddings of speech tokens (B, T) in ``[0, speech_vocab_size)`` at speech positions from ``first_position``."""
        T = tokens.shape[1]
        if first_position + T > self.config.max_speech_tokens + 1:
            raise ConfigError(f"speech of {first_position + T - 1} tokens is longer than the model's "
                              f"max_speech_tokens={self.config.max_speech_tokens}.")
        positions = torch.arange(first_position, first_position + T, device=tokens.device)
        env, f0 = tokens // self.config.n_f0_bins, tokens % self.config.n_f0_bins
        return self.env_embedding(env) + self.f0_embedding(f0) + self.speech_pos_embedding(positions)  # (B, T, d)

    # ---------------------------------------------------------------- forward
    def forward(self, inputs_embeds: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                past_key_values: Any = None, use_cache: bool = False, speech_from: int = 0) -> LMOutput:
        """Run GPT2 on (B, S, d) embeddings; heads (and ``lm_out``) see positions ``speech_from:`` only.

        ``attention_mask`` (B, past + S) is 1 on real positions, None when there is no padding.
        Only positions that predict a speech token need the heads, so ``lm_out`` carries
        exactly those states: (B, T + 1, d) in teacher forcing, (B, 1, d) in prefill and decode.
        """
        out = self.gpt(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=use_cache,
                       **{_CACHE_ARGUMENT: past_key_values})
        hidden = self.lm_out(out.last_hidden_state[:, speech_from:])  # (B, T, d)
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # log-probabilities in at least float32
        env_logp = torch.log_softmax(self.env_head(hidden).to(dtype), dim=-1)  # (B, T, n_env + 1)
        f0_logp = torch.log_softmax(self.f0_head(hidden).to(dtype), dim=-1)  # (B, T, n_f0)
        return LMOutput(env_logp, f0_logp, getattr(out, _CACHE_ARGUMENT) if use_cache else None)

    # ---------------------------------------------------------- probabilities
    def token_log_probs(self, env_logp: torch.Tensor, f0_logp: torch.Tensor) -> torch.Tensor:
        """Joint log-probabilities over speech tokens plus STOP, (..., speech_vocab_size + 1).

        Token ``e * n_f0_bins + f`` gets ``env[e] + f0[f]``; the last id (STOP) gets ``env[STOP]``.
        """
        joint = (env_logp[..., :-1, None] + f0_logp[..., None, :]).flatten(-2)  # (..., n_env * n_f0)
        return torch.cat([joint, env_logp[..., -1:]], dim=-1)

    def nll(self, env_logp: torch.Tensor, f0_logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of each target token (B, T), 0 where the target is IGNORE_INDEX.

        Equals cross-entropy on :meth:`token_log_probs` without building the (B, T, 8193) tensor.
        """
        valid = targets != IGNORE_INDEX
        stop = targets == self.config.stop_token
        safe = torch.where(valid & ~stop, targets, 0)
        env_target = torch.where(stop, self.config.n_env_codes, safe // self.config.n_f0_bins)  # (B, T)
        env_nll = -env_logp.gather(-1, env_target[..., None]).squeeze(-1)
        f0_nll = -f0_logp.gather(-1, (safe % self.config.n_f0_bins)[..., None]).squeeze(-1)
        return torch.where(valid, env_nll + torch.where(stop, 0.0, f0_nll), 0.0)
