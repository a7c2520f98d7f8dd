"""One pooled state per utterance at many hookpoints: what layer probing and mean-difference directions read.

CoCoEmo (wsssy/CoCoEmo, ``cocoemo/steering/_core_cosyvoice.py::extract_with_hooks_audio``) runs the speech LM
once, teacher-forced over (text, the utterance's speech tokens), and keeps the last position of each hooked
operation's output.  :func:`pooled_states` does the same through the contract's teacher-forced pass and hooks,
for any backbone and any set of hookpoints at once.  Each utterance is its own pass, so its last position is its
last real token whatever the padding of a batch would have been (a right-padded batch's ``[:, -1]`` is padding
for every row but the longest).

The pairs come from two sources:

* :func:`generated_pairs`: the backbone speaks each sentence in an emotion and in Neutral with the same seed,
  and the states are read back over its own tokens (the decode states of the last generated token);
* :func:`recorded_pairs`: the corpus's recordings of one sentence by one speaker in an emotion and in Neutral,
  tokenized by the backbone's own speech tokenizer (CoCoEmo's protocol).

Both sides are read with the backbone told Neutral, as CoCoEmo reads both without an emotion instruction: the
two passes differ only in their speech tokens, so a layer separates them by what the speech carries, not by
the prompt's emotion token, and a mean difference is what steering a Neutral prompt has to add.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from emoctl.backbones.base import Backbone, Prompt
from emoctl.backbones.conditions import Voice
from emoctl.backbones.hooks import Phase
from emoctl.backbones.sampling import Sampling
from emoctl.corpus.esd import open_esd, read_wave
from emoctl.emotions import NEUTRAL
from emoctl.errors import ConfigError

Pool = Literal["last", "mean"]
POOLS = ("last", "mean")
"""``last``: the state at the utterance's last speech token (CoCoEmo's); ``mean``: the mean over its speech
tokens' positions."""


@dataclass
class PairedUtterances:
    """Emotional utterances and their Neutral twins (same sentence, speaker and, for generations, seed)."""

    emotions: list[str]
    """Corpus emotion of pair i's emotional side."""
    emotional: list[Prompt]
    """The prompts the states are read with (told Neutral; see the module docstring)."""
    emotional_tokens: list[Tensor]
    neutral: list[Prompt]
    neutral_tokens: list[Tensor]
    dropped: int = 0
    """Pairs left out because a side never reached its stop token (generations only)."""

    def __post_init__(self) -> None:
        n = len(self.emotions)
        if not (len(self.emotional) == len(self.emotional_tokens) == len(self.neutral) == len(self.neutral_tokens)
                == n):
            raise ValueError("PairedUtterances: every list must hold one entry per pair")

    def __len__(self) -> int:
        return len(self.emotions)


@dataclass
class PairedStates:
    """Pooled states of paired utterances: per hookpoint, (N, d) float32 for each side."""

    emotions: list[str]
    emotional: dict[str, Tensor]
    neutral: dict[str, Tensor]
    pool: str
    dropped: int = 0
    texts: list[str] = field(default_factory=list)

    @property
    def hookpoints(self) -> list[str]:
        return list(self.emotional)

    def counts(self) -> dict[str, int]:
        """Pairs per emotion."""
        out: dict[str, int] = defaultdict(int)
        for e in self.emotions:
            out[e] += 1
        return dict(sorted(out.items()))


@torch.no_grad()
def pooled_states(backbone: Backbone, prompts: Sequence[Prompt], tokens: Sequence[Tensor], hookpoints: Sequence[str],
                  pool: Pool = "last", progress: bool | str = False) -> dict[str, Tensor]:
    """Per hookpoint, (N, d) float32: each utterance's pooled state in one teacher-forced pass over its tokens."""
    if pool not in POOLS:
        raise ConfigError(f"pool={pool!r}: choose one of {', '.join(POOLS)}.")
    if len(prompts) != len(tokens) or not prompts:
        raise ConfigError(f"pooled_states needs one token sequence per prompt and at least one prompt (got "
                          f"{len(prompts)} prompts, {len(tokens)} token sequences).")
    unknown = [h for h in hookpoints if h not in backbone.hookpoints]
    if unknown or not hookpoints:
        raise ConfigError(f"hookpoints {unknown or list(hookpoints)} are not this backbone's; it has "
                          f"{', '.join(backbone.hookpoints)}.")
    grabbed: dict[str, Tensor] = {}

    def reader(hookpoint: str) -> Callable[[Tensor, object], None]:
        def read(x: Tensor, ctx: object) -> None:
            grabbed[hookpoint] = x.detach()
        return read

    handles = [backbone.hooks.add_reader(h, reader(h), phases=[Phase.TEACHER_FORCED]) for h in hookpoints]
    out: dict[str, list[Tensor]] = {h: [] for h in hookpoints}
    try:
        bar = tqdm(list(zip(prompts, tokens)), desc=progress if isinstance(progress, str) else "pooled states",
                   disable=not progress, unit="utt")
        for prompt, speech in bar:
            n = int(speech.numel())
            if n == 0:
                raise ConfigError(f"utterance {prompt.utt_id or prompt.text!r} has no speech tokens; a pooled state "
                                  "needs at least one.")
            grabbed.clear()
            backbone.teacher_forced([prompt], [speech.to(torch.long).reshape(-1)])
            for h in hookpoints:
                x = grabbed.get(h)
                if x is None or x.ndim != 3 or x.shape[1] < n:
                    raise ConfigError(f"hookpoint {h} did not fire in the teacher-forced pass of {prompt.text!r} "
                                      f"with a (1, >= {n}, d) tensor; its backbone must declare the phase.")
                row = x[0, -1] if pool == "last" else x[0, -n:].float().mean(0)
                out[h].append(row.float().cpu())
    finally:
        for handle in handles:
            handle.remove()
    stacked = {h: torch.stack(rows) for h, rows in out.items()}
    for h, rows in stacked.items():
        if not bool(torch.isfinite(rows).all()):
            raise ConfigError(f"non-finite pooled states at {h} ({int((~torch.isfinite(rows)).sum())} values); the "
                              "backbone's activations overflow there. Check its weights and dtype.")
    return stacked


def paired_states(backbone: Backbone, pairs: PairedUtterances, hookpoints: Sequence[str], pool: Pool = "last",
                  progress: bool = False) -> PairedStates:
    """:func:`pooled_states` of both sides of every pair."""
    if not len(pairs):
        raise ConfigError("no pairs to read states from.")
    emotional = pooled_states(backbone, pairs.emotional, pairs.emotional_tokens, hookpoints, pool,
                              "emotional states" if progress else False)
    neutral = pooled_states(backbone, pairs.neutral, pairs.neutral_tokens, hookpoints, pool,
                            "neutral states" if progress else False)
    return PairedStates(list(pairs.emotions), emotional, neutral, pool, pairs.dropped,
                        [p.text for p in pairs.emotional])


@torch.no_grad()
def generated_pairs(backbone: Backbone, texts: Sequence[str], speakers: Sequence[str], emotions: Sequence[str],
                    voice_for: Callable[[str, str], Voice], sampling: Sampling, seed: int, batch_size: int = 25,
                    progress: bool = False) -> PairedUtterances:
    """Every (emotion, speaker, text) spoken in the emotion and, with the same batch seed, in Neutral.

    Pairs whose either side hit the token cap are dropped (their last state is not an ending) and counted."""
    bad = [e for e in emotions if e == NEUTRAL]
    if bad or not emotions or not texts or not speakers:
        raise ConfigError(f"generated_pairs needs non-Neutral emotions, texts and speakers (got emotions="
                          f"{list(emotions)}, {len(texts)} texts, {len(speakers)} speakers).")
    neutral_condition = backbone.condition_for(NEUTRAL)
    grid = [(e, s, t) for e in emotions for s in speakers for t in texts]
    out = PairedUtterances([], [], [], [], [])
    starts = range(0, len(grid), batch_size)
    for k, start in enumerate(tqdm(starts, desc="paired generations", disable=not progress, unit="batch")):
        cell = grid[start:start + batch_size]
        emo = [Prompt(t, voice_for(s, t), backbone.condition_for(e), utt_id=f"{e}|{s}|{i}")
               for i, (e, s, t) in enumerate(cell, start)]
        neu = [p.with_emotion(neutral_condition, utt_id=f"{NEUTRAL}|{p.utt_id}") for p in emo]
        batch_sampling = dataclasses.replace(sampling, seed=seed + k)
        a, b = backbone.generate(emo, batch_sampling), backbone.generate(neu, batch_sampling)
        for i, (e, _, _) in enumerate(cell):
            if not (a.finished[i] and b.finished[i]) or a.tokens[i].numel() == 0 or b.tokens[i].numel() == 0:
                out.dropped += 1
                continue
            out.emotions.append(e)
            out.emotional.append(emo[i].with_emotion(neutral_condition))  # read back told Neutral
            out.emotional_tokens.append(a.tokens[i])
            out.neutral.append(neu[i])
            out.neutral_tokens.append(b.tokens[i])
    if not len(out):
        raise ConfigError(f"every one of the {out.dropped} generated pairs hit the token cap "
                          f"(max_new_tokens={sampling.max_new_tokens}); raise it.")
    return out


def recorded_pairs(backbone: Backbone, corpus_root: str | Path, split: str, speakers: Sequence[str],
                   emotions: Sequence[str], voice_for: Callable[[str, str], Voice], n_texts: int | None = None,
                   progress: bool = False) -> PairedUtterances:
    """The corpus's recordings of one sentence by one speaker in an emotion and in Neutral, in the backbone's
    speech tokens (CoCoEmo pairs each emotional clip with its speaker's neutral reading of the same text)."""
    utterances = open_esd(corpus_root, speakers=list(speakers), emotions=[NEUTRAL, *emotions])
    utterances = [u for u in utterances if u.split == split]
    neutral_by_key = {(u.speaker, u.text): u for u in utterances if u.emotion == NEUTRAL}
    chosen_texts = sorted({u.text for u in utterances if u.emotion == NEUTRAL})
    if n_texts is not None:
        chosen_texts = chosen_texts[:n_texts]
    keep = set(chosen_texts)
    emotional = [u for u in utterances if u.emotion != NEUTRAL and u.text in keep
                 and (u.speaker, u.text) in neutral_by_key]
    if not emotional:
        raise ConfigError(f"no {split} recordings in {corpus_root} pair an emotion of {list(emotions)} with a "
                          f"Neutral reading of the same sentence by the same speaker ({list(speakers)}).")
    cache: dict[str, Tensor] = {}

    def tokens(u) -> Tensor:
        if u.utt_id not in cache:
            if u.path is None:
                raise ConfigError(f"recording {u.utt_id} has no file; recorded pairs read ESD folders.")
            wave, rate = read_wave(u.path)
            cache[u.utt_id] = backbone.encode_speech(np.asarray(wave, dtype=np.float32), rate)
        return cache[u.utt_id]

    out = PairedUtterances([], [], [], [], [])
    neutral_condition = backbone.condition_for(NEUTRAL)
    for u in tqdm(emotional, desc="tokenizing recordings", disable=not progress, unit="pair"):
        twin = neutral_by_key[u.speaker, u.text]
        voice = voice_for(u.speaker, u.text)
        out.emotions.append(u.emotion)
        out.emotional.append(Prompt(u.text, voice, neutral_condition, utt_id=u.utt_id))  # told Neutral
        out.emotional_tokens.append(tokens(u))
        out.neutral.append(Prompt(u.text, voice, neutral_condition, utt_id=twin.utt_id))
        out.neutral_tokens.append(tokens(twin))
    return out
