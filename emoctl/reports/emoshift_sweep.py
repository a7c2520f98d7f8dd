"""EmoShift at inference: the intensity sweep over α (the seed's Figure 3) and compound emotions.

A trained EmoSteer layer is applied to held-out prompts (the corpus's test
sentences, speakers the backbone's last four) with the backbone given the
layer's *training* condition (``condition`` in the layer's metadata: Neutral
for every prompt when it was trained under ``condition: neutral``, else the
target emotion).  Each α speaks the same prompts in the same batches with the
same sampling seed, so differences across α are the layer's.

* :func:`emoshift_sweep`: α ∈ {0, 1, 1.5, 2, 2.5, 3, 4} (0 = the layer attached
  at zero intensity, which must equal the ``unsteered`` row, no hook at all, bit
  for bit); per-emotion and overall SER accuracy, WER, speaker similarity.
  ``emoshift_sweep.{md,csv,png}`` + ``emoshift_sweep_clips.csv``.
* :func:`emoshift_compound`: weighted mixtures of two emotions (e.g. Happy +
  Surprise at 0.5/0.5 and 0.7/0.3) against each pure emotion and unsteered: F0,
  RMS, duration and the recognizer's probability of both components.
  ``emoshift_compound.{md,csv}`` + ``emoshift_compound_clips.csv``.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from emoctl.errors import ConfigError
from emoctl.evaluation.alpha import choose_alpha
from emoctl.evaluation.summary import format_estimate, summarize
from emoctl.reports.report_folder import write_report_folder

DEFAULT_ALPHAS = [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]
UNSTEERED = "unsteered"
SWEEP_METRICS = ["ser_hit", "p_target", "wer", "spk_sim", "finished"]


def alpha_label(alpha: float | None) -> str:
    return UNSTEERED if alpha is None else f"alpha={alpha:g}"


def intensity_label(intensity: float) -> str:
    """A setting steered to a calibrated intensity (its α differs per emotion)."""
    return f"intensity={intensity:g}"


def swept_settings(info: dict) -> list[tuple[str, float]]:
    """(label, x) of each steered setting of a sweep, in order: its α values, or its intensities."""
    if info.get("intensities"):
        return [(intensity_label(float(p)), float(p)) for p in info["intensities"]]
    return [(alpha_label(a), float(a)) for a in info["alphas"]]


# ------------------------------------------------------------------------------------------------ the sweep


def sweep_summary(rows: list[dict]) -> list[dict]:
    """Per (emotion, α) and per α over all emotions ("all"): means / proportions with 95% intervals."""
    pooled = [{**r, "emotion": "all"} for r in rows]
    return summarize(rows + pooled, SWEEP_METRICS)


def best_alpha(summary: list[dict], max_wer_increase: float = 0.15) -> float:
    """:func:`emoctl.evaluation.alpha.choose_alpha` over the sweep's overall rows (α > 0)."""
    overall = {r["method"]: r for r in summary if r["emotion"] == "all"}
    if UNSTEERED not in overall:
        raise ConfigError("the sweep summary has no unsteered row; it is not an emoshift_sweep.csv.")
    if any(m.startswith("intensity=") for m in overall):
        raise ConfigError("the sweep summary steered to calibrated intensities (its α differs per emotion), so "
                          "there is no single α to choose; sweep alphas instead, or pass best_alpha.")
    swept = [r for m, r in overall.items() if m != UNSTEERED and float(r["alpha"]) > 0]
    if not swept:
        raise ConfigError("the sweep summary has no row with α > 0 to choose from.")
    accuracy = {float(r["alpha"]): float(r["ser_hit"]) for r in swept}
    wer = {float(r["alpha"]): float(r["wer"]) for r in swept}
    return choose_alpha(accuracy, wer, float(overall[UNSTEERED]["wer"]), max_wer_increase).alpha


def read_summary_csv(path: str | Path) -> list[dict]:
    """Rows of emoshift_sweep.csv with numbers parsed (for :func:`best_alpha` in Table 1)."""
    import csv

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"no sweep summary at {file}; run `emoctl steer emoshift` first or pass best_alpha.")
    out = []
    with file.open() as handle:
        for row in csv.DictReader(handle):
            out.append({k: (v if k in ("direction", "emotion", "method") else float(v) if v != "" else math.nan)
                        for k, v in row.items()})
    return out


def _trend(summary: list[dict], info: dict) -> str:
    """One sentence: where overall accuracy peaks and what happens after."""
    index = {r["method"]: r["ser_hit"] for r in summary if r["emotion"] == "all"}
    overall = {x: index[label] for label, x in swept_settings(info) if label in index}
    xs = sorted(overall)
    if not xs:
        return ""
    name = "intensity" if info.get("intensities") else "α"
    peak = max(xs, key=lambda a: (overall[a], -a))
    last = xs[-1]
    unsteered = index.get(UNSTEERED)
    base = f"α = 0: {overall[0.0]:.3f}" if 0.0 in overall and name == "α" else \
        f"unsteered: {unsteered:.3f}" if unsteered is not None else "no α = 0 row"
    text = f"Overall accuracy peaks at {name} = {peak:g} ({overall[peak]:.3f}, {base})"
    if peak < last:
        text += f" and falls to {overall[last]:.3f} at {name} = {last:g}."
    else:
        text += f", the largest {name} swept: no fall within the range."
    return text


def _intensity_lines(info: dict) -> list[str]:
    """Which α each intensity gave per emotion (the calibration's inverse), for the sweep's Markdown."""
    if not info.get("intensities"):
        return []
    lines = [f"Steered to calibrated intensities (target P(emotion) by the recognizer, from `{info['calibration']}`; "
             "recognizers are biased on synthetic speech). The α each gave:", "",
             "| intensity | " + " | ".join(next(iter(info["intensities"].values()))) + " |",
             "|---|" + "---|" * len(next(iter(info["intensities"].values())))]
    for p, by_emotion in info["intensities"].items():
        lines.append(f"| {p} | " + " | ".join(f"{a:.3g}" for a in by_emotion.values()) + " |")
    return lines + [""]


def sweep_markdown(summary: list[dict], info: dict, emotions: list[str]) -> str:
    index = {(r["emotion"], r["method"]): r for r in summary}
    settings = swept_settings(info)
    methods = [UNSTEERED] + [label for label, _ in settings]
    lines = ["# EmoShift intensity sweep", "",
             f"Layer `{info['layer']}` (rank {info['rank'] or 'full'}, trained under condition "
             f"`{info['condition']}`, the condition the backbone is given here) on `{info['backbone']}`; "
             f"{info['n_texts']} {info['split']}-split sentences × speakers {', '.join(info['speakers'])} per "
             f"emotion, sampling seed {info['seed']} for every α, token cap {info['max_new_tokens']}. Recognizer "
             f"`{info['recognizer']}`. Values: mean ± half the 95% interval (Wilson for accuracy).", "",
             _trend(summary, info), "", *_intensity_lines(info),
             f"| {'intensity' if info.get('intensities') else 'α'} | " + " | ".join(f"{e} acc" for e in emotions) + " | overall acc | WER | SpkSIM | finished |",
             "|---|" + "---|" * (len(emotions) + 4)]
    for m in methods:
        cells = [format_estimate(index[(e, m)], "ser_hit", 2) if (e, m) in index else "–" for e in emotions]
        overall = index[("all", m)]
        label = "unsteered" if m == UNSTEERED else m.partition("=")[2]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {format_estimate(overall, 'ser_hit')} | "
                     f"{format_estimate(overall, 'wer')} | {format_estimate(overall, 'spk_sim')} | {overall['finished']:.2f} |")
    return "\n".join(lines) + "\n"


def sweep_figure(summary: list[dict], emotions: list[str], info: dict):
    """Figure 3 of the seed: accuracy vs α (or calibrated intensity) per emotion (and overall), and WER."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {(r["emotion"], r["method"]): r for r in summary}
    settings = sorted(swept_settings(info), key=lambda s: s[1])
    xs = [x for _, x in settings]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    for e in [*emotions, "all"]:
        ys = [index[(e, label)]["ser_hit"] for label, _ in settings]
        axes[0].plot(xs, ys, marker="o", label="overall" if e == "all" else e,
                     lw=2.5 if e == "all" else 1.2, color="black" if e == "all" else None)
    wer = [index[("all", label)]["wer"] for label, _ in settings]
    low = [index[("all", label)]["wer_low"] for label, _ in settings]
    high = [index[("all", label)]["wer_high"] for label, _ in settings]
    axes[1].plot(xs, wer, marker="o", color="black")
    axes[1].fill_between(xs, low, high, alpha=0.2, color="grey")
    axes[0].set_ylabel("SER accuracy")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylabel("WER")
    for ax in axes:
        ax.set_xlabel("calibrated intensity (target P(emotion))" if info.get("intensities") else "α (strength)")
    axes[0].legend(fontsize=7)
    fig.suptitle("EmoShift: emotion accuracy and WER against α (held-out sentences)")
    fig.tight_layout()
    return fig


def write_sweep(out: Path, summary: list[dict], rows: list[dict], info: dict, emotions: list[str],
                 record: dict) -> None:
    buffer = io.BytesIO()
    sweep_figure(summary, emotions, info).savefig(buffer, format="png")
    write_report_folder(out, "emoshift_sweep", sweep_markdown(summary, info, emotions), summary, rows, info, record,
                        {"emoshift_sweep.png": buffer.getvalue()})


# ------------------------------------------------------------------------------------------ compound emotions

DEFAULT_MIXTURES: list[dict[str, float]] = [
    {"Happy": 0.5, "Surprise": 0.5}, {"Happy": 0.7, "Surprise": 0.3},
    {"Angry": 0.5, "Sad": 0.5}, {"Angry": 0.7, "Sad": 0.3}]
COMPOUND_PROBES = ("f0_mean_hz", "rms", "duration_s")


def mix_label(mix: dict[str, float]) -> str:
    return "+".join(f"{w:g}·{e}" for e, w in mix.items())


def compound_markdown(summary: list[dict], info: dict, mixtures: list[dict[str, float]], components: list[str]
                      ) -> str:
    index = {r["method"]: r for r in summary}
    lines = ["# EmoShift compound emotions", "",
             f"Layer `{info['layer']}` on `{info['backbone']}`, backbone told Neutral, α = {info['alpha']:g} for every "
             f"steered row (a mixture's shift is α·ε·Σ w_e·h·W_e). {info['n_texts']} {info['split']}-split sentences "
             f"× speakers {', '.join(info['speakers'])}, seed {info['seed']} for every row; recognizer "
             f"`{info['recognizer']}`. Means ± half the 95% interval.", ""]
    for pair in dict.fromkeys(tuple(m) for m in mixtures):
        a, b = (pair[0], pair[1]) if len(pair) > 1 else (pair[0], pair[0])
        mix = dict.fromkeys(pair, 0.0)
        lines += [f"## {a} + {b}", "", f"| setting | F0 mean (Hz) | RMS | duration (s) | P({a}) | P({b}) |",
                  "|---|---|---|---|---|---|"]
        for label in dict.fromkeys([UNSTEERED, a, b, *(mix_label(m) for m in mixtures if set(m) == set(mix))]):
            r = index[label]
            lines.append(f"| {label} | {format_estimate(r, 'f0_mean_hz', 1)} | {format_estimate(r, 'rms', 4)} | {format_estimate(r, 'duration_s', 2)} | "
                         f"{format_estimate(r, f'p_{a}')} | {format_estimate(r, f'p_{b}')} |")
        lines.append("")
    return "\n".join(lines)


def write_compound(out: Path, summary: list[dict], rows: list[dict], info: dict, mixtures: list[dict[str, float]],
                    components: list[str], record: dict) -> None:
    write_report_folder(out, "emoshift_compound", compound_markdown(summary, info, mixtures, components), summary,
                        rows, info, record)
