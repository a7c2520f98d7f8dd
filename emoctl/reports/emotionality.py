"""Is the backbone emotional?  Paired probes and SER on held-out sentences.

For each held-out sentence and speaker, the backbone speaks the sentence once
per emotion condition.  Each emotional clip is compared with its neutral twin
(same text, speaker and sampling seed) on mean F0, RMS and duration, and the
sign of the change is checked against the corpus's own direction, measured the
same way on the corpus's recordings of those sentences.  The embedded
recognizer then says which emotion it hears in every generated clip.

Output (``out_dir``): ``summary.md``, ``pairs.csv``, ``confusion.csv`` and
``confusion.png``, written atomically.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emoctl.io.fsio import atomic_write_bytes as write_atomic
from emoctl.io.provenance import stamp, write_report_info

PAIRED_PROBES = ("f0_mean_hz", "rms", "duration_s")


@dataclass
class EmotionalityResult:
    """Agreement rates per (emotion, probe), SER accuracy and the confusion matrix."""

    emotions: list[str]
    corpus_direction: dict[str, dict[str, int]]      # emotion -> probe -> +1 / -1
    corpus_agreement: dict[str, dict[str, float]]    # share of corpus pairs moving that way
    generated_agreement: dict[str, dict[str, float]]  # share of generated pairs moving that way
    confusion: np.ndarray                            # (E, E) rows: requested, columns: recognized
    ser_accuracy: float
    n_pairs: int
    extra: dict = field(default_factory=dict)

    def per_emotion_accuracy(self) -> dict[str, float]:
        rows = self.confusion.sum(1)
        return {e: float(self.confusion[i, i] / rows[i]) if rows[i] else float("nan")
                for i, e in enumerate(self.emotions)}


def direction_agreement(before: list, after: list, probe: str) -> tuple[np.ndarray, np.ndarray]:
    diff = np.array([getattr(a, probe) - getattr(b, probe) for b, a in zip(before, after)], dtype=np.float64)
    return diff, np.isfinite(diff)


def _summary_markdown(result: EmotionalityResult) -> str:
    lines = ["# Is the backbone emotional?", "",
             f"Backbone `{result.extra['backbone']}`, {result.n_pairs} (text, speaker) pairs per emotion "
             f"({result.extra['n_texts']} held-out test sentences x speakers {', '.join(result.extra['speakers'])}), "
             f"sampling seed {result.extra['seed']}; {result.extra['unfinished']} clips hit the token cap.", "",
             "## Paired probes: share of pairs moving in the corpus's direction", "",
             "Emotional clip minus its neutral twin (same text, speaker, seed). *corpus* is the same share measured "
             "on the corpus's own recordings of these sentences.", "",
             "| emotion | " + " | ".join(f"{p} (dir, corpus, generated)" for p in PAIRED_PROBES) + " |",
             "|---|" + "---|" * len(PAIRED_PROBES)]
    for e, probes in result.generated_agreement.items():
        cells = [f"{'+' if result.corpus_direction[e][p] > 0 else '-'}, {result.corpus_agreement[e][p]:.0%}, "
                 f"**{probes[p]:.0%}**" for p in PAIRED_PROBES]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    lines += ["", f"## Recognized emotion ({result.extra['recognizer']} recognizer)", "",
              f"Overall accuracy **{result.ser_accuracy:.1%}** (chance {1 / len(result.emotions):.0%}).", "",
              "| requested \\ recognized | " + " | ".join(result.emotions) + " | accuracy |",
              "|---|" + "---|" * (len(result.emotions) + 1)]
    accuracy = result.per_emotion_accuracy()
    for i, e in enumerate(result.emotions):
        lines.append(f"| {e} | " + " | ".join(str(int(v)) for v in result.confusion[i]) + f" | {accuracy[e]:.0%} |")
    return "\n".join(lines) + "\n"


def _confusion_png(result: EmotionalityResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=110)
    norm = result.confusion / np.maximum(result.confusion.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(result.emotions)):
        for j in range(len(result.emotions)):
            ax.text(j, i, str(int(result.confusion[i, j])), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(result.emotions)), result.emotions, rotation=30)
    ax.set_yticks(range(len(result.emotions)), result.emotions)
    ax.set_xlabel("recognized")
    ax.set_ylabel("requested")
    ax.set_title(f"Generated speech: SER accuracy {result.ser_accuracy:.0%}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_emotionality_outputs(out: Path, result: EmotionalityResult, rows: list[dict], record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    markdown = stamp(_summary_markdown(result), record, "emotionality_info.json")
    write_atomic(out / "summary.md", markdown.encode())
    write_atomic(out / "pairs.csv", _csv(rows).encode())
    confusion_rows = [{"requested": e, **{r: int(v) for r, v in zip(result.emotions, result.confusion[i])}}
                      for i, e in enumerate(result.emotions)]
    write_atomic(out / "confusion.csv", _csv(confusion_rows).encode())
    write_atomic(out / "confusion.png", _confusion_png(result))
    info = {**result.extra, "ser_accuracy": result.ser_accuracy, "n_pairs": result.n_pairs}
    write_report_info(out / "emotionality_info.json", info, record, [out / "pairs.csv", out / "confusion.csv"])
    print(markdown)
    print(f"written to {out}/ (summary.md, pairs.csv, confusion.csv, confusion.png, emotionality_info.json)")


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()
