"""``emoctl inspect``: look inside trained artifacts: how well an SAE recovers a synthetic store's dictionary, how
emotional a backbone's speech is (paired probes, SER), what the mini TTS's speech codec keeps of each emotion, and
at which hookpoints emotion separates from neutral (CoCoEmo's discriminability)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emoctl.backbones.base import Prompt
from emoctl.commands.settings_flags import flags_from
from emoctl.backbones.loading import DEFAULT_MINI_TTS_DIR, BackboneSpec
from emoctl.corpus.build import read_corpus_record
from emoctl.corpus.esd import list_corpus_clips, read_wave
from emoctl.emotions import ESD_EMOTIONS, NEUTRAL
from emoctl.errors import ConfigError
from emoctl.evaluation.protocol import EvaluationProtocol
from emoctl.evaluation.texts import corpus_test_sentences
from emoctl.io.fsio import check_output_dir
from emoctl.io.provenance import collect
from emoctl.metrics.loading import load_recognizer, recognizer_folder
from emoctl.probes import measure
from emoctl.reports.codec_roundtrip import ORDERED_PROBES, PROBES, TOLERANCE, RoundTrip, wer_subset, write_codec_outputs
from emoctl.reports.layers import LayersSettings, run_layers
from emoctl.selection.layers import Discriminability
from emoctl.reports.emotionality import (PAIRED_PROBES, EmotionalityResult, direction_agreement,
                                         write_emotionality_outputs)
from emoctl.sae.export import load_pretrained
from emoctl.sae.recovery import Recovery, dictionary_recovery
from emoctl.synthesis import synthesize


def inspect_recovery(sae: str, dictionary: str, threshold: float = 0.9) -> Recovery:
    """Print how well an exported SAE recovers the true dictionary of a synthetic store.

    Args:
        sae: Folder of an SAE exported by emoctl (cfg.json + sae_weights.safetensors).
        dictionary: The store's true_dictionary.npy (n_atoms, d_model).
        threshold: Cosine at which a true atom counts as recovered.
    """
    if not 0.0 < threshold <= 1.0:  # a cosine: outside (0, 1] every atom (or none) counts as recovered
        raise ConfigError(f"threshold must be a cosine in (0, 1], got {threshold}.")
    if not Path(dictionary).is_file():
        raise ConfigError(f"no dictionary file at {dictionary}; synthetic stores write true_dictionary.npy.")
    try:
        atoms = np.load(dictionary, allow_pickle=False)
    except ValueError as err:  # a pickled object array, or not an .npy file at all
        raise ConfigError(f"{dictionary} is not a plain .npy array of atoms ({err}); synthetic stores write "
                          "true_dictionary.npy.") from None
    if atoms.ndim != 2 or not np.issubdtype(atoms.dtype, np.floating):
        raise ConfigError(f"{dictionary} must be a float (n_atoms, d_model) array, got {atoms.dtype} of shape "
                          f"{atoms.shape}; synthetic stores write true_dictionary.npy.")
    if not np.isfinite(atoms).all():
        raise ConfigError(f"{dictionary} holds {int((~np.isfinite(atoms)).sum())} NaN or Inf values; restore it "
                          "from its store (the synthetic build writes it beside the manifest).")
    model = load_pretrained(sae)
    result = dictionary_recovery(model.W_dec.detach(), atoms, threshold)
    print(f"dictionary recovery: {result.summary()}")
    return result


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
            c_diff, c_ok = direction_agreement([b for b, _ in c_pairs], [a for _, a in c_pairs], probe)
            sign = 1 if np.median(c_diff[c_ok]) >= 0 else -1
            g_diff, g_ok = direction_agreement([b for b, _ in g_pairs], [a for _, a in g_pairs], probe)
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
    write_emotionality_outputs(Path(out_dir), result, rows, record)
    return result


def codec_roundtrip_report(codec_dir: str | None = None, corpus_root: str = "runs/corpus/esd_espeak",
                           out_dir: str = "reports/codec_roundtrip", split: str = "test",
                           clips_per_cell: int | None = None, wer_clips_per_emotion: int = 20, seed: int = 0,
                           workers: int = 2, progress: bool = True) -> dict:
    """Round-trip a corpus split through the speech codec and compare per-emotion F0, RMS, duration and WER.

    Args:
        codec_dir: A saved SpeechCodec or SubframeCodec folder; None for the committed mini TTS's codec.
        corpus_root: The ESD-layout corpus (``make corpus``).
        out_dir: Where summary.md, per_emotion.csv, clips.csv and roundtrip.png go.
        split: Corpus split to round-trip ("test" by default: clips the codec was not fitted on).
        clips_per_cell: At most this many clips per (speaker, emotion); None for the whole split.
        wer_clips_per_emotion: Clips per emotion (seeded draw) transcribed, original and round trip; 0 skips WER.
        seed: Seed of the WER subset.
        workers: Processes for the WORLD round trips.
        progress: Show progress bars.
    """
    check_output_dir(out_dir, "out_dir")  # before any work: a bad folder fails now, not after the compute
    from emoctl.backbones.mini_tts.backbone import CODEC_DIR  # lazy: the mini TTS imports transformers
    from emoctl.backbones.mini_tts.codec import map_in_workers  # lazy: imports transformers
    from emoctl.backbones.mini_tts.subframe_codec import load_codec  # lazy: imports torch

    root = Path(corpus_root)
    sentences = read_corpus_record(root)["sentences"]
    codec_path = Path(codec_dir) if codec_dir is not None else Path(DEFAULT_MINI_TTS_DIR) / CODEC_DIR
    codec = load_codec(codec_path)

    clips = list_corpus_clips(root, split=split)
    if clips_per_cell is not None:
        if clips_per_cell < 1:
            raise ConfigError(f"clips_per_cell must be >= 1 or None, got {clips_per_cell}.")
        kept, seen = [], {}
        for clip in clips:
            key = (clip.speaker, clip.emotion)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= clips_per_cell:
                kept.append(clip)
        clips = kept
    emotions = [e for e in ESD_EMOTIONS if any(c.emotion == e for c in clips)]
    emotions += sorted({c.emotion for c in clips} - set(emotions))

    pairs = list(map_in_workers(RoundTrip(codec), [c.path for c in clips], workers=workers, total=len(clips),
                                desc="codec round trips", progress=progress))
    original = measure([p[0] for p in pairs], [p[1] for p in pairs])
    vocoded = measure([p[2] for p in pairs], [p[3] for p in pairs])

    rows = []
    for clip, a, b in zip(clips, original, vocoded):
        rows.append({"utt_id": clip.utt_id, "speaker": clip.speaker, "emotion": clip.emotion,
                     **{f"original_{p}": getattr(a, p) for p in PROBES},
                     **{f"roundtrip_{p}": getattr(b, p) for p in PROBES}})

    per_emotion: dict[str, dict[str, float]] = {}
    for e in emotions:
        members = [r for r in rows if r["emotion"] == e]
        stats: dict[str, float] = {"clips": len(members)}
        for p in PROBES:
            orig = float(np.nanmean([r[f"original_{p}"] for r in members]))
            trip = float(np.nanmean([r[f"roundtrip_{p}"] for r in members]))
            stats[f"original_{p}"], stats[f"roundtrip_{p}"] = orig, trip
            stats[f"rel_error_{p}"] = trip / orig - 1.0
        per_emotion[e] = stats

    order = {p: {"original": sorted(emotions, key=lambda e: per_emotion[e][f"original_{p}"]),
                 "roundtrip": sorted(emotions, key=lambda e: per_emotion[e][f"roundtrip_{p}"])}
             for p in ORDERED_PROBES}

    wer = None
    if wer_clips_per_emotion > 0:
        wer = wer_subset(clips, pairs, sentences, emotions, wer_clips_per_emotion, seed, progress)

    checks = {f"{p} within {TOLERANCE[p]:.0%}": all(abs(per_emotion[e][f"rel_error_{p}"]) <= TOLERANCE[p]
                                                    for e in emotions) for p in PROBES}
    checks.update({f"emotion order by {p} kept": order[p]["original"] == order[p]["roundtrip"]
                   for p in ORDERED_PROBES})
    result = {"codec": str(codec_path), "codec_digest": codec.digest, "corpus": str(root), "split": split,
              "clips": len(clips), "emotions": emotions, "per_emotion": per_emotion, "order": order, "wer": wer,
              "checks": checks}
    write_codec_outputs(Path(out_dir), result, rows)
    return result


@flags_from(LayersSettings)
def inspect_layers(**settings: Any) -> Discriminability:
    """Score every hookpoint by how well a probe fit on train-split pairs separates emotional from neutral states
    on evaluation-split pairs (CoCoEmo's discriminability); write discriminability.json (read by `emoctl extract`
    to pick its layers), layers.md and layers.png to out_dir."""
    return run_layers(LayersSettings(**settings))
