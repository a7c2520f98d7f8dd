"""``emoctl select``: the SAE seed's emotion features, with exact tests and bootstrap intervals.

For each emotion e and latent i, Δ_i^(e) is the mean over (e, neutral) pairs of
the difference of "fired at any decode step" indicators (see
:mod:`emoctl.selection.stats`).  The top ``m`` latents by Δ (Δ > 0, and
optionally q < alpha, or p < alpha without correction) form e's feature set.
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
from emoctl.selection.feature_set import FeatureSet, SelectedFeature
from emoctl.selection.indicators import FiringIndicators, collect_indicators
from emoctl.selection.pairs import EmotionPairs, pair_utterances
from emoctl.selection.report import save_delta_histogram, write_summary
from emoctl.selection.stats import benjamini_hochberg, bootstrap_delta_ci, delta_scores, mcnemar_exact
from emoctl.store import ActivationStore
from emoctl.store.fsio import check_output_dir


def feature_set_path(out_dir: str | Path, emotion: str) -> Path:
    """Where ``emoctl select`` writes an emotion's feature set: ``<out_dir>/features_<emotion>.json``."""
    return Path(out_dir) / f"features_{_safe(emotion)}.json"


def select_features(store: str, sae: str, out_dir: str, neutral: str = "Neutral", emotions: list[str] | None = None,
                    m: int = 6, alpha: float | None = None, correction: Literal["bh", "none"] = "bh",
                    n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0, chunk_rows: int = 4096,
                    device: str = "cpu", verify: bool = True, progress: bool = True) -> dict[str, FeatureSet]:
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
    """
    check_output_dir(out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    if m < 1:
        raise ConfigError(f"m={m} must be >= 1 (latents per emotion).")
    if alpha is not None and not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha={alpha} must be in (0, 1), or null to select by Δ alone.")
    if correction not in ("bh", "none"):
        raise ConfigError(f"correction={correction!r} must be 'bh' or 'none'.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device=cpu.")
    activation_store = ActivationStore(store)
    if verify:
        activation_store.verify(progress=progress)
    model = load_pretrained(sae)
    ind = collect_indicators(activation_store, model, chunk_rows=chunk_rows, device=device, progress=progress)
    pairs = pair_utterances(ind.utt_id, ind.emotion, ind.pair_key, neutral=neutral, emotions=emotions,
                            source=f"the store at {store}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    provenance = {
        "sae": {"path": str(sae), "d_in": model.cfg.d_in, "d_sae": model.cfg.d_sae, "k": model.cfg.k,
                "hook_name": model.cfg.hook_name},
        "store": {"path": str(store), "hookpoint": activation_store.spec.hookpoint,
                  "backbone": activation_store.spec.backbone, "num_rows": activation_store.num_rows,
                  "num_utterances": activation_store.num_utterances},
    }
    results = {}
    for emotion, emotion_pairs in pairs.items():
        fs, delta = _select_one(ind, emotion_pairs, m, alpha, correction, n_bootstrap, confidence, seed, provenance)
        fs.save(feature_set_path(out, emotion))
        save_delta_histogram(out / f"delta_hist_{_safe(emotion)}.png", delta, fs.feature_ids, emotion, neutral)
        results[emotion] = fs
    md, _ = write_summary(out, list(results.values()))
    for fs in results.values():
        ids = ", ".join(f"{f.id} (Δ={f.delta:+.2f})" for f in fs.features) or "none"
        print(f"{fs.emotion}: {ids}")
    print(f"wrote {len(results)} feature sets and {md} to {out}")
    return results


def _select_one(ind: FiringIndicators, pairs: EmotionPairs, m: int, alpha: float | None, correction: str,
                n_bootstrap: int, confidence: float, seed: int, provenance: dict) -> tuple[FeatureSet, np.ndarray]:
    emo_bits, neu_bits = ind.dense(pairs.emotional), ind.dense(pairs.neutral_twin)  # (n_pairs, d_sae) each
    counts = delta_scores(emo_bits, neu_bits)
    delta = counts.delta
    p = mcnemar_exact(counts.emotion_only, counts.neutral_only)
    q = benjamini_hochberg(p) if correction == "bh" else p
    eligible = delta > 0
    if alpha is not None:
        eligible &= q < alpha
    ranked = np.lexsort((np.arange(delta.size), p, -delta))  # Δ descending; ties: smaller p, then lower id
    chosen = [int(i) for i in ranked if eligible[i]][:m]
    diffs = emo_bits[:, chosen].astype(np.int8) - neu_bits[:, chosen].astype(np.int8)  # (n_pairs, |chosen|)
    if chosen:
        low, high = bootstrap_delta_ci(diffs, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    else:
        low = high = np.empty(0)
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
    ) for i, lo, hi in zip(chosen, low, high)]
    selection = {"m": m, "alpha": alpha, "correction": correction, "n_pairs": n, "unpaired": pairs.unpaired,
                 "ranking": "delta descending among delta > 0" + (f" and q < {alpha}" if alpha is not None else ""),
                 "bootstrap": {"n": n_bootstrap, "confidence": confidence, "seed": seed, "method": "percentile"}}
    if len(chosen) < m:
        selection["note"] = f"only {len(chosen)} of {m} latents qualified."
    return FeatureSet(pairs.emotion, pairs.neutral, features, selection=selection, **provenance), delta


def _float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None  # JSON has no NaN


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
