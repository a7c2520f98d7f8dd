"""A tiny random mini TTS and a dataset whose speech tokens depend on the emotion: plumbing for tests that need
a backbone with real generation, hooks and training but no corpus."""
from __future__ import annotations

import torch

from data_modules.tts_corpus import collate
from emoctl.backbones import Prompt
from emoctl.backbones.mini_tts import CharTokenizer, MiniTTS, MiniTTSConfig, MiniTTSLM
from emoctl.backbones.mini_tts.codec import SpeechCodec

SPEAKERS = ["0011", "0012"]
EMOTIONS = ["Neutral", "Angry", "Sad"]
TINY = dict(d_model=32, n_layer=3, n_head=4, n_env_codes=6, n_f0_bins=4, max_text_tokens=40, max_speech_tokens=60,
            dropout=0.0)


def random_tts(seed: int = 0, dtype: torch.dtype = torch.float32, codec: SpeechCodec | None = None) -> MiniTTS:
    """A tiny MiniTTS whose random weights are large enough that every prompt leads somewhere different."""
    torch.manual_seed(seed)
    tokenizer = CharTokenizer()
    lm = MiniTTSLM(MiniTTSConfig(**TINY), text_vocab_size=tokenizer.vocab_size, n_speakers=len(SPEAKERS),
                   n_emotions=len(EMOTIONS))
    with torch.no_grad():
        for p in lm.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.5)
        lm.env_head.bias[-1] = -3.0  # STOP rare but reachable: utterances of a few to tens of tokens
    return MiniTTS(lm, tokenizer, SPEAKERS, EMOTIONS, codec=codec).to(dtype).eval()


def random_codec(n_env: int = 6, n_f0: int = 4, seed: int = 0) -> SpeechCodec:
    """A codec with random tables (decodes to noise-like speech; good for plumbing and persistence)."""
    g = torch.Generator().manual_seed(seed)
    centroids = torch.randn(n_env, 40, generator=g) * 0.2
    centroids[:, 0] = -6.0 + torch.randn(n_env, generator=g)
    return SpeechCodec(centroids, torch.zeros(n_env), torch.full((n_env, 1), -20.0), n_f0_bins=n_f0,
                       f0_range=(50.0, 600.0), f0_lo=80.0, f0_hi=300.0, fft_size=1024)


PROMPTS = [Prompt("hello there, how are you?", "0011", "Angry"), Prompt("hi", "0012", "Sad"),
           Prompt("what a day it is", "0011", "Neutral"), Prompt("no.", "0012", "Angry")]


class EmotionPatternData(torch.utils.data.Dataset):
    """Speech tokens fixed by the emotion: env code (e + t) mod 6 and F0 bin e + 1 for 4 + e tokens."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        words = ["one", "two", "three", "four", "five"]
        self.items = []
        for _ in range(n):
            e = int(torch.randint(0, 3, (1,), generator=g))
            text = " ".join(words[int(i)] for i in torch.randint(0, 5, (3,), generator=g))
            speaker = SPEAKERS[int(torch.randint(0, 2, (1,), generator=g))]
            self.items.append((Prompt(text, speaker, EMOTIONS[e]), pattern(e)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def pattern(e: int) -> torch.Tensor:
    t = torch.arange(4 + e)
    return ((e + t) % 6) * 4 + (e + 1)


def batches(dataset: EmotionPatternData, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                                       collate_fn=lambda items: collate(*zip(*items)),
                                       generator=torch.Generator().manual_seed(0))


def steered_tokens(tts: MiniTTS, steering=(), **kw) -> list[torch.Tensor]:
    """Tokens of :data:`PROMPTS` (25-token cap, seed 7, temperature 1 unless ``kw`` says otherwise), with the
    interventions in ``steering`` attached, or none."""
    from emoctl.steering import steer

    kw = {"max_new_tokens": 25, "seed": 7, "temperature": 1.0, **kw}
    if not steering:
        return tts.generate(PROMPTS, **kw).tokens
    with steer(tts, *steering):
        return tts.generate(PROMPTS, **kw).tokens


def same_tokens(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
