"""``emoctl select``: the SAE seed's emotion features, with paired tests, bootstrap intervals, a held-out Δ and
the ranking's stability.

For each emotion e and latent i, Δ_i^(e) is the mean over (e, neutral) pairs of the difference of a
per-utterance value (see :mod:`emoctl.selection.stats`), by one of three scores:

* ``any_step`` (the seed's, the default): 1 if the latent fires at any decode step; exact McNemar test.  It
  saturates: a latent that fires somewhere in most utterances of both conditions scores Δ near 0 however
  much more often it fires under the emotion.
* ``rate``: the share of the utterance's decode steps on which the latent fires; Wilcoxon signed-rank test.
* ``mass``: the latent's summed activation per decode step; Wilcoxon signed-rank test.

The top ``m`` latents by Δ (Δ > 0, and optionally q < alpha) form e's feature set.  Beside it: the pairs are
split by text (seeded), latents are selected on one half and their Δ is measured on the other (winner's curse
shows as a drop), and each selected latent's share of bootstrap resamples in which it stays in the top m.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from emoctl.errors import ConfigError
from emoctl.sae.export import load_pretrained
from emoctl.selection.feature_set import FeatureSet, SelectedFeature, feature_file_name
from emoctl.selection.indicators import FiringIndicators, collect_indicators
from emoctl.selection.pairs import EmotionPairs, pair_utterances
from emoctl.selection.report import save_delta_histogram, write_summary
from emoctl.selection.stats import (benjamini_hochberg, bootstrap_delta_ci, delta_scores, mcnemar_exact,
                                   top_m_stability, wilcoxon_signed_rank)

SCORES = ("any_step", "rate", "mass")
TESTS = {"any_step": "exact McNemar", "rate": "Wilcoxon signed-rank", "mass": "Wilcoxon signed-rank"}
from emoctl.io.provenance import digest_path
from emoctl.store import ActivationStore
from emoctl.io.fsio import check_output_dir


def feature_set_path(out_dir: str | Path, emotion: str) -> Path:
    """Where ``emoctl select`` writes an emotion's feature set: ``<out_dir>/features_<emotion>.json``."""
    return Path(out_dir) / feature_file_name(emotion)


def select_features(store: str, sae: str, out_dir: str, neutral: str = "Neutral", emotions: list[str] | None = None,
                    m: int = 6, alpha: float | None = None, correction: Literal["bh", "none"] = "bh",
                    n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0, chunk_rows: int = 4096,
                    device: str = "cpu", verify: bool = True, progress: bool = True,
                    score: Literal["any_step", "rate", "mass"] = "any_step", n_stability: int = 200
                    ) -> dict[str, FeatureSet]:
    """Select each emotion's top-m SAE latents by paired Δ-score; write JSON feature sets, PNGs and a summary.

    Args:
        store: Activation store (from ``emoctl harvest``) with emotional and neutral renditions of the
            same texts and speakers (shared pair_key).
        sae: Exported SAE folder (cfg.json + sae_weights.safetensors) trained on the store's hookpoint.
        out_dir: Folder for features_<emotion>.json, delta_hist_<emotion>.png, selection.md and selection.csv.
        neutral: Emotion label of the reference renditions.
        emotions: Emotions to select for; default every label in the store except ``neutral``.
        m: Latents per emotion (the SAE seed uses 6).
        alpha: If set, a latent must also pass the exact McNemar test at this level (after ``correction``).
        correction: "bh" (Benjamini-Hochberg over the d_sae latents of an emotion) or "none".
        n_bootstrap: Bootstrap resamples of the pairs for the Δ interval.
        confidence: Coverage of the Δ interval.
        seed: Seed of the bootstrap.
        chunk_rows: Rows read from the store and encoded per step (bounds memory).
        device: Where the SAE encodes ("cpu", "cuda").
        verify: Check the store's CRC-32s before reading it (about a second per GB).
        progress: Show a progress bar over the store.
        score: "any_step" (the seed's Δ, McNemar), "rate" (share of decode steps fired) or "mass" (summed
            activation per step), both with the Wilcoxon signed-rank test.
        n_stability: Bootstrap resamples of the pairs for each selected latent's top-m stability.
    """
    check_output_dir(out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    if m < 1:
        raise ConfigError(f"m={m} must be >= 1 (latents per emotion).")
    if alpha is not None and not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha={alpha} must be in (0, 1), or null to select by Δ alone.")
    if correction not in ("bh", "none"):
        raise ConfigError(f"correction={correction!r} must be 'bh' or 'none'.")
    if score not in SCORES:
        raise ConfigError(f"score={score!r} must be one of {', '.join(SCORES)}.")
    if n_stability < 1 or n_bootstrap < 1:
        raise ConfigError(f"n_stability={n_stability} and n_bootstrap={n_bootstrap} must be >= 1.")
    if seed < 0:
        raise ConfigError(f"--seed {seed}: the seed must be an integer >= 0 (the bootstrap's and the held-out "
                          "split's numpy generators take no negative seed).")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device=cpu.")
    activation_store = ActivationStore(store)
    activation_store.require_finished("select features from")
    if verify:
        activation_store.verify(progress=progress)
    model = load_pretrained(sae)
    ind = collect_indicators(activation_store, model, chunk_rows=chunk_rows, device=device, progress=progress,
                             per_step=score != "any_step")
    pairs = pair_utterances(ind.utt_id, ind.emotion, ind.pair_key, neutral=neutral, emotions=emotions,
                            source=f"the store at {store}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    provenance = {
        "sae": {"path": str(sae), "digest": digest_path(sae), "d_in": model.cfg.d_in, "d_sae": model.cfg.d_sae, "k": model.cfg.k,
                "hook_name": model.cfg.hook_name},
        "store": {"path": str(store), "hookpoint": activation_store.spec.hookpoint,
                  "backbone": activation_store.spec.backbone, "num_rows": activation_store.num_rows,
                  "num_utterances": activation_store.num_utterances},
    }
    results = {}
    for emotion, emotion_pairs in pairs.items():
        fs, delta = _select_one(ind, emotion_pairs, m, alpha, correction, n_bootstrap, confidence, seed, provenance,
                                score, n_stability)
        fs.save(feature_set_path(out, emotion))
        save_delta_histogram(out / f"delta_hist_{_safe(emotion)}.png", delta, fs.feature_ids, emotion, neutral, score)
        results[emotion] = fs
    from emoctl.io.provenance import collect

    record = collect(paths={"sae": sae}, stores={"store": activation_store}, seeds={"bootstrap": seed, "held_out_split": seed},
                     protocol={"score": score, "m": m, "alpha": alpha, "correction": correction, "neutral": neutral,
                               "n_bootstrap": n_bootstrap, "confidence": confidence, "n_stability": n_stability,
                               "emotions": list(results)}, device=device)
    md, _ = write_summary(out, list(results.values()), record)
    for fs in results.values():
        ids = ", ".join(f"{f.id} (Δ={f.delta:+.2f})" for f in fs.features) or "none"
        print(f"{fs.emotion}: {ids}")
    print(f"wrote {len(results)} feature sets and {md} to {out}")
    return results


def _differences(ind: FiringIndicators, pairs: EmotionPairs, score: str, emo_bits: np.ndarray,
                 neu_bits: np.ndarray) -> np.ndarray:
    """(n_pairs, d_sae) emotional minus neutral values of ``score`` (int8 for any_step, from the pairs' already
    unpacked indicators; float32 otherwise)."""
    if score == "any_step":
        return emo_bits.astype(np.int8) - neu_bits.astype(np.int8)
    return ind.per_step(pairs.emotional, score) - ind.per_step(pairs.neutral_twin, score)


def _ranked(diff: np.ndarray, score: str, m: int, alpha: float | None, correction: str
            ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """The top-m latents of paired differences by Δ (Δ > 0, q < alpha when set), with Δ, p and q of all."""
    delta = diff.mean(axis=0, dtype=np.float64)
    if score == "any_step":
        p = mcnemar_exact((diff > 0).sum(0), (diff < 0).sum(0))
    else:
        p = wilcoxon_signed_rank(diff)
    q = benjamini_hochberg(p) if correction == "bh" else p
    eligible = delta > 0
    if alpha is not None:
        eligible &= q < alpha
    ranked = np.lexsort((np.arange(delta.size), p, -delta))  # Δ descending; ties: smaller p, then lower id
    return [int(i) for i in ranked if eligible[i]][:m], delta, p, q


def _held_out(ind: FiringIndicators, pairs: EmotionPairs, diff: np.ndarray, score: str, m: int,
              alpha: float | None, correction: str, seed: int) -> dict:
    """Select on the pairs of a seeded half of the texts, measure Δ on the other half."""
    texts = (ind.text_id if ind.text_id is not None else ind.pair_key)[pairs.emotional].astype(str)
    unique = np.unique(texts)
    if unique.size < 2:
        return {"note": f"only {unique.size} text: no held-out half."}
    order = np.random.default_rng(seed).permutation(unique.size)
    select_texts = set(unique[order[:unique.size // 2]])
    mask = np.isin(texts, list(select_texts))
    chosen, delta_a, _, _ = _ranked(diff[mask], score, m, alpha, correction)
    delta_b = diff[~mask][:, chosen].mean(axis=0, dtype=np.float64) if chosen else np.empty(0)
    return {"seed": seed, "texts_select": int(len(select_texts)), "texts_held_out": int(unique.size - len(select_texts)),
            "pairs_select": int(mask.sum()), "pairs_held_out": int((~mask).sum()),
            "features": [{"id": i, "delta_select": float(delta_a[i]), "delta_held_out": float(d)}
                         for i, d in zip(chosen, delta_b)]}


def _select_one(ind: FiringIndicators, pairs: EmotionPairs, m: int, alpha: float | None, correction: str,
                n_bootstrap: int, confidence: float, seed: int, provenance: dict, score: str = "any_step",
                n_stability: int = 200) -> tuple[FeatureSet, np.ndarray]:
    emo_bits, neu_bits = ind.dense(pairs.emotional), ind.dense(pairs.neutral_twin)  # (n_pairs, d_sae) each
    counts = delta_scores(emo_bits, neu_bits)
    diff = _differences(ind, pairs, score, emo_bits, neu_bits)
    chosen, delta, p, q = _ranked(diff, score, m, alpha, correction)
    if chosen:
        low, high = bootstrap_delta_ci(diff[:, chosen], n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
        stability = top_m_stability(diff, chosen, m, n_bootstrap=n_stability, seed=seed)
    else:
        low = high = stability = np.empty(0)
    n = counts.n_pairs
    mean_e, mean_n = ind.mean_value_when_firing(pairs.emotion), ind.mean_value_when_firing(pairs.neutral)
    rate_e, rate_n = ind.row_firing_rate(pairs.emotion), ind.row_firing_rate(pairs.neutral)
    features = [SelectedFeature(
        id=i, delta=float(delta[i]), ci_low=float(lo), ci_high=float(hi), p_value=float(p[i]), q_value=float(q[i]),
        emotion_only=int(counts.emotion_only[i]), neutral_only=int(counts.neutral_only[i]), both=int(counts.both[i]),
        neither=int(counts.neither[i]), utt_fire_rate_emotion=float(counts.emotion_only[i] + counts.both[i]) / n,
        utt_fire_rate_neutral=float(counts.neutral_only[i] + counts.both[i]) / n,
        row_fire_rate_emotion=float(rate_e[i]), row_fire_rate_neutral=float(rate_n[i]),
        mean_act_emotion=_float(mean_e[i]), mean_act_neutral=_float(mean_n[i]),
        delta_any_step=float(counts.delta[i]), stability=float(st),
    ) for i, lo, hi, st in zip(chosen, low, high, stability)]
    selection = {"score": score, "test": TESTS[score], "m": m, "alpha": alpha, "correction": correction,
                 "n_pairs": n, "unpaired": pairs.unpaired,
                 "ranking": "delta descending among delta > 0" + (f" and q < {alpha}" if alpha is not None else ""),
                 "bootstrap": {"n": n_bootstrap, "confidence": confidence, "seed": seed, "method": "percentile"},
                 "stability": {"n": n_stability, "seed": seed, "rule": f"top {m} by delta among delta > 0"},
                 "held_out": _held_out(ind, pairs, diff, score, m, alpha, correction, seed)}
    if len(chosen) < m:
        selection["note"] = f"only {len(chosen)} of {m} latents qualified."
    return FeatureSet(pairs.emotion, pairs.neutral, features, selection=selection, **provenance), delta


def _float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None  # JSON has no NaN


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
