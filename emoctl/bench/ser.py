"""``emoctl bench ser``: what scoring costs with emotion2vec (the seeds' SER) against the embedded mini SER.

Both recognizers score the same clips in the same run: the embedded mini SER (the baseline) and emotion2vec
through funasr from a folder in the released format (random weights at the plus_base size, 93.2 M
parameters, unless a real folder is given; the cost does not depend on the weights).  The table gives
seconds per clip, audio seconds scored per second, and what scoring README's Table 1 (216 clips) costs.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from emoctl.errors import ConfigError
from emoctl.metrics.emotion2vec import Emotion2Vec
from emoctl.metrics.emotion2vec_folder import Emotion2VecSize, write_random_emotion2vec
from emoctl.metrics.loading import load_recognizer

TABLE1_CLIPS = 216  # clips scored in README's Table 1 (reports/table1_clips.csv)


def bench_ser(n_clips: int = 16, seconds: float = 3.0, repeats: int = 2, emotion2vec_dir: str | None = None
              ) -> list[dict]:
    """Seconds per clip of each recognizer on ``n_clips`` clips of ``seconds`` s (best of ``repeats``).

    Args:
        n_clips: Clips scored per round (one call, as the reports score them).
        seconds: Length of each clip (ESD's clips average about 2.7 s).
        repeats: Timed rounds; the table reports each row's best.
        emotion2vec_dir: A real emotion2vec folder; None writes a random plus_base one in a temporary folder.
    """
    if n_clips < 1 or seconds <= 0 or repeats < 1:
        raise ConfigError(f"n_clips and repeats must be >= 1 and seconds > 0, got {n_clips}, {seconds}, {repeats}.")
    import torch

    tmp = tempfile.TemporaryDirectory(prefix="emoctl-bench-ser-")
    folder = Path(emotion2vec_dir) if emotion2vec_dir else write_random_emotion2vec(
        Path(tmp.name) / "emotion2vec_plus_base_random", Emotion2VecSize.plus_base())
    rng = np.random.default_rng(0)
    rate = 16000
    t = np.arange(int(rate * seconds)) / rate
    clips = [(0.3 * np.sin(2 * np.pi * (110 + 20 * i) * t * (1 + 0.1 * np.sin(3 * t)))
              + 0.02 * rng.standard_normal(t.size)).astype(np.float32) for i in range(n_clips)]
    recognizers = [("embedded mini SER", load_recognizer("mini")), (f"emotion2vec ({folder.name})", Emotion2Vec(folder))]
    for _, recognizer in recognizers:
        recognizer(clips[:1], rate)  # warm-up: loads the model
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, recognizer in recognizers:
            start = time.perf_counter()
            recognizer(clips, rate)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    tmp.cleanup()
    base = best[recognizers[0][0]]
    rows = [{"row": name, "s_per_clip": best[name] / n_clips, "audio_s_per_s": n_clips * seconds / best[name],
             "ratio": best[name] / base, "table1_min": best[name] / n_clips * TABLE1_CLIPS / 60}
            for name, _ in recognizers]
    print(f"\n{n_clips} clips of {seconds:g} s at 16 kHz, torch threads {torch.get_num_threads()}, best of {repeats}.\n")
    print("| recognizer | s / clip | audio s per s | time vs mini SER | Table 1's 216 clips |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['row']} | {r['s_per_clip']:.3f} | {r['audio_s_per_s']:.1f} | {r['ratio']:.1f}x | "
              f"{r['table1_min']:.1f} min |")
    return rows
