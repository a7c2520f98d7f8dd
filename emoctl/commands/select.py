"""``emoctl select``: each emotion's top-m SAE features from paired activations (JSON + PNG + Markdown)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from emoctl.errors import ConfigError
from emoctl.io.fsio import check_output_dir
from emoctl.io.provenance import collect, digest_path
from emoctl.sae.export import load_pretrained
from emoctl.selection.feature_set import FeatureSet, feature_set_path
from emoctl.selection.indicators import collect_indicators
from emoctl.selection.pairs import pair_utterances
from emoctl.selection.report import save_delta_histogram, write_summary
from emoctl.selection.select import SCORES, safe_name, select_one
from emoctl.store import ActivationStore


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
        fs, delta = select_one(ind, emotion_pairs, m, alpha, correction, n_bootstrap, confidence, seed, provenance,
                                score, n_stability)
        fs.save(feature_set_path(out, emotion))
        save_delta_histogram(out / f"delta_hist_{safe_name(emotion)}.png", delta, fs.feature_ids, emotion, neutral, score)
        results[emotion] = fs
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
