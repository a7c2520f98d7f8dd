"""``emoctl bench harvest``: what reading and storing a hookpoint adds to generation.

Three rows, timed round-robin in the same run on the same prompts and seed (so every
repeat generates the same tokens and does the same work):

1. ``generate`` with no hook attached (the backbone registers no torch hook at all);
2. the same with an :class:`~emoctl.harvest.ActivationRecorder` on the hookpoint and the
   per-utterance row selection after the batch;
3. the same plus an :class:`~emoctl.store.ActivationWriter` writing the rows to a
   temporary store (its background thread included).

The trained mini TTS is used when its checkpoint is present; otherwise a random one
of the same shape (d_model 192, 8 blocks, 6 heads, 256 x 32 speech tokens, as in
recipes/mini_tts.yaml), which generates to ``max_new_tokens`` and so does a fixed amount of work.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Literal

import torch
from tqdm.auto import tqdm

from emoctl.backbones.base import Backbone
from emoctl.backbones.loading import load_backbone
from emoctl.backbones.mini_tts import CharTokenizer, MiniTTS, MiniTTSConfig, MiniTTSLM
from emoctl.bench.harvest_indextts2 import bench_harvest_indextts2
from emoctl.corpus.sentences import generate_sentences
from emoctl.emotions import ESD_EMOTIONS
from emoctl.errors import ConfigError
from emoctl.harvest.prompts import GridPrompt
from emoctl.harvest.recorder import ActivationRecorder
from emoctl.store import ActivationWriter, StoreSpec


def _random_mini_tts(seed: int) -> Backbone:
    torch.manual_seed(seed)
    tokenizer = CharTokenizer()
    speakers = [f"00{i}" for i in range(11, 21)]
    emotions = list(ESD_EMOTIONS)
    config = MiniTTSConfig(d_model=192, n_layer=8, n_head=6, dropout=0.0, n_env_codes=256, n_f0_bins=32)
    lm = MiniTTSLM(config, text_vocab_size=tokenizer.vocab_size, n_speakers=len(speakers), n_emotions=len(emotions))
    return MiniTTS(lm, tokenizer, speakers, emotions).eval().requires_grad_(False)


def bench_harvest(batch_size: int = 8, max_new_tokens: int | None = None, repeats: int | None = None,
                  hookpoint: str | None = None, checkpoint: str | None = None, seed: int = 0,
                  backbone: Literal["mini_tts", "indextts2"] = "mini_tts") -> list[dict]:
    """Time generation without and with the harvester; print a Markdown table and return its rows.

    Args:
        batch_size: Prompts generated together.
        max_new_tokens: Speech tokens per utterance at most (None: 200 for mini_tts, 32 for indextts2).
        repeats: Timed rounds; each round runs every row once (None: 5 for mini_tts, 1 for indextts2).
        hookpoint: Where the harvester reads (None: resid_pre.5 for mini_tts, resid_pre.16 for indextts2).
        checkpoint: MiniTTS folder (None: emoctl/assets/mini_tts, or a random model of its shape if absent), or
            an IndexTTS2 release folder (None: random weights at the released GPT shape).
        seed: Sampling seed (the same in every row and round).
        backbone: mini_tts (hooks and store writer against plain generation) or indextts2 (the adapter,
            batched and not, against upstream's one-at-a-time inference_speech; see bench/harvest_indextts2.py).
    """
    if backbone == "indextts2":
        return bench_harvest_indextts2(batch_size, 32 if max_new_tokens is None else max_new_tokens,
                                       1 if repeats is None else repeats, hookpoint or "resid_pre.16",
                                       release=checkpoint, seed=seed)
    if backbone != "mini_tts":
        raise ConfigError(f"bench harvest --backbone takes mini_tts or indextts2, got {backbone!r}.")
    # None takes the default; 0 is refused below, not silently replaced by it
    max_new_tokens = 200 if max_new_tokens is None else max_new_tokens
    repeats, hookpoint = 5 if repeats is None else repeats, hookpoint or "resid_pre.5"
    if repeats < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(f"repeats, batch_size and max_new_tokens must be >= 1, got {repeats}, {batch_size}, "
                          f"{max_new_tokens}.")
    try:
        backbone, which = load_backbone("mini_tts", checkpoint), f"trained checkpoint ({checkpoint or 'default'})"
    except ConfigError:
        if checkpoint is not None:
            raise
        backbone, which = _random_mini_tts(seed), "random weights, shape of recipes/mini_tts.yaml (no checkpoint)"

    texts = generate_sentences(batch_size, seed=0)
    prompts = [GridPrompt(text=t, voice=backbone.speakers[i % len(backbone.speakers)],
                          emotion=backbone.emotions[i % len(backbone.emotions)], utt_id=f"b{i}", text_id=f"s{i}")
               for i, t in enumerate(texts)]
    recorder = ActivationRecorder(backbone, hookpoint)
    tmp = tempfile.TemporaryDirectory(prefix="emoctl-bench-harvest-")
    spec = StoreSpec(d_model=backbone.hidden_size, dtype="float32", hookpoint=hookpoint, backbone=backbone.backbone_id)
    counter = iter(range(1 << 30))
    tokens_made: list[int] = []

    def generate():
        gen = backbone.generate(prompts, max_new_tokens=max_new_tokens, seed=seed)
        tokens_made.append(sum(len(t) for t in gen.tokens))
        return gen

    def plain() -> None:
        generate()

    def recorded() -> None:
        with recorder:
            recorder.start()
            recorder.rows(generate())

    def stored() -> None:
        path = Path(tmp.name) / f"store{next(counter)}"
        with ActivationWriter(path, spec) as writer, recorder:
            recorder.start()
            gen = generate()
            for prompt, rows in zip(prompts, recorder.rows(gen)):
                if rows.shape[0]:
                    writer.append(prompt.meta(), rows)

    cases: list[tuple[str, Callable[[], None]]] = [
        ("generate, no hook", plain), (f"+ recorder on {hookpoint}", recorded), ("+ recorder + store writer", stored)]
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    with torch.inference_mode():
        plain()  # warm-up: allocator, kernels, first-call imports
        for _ in tqdm(range(repeats), desc="bench harvest", unit="round"):
            for name, fn in cases:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    tmp.cleanup()
    if len(set(tokens_made)) != 1:
        raise RuntimeError(f"rows generated different token counts {sorted(set(tokens_made))}; timings not comparable")
    base = statistics.median(times[cases[0][0]])
    rows = [{"row": name, "median_s": statistics.median(t), "ratio": statistics.median(t) / base,
             "tokens": tokens_made[0]} for name, t in times.items()]
    print(f"\nBackbone: {which}; {backbone.backbone_id}; batch {batch_size}, {tokens_made[0]} tokens per batch, "
          f"{repeats} interleaved rounds, torch threads {torch.get_num_threads()}.\n")
    print("| row | median s | ratio to no hook |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['row']} | {r['median_s']:.3f} | {r['ratio']:.3f} |")
    return rows
