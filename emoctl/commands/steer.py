"""``emoctl steer``: apply a trained EmoShift layer (strength sweeps over α or calibrated intensities, compound
emotions), and speak under a user's schedule with any method (``steer speak``)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from emoctl.backbones.base import Prompt
from emoctl.backbones.loading import BackboneSpec
from emoctl.emotions import NEUTRAL
from emoctl.errors import ConfigError
from emoctl.evaluation.calibration import IntensityChoice, alphas_for_intensity, check_alpha_or_intensity
from emoctl.evaluation.emoshift_setup import SteeringSetup, target_prompts
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.evaluation.scoring import References, Scorers, score_clips
from emoctl.evaluation.summary import summarize
from emoctl.commands.settings_flags import flags_from
from emoctl.io.fsio import check_output_dir
from emoctl.io.provenance import collect
from emoctl.metrics.loading import load_recognizer, recognizer_folder
from emoctl.probes import measure
from emoctl.reports.emoshift_sweep import (COMPOUND_PROBES, DEFAULT_ALPHAS, DEFAULT_MIXTURES, UNSTEERED, alpha_label,
                                           intensity_label, mix_label, sweep_summary, write_compound, write_sweep)
from emoctl.reports.speak import SpeakSettings, run_speak
from emoctl.steering.schedules import ScheduleSpec, StepSchedule, parse_step_schedule


def emoshift_sweep(layer: str, backbone: BackboneSpec | None = None, corpus_root: str = "runs/corpus/esd_espeak",
                   out_dir: str = "reports/emoshift_sweep", alphas: list[float] | None = None,
                   emotions: list[str] | None = None, protocol: EvaluationProtocol = EvaluationProtocol(n_texts=3),
                   recognizer: str = "mini", recognizer_dir: str | None = None,
                   schedule: dict[str, Any] | None = None, intensities: list[float] | None = None,
                   calibration: str | None = None, progress: bool = True) -> list[dict]:
    """Sweep EmoShift's strength α (or a calibrated intensity) over a trained layer: SER accuracy per emotion and
    overall, WER, SpkSIM.

    Args:
        layer: Folder of a trained EmoSteer layer (emosteer.json + emosteer.safetensors).
        backbone: The backbone the layer was trained on; None: the default checkpoint of the layer's backbone kind.
        corpus_root: ESD-shaped corpus: the held-out sentences and the speakers' reference recordings.
        out_dir: Where emoshift_sweep.{md,csv,png} and emoshift_sweep_clips.csv go.
        alphas: Strengths α; 0 attaches the layer at zero strength. An unsteered row (no hook) is always added.
            None: 0, 1, 1.5, 2, 2.5, 3, 4 (unless intensities are given).
        emotions: Target emotions; None: every emotion the layer has a matrix for.
        protocol: Speakers, sentences, reference clips, seed and sampling (the same for every α).
        recognizer: "mini" (embedded) or "emotion2vec" (needs recognizer_dir).
        recognizer_dir: Recognizer folder; None for the embedded default.
        schedule: α's multiplier over each clip's decode steps, a switch or a ramp (docs/commands.md,
            Schedules), e.g. {"switch": {"at_s": 0.5}}; None: every step at α. Recorded in the info file.
        intensities: In place of alphas: target P(emotion) by the recognizer, each turned into a per-emotion α by
            ``calibration`` (the smallest α whose calibrated P(target) reaches it; printed and recorded). The
            recognizer's P(target), biased on synthetic speech, not a listener's.
        calibration: calibration.json (or its folder) from ``emoctl calibrate`` on this backbone; needed with
            intensities.
        progress: Show progress bars.
    """
    check_output_dir(out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    from tqdm.auto import tqdm

    schedule_spec = parse_step_schedule(schedule, "emoctl steer emoshift")
    check_alpha_or_intensity(alphas is not None, intensities, calibration, "emoctl steer emoshift")
    if intensities is not None and not intensities:
        raise ConfigError("intensities=[] measures nothing; give at least one target P(emotion), or alphas.")
    alphas = list(DEFAULT_ALPHAS if alphas is None else alphas) if intensities is None else []
    if intensities is None and (not alphas or any(a < 0 or not math.isfinite(a) for a in alphas)):
        raise ConfigError(f"alphas must be a non-empty list of finite values >= 0 (EmoShift's strength), got "
                          f"{alphas}.")  # an empty sweep measures nothing
    root = Path(corpus_root)
    setup = SteeringSetup.load(layer, backbone)
    steps = _resolved(schedule_spec, setup, protocol)
    emotions = setup.targets(emotions)
    settings: list[tuple[str, Any]] = [(UNSTEERED, None)] + [(alpha_label(a), a) for a in alphas]
    chosen: dict[float, dict[str, IntensityChoice]] = {}
    for p in intensities or []:  # every intensity resolved (or refused) before anything is spoken
        chosen[p] = alphas_for_intensity(str(calibration), "emoshift", emotions, p, setup.backbone.backbone_id)
    speakers, voice = protocol.voices(setup.backbone, root), protocol.voice_for(setup.backbone, root)
    texts, record = protocol.texts(root)
    scorers = Scorers.load(recognizer, recognizer_dir, dnsmos=False)
    refs = References(root, record["sentences"], speakers, scorers, split=protocol.split,
                      reference_clips=protocol.reference_clips)
    prompts, targets = target_prompts(setup, emotions, texts, speakers, "sweep", voice)
    settings += [(intensity_label(p), [chosen[p][t].alpha for t in targets]) for p in chosen]
    rows: list[dict] = []
    for (label, alpha), x in tqdm(zip(settings, [None, *alphas, *chosen]), total=len(settings),
                                  desc="EmoShift sweep", unit="setting", disable=not progress):
        clips = setup.synthesize(prompts, targets, alpha, protocol.seed, protocol.sampling, steps)
        for i, row in enumerate(score_clips(clips, targets, scorers, refs)):
            row_alpha = 0.0 if alpha is None else alpha[i] if isinstance(alpha, list) else alpha
            extra = {"intensity": x} if isinstance(alpha, list) else {}
            rows.append({"direction": "induction", "emotion": row["target"], "method": label, "alpha": row_alpha,
                         **extra, **row})
    summary = sweep_summary(rows)
    info = {"layer": layer, "backbone": setup.backbone.backbone_id, "condition": setup.condition,
            "rank": setup.layer.config.rank, "recognizer": getattr(scorers.recognizer, "name", recognizer),
            "speakers": speakers, "n_texts": len(texts), "split": protocol.split, "seed": protocol.seed,
            "alphas": alphas, "max_new_tokens": protocol.sampling.max_new_tokens, "protocol": protocol.describe(),
            "schedule": steps.record() if steps is not None else None,
            "intensities": {f"{p:g}": {e: c.alpha for e, c in by_emotion.items()} for p, by_emotion in chosen.items()}
            if chosen else None, "calibration": calibration}
    record = collect(backbone=setup.backbone, paths={"layer": layer, "calibration": calibration if chosen else None},
                     corpus=corpus_root,
                     recognizer=(recognizer, recognizer_folder(recognizer, recognizer_dir)),
                     seeds={"sampling": protocol.seed}, protocol={**protocol.describe(), "alphas": alphas,
                                                                  "emotions": emotions, "intensities": intensities,
                                                                  "schedule": getattr(schedule_spec, "spec", None)})
    write_sweep(Path(out_dir), summary, rows, info, emotions, record)
    return summary


def emoshift_compound(layer: str, backbone: BackboneSpec | None = None, corpus_root: str = "runs/corpus/esd_espeak",
                      out_dir: str = "reports/emoshift_compound", mixtures: list[dict[str, float]] | None = None,
                      alpha: float = 2.0, protocol: EvaluationProtocol = EvaluationProtocol(n_texts=3),
                      recognizer: str = "mini", recognizer_dir: str | None = None,
                      schedule: dict[str, Any] | None = None, progress: bool = True) -> list[dict]:
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
        schedule: α's multiplier over each clip's decode steps, a switch or a ramp (docs/commands.md,
            Schedules); None: every step at α. Recorded in the info file.
        progress: Show progress bars.
    """
    check_output_dir(out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    from tqdm.auto import tqdm

    schedule_spec = parse_step_schedule(schedule, "emoctl steer compound")
    mixtures = [dict(m) for m in (DEFAULT_MIXTURES if mixtures is None else mixtures)]
    if not mixtures or not math.isfinite(alpha) or alpha < 0:  # before loading anything: nothing to compare
        raise ConfigError(f"need at least one mixture and a finite alpha >= 0, got mixtures={mixtures}, "
                          f"alpha={alpha}.")
    for mix in mixtures:
        if not mix or any(not math.isfinite(w) or w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ConfigError(f"each mixture needs emotions with finite weights >= 0 and a positive sum, got "
                              f"mixtures={mixtures}.")
    setup = SteeringSetup.load(layer, backbone)
    steps = _resolved(schedule_spec, setup, protocol)
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
                                 protocol.seed, protocol.sampling, steps)
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
            "recognizer": getattr(recognizer_model, "name", recognizer), "protocol": protocol.describe(),
            "schedule": steps.record() if steps is not None else None}
    record = collect(backbone=setup.backbone, paths={"layer": layer}, corpus=corpus_root,
                     recognizer=(recognizer, recognizer_folder(recognizer, recognizer_dir)),
                     seeds={"sampling": protocol.seed}, protocol={**protocol.describe(), "alpha": alpha,
                                                                  "mixtures": mixtures,
                                                                  "schedule": getattr(schedule_spec, "spec", None)})
    write_compound(Path(out_dir), summary, rows, info, mixtures, components, record)
    return summary


def _resolved(spec: ScheduleSpec | None, setup: SteeringSetup, protocol: EvaluationProtocol) -> StepSchedule | None:
    """The schedule on the layer's backbone and the protocol's budget, checked before anything is generated."""
    if spec is None:
        return None
    steps = spec.resolve_for(setup.backbone, protocol.sampling.max_new_tokens)
    assert isinstance(steps, StepSchedule)  # parse_step_schedule refused segments
    return steps


@flags_from(SpeakSettings)
def speak(**settings: Any) -> list[dict]:
    """Speak sentences unsteered and under a schedule (a switch, a ramp or segments each with its own emotion and
    α) for one method; write both as WAV files and score each part of every clip against its own emotion
    (SER, F0, RMS, centroid); speak.md / .csv and audio/ in out_dir."""
    return run_speak(SpeakSettings(**settings))
