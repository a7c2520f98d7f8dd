"""``emoctl bench cosyvoice``: a CosyVoice adapter's decoding against upstream's own loop, and the cost of an
EmoShift training step against one frozen teacher-forced forward; ``--kind cosyvoice`` (CosyVoice-300M-Instruct)
or ``--kind cosyvoice2``.

Decoding rows, timed in the same run on the same prompts and seeds (prompt b draws from seed + b), so every
row generates the very same tokens (a batch equals each prompt alone, and prompt b alone equals upstream's
loop under ``torch.manual_seed(seed + b)``):

1. upstream's loop (``TransformerLM.inference`` as ``frontend_instruct`` feeds it, or ``Qwen2LM.inference`` as
   ``frontend_instruct2`` does, with the full-length step mask of :mod:`emoctl.backbones.cosyvoice2.reference`),
   one prompt at a time;
2. the adapter one prompt at a time;
3. the adapter on the whole batch.

The stop token's logit is pinned low in both copies so that every utterance decodes exactly
``max_new_tokens`` tokens (a random head would end utterances at random lengths).  Sampling is the release's
(top-p 0.8, top-k 25, repetition-aware window 10, tau 0.1).

Training rows: one frozen teacher-forced forward (no gradients) of a batch, and one EmoShift step on the same
batch (the layer on ``lm_out``, forward, loss, backward into the five matrices, Adam step).
"""
from __future__ import annotations

import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from emoctl.backbones import Prompt
from emoctl.backbones.conditions import VoiceClip, VoiceName
from emoctl.backbones.cosyvoice2 import random_release as release_cv2
from emoctl.backbones.cosyvoice2.reference import upstream_inference as upstream_cosyvoice2
from emoctl.backbones.cosyvoice_instruct import random_release as release_300m
from emoctl.backbones.indextts2.random_release import write_voice_clip
from emoctl.backbones.loading import BackboneSpec
from emoctl.bench.rounds import equal_work_rows, resolve_device, sync
from emoctl.corpus.sentences import generate_sentences
from emoctl.emosteer.layer import EmoSteerConfig
from emoctl.emosteer.module import EmoShiftModule
from emoctl.emotions import ESD_EMOTIONS
from emoctl.errors import ConfigError


@dataclass(frozen=True)
class _Family:
    """What differs between the two CosyVoice benchmarks."""

    name: str
    writer: Any  # the random_release module
    released_width: int  # the LM width at lm_out of the released model
    upstream: str  # the loop's name in the table


FAMILIES = {"cosyvoice": _Family("CosyVoice-300M", release_300m, 1024, "TransformerLM.inference"),
            "cosyvoice2": _Family("CosyVoice2", release_cv2, 896, "Qwen2LM.inference")}


def _upstream_300m(tts: Any, prompt: Prompt, seed: int, max_new_tokens: int, device: str) -> int:
    text = tts.text_ids(prompt.text)
    instruction = tts.text_ids(prompt.emotion.text + "<endofprompt>")
    torch.manual_seed(seed)
    loop = tts.llm.inference(
        text=torch.tensor([text], dtype=torch.int32, device=device),
        text_len=torch.tensor([len(text)], dtype=torch.int32, device=device),
        prompt_text=torch.tensor([instruction], dtype=torch.int32, device=device),
        prompt_text_len=torch.tensor([len(instruction)], dtype=torch.int32, device=device),
        prompt_speech_token=torch.zeros(1, 0, dtype=torch.int32, device=device),
        prompt_speech_token_len=torch.tensor([0], dtype=torch.int32, device=device),
        embedding=torch.zeros(0, 192, device=device))
    return len(list(itertools.islice(loop, max_new_tokens)))


def bench_cosyvoice(batch_size: int = 8, max_new_tokens: int = 32, repeats: int = 1, train_tokens: int = 150,
                    release: str | None = None, full_size: bool = True, device: str = "cpu", seed: int = 0,
                    kind: str = "cosyvoice") -> list[dict]:
    """Tokens per second of upstream's one-at-a-time loop and of the adapter, and the EmoShift step's cost.

    Args:
        batch_size: Prompts per adapter batch (the one-at-a-time rows go through the same prompts), and the
            EmoShift training batch.
        max_new_tokens: Speech tokens each utterance decodes.
        repeats: Timed rounds (interleaved); the table reports each row's best round.
        train_tokens: Speech tokens per utterance in the training rows (ESD's clips average about 2.7 s, 135
            tokens at 50 Hz).
        release: A CosyVoice release folder to load; None writes a random one in a temporary folder (the
            released LLM shape when full_size, else the 2 + 2-block test shape).
        full_size: With release None, build the released LLM (310.7 M parameters).
        device: cpu or cuda (float32, upstream's default precision).
        seed: Prompt b draws from seed + b in every decoding row.
        kind: cosyvoice (CosyVoice-300M-Instruct, 310.7 M parameters at full size) or cosyvoice2 (CosyVoice2's
            Qwen2LM, 505.8 M).
    """
    if kind not in FAMILIES:
        raise ConfigError(f"bench cosyvoice --kind {kind!r}: the benchmark runs cosyvoice or cosyvoice2.")
    family = FAMILIES[kind]
    if repeats < 1 or batch_size < 1 or max_new_tokens < 1 or train_tokens < 1:
        raise ConfigError(f"repeats, batch_size, max_new_tokens and train_tokens must be >= 1, got {repeats}, "
                          f"{batch_size}, {max_new_tokens}, {train_tokens}.")
    device = str(resolve_device(device, "bench cosyvoice", auto=False))

    tmp = tempfile.TemporaryDirectory(prefix="emoctl-bench-cosyvoice-")
    start = time.perf_counter()
    sizes = family.writer.RandomReleaseSize
    size = sizes.full() if full_size else sizes.tiny()
    root = Path(release) if release else family.writer.write_random_release(Path(tmp.name) / "release", size)
    emotions = list(ESD_EMOTIONS)
    width = family.released_width if release else size.d
    module = EmoShiftModule(EmoSteerConfig(hidden_size=width, emotions=emotions, neutral="layer"),
                            BackboneSpec(kind, str(root), device))
    module.to(device)
    tts = module.backbone
    built_s = time.perf_counter() - start
    voice = VoiceName(tts.speakers[0]) if tts.speakers else VoiceClip(str(write_voice_clip(Path(tmp.name) / "v.wav")))
    prompts = [Prompt(t, voice, tts.condition_for(emotions[i % 5]))
               for i, t in enumerate(generate_sentences(batch_size, seed=0))]
    with torch.no_grad():
        tts.llm.llm_decoder.bias[tts.stop_token] = -1.0e4  # every utterance decodes max_new_tokens tokens
    sampling = tts.upstream_sampling

    def upstream_one_at_a_time() -> int:
        if kind == "cosyvoice2":
            return sum(len(upstream_cosyvoice2(tts, p, seed + b, max_tokens=max_new_tokens))
                       for b, p in enumerate(prompts))
        return sum(_upstream_300m(tts, p, seed + b, max_new_tokens, device) for b, p in enumerate(prompts))

    def adapter(batched: bool) -> Callable[[], int]:
        def run() -> int:
            groups = [prompts] if batched else [[p] for p in prompts]
            made = 0
            for g, group in enumerate(groups):
                out = tts.generate(group, sampling, seed=seed + (0 if batched else g), max_new_tokens=max_new_tokens)
                made += sum(len(t) for t in out.tokens)
            return made
        return run

    cases = [(f"upstream {family.upstream}, one at a time", upstream_one_at_a_time),
             ("adapter, one at a time", adapter(False)),
             (f"adapter, batch {batch_size}", adapter(True))]
    with torch.inference_mode():
        adapter(True)()  # warm-up
        rows, tokens = equal_work_rows(cases, repeats, "bench cosyvoice decoding")

    # ---- EmoShift: one training step against one frozen teacher-forced forward, same batch
    g = torch.Generator().manual_seed(seed)
    speech = torch.randint(0, tts.stop_token, (batch_size, train_tokens), generator=g).to(device)
    lengths = torch.full((batch_size,), train_tokens, device=device)
    labelled = [Prompt(p.text, p.voice, emotions[i % 5]) for i, p in enumerate(prompts)]
    batch = (labelled, speech, lengths)
    optimizer = torch.optim.Adam(module.emosteer.parameters(), lr=1e-3)

    def frozen_forward() -> None:
        with torch.no_grad():
            tts.teacher_forced_nll(module.backbone_prompts(labelled), speech, lengths)

    def emoshift_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        module._losses(batch)["loss"].backward()
        optimizer.step()

    train = [("frozen teacher-forced forward (no grad)", frozen_forward), ("EmoShift training step", emoshift_step)]
    train_best: dict[str, float] = {}
    module.train()
    emoshift_step()  # warm-up
    for _ in tqdm(range(max(repeats, 2)), desc="bench cosyvoice EmoShift", unit="round"):
        for name, fn in train:
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            train_best[name] = min(train_best.get(name, float("inf")), time.perf_counter() - t0)
    tmp.cleanup()
    forward_s = train_best[train[0][0]]
    for name, _ in train:
        rows.append({"row": name, "seconds": train_best[name], "tokens_per_s": batch_size * train_tokens /
                     train_best[name], "ratio": train_best[name] / forward_s})

    n_params = sum(p.numel() for p in tts.llm.parameters())
    print(f"\n{family.name} LLM {tts.num_layers} x {tts.hidden_size} ({n_params / 1e6:.1f} M parameters, random "
          f"weights, built and loaded in {built_s:.0f} s) on {device}, torch threads {torch.get_num_threads()}; "
          f"{batch_size} prompts, {tokens} tokens in every decoding row, best of {repeats} round(s).\n")
    print("| decoding | seconds | tokens/s | ratio to upstream |")
    print("|---|---:|---:|---:|")
    for r in rows[:3]:
        print(f"| {r['row']} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | {r['ratio']:.2f} |")
    print(f"\nEmoShift ({module.emosteer.num_parameters() / 1e6:.2f} M trainable parameters on lm_out), batch "
          f"{batch_size} x {train_tokens} speech tokens:\n")
    print("| training | seconds | speech tokens/s | ratio to the frozen forward |")
    print("|---|---:|---:|---:|")
    for r in rows[3:]:
        print(f"| {r['row']} | {r['seconds']:.3f} | {r['tokens_per_s']:.0f} | {r['ratio']:.2f} |")
    return rows
