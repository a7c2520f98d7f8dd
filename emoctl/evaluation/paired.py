"""Paired comparisons between steering methods: the same prompts, seed and batches, so clip i of one method is
clip i of the other.

Two methods are compared on the clips they share (matched by prompt id within a cell):

* **SER accuracy** by the exact McNemar test on per-clip correctness (only the discordant clips, one method
  right and the other wrong, carry evidence);
* **Emo-SIM** by the mean per-clip difference with a paired bootstrap percentile interval, and a two-sided
  sign-flip permutation p-value (under the null, each clip's difference is as likely to have either sign; exact
  over all 2^n sign patterns up to n = 16 clips, Monte Carlo beyond). The p-value is not read off the bootstrap:
  a re-centred bootstrap is anti-conservative with few clips (two clips can give p < 0.001).

Per (direction, emotion) and pooled over a direction's emotions; Benjamini-Hochberg q-values over all rows of a
metric, because a table of comparisons is many tests at once.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from emoctl.errors import ConfigError
from emoctl.selection.stats import benjamini_hochberg, mcnemar_exact

POOLED = "all"


def paired_comparisons(rows: list[dict], comparisons: Sequence[tuple[str, str]], n_bootstrap: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """One record per (direction, emotion or ``all``, method A, method B) from Table 1's per-clip rows.

    Args:
        rows: Per-clip rows with direction, emotion, method, utt_id, ser_hit and (optionally) emo_sim_matched.
        comparisons: (A, B) method pairs; a pair whose methods share no clips in a direction is left out.
        n_bootstrap: Bootstrap resamples for the Emo-SIM interval; also the random sign patterns of its p-value
            beyond 16 clips.
        confidence: Coverage of the Emo-SIM interval.
        seed: Seed of the bootstrap.
    """

    if n_bootstrap < 1 or not 0.0 < confidence < 1.0:
        raise ConfigError(f"paired_comparisons: n_bootstrap={n_bootstrap} must be >= 1 and confidence="
                          f"{confidence} in (0, 1).")
    clips: dict[tuple[str, str, str], dict[str, dict]] = {}
    for row in rows:
        clips.setdefault((row["direction"], row["emotion"], row["method"]), {})[row["utt_id"]] = row
    out: list[dict] = []
    for direction in dict.fromkeys(r["direction"] for r in rows):
        emotions = list(dict.fromkeys(r["emotion"] for r in rows if r["direction"] == direction))
        for a, b in comparisons:
            per_emotion = {e: _matched(clips.get((direction, e, a), {}), clips.get((direction, e, b), {}))
                           for e in emotions}
            per_emotion = {e: m for e, m in per_emotion.items() if m[0]}
            if not per_emotion:
                continue
            scopes = list(per_emotion.items())
            if len(per_emotion) > 1:
                scopes.append((POOLED, tuple(sum((list(m[i]) for m in per_emotion.values()), [])
                                             for i in range(2))))
            for emotion, (left, right) in scopes:
                out.append({"direction": direction, "emotion": emotion, "method_a": a, "method_b": b,
                            **_compare(left, right, n_bootstrap, confidence, seed)})
    for metric in ("ser", "emo_sim"):
        has = [i for i, r in enumerate(out) if math.isfinite(r[f"{metric}_p"])]
        q = benjamini_hochberg(np.array([out[i][f"{metric}_p"] for i in has]))
        for i, value in zip(has, q):
            out[i][f"{metric}_q"] = float(value)
        for r in out:
            r.setdefault(f"{metric}_q", math.nan)
    return out


def _matched(a: dict[str, dict], b: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    shared = [u for u in a if u in b]
    return [a[u] for u in shared], [b[u] for u in shared]


def _compare(left: list[dict], right: list[dict], n_bootstrap: int, confidence: float, seed: int) -> dict:

    hit_a = np.array([r["ser_hit"] for r in left], dtype=bool)
    hit_b = np.array([r["ser_hit"] for r in right], dtype=bool)
    only_a, only_b = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
    record = {"n": len(left), "ser_a": float(hit_a.mean()), "ser_b": float(hit_b.mean()), "a_only": only_a,
              "b_only": only_b, "ser_p": float(mcnemar_exact(only_a, only_b))}
    sim = [(x.get("emo_sim_matched"), y.get("emo_sim_matched")) for x, y in zip(left, right)]
    sim = [(float(x), float(y)) for x, y in sim if x is not None and y is not None
           and math.isfinite(float(x)) and math.isfinite(float(y))]
    if not sim:
        return {**record, "emo_sim_diff": math.nan, "emo_sim_low": math.nan, "emo_sim_high": math.nan,
                "emo_sim_p": math.nan}
    diff = np.array([x - y for x, y in sim])
    low, high = paired_bootstrap(diff, n_bootstrap, confidence, seed)
    p = sign_flip_p(diff, n_bootstrap, seed)
    return {**record, "emo_sim_diff": float(diff.mean()), "emo_sim_low": low, "emo_sim_high": high,
            "emo_sim_p": p}


def paired_bootstrap(differences: np.ndarray, n_bootstrap: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences (resampling the clip pairs)."""
    diff = _finite_1d(differences)
    rng = np.random.default_rng(seed)
    n = diff.size
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap)  # (B, n): a resample as counts per clip
    means = counts @ diff / n
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


EXACT_SIGN_FLIP_MAX_N = 16


def sign_flip_p(differences: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> float:
    """Two-sided paired permutation p-value of a zero mean difference: the share of sign patterns whose mean is
    at least as far from 0 as the observed one (every pattern up to 16 clips; else ``n_resamples`` random ones,
    counting the observed pattern, so p >= 1 / (n_resamples + 1))."""
    diff = _finite_1d(differences)
    observed = abs(diff.mean()) - 1e-12 * max(1.0, float(np.abs(diff).max()))  # ties count as extreme
    n = diff.size
    if n <= EXACT_SIGN_FLIP_MAX_N:
        patterns = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1  # (2^n, n) of ±1
        return float((np.abs(patterns @ diff / n) >= observed).mean())
    signs = np.random.default_rng(seed).choice(np.array([-1.0, 1.0]), size=(n_resamples, n))
    extreme = int((np.abs(signs @ diff / n) >= observed).sum())
    return float((1 + extreme) / (1 + n_resamples))


def _finite_1d(differences: np.ndarray) -> np.ndarray:
    diff = np.asarray(differences, dtype=np.float64)
    if diff.ndim != 1 or diff.size == 0 or not np.isfinite(diff).all():
        raise ConfigError(f"paired differences must be a non-empty finite 1-D array, got shape {diff.shape}"
                          + ("" if diff.ndim != 1 or diff.size == 0 else " with non-finite values") + ".")
    return diff


def paired_markdown(records: list[dict], labels: dict[str, str]) -> list[str]:
    """Markdown lines: the comparisons pooled over emotions, then per emotion (same columns)."""
    if not records:
        return []
    header = ["| direction | A vs B | emotion | n | SER A | SER B | only A / only B | p (McNemar) | q "
              "| Emo-SIM A − B | p (sign-flip) | q |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    lines = ["## Paired comparisons", "",
             "Each pair of methods on the same clips (same prompt, voice and sampling seed). SER: accuracy of A "
             "and B, clips only A / only B got right, exact McNemar p. Emo-SIM: mean A − B with its paired "
             "bootstrap 95% interval and sign-flip permutation p (every sign pattern up to 16 clips, else random ones: "
             "then the smallest p is 1 / (patterns + 1)). q: Benjamini-Hochberg over every row of this section (both "
             "tables), per metric; bold where q < 0.05.", ""]
    pooled = [r for r in records if r["emotion"] == POOLED]
    single = [r for r in records if r["emotion"] != POOLED]
    for title, chosen in (("Pooled over emotions", pooled), ("Per emotion", single)):
        if chosen:
            lines += [f"### {title}", "", *header, *(_paired_row(r, labels) for r in chosen), ""]
    return lines


def _paired_row(r: dict, labels: dict[str, str]) -> str:
    pair = f"{labels.get(r['method_a'], r['method_a'])} vs {labels.get(r['method_b'], r['method_b'])}"
    sim = "–" if not math.isfinite(r["emo_sim_diff"]) else \
        f"{r['emo_sim_diff']:+.3f} [{r['emo_sim_low']:+.3f}, {r['emo_sim_high']:+.3f}]"
    return (f"| {r['direction']} | {pair} | {r['emotion']} | {r['n']} | {r['ser_a']:.2f} | {r['ser_b']:.2f} | "
            f"{r['a_only']} / {r['b_only']} | {_p(r['ser_p'])} | {_p(r['ser_q'], bold=True)} | {sim} | "
            f"{_p(r['emo_sim_p'])} | {_p(r['emo_sim_q'], bold=True)} |")


def _p(value: float, bold: bool = False) -> str:
    if not math.isfinite(value):
        return "–"
    text = f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"
    return f"**{text}**" if bold and value < 0.05 else text
