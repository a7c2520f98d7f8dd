"""``emoctl bench harvest --backbone indextts2``: the adapter's batched generation against upstream's own.

Rows, timed in the same run on the same prompts and seeds, so that every row generates the very same tokens
(a batch equals each prompt alone, and prompt b alone equals upstream's ``inference_speech`` with seed + b):

1. upstream's ``UnifiedVoice.inference_speech``, one prompt at a time, its KV cache repaired (the fair
   baseline: unrepaired under transformers 5.24 it recomputes the sequence at every step);
2. the adapter one prompt at a time, without and with an ActivationRecorder on the hookpoint;
3. the adapter on the whole batch, without and with the recorder.

The GPT is the released shape (24 blocks x 1280, random weights in upstream's layout); the conditioners'
feature extractor and the vocoder chain are tiny (they do not run while decoding).  Sampling is upstream's
(temperature 0.8, top-k 30, top-p 0.8, repetition penalty 10) with one beam, so rows do equal work.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from emoctl.backbones import Prompt
from emoctl.backbones.conditions import VoiceClip
from emoctl.backbones.indextts2.random_release import RandomReleaseSize, write_random_release, write_voice_clip
from emoctl.backbones.indextts2.upstream import repair_cached_generate
from emoctl.backbones.loading import load_backbone
from emoctl.bench.rounds import equal_work_rows, resolve_device
from emoctl.corpus.sentences import generate_sentences
from emoctl.emotions import ESD_EMOTIONS
from emoctl.errors import ConfigError
from emoctl.harvest.recorder import ActivationRecorder

UPSTREAM_SAMPLING = dict(temperature=0.8, top_k=30, top_p=0.8, repetition_penalty=10.0)


def bench_harvest_indextts2(batch_size: int = 8, max_new_tokens: int = 32, repeats: int = 1,
                            hookpoint: str = "resid_pre.16", release: str | None = None, voice_clip: str | None = None,
                            full_size: bool = True, device: str = "cpu", seed: int = 0) -> list[dict]:
    """Tokens per second of upstream's one-at-a-time generation and of the adapter, batched and not.

    Args:
        batch_size: Prompts per adapter batch (and prompts the one-at-a-time rows go through).
        max_new_tokens: Speech tokens per utterance at most.
        repeats: Timed rounds (interleaved); the table reports each row's best round.
        hookpoint: Where the recorder reads (resid_pre.16: the SAE seed's layer).
        release: An IndexTTS2 release folder to load; None writes a random one (released GPT shape when
            full_size, else the 2-block test shape) in a temporary folder.
        voice_clip: The reference recording every prompt is voiced by; None writes a synthetic one.
        full_size: With release None, build the released 24 x 1280 GPT (866 M parameters, about 4.5 GB).
        device: cpu or cuda (float32, upstream's default precision).
        seed: Prompt b draws from seed + b in every row.
    """
    if repeats < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(f"repeats, batch_size and max_new_tokens must be >= 1, got {repeats}, {batch_size}, "
                          f"{max_new_tokens}.")
    device = str(resolve_device(device, "bench harvest", auto=False))
    from indextts.gpt.model_v2 import UnifiedVoice

    tmp = tempfile.TemporaryDirectory(prefix="emoctl-bench-indextts2-")
    folder = Path(tmp.name)
    start = time.perf_counter()
    size = RandomReleaseSize.released_gpt() if full_size else RandomReleaseSize.tiny()
    root = Path(release) if release else write_random_release(folder / "release", size)
    voice = VoiceClip(voice_clip or str(write_voice_clip(folder / "voice.wav")))
    tts = load_backbone("indextts2", str(root), device)
    built_s = time.perf_counter() - start
    if hookpoint not in tts.hookpoints:
        hookpoint = f"resid_pre.{tts.num_layers * 2 // 3}"
    emotions = list(ESD_EMOTIONS)
    prompts = [Prompt(t, voice, tts.condition_for(emotions[i % 5]))
               for i, t in enumerate(generate_sentences(batch_size, seed=0))]
    upstream = UnifiedVoice(**tts.release.config.gpt)
    upstream.load_state_dict(tts.gpt.state_dict())
    upstream.eval().requires_grad_(False).post_init_gpt2_config(kv_cache=True)
    repair_cached_generate(upstream.to(device).inference_model)
    tts._conditions.clear()  # the adapter's rows pay for their conditioning, as upstream's does
    recorder = ActivationRecorder(tts, hookpoint)
    # every utterance decodes exactly max_new_tokens tokens in every row: a random head's stop token would end
    # utterances at random lengths (the same in every row, but mostly short)
    for model in (tts.gpt, upstream):
        model.mel_head.bias.data[tts.gpt.stop_mel_token] = -1.0e4

    def upstream_one_at_a_time() -> int:
        made = 0
        for b, prompt in enumerate(prompts):
            # what upstream's infer() computes per call: the clip's features are cached there too
            clip = tts._clip(prompt.voice.path, None)
            features, emovec = clip.features, tts._emotion_vector(prompt, clip)
            text = torch.tensor([tts.text_ids(prompt.text)], dtype=torch.int32, device=device)
            width = torch.tensor([features.shape[-1]], device=device)
            torch.manual_seed(seed + b)
            codes, _ = upstream.inference_speech(features, text, features, cond_lengths=width,
                                                 emo_cond_lengths=width, emo_vec=emovec, do_sample=True,
                                                 num_beams=1, max_generate_length=max_new_tokens,
                                                 num_return_sequences=1, **UPSTREAM_SAMPLING)
            stops = (codes[0] == tts.gpt.stop_mel_token).nonzero()
            made += int(stops[0, 0]) if stops.numel() else codes.shape[1]
        return made

    def adapter(batched: bool, record: bool) -> Callable[[], int]:
        def run() -> int:
            groups = [prompts] if batched else [[p] for p in prompts]
            made = 0
            for g, group in enumerate(groups):
                if record:
                    with recorder:
                        recorder.start()
                        out = tts.generate(group, seed=seed + (0 if batched else g), max_new_tokens=max_new_tokens,
                                           **UPSTREAM_SAMPLING)
                        recorder.rows(out)
                else:
                    out = tts.generate(group, seed=seed + (0 if batched else g), max_new_tokens=max_new_tokens,
                                       **UPSTREAM_SAMPLING)
                made += sum(len(t) for t in out.tokens)
            return made
        return run

    cases = [("upstream inference_speech, one at a time (cache repaired)", upstream_one_at_a_time),
             ("adapter, one at a time", adapter(False, False)),
             (f"adapter, one at a time + recorder on {hookpoint}", adapter(False, True)),
             (f"adapter, batch {batch_size}", adapter(True, False)),
             (f"adapter, batch {batch_size} + recorder", adapter(True, True))]
    with torch.inference_mode():
        adapter(True, False)()  # warm-up
        rows, tokens = equal_work_rows(cases, repeats, "bench harvest indextts2")
    tmp.cleanup()
    print(f"\nIndexTTS2 GPT {tts.num_layers} x {tts.hidden_size} ({sum(p.numel() for p in tts.gpt.parameters()) / 1e6:.1f} M"
          f" parameters, random weights, built and loaded in {built_s:.0f} s) on {device}, torch threads "
          f"{torch.get_num_threads()}; {batch_size} prompts, {tokens} tokens in every row, best of {repeats} "
          "round(s).\n")
    print("| row | seconds | tokens/s | ratio to upstream |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['row']} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | {r['ratio']:.2f} |")
    return rows
