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

from emoctl.io.fsio import atomic_write_bytes, save_figure_atomically
from emoctl.io.provenance import stamp, write_report_info
from emoctl.probes.paired import format_p
from emoctl.selection.feature_set import FeatureSet, SelectedFeature, feature_set_path


def save_delta_histogram(path: Path, delta: np.ndarray, selected: Sequence[int], emotion: str, neutral: str,
                         score: str = "any_step") -> Path:
    """Histogram of every latent's Δ-score, the selected ones marked, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    span = 1.0 if score in ("any_step", "rate") else max(float(np.abs(delta).max()), 1e-6)
    ax.hist(delta, bins=np.linspace(-span, span, 81), color="0.6", log=True)
    for i in selected:
        ax.axvline(delta[i], color="tab:red", lw=0.8)
    what = {"any_step": f"share of pairs where the latent fires only with {emotion}, minus the reverse",
            "rate": "mean paired difference of the share of decode steps it fires on",
            "mass": "mean paired difference of its summed activation per decode step"}[score]
    ax.set_xlabel(f"Δ ({score}, {emotion} − {neutral}): {what}", fontsize=7)
    ax.set_ylabel("latents")
    ax.set_title(f"{emotion}: Δ-scores of {delta.size} latents, {len(selected)} selected (red)")
    fig.tight_layout()
    save_figure_atomically(fig, path)
    return path


SUMMARY_COLUMNS = ("emotion", "score", "rank", "id", "delta", "ci_low", "ci_high", "p_value", "q_value", "stability",
                   "delta_any_step", "emotion_only", "neutral_only", "both", "neither", "row_fire_rate_emotion",
                   "row_fire_rate_neutral", "mean_act_emotion", "mean_act_neutral")


HELD_OUT_COLUMNS = ("emotion", "score", "rank", "id", "delta_select", "delta_held_out", "in_full_selection")


def write_summary(out_dir: Path, feature_sets: Sequence[FeatureSet], record: dict | None = None
                  ) -> tuple[Path, Path]:
    """``selection.csv`` (one row per selected latent), ``selection_held_out.csv`` (the split-half check: the
    latents chosen on half the texts, their Δ there and on the other half) and ``selection.md`` (both as
    tables); with a provenance ``record``, its line under the title and ``selection_info.json``."""
    rows = [{"emotion": fs.emotion, "score": fs.selection.get("score", "any_step"), "rank": rank,
             **{k: getattr(f, k) for k in SUMMARY_COLUMNS[3:]}}
            for fs in feature_sets for rank, f in enumerate(fs.features, 1)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, md_path = out_dir / "selection.csv", out_dir / "selection.md"
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    held_path = out_dir / "selection_held_out.csv"
    atomic_write_bytes(held_path, _held_out_csv(feature_sets))
    lines = ["# SAE emotion features", ""]
    for fs in feature_sets:
        sel = fs.selection
        score, test = sel.get("score", "any_step"), sel.get("test", "exact McNemar")
        lines += [f"## {fs.emotion} vs {fs.neutral}", "",
                  f"{sel.get('n_pairs')} pairs ({sel.get('unpaired', 0)} unpaired utterances left out); top "
                  f"{sel.get('m')} by the `{score}` Δ ({test} test), alpha={sel.get('alpha')} "
                  f"({sel.get('correction')}). Stability: share of {sel.get('stability', {}).get('n')} bootstrap "
                  f"resamples of the pairs in which the latent stays in the top {sel.get('m')}. "
                  f"{sel.get('note', '')}".rstrip(), "",
                  f"| rank | latent | Δ ({score}) | 95% CI | p ({test}) | q (BH) | stability | any-step Δ | "
                  "steps fired emo / neu | mean act. emo / neu |",
                  "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        lines += [_md_row(rank, f) for rank, f in enumerate(fs.features, 1)]
        held = sel.get("held_out", {})
        if held.get("features") is not None:
            lines += ["", f"Held out: selected on the pairs of {held['texts_select']} texts ({held['pairs_select']} "
                      f"pairs, seed {held['seed']}), Δ measured on the other {held['texts_held_out']} texts "
                      f"({held['pairs_held_out']} pairs); a drop is the winner's curse.", "",
                      "| latent | Δ where selected | Δ held out |", "|---:|---:|---:|"]
            lines += [f"| {h['id']} | {h['delta_select']:+.3f} | {h['delta_held_out']:+.3f} |" for h in held["features"]]
        elif held.get("note"):
            lines += ["", f"Held out: {held['note']}"]
        lines.append("")
    markdown = "\n".join(lines)
    if record is not None:
        markdown = stamp(markdown, record, "selection_info.json")
    atomic_write_bytes(md_path, markdown.encode())
    if record is not None:
        write_report_info(out_dir / "selection_info.json", {"emotions": [fs.emotion for fs in feature_sets]}, record,
                          [csv_path, held_path, *(feature_set_path(out_dir, fs.emotion) for fs in feature_sets)])
    return md_path, csv_path


def _held_out_csv(feature_sets: Sequence[FeatureSet]) -> bytes:
    rows = []
    for fs in feature_sets:
        full = set(fs.feature_ids)
        for rank, h in enumerate(fs.selection.get("held_out", {}).get("features") or [], 1):
            rows.append({"emotion": fs.emotion, "score": fs.selection.get("score", "any_step"), "rank": rank,
                         "id": h["id"], "delta_select": h["delta_select"], "delta_held_out": h["delta_held_out"],
                         "in_full_selection": h["id"] in full})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HELD_OUT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _md_row(rank: int, f: SelectedFeature) -> str:
    def num(x: float | None) -> str:
        return "–" if x is None or not math.isfinite(x) else f"{x:.3g}"

    return (f"| {rank} | {f.id} | {f.delta:+.3f} | [{f.ci_low:+.3f}, {f.ci_high:+.3f}] | {format_p(f.p_value)} | "
            f"{format_p(f.q_value)} | {num(f.stability)} | {num(f.delta_any_step)} | "
            f"{f.row_fire_rate_emotion:.1%} / {f.row_fire_rate_neutral:.1%} | {num(f.mean_act_emotion)} / "
            f"{num(f.mean_act_neutral)} |")
