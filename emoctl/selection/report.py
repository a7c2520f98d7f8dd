"""Files ``emoctl select`` writes besides the feature sets: Δ histograms (PNG), a summary (Markdown + CSV).

Every file goes to a temporary sibling first and is renamed into place.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from emoctl.selection.feature_set import FeatureSet, SelectedFeature
from emoctl.store.fsio import atomic_write_bytes, save_figure_atomically


def save_delta_histogram(path: Path, delta: np.ndarray, selected: Sequence[int], emotion: str, neutral: str) -> Path:
    """Histogram of every latent's Δ-score, the selected ones marked, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    ax.hist(delta, bins=np.linspace(-1, 1, 81), color="0.6", log=True)
    for i in selected:
        ax.axvline(delta[i], color="tab:red", lw=0.8)
    ax.set_xlabel(f"Δ-score ({emotion} − {neutral}): share of pairs where the latent fires only with {emotion}, "
                  "minus the reverse", fontsize=7)
    ax.set_ylabel("latents")
    ax.set_title(f"{emotion}: Δ-scores of {delta.size} latents, {len(selected)} selected (red)")
    fig.tight_layout()
    save_figure_atomically(fig, path)
    return path


SUMMARY_COLUMNS = ("emotion", "rank", "id", "delta", "ci_low", "ci_high", "p_value", "q_value", "emotion_only",
                   "neutral_only", "both", "neither", "mean_act_emotion", "mean_act_neutral")


def write_summary(out_dir: Path, feature_sets: Sequence[FeatureSet]) -> tuple[Path, Path]:
    """``selection.csv`` (one row per selected latent) and ``selection.md`` (the same as tables)."""
    rows = [{"emotion": fs.emotion, "rank": rank, **{k: getattr(f, k) for k in SUMMARY_COLUMNS[2:]}}
            for fs in feature_sets for rank, f in enumerate(fs.features, 1)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, md_path = out_dir / "selection.csv", out_dir / "selection.md"
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    lines = ["# SAE emotion features", ""]
    for fs in feature_sets:
        sel = fs.selection
        lines += [f"## {fs.emotion} vs {fs.neutral}", "",
                  f"{sel.get('n_pairs')} pairs ({sel.get('unpaired', 0)} unpaired utterances left out); top "
                  f"{sel.get('m')} by Δ, alpha={sel.get('alpha')} ({sel.get('correction')}). "
                  f"{sel.get('note', '')}".rstrip(), "",
                  "| rank | latent | Δ | 95% CI | p (McNemar) | q (BH) | b / c | mean act. emo / neu |",
                  "|---:|---:|---:|---|---:|---:|---:|---:|"]
        lines += [_md_row(rank, f) for rank, f in enumerate(fs.features, 1)]
        lines.append("")
    atomic_write_bytes(md_path, "\n".join(lines).encode())
    return md_path, csv_path


def _md_row(rank: int, f: SelectedFeature) -> str:
    from emoctl.probes.paired import format_p

    def num(x: float | None) -> str:
        return "–" if x is None or not math.isfinite(x) else f"{x:.3g}"

    return (f"| {rank} | {f.id} | {f.delta:+.3f} | [{f.ci_low:+.3f}, {f.ci_high:+.3f}] | {format_p(f.p_value)} | "
            f"{format_p(f.q_value)} | {f.emotion_only} / {f.neutral_only} | {num(f.mean_act_emotion)} / "
            f"{num(f.mean_act_neutral)} |")
