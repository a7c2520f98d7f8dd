"""``emoctl inspect layers`` and ``emoctl extract``: where emotion separates from neutral, and its directions there.

Both read paired emotional/neutral utterances (:mod:`emoctl.harvest.pooled`) by one
:class:`PairSettings`: the backbone's *training* voices (never the held-out voices the reports speak with),
the corpus's train sentences to fit and its evaluation sentences to score, never its test sentences.
``inspect layers`` fits CoCoEmo's probe on the train pairs at every hookpoint and scores it on the evaluation
pairs (:mod:`emoctl.selection.layers`), writing ``discriminability.json`` (read by ``extract``), a figure and a
Markdown table; ``extract`` takes the most discriminable layers from that file (or the ones named) and writes
the train pairs' mean differences there as a steering-vector folder (:mod:`emoctl.steering.vectors`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emoctl.backbones.base import Backbone
from emoctl.backbones.loading import BackboneSpec
from emoctl.corpus.build import read_corpus_record
from emoctl.emotions import ESD_EMOTIONS, NEUTRAL
from emoctl.errors import ConfigError
from emoctl.evaluation.protocol import EvaluationProtocol, clones_voices
from emoctl.harvest.pooled import POOLS, PairedStates, PairedUtterances, generated_pairs, paired_states, recorded_pairs
from emoctl.io.fsio import atomic_write_bytes, check_output_dir, save_figure_atomically
from emoctl.io.provenance import collect, digest_path, stamp, write_report_info
from emoctl.selection.layers import CLASSIFIERS, RECOMMENDED, Discriminability, layer_discriminability
from emoctl.steering.vectors import SteeringVectors, mean_difference_vectors
from emoctl.synthesis import SamplingConfig

SOURCES = ("generations", "recordings")


@dataclass
class PairSettings:
    """Which paired utterances are read, and how (shared by ``inspect layers`` and ``extract``)."""

    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    """The backbone (kind, checkpoint folder, device)."""
    corpus_root: str = "runs/corpus/esd_espeak"
    """ESD-shaped corpus: its train and evaluation sentences (and recordings, for source recordings)."""
    source: str = "generations"
    """``generations``: the backbone speaks each sentence in the emotion and, with the same seed, in Neutral;
    ``recordings``: the corpus's recordings of a sentence by one speaker in both (CoCoEmo's protocol)."""
    emotions: list[str] = field(default_factory=lambda: [e for e in ESD_EMOTIONS if e != NEUTRAL])
    """Emotions paired with Neutral."""
    speakers: list[str] | None = None
    """Voices; None: the backbone's voices except the last ``held_out_speakers`` (the reports' voices)."""
    held_out_speakers: int = 4
    """How many last voices the reports hold out (left out when speakers is None)."""
    n_train_texts: int = 20
    """Train-split sentences per (emotion, speaker): the probe's fit and the directions' means."""
    n_eval_texts: int = 10
    """Evaluation-split sentences per (emotion, speaker): the probe's score."""
    pool: str = "last"
    """``last``: the state at the last speech token (CoCoEmo's); ``mean``: the mean over the speech tokens."""
    seed: int = 0
    """Seed of the paired generations (batch b uses seed + b for both sides)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Temperature, top-k, token cap and batch size of the generations."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        bad = []
        if self.source not in SOURCES:
            bad.append(f"source={self.source!r} (one of {', '.join(SOURCES)})")
        if self.pool not in POOLS:
            bad.append(f"pool={self.pool!r} (one of {', '.join(POOLS)})")
        unknown = [e for e in self.emotions if e not in ESD_EMOTIONS or e == NEUTRAL]
        if not self.emotions or unknown or len(set(self.emotions)) != len(self.emotions):
            bad.append(f"emotions={self.emotions!r} (each of {', '.join(e for e in ESD_EMOTIONS if e != NEUTRAL)} "
                       "at most once)")
        if self.n_train_texts < 1 or self.n_eval_texts < 1:
            bad.append(f"n_train_texts={self.n_train_texts}, n_eval_texts={self.n_eval_texts} (each >= 1)")
        if self.held_out_speakers < 0:
            bad.append(f"held_out_speakers={self.held_out_speakers} (>= 0)")
        if self.sampling.seed is not None:
            bad.append(f"sampling.seed={self.sampling.seed} (leave it unset; `seed` seeds every batch)")
        if bad:
            raise ConfigError("invalid pair settings: " + "; ".join(bad) + ".")

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("backbone", "progress")}


def training_voices(backbone: Backbone, settings: PairSettings) -> list[str]:
    """The voices pairs are spoken or read in: ``speakers``, or all but the held-out last ones."""
    if clones_voices(backbone):
        found = sorted(p.name for p in Path(settings.corpus_root).iterdir() if p.is_dir() and p.name.isdigit())
    else:
        found = list(backbone.speakers)
    if settings.speakers is not None:
        unknown = [s for s in settings.speakers if s not in found]
        if unknown or not settings.speakers:
            raise ConfigError(f"speakers {unknown or settings.speakers} are not voices here; the choice is {found}.")
        return list(settings.speakers)
    voices = found[:len(found) - settings.held_out_speakers] if settings.held_out_speakers else found
    if not voices:
        raise ConfigError(f"held_out_speakers={settings.held_out_speakers} leaves none of the {len(found)} voices "
                          f"({found}); lower it or name speakers.")
    return voices


def collect_pairs(backbone: Backbone, settings: PairSettings, split: str) -> PairedUtterances:
    """The pairs of ``split`` (``train`` or ``evaluation``) under ``settings``."""
    if split not in ("train", "evaluation"):
        raise ConfigError(f"pairs come from the train or evaluation split, not {split!r} (the test split is the "
                          "reports').")
    root = Path(settings.corpus_root)
    record = read_corpus_record(root)
    speakers = training_voices(backbone, settings)
    voice_for = EvaluationProtocol(speakers=speakers).voice_for(backbone, root)
    n = settings.n_train_texts if split == "train" else settings.n_eval_texts
    if settings.source == "recordings":
        return recorded_pairs(backbone, root, split, speakers, settings.emotions, voice_for, n, settings.progress)
    splits, sentences = record["splits"], record["sentences"]
    first_train = splits["evaluation"] + splits["test"]
    texts = sentences[first_train:first_train + n] if split == "train" else sentences[:min(n, splits["evaluation"])]
    sampling = backbone.sampling(settings.sampling.for_batch(0))
    return generated_pairs(backbone, texts, speakers, settings.emotions, voice_for, sampling, settings.seed,
                           settings.sampling.batch_size, settings.progress)


def read_states(backbone: Backbone, settings: PairSettings, split: str, hookpoints: list[str]) -> PairedStates:
    pairs = collect_pairs(backbone, settings, split)
    if settings.progress:
        print(f"{split}: {len(pairs)} pairs" + (f" ({pairs.dropped} dropped: a side hit the token cap)"
                                                if pairs.dropped else ""))
    return paired_states(backbone, pairs, hookpoints, settings.pool, settings.progress)


# ---------------------------------------------------------------------------------------------- inspect layers
@dataclass
class LayersSettings(PairSettings):
    """``emoctl inspect layers``: :class:`PairSettings` plus the probe and where the report goes."""

    hookpoints: list[str] | None = None
    """Hookpoints to score; None: every one the backbone lists (resid_pre.*, attn_out.*, lm_out)."""
    classifier: str = "linear"
    """``linear`` (standardized logistic regression, CoCoEmo's script) or ``centroid`` (nearest class mean)."""
    out_dir: str = "reports/layers"
    """Where discriminability.json, layers.md and layers.png go."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"classifier={self.classifier!r}: choose one of {', '.join(CLASSIFIERS)}.")
        if self.hookpoints is not None and (not self.hookpoints or len(set(self.hookpoints)) != len(self.hookpoints)):
            raise ConfigError(f"hookpoints={self.hookpoints!r}: name each at least once, or null for all.")


def run_layers(settings: LayersSettings) -> Discriminability:
    out = check_output_dir(settings.out_dir, "out_dir")
    backbone = settings.backbone.load()
    hookpoints = list(settings.hookpoints or backbone.hookpoints)
    unknown = [h for h in hookpoints if h not in backbone.hookpoints]
    if unknown:
        raise ConfigError(f"hookpoints {unknown} are not this backbone's; it has {', '.join(backbone.hookpoints)}.")
    train = read_states(backbone, settings, "train", hookpoints)
    evaluation = read_states(backbone, settings, "evaluation", hookpoints)
    result = layer_discriminability(train, evaluation, settings.classifier, backbone=backbone.backbone_id,
                                    source=settings.source, hookpoints=hookpoints)
    record = collect(backbone=backbone, corpus=settings.corpus_root, protocol=settings.describe(),
                     seeds={"generations": settings.seed})
    out.mkdir(parents=True, exist_ok=True)
    save_figure_atomically(layers_figure(result), out / "layers.png")
    json_path = result.save(out / "discriminability.json")
    markdown = stamp(layers_markdown(result, train.dropped + evaluation.dropped), record, "layers_info.json")
    atomic_write_bytes(out / "layers.md", markdown.encode())
    write_report_info(out / "layers_info.json", {"backbone": backbone.backbone_id, "source": settings.source},
                      record, [json_path])
    print(markdown)
    print(f"written to {out}/ (discriminability.json, layers.md, layers.png, layers_info.json)")
    return result


def layers_markdown(result: Discriminability, dropped: int = 0) -> str:
    emotions = sorted({e for s in result.scores for e in s.per_emotion})
    counts = result.counts
    lines = [f"# Where emotion separates from neutral: {result.classifier} probe per hookpoint", "",
             f"Pairs of `{result.source}` (pooled: {result.pool}); fit on the train split "
             f"({sum(counts.get('train', {}).values())} pairs), scored on the evaluation split "
             f"({sum(counts.get('evaluation', {}).values())} pairs)"
             + (f"; {dropped} pairs dropped because a side hit the token cap" if dropped else "") + ". "
             "Accuracy is emotional (every emotion together) vs neutral, CoCoEmo's discriminability; 0.5 is chance. "
             f"Most discriminable: {', '.join(f'`{h}`' for h in [s.hookpoint for s in result.ranked()[:RECOMMENDED]])}.",
             "", "| hookpoint | accuracy | train accuracy | " + " | ".join(emotions) + " |",
             "|---|---|---|" + "---|" * len(emotions)]
    for s in result.scores:
        lines.append(f"| `{s.hookpoint}` | {s.accuracy:.3f} | {s.train_accuracy:.3f} | "
                     + " | ".join(f"{s.per_emotion.get(e, float('nan')):.3f}" for e in emotions) + " |")
    return "\n".join(lines) + "\n"


def layers_figure(result: Discriminability):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=120)
    families: dict[str, list[tuple[int, float]]] = {}
    others = []
    for s in result.scores:
        family, _, index = s.hookpoint.partition(".")
        if index.isdigit():
            families.setdefault(family, []).append((int(index), s.accuracy))
        else:
            others.append(s)
    for family, points in families.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=family)
    depth = max((p[0] for pts in families.values() for p in pts), default=0)
    for k, s in enumerate(others):
        ax.scatter([depth + 1 + k], [s.accuracy], marker="s", color="black", zorder=3)
        ax.annotate(s.hookpoint, (depth + 1 + k, s.accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("block")
    ax.set_ylabel("validation accuracy (emotional vs neutral)")
    ax.set_title(f"{result.classifier} probe, {result.source}, pooled {result.pool}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------- extract
@dataclass
class ExtractSettings(PairSettings):
    """``emoctl extract``: :class:`PairSettings` plus which layers and where the vectors go."""

    discriminability: str | None = "reports/layers/discriminability.json"
    """The file ``emoctl inspect layers`` wrote; its most discriminable ``top`` hookpoints of ``family`` are used.
    Ignored only when ``hookpoints`` names them (then set it to null)."""
    top: int = 3
    """How many of its most discriminable hookpoints (CoCoEmo steers 2 on CosyVoice2, 3 on IndexTTS2)."""
    family: str | None = "attn_out"
    """Hookpoint family the layers are chosen from (``attn_out``: CoCoEmo's site); null: any."""
    hookpoints: list[str] | None = None
    """Name the hookpoints instead of reading them from the discriminability file."""
    out_dir: str = "runs/directions"
    """Steering-vector folder (vectors.json + vectors.safetensors)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.hookpoints is None) == (self.discriminability is None):
            raise ConfigError("name the layers one way: give discriminability (a file from `emoctl inspect layers`) "
                              "or hookpoints, and set the other to null.")
        if self.hookpoints is not None and (not self.hookpoints or len(set(self.hookpoints)) != len(self.hookpoints)):
            raise ConfigError(f"hookpoints={self.hookpoints!r}: name each at least once.")
        if self.top < 1:
            raise ConfigError(f"top={self.top}: take at least one layer.")


def run_extract(settings: ExtractSettings) -> SteeringVectors:
    check_output_dir(settings.out_dir, "out_dir")
    backbone = settings.backbone.load()
    chosen_from: dict[str, Any] = {}
    if settings.hookpoints is not None:
        hookpoints = list(settings.hookpoints)
    else:
        result = Discriminability.load(settings.discriminability)
        if result.backbone != backbone.backbone_id:
            raise ConfigError(f"{settings.discriminability} scores the backbone {result.backbone}, not this one "
                              f"({backbone.backbone_id}); run `emoctl inspect layers` on it.")
        hookpoints = result.top(settings.top, settings.family)
        chosen_from = {"file": str(settings.discriminability), "digest": digest_path(settings.discriminability),
                       "accuracy": {s.hookpoint: s.accuracy for s in result.scores if s.hookpoint in hookpoints}}
    unknown = [h for h in hookpoints if h not in backbone.hookpoints]
    if unknown:
        raise ConfigError(f"hookpoints {unknown} are not this backbone's; it has {', '.join(backbone.hookpoints)}.")
    states = read_states(backbone, settings, "train", hookpoints)
    vectors = mean_difference_vectors(states, hookpoints, settings.emotions, metadata={
        "backbone": backbone.backbone_id, "source": settings.source, "split": "train", "dropped": states.dropped,
        "settings": settings.describe(), "layers_from": chosen_from})
    vectors.save(settings.out_dir)
    norms = ", ".join(f"{e}: " + " ".join(f"{h} {float(v.norm()):.3g}" for h, v in by_point.items())
                      for e, by_point in vectors.vectors.items())
    print(f"mean-difference directions at {', '.join(hookpoints)} written to {settings.out_dir} (norms {norms})")
    return vectors
