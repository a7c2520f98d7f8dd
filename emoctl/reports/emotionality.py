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

from emoctl.backbones.base import Prompt
from emoctl.backbones.loading import BackboneSpec
from emoctl.errors import ConfigError
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.evaluation.texts import corpus_test_sentences
from emoctl.metrics.ser import ESD_EMOTIONS
from emoctl.io.provenance import collect, stamp, write_report_info
from emoctl.metrics.loading import recognizer_folder
from emoctl.synthesis import synthesize
from emoctl.io.fsio import check_output_dir

PAIRED_PROBES = ("f0_mean_hz", "rms", "duration_s")
NEUTRAL = "Neutral"


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


def _agreement(before: list, after: list, probe: str) -> tuple[np.ndarray, np.ndarray]:
    diff = np.array([getattr(a, probe) - getattr(b, probe) for b, a in zip(before, after)], dtype=np.float64)
    return diff, np.isfinite(diff)


def emotionality_report(backbone: BackboneSpec = BackboneSpec(), corpus_root: str = "runs/corpus/esd_espeak",
                        out_dir: str = "reports/emotionality",
                        protocol: EvaluationProtocol = EvaluationProtocol(n_texts=12), recognizer: str = "mini",
                        recognizer_dir: str | None = None, progress: bool = True) -> EmotionalityResult:
    """Generate every emotion for held-out sentences and report paired probes, SER accuracy and confusions.

    Args:
        backbone: The backbone to probe (kind, checkpoint folder, device).
        corpus_root: The ESD-shaped corpus whose test sentences are spoken and whose clips set the directions.
        out_dir: Where summary.md, pairs.csv, confusion.csv and confusion.png go.
        protocol: Speakers (default: the backbone's held-out voices), test sentences, seed and sampling.
        recognizer: "mini" (embedded) or "emotion2vec" (needs recognizer_dir).
        recognizer_dir: Recognizer model folder; None for the embedded default.
        progress: Show progress bars.
    """
    check_output_dir(out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    from emoctl.backbones.mini_tts.tokenize_corpus import list_corpus_clips, read_wave
    from emoctl.metrics.loading import load_recognizer
    from emoctl.probes import measure

    root = Path(corpus_root)
    if protocol.split != "test":
        raise ConfigError(f"the emotionality report pairs generated clips with the corpus's test recordings; "
                          f"protocol.split={protocol.split!r} must be 'test'.")
    sentences, record = corpus_test_sentences(root)
    first_test = record["splits"]["evaluation"]  # corpus sentence index of sentences[0]
    texts, _ = protocol.texts(root)
    seed, sampling = protocol.seed, protocol.sampling
    tts = backbone.load()
    speakers, voice = protocol.voices(tts, root), protocol.voice_for(tts, root)
    emotions = list(tts.emotions or ESD_EMOTIONS)  # the corpus's names; the backbone maps them (condition_for)
    if NEUTRAL not in emotions:
        raise ConfigError(f"the backbone has no {NEUTRAL!r} condition to pair against (it has {emotions}).")
    index = {text: first_test + i for i, text in enumerate(sentences)}

    # Corpus directions, measured on the corpus's own recordings of the same sentences and speakers.
    clips = [c for c in list_corpus_clips(root, split="test") if c.speaker in speakers]
    by_key = {(c.speaker, c.emotion, (int(c.utt_id.split("_")[1]) - 1) % 350): c for c in clips}
    corpus_profiles = {}
    keys = [(s, e, i) for s in speakers for e in emotions for i in range(len(texts))
            if (s, e, index[texts[i]]) in by_key]
    waves = [read_wave(by_key[(s, e, index[texts[i]])].path) for s, e, i in keys]
    for key, profile in zip(keys, measure([w for w, _ in waves], [r for _, r in waves])):
        corpus_profiles[key] = profile

    asked = [(i, s, e) for i in range(len(texts)) for s in speakers for e in emotions]
    prompts = [Prompt(texts[i], voice(s, texts[i]), tts.condition_for(e), f"t{i:03d}-{s}-{e}") for i, s, e in asked]
    generated = synthesize(tts, prompts, seed=seed, sampling=sampling, progress="generate" if progress else False)
    profiles = measure([c.wave for c in generated], [c.sample_rate for c in generated])
    gen_profiles = {(s, e, i): p for (i, s, e), p in zip(asked, profiles)}
    ser = load_recognizer(recognizer, recognizer_dir)([c.wave for c in generated], [c.sample_rate for c in generated])
    predicted = ser.predicted()

    direction: dict[str, dict[str, int]] = {}
    corpus_agree: dict[str, dict[str, float]] = {}
    gen_agree: dict[str, dict[str, float]] = {}
    rows: list[dict] = []
    pair_keys = [(s, i) for s in speakers for i in range(len(texts))]
    for e in emotions:
        if e == NEUTRAL:
            continue
        direction[e], corpus_agree[e], gen_agree[e] = {}, {}, {}
        c_pairs = [(corpus_profiles[(s, NEUTRAL, i)], corpus_profiles[(s, e, i)]) for s, i in pair_keys
                   if (s, NEUTRAL, i) in corpus_profiles and (s, e, i) in corpus_profiles]
        g_pairs = [(gen_profiles[(s, NEUTRAL, i)], gen_profiles[(s, e, i)]) for s, i in pair_keys]
        for probe in PAIRED_PROBES:
            c_diff, c_ok = _agreement([b for b, _ in c_pairs], [a for _, a in c_pairs], probe)
            sign = 1 if np.median(c_diff[c_ok]) >= 0 else -1
            g_diff, g_ok = _agreement([b for b, _ in g_pairs], [a for _, a in g_pairs], probe)
            direction[e][probe] = sign
            corpus_agree[e][probe] = float(np.mean(np.sign(c_diff[c_ok]) == sign)) if c_ok.any() else float("nan")
            gen_agree[e][probe] = float(np.mean(np.sign(g_diff[g_ok]) == sign)) if g_ok.any() else float("nan")
        for (s, i), (b, a) in zip(pair_keys, g_pairs):
            rows.append({"text_id": i, "speaker": s, "emotion": e,
                         **{f"delta_{p}": getattr(a, p) - getattr(b, p) for p in PAIRED_PROBES}})

    E = len(emotions)
    confusion = np.zeros((E, E), dtype=np.int64)
    for (_, _, asked_for), guess in zip(asked, predicted):
        confusion[emotions.index(asked_for), emotions.index(guess)] += 1
    result = EmotionalityResult(emotions, direction, corpus_agree, gen_agree, confusion,
                                float(np.trace(confusion) / confusion.sum()), len(pair_keys),
                                extra={"backbone": tts.backbone_id, "recognizer": recognizer,
                                       "speakers": speakers, "n_texts": len(texts), "seed": seed,
                                       "protocol": protocol.describe(),
                                       "unfinished": sum(not c.finished for c in generated)})
    record = collect(backbone=tts, corpus=root, recognizer=(recognizer, recognizer_folder(recognizer, recognizer_dir)), seeds={"sampling": seed},
                     protocol={**protocol.describe(), "emotions": emotions})
    _write_outputs(Path(out_dir), result, rows, record)
    return result


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


def _write_outputs(out: Path, result: EmotionalityResult, rows: list[dict], record: dict) -> None:
    from emoctl.io.fsio import atomic_write_bytes as write_atomic

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
