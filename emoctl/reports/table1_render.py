"""Table 1's files: the Markdown tables, the CSVs, the α-sweep figure and the TensorBoard copy.

``write_table1`` writes ``table1.md``, ``table1.csv``, ``table1_clips.csv``, ``table1_paired.csv``,
``alpha_sweep.csv``, ``alpha_sweep.png`` and ``table1_info.json`` in the output folder, and the same numbers
and figure in TensorBoard under ``<out_dir>/tensorboard``.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from emoctl.evaluation.paired import paired_markdown
from emoctl.evaluation.summary import csv_bytes, format_estimate, summarize
from emoctl.io.fsio import atomic_write_bytes
from emoctl.io.provenance import stamp, write_report_info
from emoctl.reports.table1_methods import method_label, variant_method


def table1_markdown(summary: list[dict], info: dict, method_names: Sequence[str]) -> str:
    """The paper's layout: a row per (direction, emotion), a column group per method."""
    shown = [("emo_sim_matched", "Emo-SIM"), ("ser_hit", "SER acc"), ("wer", "WER"), ("spk_sim", "SpkSIM"),
             ("dnsmos_ovrl", "DNSMOS")]
    index = {(r["direction"], r["emotion"], r["method"]): r for r in summary}
    lines = [
        "# Table 1: emotion steering on the configured backbone", "",
        f"Backbone `{info['backbone']}`, SAE at `{info['hookpoint']}`, recognizer `{info['recognizer']}`; "
        f"{info['n_texts']} held-out test sentences x speakers {', '.join(info['speakers'])} per cell, sampling "
        f"seed {info['seed']} shared by all methods of a cell. α per method (chosen on evaluation sentences, "
        f"WER increase ≤ {info['max_wer_increase']}): "
        + ", ".join(f"{method_label(m)} {a:g}" for m, a in info["alphas"].items()) + ".",
        "Induction: Neutral condition steered toward the emotion (target = emotion). Suppression: emotion "
        "condition steered away (target = Neutral). Emo-SIM: cosine of recognizer embeddings to the matched corpus "
        "recording (same text, speaker, target emotion). Values are means ± half the 95% t interval; SER accuracy "
        "shows its 95% Wilson interval.",
        "Steered passes: " + "; ".join(f"{method_label(m)} {' + '.join(p)}"
                                       for m, p in info.get("phases", {}).items())
        + " (the SAE-seed methods steer the decode steps their features were found in; EmoShift's layer also "
        "steers the prefill's last state, which predicts the first speech token).", ""]
    for metric, label in shown:
        lines += [f"## {label}", "", "| direction | emotion | " + " | ".join(method_label(m)
                                                                          for m in method_names) + " |",
                  "|---|---|" + "---|" * len(method_names)]
        for direction in ("induction", "suppression"):
            for emotion in dict.fromkeys(r["emotion"] for r in summary):
                cells = [format_estimate(index[(direction, emotion, m)], metric) if (direction, emotion, m) in index else "–"
                         for m in method_names]
                lines.append(f"| {direction} | {emotion} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def selection_scores_markdown(summary: list[dict], sets_by_score: dict[str, dict], alphas: dict[str, float],
                              main: str) -> list[str]:
    """The section comparing selection scores: overlap of their feature sets, held-out Δ, steering per score."""
    scores = list(sets_by_score)
    method = {score: "sae_emotion" if score == main else variant_method(score) for score in scores}
    emotions = list(next(iter(sets_by_score.values())))
    index = {(r["direction"], r["emotion"], r["method"]): r for r in summary}
    lines = ["## Selection scores", "",
             f"SAE-Emotion steering with the latents each selection score chose (`{main}` is the main SAE-Emotion "
             "column). Overlap: latents two scores' top-m share. Held-out Δ: mean over the set's latents of its own "
             "score's Δ on the half of the texts the selection did not see (selected-half Δ beside it; a drop is "
             "the winner's curse). Max any-step Δ: the largest seed Δ in the set (the seed's paper reports Δ = 1 "
             "for its top 6). Steering: SER accuracy with its α.", "",
             "| emotion | " + " | ".join(f"{a} ∩ {b}" for i, a in enumerate(scores) for b in scores[i + 1:]) + " | "
             + " | ".join(f"{s}: latents" for s in scores) + " |",
             "|---|" + "---:|" * (len(scores) * (len(scores) - 1) // 2) + "---|" * len(scores)]
    for e in emotions:
        ids = {s: sets_by_score[s][e].feature_ids for s in scores}
        overlap = [str(len(set(ids[a]) & set(ids[b]))) for i, a in enumerate(scores) for b in scores[i + 1:]]
        lines.append(f"| {e} | " + " | ".join(overlap) + " | "
                     + " | ".join(", ".join(map(str, ids[s])) for s in scores) + " |")
    lines += ["", "| score | α | emotion | Δ selected half | Δ held out | max any-step Δ | induction SER | "
              "suppression SER |", "|---|---:|---|---:|---:|---:|---|---|"]
    for s in scores:
        for e in emotions:
            fs = sets_by_score[s][e]
            held = fs.selection.get("held_out", {}).get("features", [])
            sel = np.mean([f["delta_select"] for f in held]) if held else math.nan
            out = np.mean([f["delta_held_out"] for f in held]) if held else math.nan
            any_step = max((f.delta_any_step for f in fs.features if f.delta_any_step is not None), default=math.nan)
            cells = [format_estimate(index[(d, e, method[s])], "ser_hit") if (d, e, method[s]) in index else "–"
                     for d in ("induction", "suppression")]
            lines.append(f"| {s} | {alphas.get(method[s], math.nan):g} | {e} | {sel:+.3f} | {out:+.3f} | "
                         f"{any_step:.2f} | {cells[0]} | {cells[1]} |")
    lines.append("")
    return lines


def sweep_figure(sweep_rows: list[dict]):
    """Induction strength (SER accuracy) and WER against α, one line per method."""
    import matplotlib  # lazy: a plotting stack only the report's figure needs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    summary = summarize([r for r in sweep_rows if r["direction"] == "induction"], ["ser_hit", "wer"])
    base = [r for r in summary if r["method"] == "unsteered"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    methods = sorted({r["method"].split("@")[0] for r in summary if "@" in r["method"]})
    for method in methods:
        points: dict[float, list[dict]] = {}
        for r in summary:
            if r["method"].startswith(method + "@"):
                points.setdefault(float(r["method"].split("@")[1]), []).append(r)
        xs = sorted(points)
        for ax, metric in zip(axes, ("ser_hit", "wer")):
            ax.plot(xs, [np.mean([m.get(metric, np.nan) for m in points[x]]) for x in xs], marker="o",
                    label=method_label(method))
    for ax, metric, label in zip(axes, ("ser_hit", "wer"), ("induction SER accuracy", "WER")):
        if base and metric in base[0]:
            ax.axhline(np.mean([b[metric] for b in base]), color="grey", ls="--", label="unsteered")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("α")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle("α sweep (evaluation sentences, averaged over emotions)")
    fig.tight_layout()
    return fig


def write_table1(out: Path, summary: list[dict], rows: list[dict], sweep_rows: list[dict], info: dict,
                 method_names: Sequence[str], record: dict, paired: list[dict], sections: list[str]) -> None:
    """Every file of the report (see the module docstring), then the Markdown on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    body = "\n".join([table1_markdown(summary, info, method_names), *sections,
                      *paired_markdown(paired, {m: method_label(m) for m in method_names})])
    markdown = stamp(body, record, "table1_info.json")
    atomic_write_bytes(out / "table1.md", markdown.encode())
    atomic_write_bytes(out / "table1.csv", csv_bytes(summary))
    atomic_write_bytes(out / "table1_clips.csv", csv_bytes(rows))
    atomic_write_bytes(out / "table1_paired.csv", csv_bytes(paired))
    atomic_write_bytes(out / "alpha_sweep.csv", csv_bytes(sweep_rows))
    figure = sweep_figure(sweep_rows)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(out / "alpha_sweep.png", buffer.getvalue())
    write_report_info(out / "table1_info.json", info, record,
                      [out / name for name in ("table1.csv", "table1_clips.csv", "table1_paired.csv",
                                               "alpha_sweep.csv")])
    from torch.utils.tensorboard import SummaryWriter  # lazy: TensorBoard's writer loads its protobuf stack

    with SummaryWriter(str(out / "tensorboard")) as writer:
        writer.add_figure("table1/alpha_sweep", figure, 0)
        writer.add_text("table1/markdown", markdown, 0)
        for record in summary:
            for metric in ("emo_sim_matched", "ser_hit", "wer", "spk_sim", "dnsmos_ovrl"):
                if metric in record and math.isfinite(record[metric]):
                    writer.add_scalar(f"table1/{record['direction']}/{record['emotion']}/{record['method']}/{metric}",
                                      record[metric], 0)
    print(markdown)
    print(f"written to {out}/ (table1.md, table1.csv, table1_clips.csv, table1_paired.csv, alpha_sweep.csv, "
          f"alpha_sweep.png, tensorboard/)")
