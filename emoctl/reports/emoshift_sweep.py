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

from emoctl.backbones.base import Prompt
from emoctl.backbones.loading import BackboneSpec
from emoctl.errors import ConfigError
from emoctl.evaluation.alpha import choose_alpha
from emoctl.evaluation.emoshift_setup import SteeringSetup, target_prompts
from emoctl.evaluation.scoring import NEUTRAL, References, Scorers, score_clips
from emoctl.evaluation.summary import csv_bytes, format_estimate, summarize
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.io.provenance import collect, stamp, write_report_info
from emoctl.metrics.loading import recognizer_folder
from emoctl.io.fsio import check_output_dir

DEFAULT_ALPHAS = [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]
UNSTEERED = "unsteered"
SWEEP_METRICS = ["ser_hit", "p_target", "wer", "spk_sim", "finished"]


def alpha_label(alpha: float | None) -> str:
    return UNSTEERED if alpha is None else f"alpha={alpha:g}"


# ------------------------------------------------------------------------------------------------ the sweep

def emoshift_sweep(layer: str, backbone: BackboneSpec | None = None, corpus_root: str = "runs/corpus/esd_espeak",
                   out_dir: str = "reports/emoshift_sweep", alphas: list[float] | None = None,
                   emotions: list[str] | None = None, protocol: EvaluationProtocol = EvaluationProtocol(n_texts=3),
                   recognizer: str = "mini", recognizer_dir: str | None = None, progress: bool = True) -> list[dict]:
    """Sweep EmoShift's intensity α over a trained layer: SER accuracy per emotion and overall, WER, SpkSIM.

    Args:
        layer: Folder of a trained EmoSteer layer (emosteer.json + emosteer.safetensors).
        backbone: The backbone the layer was trained on; None: the default checkpoint of the layer's backbone kind.
        corpus_root: ESD-shaped corpus: the held-out sentences and the speakers' reference recordings.
        out_dir: Where emoshift_sweep.{md,csv,png} and emoshift_sweep_clips.csv go.
        alphas: Intensities; 0 attaches the layer at zero intensity. An unsteered row (no hook) is always added.
        emotions: Target emotions; None: every emotion the layer has a matrix for.
        protocol: Speakers, sentences, reference clips, seed and sampling (the same for every α).
        recognizer: "mini" (embedded) or "emotion2vec" (needs recognizer_dir).
        recognizer_dir: Recognizer folder; None for the embedded default.
        progress: Show progress bars.
    """
    check_output_dir(out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    from tqdm.auto import tqdm

    alphas = list(DEFAULT_ALPHAS if alphas is None else alphas)
    if not alphas or any(a < 0 or not math.isfinite(a) for a in alphas):  # an empty sweep measures nothing
        raise ConfigError(f"alphas must be a non-empty list of finite values >= 0 (EmoShift's intensity), got "
                          f"{alphas}.")
    root = Path(corpus_root)
    setup = SteeringSetup.load(layer, backbone)
    emotions = setup.targets(emotions)
    speakers, voice = protocol.voices(setup.backbone, root), protocol.voice_for(setup.backbone, root)
    texts, record = protocol.texts(root)
    scorers = Scorers.load(recognizer, recognizer_dir, dnsmos=False)
    refs = References(root, record["sentences"], speakers, scorers, split=protocol.split,
                      reference_clips=protocol.reference_clips)
    prompts, targets = target_prompts(setup, emotions, texts, speakers, "sweep", voice)
    rows: list[dict] = []
    for alpha in tqdm([None, *alphas], desc="EmoShift α sweep", unit="α", disable=not progress):
        clips = setup.synthesize(prompts, targets, alpha, protocol.seed, protocol.sampling)
        for row in score_clips(clips, targets, scorers, refs):
            rows.append({"direction": "induction", "emotion": row["target"], "method": alpha_label(alpha),
                         "alpha": 0.0 if alpha is None else alpha, **row})
    summary = sweep_summary(rows)
    info = {"layer": layer, "backbone": setup.backbone.backbone_id, "condition": setup.condition,
            "rank": setup.layer.config.rank, "recognizer": getattr(scorers.recognizer, "name", recognizer),
            "speakers": speakers, "n_texts": len(texts), "split": protocol.split, "seed": protocol.seed,
            "alphas": alphas, "max_new_tokens": protocol.sampling.max_new_tokens, "protocol": protocol.describe()}
    record = collect(backbone=setup.backbone, paths={"layer": layer}, corpus=corpus_root,
                     recognizer=(recognizer, recognizer_folder(recognizer, recognizer_dir)),
                     seeds={"sampling": protocol.seed}, protocol={**protocol.describe(), "alphas": alphas,
                                                                  "emotions": emotions})
    _write_sweep(Path(out_dir), summary, rows, info, emotions, record)
    return summary


def sweep_summary(rows: list[dict]) -> list[dict]:
    """Per (emotion, α) and per α over all emotions ("all"): means / proportions with 95% intervals."""
    pooled = [{**r, "emotion": "all"} for r in rows]
    return summarize(rows + pooled, SWEEP_METRICS)


def best_alpha(summary: list[dict], max_wer_increase: float = 0.15) -> float:
    """:func:`emoctl.evaluation.alpha.choose_alpha` over the sweep's overall rows (α > 0)."""
    overall = {r["method"]: r for r in summary if r["emotion"] == "all"}
    if UNSTEERED not in overall:
        raise ConfigError("the sweep summary has no unsteered row; it is not an emoshift_sweep.csv.")
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


def _trend(summary: list[dict], alphas: list[float]) -> str:
    """One sentence: where overall accuracy peaks and what happens after."""
    overall = {float(r["alpha"]): r["ser_hit"] for r in summary if r["emotion"] == "all" and r["method"] != UNSTEERED}
    xs = sorted(overall)
    if not xs:
        return ""
    peak = max(xs, key=lambda a: (overall[a], -a))
    last = xs[-1]
    unsteered = next((r["ser_hit"] for r in summary if r["emotion"] == "all" and r["method"] == UNSTEERED), None)
    base = f"α = 0: {overall[0.0]:.3f}" if 0.0 in overall else \
        f"unsteered: {unsteered:.3f}" if unsteered is not None else "no α = 0 row"
    text = f"Overall accuracy peaks at α = {peak:g} ({overall[peak]:.3f}, {base})"
    if peak < last:
        text += f" and falls to {overall[last]:.3f} at α = {last:g}."
    else:
        text += ", the largest α swept: no fall within the range."
    return text


def sweep_markdown(summary: list[dict], info: dict, emotions: list[str]) -> str:
    index = {(r["emotion"], r["method"]): r for r in summary}
    methods = [UNSTEERED] + [alpha_label(a) for a in info["alphas"]]
    lines = ["# EmoShift intensity sweep", "",
             f"Layer `{info['layer']}` (rank {info['rank'] or 'full'}, trained under condition "
             f"`{info['condition']}`, the condition the backbone is given here) on `{info['backbone']}`; "
             f"{info['n_texts']} {info['split']}-split sentences × speakers {', '.join(info['speakers'])} per "
             f"emotion, sampling seed {info['seed']} for every α, token cap {info['max_new_tokens']}. Recognizer "
             f"`{info['recognizer']}`. Values: mean ± half the 95% interval (Wilson for accuracy).", "",
             _trend(summary, info["alphas"]), "",
             "| α | " + " | ".join(f"{e} acc" for e in emotions) + " | overall acc | WER | SpkSIM | finished |",
             "|---|" + "---|" * (len(emotions) + 4)]
    for m in methods:
        cells = [format_estimate(index[(e, m)], "ser_hit", 2) if (e, m) in index else "–" for e in emotions]
        overall = index[("all", m)]
        label = "unsteered" if m == UNSTEERED else m.removeprefix("alpha=")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {format_estimate(overall, 'ser_hit')} | "
                     f"{format_estimate(overall, 'wer')} | {format_estimate(overall, 'spk_sim')} | {overall['finished']:.2f} |")
    return "\n".join(lines) + "\n"


def sweep_figure(summary: list[dict], emotions: list[str], alphas: list[float]):
    """Figure 3 of the seed: accuracy vs α per emotion (and overall), and WER vs α."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = {(r["emotion"], r["method"]): r for r in summary}
    xs = sorted(alphas)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    for e in [*emotions, "all"]:
        ys = [index[(e, alpha_label(a))]["ser_hit"] for a in xs]
        axes[0].plot(xs, ys, marker="o", label="overall" if e == "all" else e,
                     lw=2.5 if e == "all" else 1.2, color="black" if e == "all" else None)
    wer = [index[("all", alpha_label(a))]["wer"] for a in xs]
    low = [index[("all", alpha_label(a))]["wer_low"] for a in xs]
    high = [index[("all", alpha_label(a))]["wer_high"] for a in xs]
    axes[1].plot(xs, wer, marker="o", color="black")
    axes[1].fill_between(xs, low, high, alpha=0.2, color="grey")
    axes[0].set_ylabel("SER accuracy")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylabel("WER")
    for ax in axes:
        ax.set_xlabel("α (intensity)")
    axes[0].legend(fontsize=7)
    fig.suptitle("EmoShift: emotion accuracy and WER against α (held-out sentences)")
    fig.tight_layout()
    return fig


def _write_sweep(out: Path, summary: list[dict], rows: list[dict], info: dict, emotions: list[str],
                 record: dict) -> None:
    from emoctl.io.fsio import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    markdown = stamp(sweep_markdown(summary, info, emotions), record, "emoshift_sweep_info.json")
    buffer = io.BytesIO()
    sweep_figure(summary, emotions, info["alphas"]).savefig(buffer, format="png")
    atomic_write_bytes(out / "emoshift_sweep_clips.csv", csv_bytes(rows))
    atomic_write_bytes(out / "emoshift_sweep.csv", csv_bytes(summary))
    atomic_write_bytes(out / "emoshift_sweep.png", buffer.getvalue())
    atomic_write_bytes(out / "emoshift_sweep.md", markdown.encode())
    write_report_info(out / "emoshift_sweep_info.json", info, record,
                      [out / "emoshift_sweep.csv", out / "emoshift_sweep_clips.csv"])
    print(markdown)
    print(f"written to {out}/ (emoshift_sweep.md, .csv, .png, emoshift_sweep_clips.csv, _info.json)")


# ------------------------------------------------------------------------------------------ compound emotions

DEFAULT_MIXTURES: list[dict[str, float]] = [
    {"Happy": 0.5, "Surprise": 0.5}, {"Happy": 0.7, "Surprise": 0.3},
    {"Angry": 0.5, "Sad": 0.5}, {"Angry": 0.7, "Sad": 0.3}]
COMPOUND_PROBES = ("f0_mean_hz", "rms", "duration_s")


def mix_label(mix: dict[str, float]) -> str:
    return "+".join(f"{w:g}·{e}" for e, w in mix.items())


def emoshift_compound(layer: str, backbone: BackboneSpec | None = None, corpus_root: str = "runs/corpus/esd_espeak",
                      out_dir: str = "reports/emoshift_compound", mixtures: list[dict[str, float]] | None = None,
                      alpha: float = 2.0, protocol: EvaluationProtocol = EvaluationProtocol(n_texts=3),
                      recognizer: str = "mini", recognizer_dir: str | None = None, progress: bool = True) -> list[dict]:
    """Compound emotions: weighted mixtures of two layers' shifts against each pure emotion and unsteered.

    Args:
        layer: Folder of a trained EmoSteer layer.
        backbone: The backbone the layer was trained on; None: the default checkpoint of the layer's backbone kind.
        corpus_root: ESD-shaped corpus (held-out sentences).
        out_dir: Where emoshift_compound.{md,csv} and emoshift_compound_clips.csv go.
        mixtures: Emotion -> weight per mixture; None: Happy+Surprise and Angry+Sad at 0.5/0.5 and 0.7/0.3.
        alpha: Intensity of every steered setting (pure and mixed).
        protocol: Speakers, sentences, seed and sampling (the same for every setting).
        recognizer: "mini" (embedded) or "emotion2vec" (needs recognizer_dir).
        recognizer_dir: Recognizer folder; None for the embedded default.
        progress: Show progress bars.
    """
    check_output_dir(out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    from tqdm.auto import tqdm

    from emoctl.metrics.loading import load_recognizer
    from emoctl.probes import measure

    mixtures = [dict(m) for m in (DEFAULT_MIXTURES if mixtures is None else mixtures)]
    if not mixtures or not math.isfinite(alpha) or alpha < 0:  # before loading anything: nothing to compare
        raise ConfigError(f"need at least one mixture and a finite alpha >= 0, got mixtures={mixtures}, "
                          f"alpha={alpha}.")
    for mix in mixtures:
        if not mix or any(not math.isfinite(w) or w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ConfigError(f"each mixture needs emotions with finite weights >= 0 and a positive sum, got "
                              f"mixtures={mixtures}.")
    setup = SteeringSetup.load(layer, backbone)
    for mix in mixtures:
        setup.targets(list(mix))
    speakers, voice = protocol.voices(setup.backbone, corpus_root), protocol.voice_for(setup.backbone, corpus_root)
    if setup.condition != "neutral":
        raise ConfigError(f"{layer} was trained under condition 'emotion'; a mixture has no single condition to "
                          "give the backbone. Use a layer trained with model.condition=neutral.")
    texts, _ = protocol.texts(corpus_root)
    components = list(dict.fromkeys(e for mix in mixtures for e in mix))
    settings: list[tuple[str, dict[str, float] | None]] = [(UNSTEERED, None)]
    settings += [(e, {e: 1.0}) for e in components]
    settings += [(mix_label(m), m) for m in mixtures]
    recognizer_model = load_recognizer(recognizer, recognizer_dir)
    neutral = setup.backbone.condition_for(NEUTRAL)
    prompts = [Prompt(t, voice(s, t), neutral, f"mix-t{i:02d}-{s}") for i, t in enumerate(texts) for s in speakers]
    rows: list[dict] = []
    for label, mix in tqdm(settings, desc="EmoShift compound", unit="setting", disable=not progress):
        clips = setup.synthesize(prompts, [mix] * len(prompts) if mix else None, None if mix is None else alpha,
                                 protocol.seed, protocol.sampling)
        waves, rates = [c.wave for c in clips], [c.sample_rate for c in clips]
        ser = recognizer_model(waves, rates)
        predicted = ser.predicted()
        for i, (clip, profile) in enumerate(zip(clips, measure(waves, rates))):
            row = {"direction": "compound", "emotion": "all", "method": label,
                   "alpha": 0.0 if mix is None else alpha, "utt_id": clip.prompt.utt_id, "speaker": clip.prompt.speaker,
                   "predicted": predicted[i], "finished": float(clip.finished)}
            row.update({p: float(getattr(profile, p)) for p in COMPOUND_PROBES})
            row.update({f"p_{e}": float(ser.prob_of(e)[i]) for e in components})
            row.update({f"is_{e}": float(predicted[i] == e) for e in components})
            rows.append(row)
    metrics = [*COMPOUND_PROBES, *(f"p_{e}" for e in components), "finished"]
    summary = summarize(rows, metrics)
    info = {"layer": layer, "backbone": setup.backbone.backbone_id, "alpha": alpha, "speakers": speakers,
            "n_texts": len(texts), "split": protocol.split, "seed": protocol.seed,
            "recognizer": getattr(recognizer_model, "name", recognizer), "protocol": protocol.describe()}
    record = collect(backbone=setup.backbone, paths={"layer": layer}, corpus=corpus_root,
                     recognizer=(recognizer, recognizer_folder(recognizer, recognizer_dir)),
                     seeds={"sampling": protocol.seed}, protocol={**protocol.describe(), "alpha": alpha,
                                                                  "mixtures": mixtures})
    _write_compound(Path(out_dir), summary, rows, info, mixtures, components, record)
    return summary


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


def _write_compound(out: Path, summary: list[dict], rows: list[dict], info: dict, mixtures: list[dict[str, float]],
                    components: list[str], record: dict) -> None:
    from emoctl.io.fsio import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    markdown = stamp(compound_markdown(summary, info, mixtures, components), record, "emoshift_compound_info.json")
    atomic_write_bytes(out / "emoshift_compound_clips.csv", csv_bytes(rows))
    atomic_write_bytes(out / "emoshift_compound.csv", csv_bytes(summary))
    atomic_write_bytes(out / "emoshift_compound.md", markdown.encode())
    write_report_info(out / "emoshift_compound_info.json", info, record,
                      [out / "emoshift_compound.csv", out / "emoshift_compound_clips.csv"])
    print(markdown)
    print(f"written to {out}/ (emoshift_compound.md, .csv, emoshift_compound_clips.csv, _info.json)")
