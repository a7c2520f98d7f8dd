"""Table 1 of the EmoShift seed: emotion accuracy, WER, speaker similarity and DNSMOS per method, with 95% intervals.

Rows (each on the same held-out prompts, speakers and sampling seed, so differences are paired):

* **Zero-shot**: the unsteered backbone given each target emotion as its condition.
* **Neutral**: the unsteered backbone given the Neutral condition (what the layer starts from).
* **SFT**: the fully fine-tuned backbone (``emoctl fit --config recipes/sft_mini.yaml``) given the emotion.
* **EmoShift** (full rank) at α = 1 and at the best α of a sweep (``emoctl steer emoshift``), the backbone given
  the layer's training condition.
* **EmoShift low rank** at α = 1.

Columns: SER accuracy per target emotion and overall, WER, SpkSIM and DNSMOS OVRL (overall), trainable parameters.
Outputs in ``out_dir``: ``table1_emoshift.md``, ``table1_emoshift.csv`` (per method × emotion and "all"),
``table1_emoshift_clips.csv``.
"""
from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from emoctl.backbones.base import Prompt
from emoctl.backbones.loading import BackboneSpec, load_backbone
from emoctl.evaluation.emoshift_setup import SteeringSetup, target_prompts
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.emotions import NEUTRAL
from emoctl.evaluation.scoring import References, Scorers, score_clips
from emoctl.evaluation.summary import format_estimate, summarize
from emoctl.reports.emoshift_sweep import best_alpha, read_summary_csv
from emoctl.reports.report_folder import write_report_folder
from emoctl.io.provenance import collect
from emoctl.metrics.loading import recognizer_folder
from emoctl.synthesis import synthesize
from emoctl.io.fsio import check_output_dir

METRICS = ["ser_hit", "p_target", "wer", "spk_sim", "dnsmos_ovrl", "finished"]


def emoshift_table1(layer: str, low_rank: str | None = None, sft: str | None = None,
                    backbone: BackboneSpec | None = None, best: float | None = None, sweep_csv: str | None = None,
                    max_wer_increase: float = 0.15, corpus_root: str = "runs/corpus/esd_espeak",
                    out_dir: str = "reports", emotions: list[str] | None = None,
                    protocol: EvaluationProtocol = EvaluationProtocol(n_texts=2, text_offset=3),
                    recognizer: str = "mini", recognizer_dir: str | None = None, progress: bool = True) -> list[dict]:
    """Run the EmoShift seed's Table 1 and write table1_emoshift.{md,csv} + the per-clip CSV.

    Args:
        layer: Full-rank EmoSteer layer folder (rows EmoShift α = 1 and α = best).
        low_rank: Low-rank layer folder (row EmoShift low rank, α = 1); None leaves the row out.
        sft: Fine-tuned backbone folder (``runs/sft_mini/<version>/sft_backbone``); None leaves the row out.
        backbone: The base backbone; None: the default checkpoint of the layer's backbone kind.
        best: The best α; None: chosen from ``sweep_csv`` (highest overall accuracy within the WER bound), or
            the row is left out when neither is given.
        sweep_csv: ``emoshift_sweep.csv`` of ``emoctl steer emoshift`` on the same layer.
        max_wer_increase: WER bound of the α choice, over the unsteered WER.
        corpus_root: ESD-shaped corpus: test-split sentences and the speakers' reference recordings.
        out_dir: Where the report files go.
        emotions: Target emotions; None: every emotion of the layer.
        protocol: Speakers, sentences, reference clips, seed and sampling of every row. Its default text_offset
            skips the sweep's sentences (its n_texts = 3), so α is not chosen on the sentences it is reported on.
        recognizer: "mini" (embedded) or "emotion2vec" (needs recognizer_dir).
        recognizer_dir: Recognizer folder; None for the embedded default.
        progress: Show progress bars.
    """
    check_output_dir(out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    root = Path(corpus_root)
    full = SteeringSetup.load(layer, backbone)
    emotions = full.targets(emotions)
    speakers, voice = protocol.voices(full.backbone, root), protocol.voice_for(full.backbone, root)
    if best is None and sweep_csv is not None:
        best = best_alpha(read_summary_csv(sweep_csv), max_wer_increase)
    texts, record = protocol.texts(root)
    seed, sampling = protocol.seed, protocol.sampling
    scorers = Scorers.load(recognizer, recognizer_dir)
    refs = References(root, record["sentences"], speakers, scorers, split=protocol.split,
                      reference_clips=protocol.reference_clips)
    backbone_model = full.backbone
    emotion_prompts = [Prompt(t, voice(s, t), backbone_model.condition_for(e), f"t1-{e}-t{i:02d}-{s}") for e in emotions
                       for i, t in enumerate(texts) for s in speakers]
    targets = [e for e in emotions for _ in texts for _ in speakers]
    neutral_prompts = [p.with_emotion(backbone_model.condition_for(NEUTRAL)) for p in emotion_prompts]

    jobs: list[tuple[str, str, object]] = [("zero_shot", "Zero-shot (emotion condition)", None),
                                           ("neutral", "Neutral condition", None)]
    if sft is not None:
        jobs.append(("sft", "SFT (full fine-tuning)", None))
    jobs.append(("emoshift@1", "EmoShift α=1", (full, 1.0)))
    if best is not None:
        jobs.append((f"emoshift@{best:g}", f"EmoShift α={best:g} (best of sweep)", (full, float(best))))
    low = SteeringSetup.load(low_rank, backbone) if low_rank is not None else None
    if low is not None:
        jobs.append(("emoshift_lowrank@1", f"EmoShift rank {low.layer.config.rank} α=1", (low, 1.0)))

    params = {"zero_shot": 0, "neutral": 0}
    rows: list[dict] = []
    for key, _, steering in tqdm(jobs, desc="Table 1 (EmoShift)", unit="row", disable=not progress):
        if key in ("zero_shot", "neutral"):
            clips = synthesize(full.backbone, emotion_prompts if key == "zero_shot" else neutral_prompts, seed=seed,
                               sampling=sampling)
        elif key == "sft":
            tuned = load_backbone(full.backbone.kind, sft)  # the SFT export of the same family
            params[key] = int(getattr(tuned, "metadata", {}).get("sft", {}).get("parameters", {}).get(
                "trainable", sum(p.numel() for p in tuned.parameters())))
            clips = synthesize(tuned, emotion_prompts, seed=seed, sampling=sampling)
            del tuned
        else:
            setup, alpha = steering
            prompts, _ = target_prompts(setup, emotions, texts, speakers, "t1", voice)
            prompts = [Prompt(p.text, p.voice, p.emotion, q.utt_id) for p, q in zip(prompts, emotion_prompts)]
            clips = setup.synthesize(prompts, targets, alpha, seed, sampling)
            params[key] = int(setup.layer.num_parameters())
        for row in score_clips(clips, targets, scorers, refs):
            rows.append({"direction": "induction", "emotion": row["target"], "method": key, "alpha": 0.0, **row})
    pooled = [{**r, "emotion": "all"} for r in rows]
    summary = summarize(rows + pooled, METRICS)
    for r in summary:
        r["trainable_parameters"] = params[r["method"]]
    info = {"layer": layer, "low_rank": low_rank, "sft": sft, "backbone": full.backbone.backbone_id,
            "condition": full.condition, "best_alpha": best, "sweep_csv": sweep_csv,
            "recognizer": getattr(scorers.recognizer, "name", recognizer), "speakers": speakers,
            "texts": texts, "text_offset": protocol.text_offset, "seed": seed, "parameters": params,
            "protocol": protocol.describe(),
            "backbone_parameters": sum(p.numel() for p in full.backbone.parameters())}
    record = collect(backbone=full.backbone, paths={"layer": layer, "low_rank": low_rank, "sft": sft,
                                                    "sweep_csv": sweep_csv},
                     corpus=corpus_root, recognizer=(recognizer, recognizer_folder(recognizer, recognizer_dir)), seeds={"sampling": seed},
                     protocol={**protocol.describe(), "emotions": emotions, "best_alpha": best})
    _write(Path(out_dir), summary, rows, info, jobs, emotions, record)
    return summary


def table_markdown(summary: list[dict], info: dict, jobs: list[tuple], emotions: list[str]) -> str:
    index = {(r["emotion"], r["method"]): r for r in summary}
    lines = ["# Table 1 (EmoShift seed): emotion control on the configured backbone", "",
             f"Backbone `{info['backbone']}` ({info['backbone_parameters']:,} parameters); recognizer "
             f"`{info['recognizer']}`; {len(info['texts'])} test-split sentences (from #{info['text_offset']}, "
             f"disjoint from the α sweep's) × speakers {', '.join(info['speakers'])} per emotion, sampling seed "
             f"{info['seed']} for every row. EmoShift rows give the backbone the layer's training condition "
             f"(`{info['condition']}`). Best α: {info['best_alpha'] if info['best_alpha'] is not None else '–'}"
             f"{' (from ' + str(info['sweep_csv']) + ')' if info['sweep_csv'] else ''}. Mean ± half the 95% "
             "interval (Wilson for accuracy).", "",
             "| method | trainable params | " + " | ".join(f"{e} acc" for e in emotions)
             + " | overall acc | WER | SpkSIM | DNSMOS |", "|---|---|" + "---|" * (len(emotions) + 4)]
    for key, label, _ in jobs:
        overall = index[("all", key)]
        cells = [format_estimate(index[(e, key)], "ser_hit", 2) for e in emotions]
        lines.append(f"| {label} | {info['parameters'][key]:,} | " + " | ".join(cells)
                     + f" | {format_estimate(overall, 'ser_hit')} | {format_estimate(overall, 'wer')} | {format_estimate(overall, 'spk_sim')} | "
                       f"{format_estimate(overall, 'dnsmos_ovrl')} |")
    return "\n".join(lines) + "\n"


def _write(out: Path, summary: list[dict], rows: list[dict], info: dict, jobs: list[tuple],
           emotions: list[str], record: dict) -> None:
    write_report_folder(out, "table1_emoshift", table_markdown(summary, info, jobs, emotions), summary, rows, info,
                        record)
