"""``emoctl attribute``: what each selected SAE feature does to the audio when steered alone.

For every emotion's top-m features (from ``emoctl select``), steer that one
latent with the emotion's α over a fixed set of prompts (texts x speakers, one
prompt emotion), vocode, measure F0, RMS, spectral centroid and duration, and
compare with the unsteered rendition of the same prompt (same text, speaker,
batch and sampling seed).  Reports the paired shift with t and bootstrap CIs
and paired-t / Wilcoxon p-values (``emoctl.probes.compare_profiles``), as
Markdown, CSV and a PNG bar chart with CIs, like the SAE seed's "latent #24
raises F0 by 23 Hz (p = 1.07e-4)".
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from tqdm.auto import tqdm

from emoctl.backbones.base import Backbone, Prompt
from emoctl.backbones.conditions import VoiceName
from emoctl.backbones.loading import BackboneSpec
from emoctl.corpus.sentences import generate_sentences
from emoctl.errors import ConfigError
from emoctl.evaluation.protocol import EvaluationProtocol, clones_voices
from emoctl.io.fsio import atomic_write_bytes, check_output_dir, save_figure_atomically
from emoctl.io.provenance import collect, stamp, write_report_info
from emoctl.probes import AcousticProfile, compare_profiles, measure
from emoctl.probes.paired import PROBE_LABELS, format_p
from emoctl.sae.export import load_pretrained
from emoctl.selection.feature_set import FeatureSet, check_selected_with, feature_set_path
from emoctl.steering.base import steer
from emoctl.steering.sae_features import LATENT_ALPHA_RULE, SAEFeatureSteering, latent_alpha_ok
from emoctl.steering.schedules import parse_step_schedule
from emoctl.synthesis import SamplingConfig, synthesize

PROBES = ("f0_mean_hz", "rms", "spectral_centroid_hz", "duration_s")
"""ΔF0, ΔRMS, Δcentroid, Δduration: the acoustic probes of the SAE seed."""


def synthesize_profiles(backbone: Backbone, prompts: Sequence[Prompt], *, seed: int,
                        sampling: SamplingConfig) -> list[AcousticProfile]:
    """Speak (with :func:`emoctl.synthesis.synthesize`: batch b uses seed ``seed + b``, so steered and
    unsteered runs of a prompt share batch and seed) and measure every prompt."""
    clips = synthesize(backbone, prompts, seed=seed, sampling=sampling)
    return measure([c.wave for c in clips], [c.sample_rate for c in clips])


def attribute_features(sae: str, selection: str, out_dir: str, backbone: BackboneSpec = BackboneSpec(),
                       emotions: list[str] | None = None, m: int | None = None, alpha: float = 40.0,
                       alphas: dict[str, float] | None = None, mode: Literal["sae", "closed_form"] = "sae",
                       texts: list[str] | None = None, n_texts: int = 10, speakers: list[str] | None = None,
                       prompt_emotion: str = "Neutral", seed: int = 0, temperature: float = 1.0,
                       top_k: int | None = None, max_new_tokens: int = 400, batch_size: int = 10,
                       n_bootstrap: int = 2000, progress: bool = True, corpus_root: str | None = None,
                       allow_unverified_features: bool = False, schedule: dict[str, Any] | None = None) -> list[dict]:
    """Steer each selected feature alone and report ΔF0, ΔRMS, Δcentroid and Δduration with CIs and p-values.

    Args:
        sae: Exported SAE folder the features index.
        selection: Folder written by ``emoctl select`` (features_<emotion>.json).
        out_dir: Where attribution.md, attribution.csv and attribution.png go.
        backbone: The backbone the SAE was trained on (kind, checkpoint folder; its device is the SAE's too).
        emotions: Emotions whose features to probe; default every features_*.json in ``selection``.
        m: Probe only each emotion's first m features (default all of them).
        alpha: Steering strength for every emotion (α > 0 induces).
        alphas: Per-emotion strengths overriding ``alpha``, e.g. {Angry: 40, Sad: 30}.
        mode: "sae" (error-preserving SAE edit) or "closed_form" (x + α·d_j).
        texts: Prompt texts; default ``n_texts`` sentences of the corpus grammar (seed 1234).
        n_texts: Number of default texts.
        speakers: Speakers; default the backbone's first two (a backbone that clones reference clips: the
            corpus's last two, voiced by their reference clips).
        prompt_emotion: Emotion condition of every prompt (Neutral: steering must do the work).
        seed: Sampling seed of the first batch (batch b uses seed + b).
        temperature: Sampling temperature (0 is greedy).
        top_k: Top-k sampling cut-off.
        max_new_tokens: Speech-token budget per utterance.
        batch_size: Prompts per generate() call.
        n_bootstrap: Bootstrap resamples of each paired difference.
        progress: Show a progress bar over the steering passes.
        corpus_root: ESD folder whose reference clips voice the speakers, for a backbone that clones voices
            (IndexTTS2); unused by backbones that know their voices by name.
        allow_unverified_features: Apply feature sets that record no SAE digest (nothing then shows that their
            latent ids index this SAE); without it they are refused.
        schedule: α's multiplier over each clip's decode steps, a switch or a ramp (docs/commands.md,
            Schedules), e.g. {"switch": {"at_s": 0.5}}; None: every step at α. Recorded in attribution_info.json.
    """
    check_output_dir(out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    bad = [f"{name}={value!r} ({rule})" for name, value, ok, rule in (
        ("m", m, m is None or m >= 1, ">= 1, or null for every feature"),
        ("n_texts", n_texts, n_texts >= 1 or bool(texts), ">= 1"),
        ("n_bootstrap", n_bootstrap, n_bootstrap >= 1, ">= 1"),
        ("batch_size", batch_size, batch_size >= 1, ">= 1"),
        ("max_new_tokens", max_new_tokens, max_new_tokens >= 1, ">= 1"),
        ("temperature", temperature, math.isfinite(temperature) and temperature >= 0, ">= 0; 0 is greedy"),
        ("top_k", top_k, top_k is None or top_k >= 1, ">= 1 or null"),
        ("alpha", alpha, latent_alpha_ok(alpha), LATENT_ALPHA_RULE),
        ("alphas", alphas, all(latent_alpha_ok(a) for a in (alphas or {}).values()), LATENT_ALPHA_RULE),
        ("seed", seed, seed >= 0, ">= 0"),
    ) if not ok]
    if bad:
        raise ConfigError("emoctl attribute: " + "; ".join(bad) + ".")
    schedule_spec = parse_step_schedule(schedule, "emoctl attribute")
    # Everything read from files is checked before the backbone loads or anything is generated.
    sets = _feature_sets(Path(selection), emotions)
    sae_model = load_pretrained(sae, device=backbone.device)
    check_selected_with(sets, sae, selection, allow_unverified=allow_unverified_features, d_sae=sae_model.cfg.d_sae)
    alphas = dict(alphas or {})
    unknown = sorted(set(alphas) - set(sets))
    if unknown:
        raise ConfigError(f"alphas names emotions {unknown} that have no feature set in {selection}.")
    model = backbone.load()
    steps = schedule_spec.resolve_for(model, max_new_tokens) if schedule_spec is not None else None
    texts = list(texts) if texts else generate_sentences(n_texts, seed=1234)
    if clones_voices(model):
        if corpus_root is None:
            raise ConfigError(f"emoctl attribute on the {model.kind} backbone voices speakers by reference clips; "
                              "give --corpus_root, the ESD folder whose speakers' clips voice the prompts.")
        protocol = EvaluationProtocol(speakers=list(speakers) if speakers else None, held_out_speakers=2)
        speakers, voice = protocol.voices(model, corpus_root), protocol.voice_for(model, corpus_root)
    else:
        speakers, voice = (list(speakers) if speakers else model.speakers[:2]), (lambda s, text: VoiceName(s))
    condition = model.condition_for(prompt_emotion)  # the corpus's name, asked of the backbone
    prompts = [Prompt(text, voice(spk, text), condition, utt_id=f"{spk}_{i:03d}") for i, text in enumerate(texts)
               for spk in speakers]
    runs = [(emotion, fid) for emotion, fs in sets.items() for fid in fs.feature_ids[:m]]
    if not runs:
        raise ConfigError(f"the feature sets in {selection} hold no features to probe; rerun `emoctl select` "
                          "with a larger m or without alpha.")
    gen = {"seed": seed, "sampling": SamplingConfig(temperature=temperature, top_k=top_k,
                                                    max_new_tokens=max_new_tokens, batch_size=batch_size)}
    bar = tqdm(total=len(runs) + 1, disable=not progress, desc="attribution passes", unit="pass")
    base = synthesize_profiles(model, prompts, **gen)
    bar.update()
    rows: list[dict] = []
    for emotion, fid in runs:
        strength = float(alphas.get(emotion, alpha))
        with steer(model, SAEFeatureSteering(sae_model, [fid], strength, mode=mode,
                                             schedule=steps.schedule if steps is not None else None)):
            steered = synthesize_profiles(model, prompts, **gen)
        for comparison in compare_profiles(base, steered, PROBES, n_bootstrap=n_bootstrap, seed=seed):
            rows.append({"emotion": emotion, "feature": fid, "alpha": strength, "mode": mode, **comparison.to_row()})
        bar.update()
    bar.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = collect(backbone=model, paths={"sae": sae, "feature_sets": [feature_set_path(selection, e) for e in sets]},
                     corpus=corpus_root, seeds={"sampling": seed, "bootstrap": seed},
                     protocol={"texts": texts, "speakers": speakers, "prompt_emotion": prompt_emotion, "m": m,
                               "alpha": alpha, "alphas": alphas, "mode": mode, "temperature": temperature,
                               "top_k": top_k, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                               "n_bootstrap": n_bootstrap,
                               "schedule": schedule_spec.spec if schedule_spec is not None else None})
    _write_csv(out / "attribution.csv", rows)
    markdown = stamp(_markdown(rows, len(prompts), prompt_emotion), record, "attribution_info.json")
    atomic_write_bytes(out / "attribution.md", markdown.encode())
    _plot(out / "attribution.png", rows)
    write_report_info(out / "attribution_info.json",
                      {"features": [[e, f] for e, f in runs],
                       "schedule": steps.record() if steps is not None else None}, record, [out / "attribution.csv"])
    print(f"wrote attribution.md, attribution.csv and attribution.png for {len(runs)} features to {out}")
    return rows


def _feature_sets(folder: Path, emotions: list[str] | None) -> dict[str, FeatureSet]:
    if not folder.is_dir():
        raise ConfigError(f"no selection folder at {folder}; run `emoctl select --out_dir {folder}` first.")
    if emotions is None:
        paths = sorted(folder.glob("features_*.json"))
        if not paths:
            raise ConfigError(f"{folder} holds no features_<emotion>.json; run `emoctl select` into it.")
    else:
        paths = [feature_set_path(folder, e) for e in emotions]
    sets = [FeatureSet.load(p) for p in paths]
    return {fs.emotion: fs for fs in sets}


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def _markdown(rows: list[dict], n_prompts: int, prompt_emotion: str) -> str:
    lines = ["# Acoustic attribution of SAE features", "",
             f"Each feature steered alone over {n_prompts} {prompt_emotion} prompts; shift = steered − unsteered "
             "(same text, speaker and seed), 95% t interval, paired-t p.", ""]
    header = " | ".join(f"Δ{PROBE_LABELS[p][0]}" + (f" ({PROBE_LABELS[p][1]})" if PROBE_LABELS[p][1] else "")
                        for p in PROBES)
    # Every feature in one table first (a shift in bold when its 95% interval excludes 0), then one per emotion.
    lines += [f"| emotion | latent | {header} |", "|---|---:|" + "---|" * len(PROBES)]
    for emotion, fid in dict.fromkeys((r["emotion"], r["feature"]) for r in rows):
        cells = {r["probe"]: r for r in rows if r["emotion"] == emotion and r["feature"] == fid}
        lines.append(f"| {emotion} | {fid} | " + " | ".join(_cell(cells[p], bold=True) for p in PROBES) + " |")
    lines.append("")
    for emotion in dict.fromkeys(r["emotion"] for r in rows):
        mine = [r for r in rows if r["emotion"] == emotion]
        lines += [f"## {emotion} (α = {mine[0]['alpha']:g}, {mine[0]['mode']})", "",
                  f"| latent | {header} | pairs | voiced pairs (F0) |", "|---:|" + "---|" * len(PROBES) + "---:|---:|"]
        for fid in dict.fromkeys(r["feature"] for r in mine):
            cells = {r["probe"]: r for r in mine if r["feature"] == fid}
            text = " | ".join(_cell(cells[p]) for p in PROBES)
            lines.append(f"| {fid} | {text} | {cells['duration_s']['n']} | {cells['f0_mean_hz']['n']} |")
        lines.append("")
    return "\n".join(lines)


def _cell(row: dict, bold: bool = False) -> str:
    """``+5 [-3.1, +13], p=0.19``; with ``bold``, the shift is bold when its interval excludes 0."""
    if not np.isfinite(row["mean_diff"]):
        return "–"
    mean = f"{row['mean_diff']:+.3g}"
    if bold and (row["ci_low"] > 0 or row["ci_high"] < 0):
        mean = f"**{mean}**"
    return f"{mean} [{row['ci_low']:+.3g}, {row['ci_high']:+.3g}], p={format_p(row['p_t'])}"


def _plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    keys = list(dict.fromkeys((r["emotion"], r["feature"]) for r in rows))
    fig, axes = plt.subplots(1, len(PROBES), figsize=(3.2 * len(PROBES), 0.35 * len(keys) + 1.6), dpi=100,
                             squeeze=False)
    colours = {e: f"C{i}" for i, e in enumerate(dict.fromkeys(k[0] for k in keys))}
    for ax, probe in zip(axes[0], PROBES):
        by_key = {(r["emotion"], r["feature"]): r for r in rows if r["probe"] == probe}
        y = np.arange(len(keys))
        mean = np.array([by_key[k]["mean_diff"] for k in keys], dtype=float)
        err = np.array([[by_key[k]["mean_diff"] - by_key[k]["ci_low"], by_key[k]["ci_high"] - by_key[k]["mean_diff"]]
                        for k in keys], dtype=float).T
        ax.barh(y, np.nan_to_num(mean), xerr=np.nan_to_num(err), color=[colours[k[0]] for k in keys], capsize=2)
        ax.axvline(0, color="k", lw=0.6)
        label, unit = PROBE_LABELS[probe]
        ax.set_title(f"Δ{label}" + (f" ({unit})" if unit else ""), fontsize=9)
        ax.set_yticks(y, [f"{e} #{f}" for e, f in keys], fontsize=7)
        ax.invert_yaxis()
    fig.tight_layout()
    save_figure_atomically(fig, path)
