"""``emoctl atlas``: a static site to see and hear every SAE latent of a store.

One streaming pass over the store (:func:`~emoctl.selection.indicators.collect_indicators` with
:class:`~emoctl.reports.atlas.scan.AtlasScan` riding on it) gives every latent's firing, its Δ under each
score with intervals and the held-out Δ (:mod:`emoctl.selection.latent_table`), its top utterances and its
activation by speaker.  Every latent gets a row in the index; a chosen set of latents (the selected sets,
the top latents of each score, a seeded random sample and ``latents``) also gets a page with audio:

* its top utterances, spoken again from the speech tokens the harvest stored, each drawn as spectrogram,
  F0 contour and the latent's activation per decode step on one time axis;
* the latent steered alone on Neutral prompts at each α of a grid, with the paired ΔF0, ΔRMS, Δcentroid and
  Δduration of :mod:`emoctl.probes` (the attribution's measurements);
* its nearest latents by decoder cosine and the feature sets it is in.

Each emotion gets a page with its sets under every score, its set's combined steering along an α grid and,
with a Table 1 report, that report's cells.  The decoder directions also go to TensorBoard's projector.

A rebuild keeps every clip, figure and steering result whose inputs' digest is unchanged
(``atlas_state.json``), so an interrupted build resumes where it stopped; HTML is always rewritten.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from emoctl import __version__
from emoctl.backbones.base import Backbone, Prompt
from emoctl.backbones.conditions import VoiceClip, VoiceName
from emoctl.backbones.loading import BackboneSpec
from emoctl.corpus.sentences import generate_sentences
from emoctl.emotions import NEUTRAL
from emoctl.errors import ConfigError
from emoctl.evaluation.protocol import EvaluationProtocol, clones_voices
from emoctl.io.fsio import atomic_write_bytes, check_output_dir
from emoctl.io.provenance import collect, provenance_line, write_report_info
from emoctl.probes import compare_profiles, measure
from emoctl.probes.paired import PROBE_LABELS, format_p
from emoctl.reports.atlas import media, pages
from emoctl.reports.atlas.scan import AtlasScan
from emoctl.sae.export import load_pretrained
from emoctl.sae.topk_sae import TopKSAE
from emoctl.selection.feature_set import FeatureSet, check_selected_with
from emoctl.selection.indicators import collect_indicators
from emoctl.selection.latent_table import LatentTable, latent_table
from emoctl.selection.pairs import pair_utterances
from emoctl.selection.select import SCORES
from emoctl.steering.base import steer
from emoctl.steering.sae_features import LATENT_ALPHA_RULE, SAEFeatureSteering, latent_alpha_ok
from emoctl.store import ActivationStore
from emoctl.synthesis import SamplingConfig, synthesize

PROBES = ("f0_mean_hz", "rms", "spectral_centroid_hz", "duration_s")
STATE_NAME = "atlas_state.json"
INFO_NAME = "atlas_info.json"
AUDIO_BYTES_PER_S = 9_000   # Ogg Vorbis speech at 16-24 kHz, measured on the mini TTS: 5-8 kB/s
FIGURE_BYTES = 40_000        # one clip figure (PNG, 512 x 208)


@dataclass
class AtlasSettings:
    """What ``emoctl atlas`` builds; see :func:`emoctl.commands.atlas.atlas` for each field's meaning."""

    sae: str
    store: str
    out_dir: str
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    selection: str | None = None
    table1: str | None = None
    latents: list[int] = field(default_factory=list)
    top_n: int = 5
    top_per_score: int = 2
    n_random: int = 6
    m: int = 6
    scores: list[str] = field(default_factory=lambda: list(SCORES))
    steer_alphas: list[float] = field(default_factory=lambda: [-40.0, 40.0])
    emotion_alphas: list[float] = field(default_factory=lambda: [4.0, 8.0])
    n_prompts: int = 3
    prompt_emotion: str = NEUTRAL
    seed: int = 0
    temperature: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 400
    n_bootstrap: int = 1000
    corpus_root: str | None = None
    max_mb: float = 150.0
    chunk_rows: int = 4096
    progress: bool = True

    def check(self) -> None:
        """Every value checked before any file is read or model loaded."""
        bad = [f"{name}={value!r} ({rule})" for name, value, ok, rule in (
            ("top_n", self.top_n, self.top_n >= 1, ">= 1"),
            ("top_per_score", self.top_per_score, self.top_per_score >= 0, ">= 0"),
            ("n_random", self.n_random, self.n_random >= 0, ">= 0"),
            ("m", self.m, self.m >= 1, ">= 1"),
            ("n_prompts", self.n_prompts, self.n_prompts >= 2, ">= 2, for a paired interval"),
            ("n_bootstrap", self.n_bootstrap, self.n_bootstrap >= 1, ">= 1"),
            ("max_new_tokens", self.max_new_tokens, self.max_new_tokens >= 1, ">= 1"),
            ("temperature", self.temperature, math.isfinite(self.temperature) and self.temperature >= 0, ">= 0"),
            ("max_mb", self.max_mb, self.max_mb > 0, "> 0"),
            ("chunk_rows", self.chunk_rows, self.chunk_rows >= 1, ">= 1"),
            ("steer_alphas", self.steer_alphas, bool(self.steer_alphas) and all(
                latent_alpha_ok(a) and a != 0 for a in self.steer_alphas), "non-empty; each non-zero and "
             + LATENT_ALPHA_RULE),
            ("emotion_alphas", self.emotion_alphas, all(latent_alpha_ok(a) and a != 0 for a in self.emotion_alphas),
             "each non-zero and " + LATENT_ALPHA_RULE),
            ("scores", self.scores, bool(self.scores) and all(x in SCORES for x in self.scores)
             and len(set(self.scores)) == len(self.scores), f"a non-empty list of distinct scores of {list(SCORES)}"),
            ("latents", self.latents, all(isinstance(i, int) and i >= 0 for i in self.latents), "latent ids >= 0"),
            ("seed", self.seed, self.seed >= 0, ">= 0"),
        ) if not ok]
        if bad:
            raise ConfigError("emoctl atlas: " + "; ".join(bad) + ".")


@dataclass
class AtlasSummary:
    """What a build wrote."""

    out_dir: Path
    latents: int
    latent_pages: int
    emotion_pages: int
    clips: int
    bytes: int
    seconds: float
    kept: int
    """Clips, figures and steering results kept from an earlier build (their inputs unchanged)."""

    def line(self) -> str:
        return (f"{self.latents} latents in the index, {self.latent_pages} latent pages, {self.emotion_pages} "
                f"emotion pages, {self.clips} clips, {self.bytes / 1e6:.1f} MB, built in {self.seconds:.0f} s "
                f"({self.kept} media kept from the previous build)")


class _State:
    """Which media files were made from which inputs, so a rebuild keeps what is still right."""

    def __init__(self, root: Path) -> None:
        self.path = root / STATE_NAME
        self.entries: dict[str, str] = {}
        if self.path.is_file():
            try:
                raw = json.loads(self.path.read_text())
                self.entries = {str(k): str(v) for k, v in raw.get("entries", {}).items()}
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                self.entries = {}  # a damaged state only costs a rebuild of every medium
        self.kept = 0
        self.made: set[str] = set()
        """Files this build wrote or kept; anything else under the media folders is pruned at the end."""
        self._dirty = 0

    def fresh(self, rel: str, key: str) -> bool:
        ok = self.entries.get(rel) == key and (self.path.parent / rel).is_file()
        if ok:
            self.kept += rel not in self.made
            self.made.add(rel)
        return ok

    def done(self, rel: str, key: str) -> None:
        self.entries[rel] = key
        self.made.add(rel)
        self._dirty += 1
        if self._dirty >= 20:
            self.save()

    def save(self) -> None:
        atomic_write_bytes(self.path, json.dumps({"format": "emoctl-atlas-state", "version": 1,
                                                  "entries": self.entries}, indent=0).encode())
        self._dirty = 0


def _key(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=12).hexdigest()


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _alpha_name(alpha: float) -> str:
    return f"{alpha:+g}".replace("+", "p").replace("-", "m").replace(".", "_")


class _Builder:
    def __init__(self, s: AtlasSettings) -> None:
        self.s = s
        self.out = Path(s.out_dir)
        self.started = time.monotonic()

    # ------------------------------------------------------------------ inputs
    def read_inputs(self) -> None:
        s = self.s
        self.sae: TopKSAE = load_pretrained(s.sae, device=s.backbone.device)
        self.store = ActivationStore(s.store)
        self.store.require_finished("build an atlas of it")
        self.speech = self.store.speech("emoctl atlas")  # refused now for a store without speech tokens
        self.given: dict[str, FeatureSet] = {}
        if s.selection is not None:
            folder = Path(s.selection)
            paths = sorted(folder.glob("features_*.json")) if folder.is_dir() else []
            if not paths:
                raise ConfigError(f"emoctl atlas: --selection {folder} holds no features_<emotion>.json; give the "
                                  "folder `emoctl select --out_dir` wrote, or leave --selection out.")
            sets = [FeatureSet.load(p) for p in paths]
            check_selected_with(sets, s.sae, folder, d_sae=self.sae.cfg.d_sae)
            self.given = {fs.emotion: fs for fs in sets}
        self.table1_rows: list[dict[str, str]] = []
        if s.table1 is not None:
            path = Path(s.table1)
            path = path / "table1.csv" if path.is_dir() else path
            if not path.is_file():
                raise ConfigError(f"emoctl atlas: --table1 {s.table1} has no table1.csv; give the folder or CSV "
                                  "`emoctl report table1` wrote, or leave --table1 out.")
            with path.open(newline="") as f:
                self.table1_rows = list(csv.DictReader(f))
            if not self.table1_rows or not {"direction", "emotion", "method", "ser_hit"} <= set(self.table1_rows[0]):
                raise ConfigError(f"emoctl atlas: {path} is not a Table 1 CSV (it needs the columns direction, "
                                  "emotion, method and ser_hit); give the table1.csv of `emoctl report table1`.")
        bad = [i for i in s.latents if i >= self.sae.cfg.d_sae]
        if bad:
            raise ConfigError(f"emoctl atlas: --latents {bad} are out of range for this SAE (d_sae = "
                              f"{self.sae.cfg.d_sae}: ids 0 .. {self.sae.cfg.d_sae - 1}).")

    # ------------------------------------------------------------------ statistics
    def scan(self) -> None:
        s = self.s
        table = self.store.utterances
        self.utt_ids = np.asarray(table["utt_id"].to_pylist(), dtype=object)
        speakers = np.asarray(table["speaker"].to_pylist(), dtype=object)
        self.speakers, speaker_of = np.unique(speakers.astype(str), return_inverse=True)
        self.scanner = AtlasScan(self.sae.cfg.d_sae, s.top_n, table["first_row"].to_numpy(),
                                 table["num_rows"].to_numpy(), speaker_of, len(self.speakers))
        self.ind = collect_indicators(self.store, self.sae, chunk_rows=s.chunk_rows, device=s.backbone.device,
                                      progress=s.progress, per_step=True, visit=self.scanner)
        self.pairs = pair_utterances(self.ind.utt_id, self.ind.emotion, self.ind.pair_key, neutral=NEUTRAL,
                                     source=f"the store at {self.store.path}")
        self.scores = tuple(s.scores)
        self.table: LatentTable = latent_table(self.ind, self.pairs, self.scores, n_bootstrap=s.n_bootstrap,
                                               seed=s.seed)
        self.emotions = list(self.pairs)
        # each score's own top-m sets, by the selection's rule (Δ descending among Δ > 0; ties: lower id)
        self.own_sets: dict[tuple[str, str], list[int]] = {}
        for score in self.scores:
            for emotion in self.emotions:
                delta = self.table.columns[f"delta.{score}.{emotion}"]
                order = np.lexsort((np.arange(delta.size), -delta))
                self.own_sets[(score, emotion)] = [int(i) for i in order if delta[i] > 0][:s.m]
        self.stability: dict[int, float] = {}
        for fs in self.given.values():
            for f in fs.features:
                self.stability[f.id] = max(self.stability.get(f.id, 0.0), f.stability)
        self.speaker_mean = self.scanner.by_speaker()[1]  # (n_speakers, d_sae), read by every latent page
        dec = self.sae.W_dec.detach().float().cpu()
        self.unit_dec = torch.nn.functional.normalize(dec, dim=1)

    def sets_of(self, latent: int) -> list[str]:
        names = [f"selection:{e}" for e, fs in self.given.items() if latent in fs.feature_ids]
        names += [f"{score}:{e}" for (score, e), ids in self.own_sets.items() if latent in ids]
        return names

    def choose_pages(self) -> list[int]:
        s = self.s
        chosen: dict[int, None] = {}
        sets = ([fs.feature_ids for fs in self.given.values()] if self.given
                else [self.own_sets[(self.scores[0], e)] for e in self.emotions])
        for ids in sets:
            chosen.update(dict.fromkeys(ids))
        for ids in self.own_sets.values():
            chosen.update(dict.fromkeys(ids[:s.top_per_score]))
        chosen.update(dict.fromkeys(s.latents))
        alive = [i for i in np.flatnonzero(~self.table.columns["dead"]) if int(i) not in chosen]
        rng = np.random.default_rng(s.seed)
        sample = rng.choice(alive, size=min(s.n_random, len(alive)), replace=False) if alive else []
        chosen.update(dict.fromkeys(int(i) for i in sorted(sample)))
        return list(chosen)

    def check_size(self, page_latents: list[int]) -> None:
        """Refuse, before any audio is made, a site that would outgrow ``max_mb``."""
        s = self.s
        mean_s = float(np.mean(self.store.utterances["num_rows"].to_numpy())) / self.token_rate
        clips = len(page_latents) * (s.top_n + s.n_prompts * len(s.steer_alphas)) + s.n_prompts \
            + len(self.emotions) * s.n_prompts * len(s.emotion_alphas)
        estimate = clips * mean_s * AUDIO_BYTES_PER_S + len(page_latents) * s.top_n * FIGURE_BYTES
        self.estimate_mb = estimate / 1e6
        if self.estimate_mb > s.max_mb:
            raise ConfigError(
                f"emoctl atlas: the site would take about {self.estimate_mb:.0f} MB ({len(page_latents)} latent "
                f"pages x ({s.top_n} top clips + {s.n_prompts} prompts x {len(s.steer_alphas)} alphas), clips of "
                f"{mean_s:.1f} s on average), over --max_mb {s.max_mb:g}. Lower --top_n, --n_prompts, --n_random "
                "or --top_per_score, or raise --max_mb.")

    # ------------------------------------------------------------------ speech
    def load_backbone(self) -> None:
        s = self.s
        self.model: Backbone = s.backbone.load()
        self.model.requires_grad_(False).eval()
        if self.model.hidden_size != self.sae.cfg.d_in:
            raise ConfigError(f"emoctl atlas: the backbone's hidden size is {self.model.hidden_size} but the SAE "
                              f"reads {self.sae.cfg.d_in}; give the backbone the store was harvested from "
                              f"({self.store.spec.backbone or 'see its manifest'}).")
        self.token_rate = float(self.model.token_rate)
        self.sampling = SamplingConfig(temperature=s.temperature, top_k=s.top_k, max_new_tokens=s.max_new_tokens,
                                       batch_size=s.n_prompts)
        texts = generate_sentences(s.n_prompts, seed=1234)
        if clones_voices(self.model):
            if s.corpus_root is None:
                raise ConfigError(f"emoctl atlas on the {self.model.kind} backbone voices its steering prompts by "
                                  "reference clips; give --corpus_root, the ESD folder the store was harvested from.")
            protocol = EvaluationProtocol(held_out_speakers=1)
            speaker = protocol.voices(self.model, s.corpus_root)[0]
            voice = protocol.voice_for(self.model, s.corpus_root)
        else:
            speaker, voice = self.model.speakers[0], (lambda spk, text: VoiceName(spk))
        condition = self.model.condition_for(s.prompt_emotion)
        self.prompts = [Prompt(t, voice(speaker, t), condition, utt_id=f"atlas_{i:02d}") for i, t in enumerate(texts)]
        self.texts, self.prompt_speaker = texts, speaker
        self.record = collect(backbone=self.model, paths={"sae": s.sae, "feature_sets": s.selection,
                                                          "table1": s.table1},
                              stores={"store": self.store}, corpus=s.corpus_root,
                              seeds={"sampling": s.seed, "bootstrap": s.seed, "sample": s.seed},
                              protocol=self.protocol())
        # What the media depend on: the models, the store and the sampling; not the selection or the Table 1
        # report, which change only which pages exist and what their HTML says.
        inputs = {k: v for k, v in self.record["inputs"].items() if k in ("backbone", "sae", "store", "corpus")}
        sampling = {k: getattr(s, k) for k in ("n_prompts", "prompt_emotion", "seed", "temperature", "top_k",
                                               "max_new_tokens", "n_bootstrap")}
        self.base_key = _key(inputs, sampling, __version__)
        self.footer = pages.e(provenance_line(self.record, INFO_NAME)).replace("`", "")

    def protocol(self) -> dict[str, Any]:
        s = asdict(self.s)
        for name in ("out_dir", "progress", "chunk_rows", "max_mb", "latents", "backbone"):
            s.pop(name)
        return s

    def stored_prompt(self, u: int) -> tuple[Prompt, torch.Tensor]:
        row = {name: self.speech[name][u].as_py() for name in ("utt_id", "text", "voice_clip", "speech_tokens")}
        if row["utt_id"] != self.utt_ids[u]:
            raise RuntimeError(f"the store's speech table is out of order at utterance {u}; rerun emoctl atlas.")
        speaker = str(self.store.utterances["speaker"][u].as_py())
        emotion = str(self.store.utterances["emotion"][u].as_py())
        voice = VoiceClip(row["voice_clip"], speaker) if row["voice_clip"] else VoiceName(speaker)
        prompt = Prompt(row["text"] or "(no text stored)", voice, self.model.condition_for(emotion), row["utt_id"])
        return prompt, torch.tensor(row["speech_tokens"], dtype=torch.long)

    def wave_of(self, u: int) -> tuple[np.ndarray, int]:
        if u not in self._waves:
            prompt, tokens = self.stored_prompt(u)
            wave, rate = self.model.vocode(tokens, prompt) if tokens.numel() else (np.zeros(0, np.float32),
                                                                                    self.model.sample_rate)
            self._waves[u] = (np.asarray(wave, np.float32), int(rate))
        return self._waves[u]

    def activation_of(self, u: int, latent: int) -> np.ndarray:
        if u not in self._codes:
            rows = self.store.segment(str(self.utt_ids[u]))
            with torch.no_grad():
                vals, idx = self.sae.encode(rows.to(device=self.sae.W_dec.device, dtype=self.sae.W_dec.dtype))
            self._codes[u] = (vals.float().cpu(), idx.cpu())
        vals, idx = self._codes[u]
        return (vals * (idx == latent)).sum(dim=1).clamp(min=0).numpy()

    def synthesize(self, intervention: SAEFeatureSteering | None) -> list[Any]:
        if intervention is None:
            return synthesize(self.model, self.prompts, seed=self.s.seed, sampling=self.sampling)
        with steer(self.model, intervention):
            return synthesize(self.model, self.prompts, seed=self.s.seed, sampling=self.sampling)

    # ------------------------------------------------------------------ pages
    def build(self) -> AtlasSummary:
        s = self.s
        self.read_inputs()
        self.load_backbone()
        self.scan()
        page_latents = self.choose_pages()
        self.check_size(page_latents)
        for folder in ("latents", "emotions", "audio", "steer"):
            (self.out / folder).mkdir(parents=True, exist_ok=True)
        self.state = _State(self.out)
        self._waves: dict[int, tuple[np.ndarray, int]] = {}
        self._codes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.clips = 0
        base = self.synthesize(None)
        self.base_profiles = measure([c.wave for c in base], [c.sample_rate for c in base])
        for j, clip in enumerate(base):
            self._audio(f"steer/unsteered_p{j}{media.AUDIO_SUFFIX}", _key(self.base_key, "base", j), clip)
        self.page_latents = set(page_latents)
        for latent in tqdm(page_latents, desc="atlas: latent pages", unit="page", disable=not s.progress):
            self.latent_page(latent)
        for emotion in tqdm(self.emotions, desc="atlas: emotion pages", unit="page", disable=not s.progress):
            self.emotion_page(emotion)
        self.emotions_page()
        self._prune()
        self.projector()
        self.index_page()
        self.state.save()
        size = sum(p.stat().st_size for p in self.out.rglob("*") if p.is_file())
        summary = AtlasSummary(self.out, self.sae.cfg.d_sae, len(page_latents), len(self.emotions), self.clips, size,
                               time.monotonic() - self.started, self.state.kept)
        write_report_info(self.out / INFO_NAME, {"summary": {k: str(v) if isinstance(v, Path) else v
                                                            for k, v in asdict(summary).items()},
                                                 "latent_pages": page_latents, "estimate_mb": self.estimate_mb},
                          self.record, [self.out / "index.html"])
        return summary

    def _write_page(self, rel: str, text: str) -> None:
        atomic_write_bytes(self.out / rel, text.encode())
        self.state.made.add(rel)

    def _prune(self) -> None:
        """Delete the media and pages of an earlier build that this one no longer links (a latent that lost its
        page, a smaller top_n, another α grid), so the site holds, and its size counts, only what it shows."""
        for folder in ("latents", "emotions", "audio", "steer"):
            for path in sorted((self.out / folder).rglob("*")):
                rel = path.relative_to(self.out).as_posix()
                if path.is_file() and rel not in self.state.made:
                    path.unlink()
                    self.state.entries.pop(rel, None)
            for path in sorted((self.out / folder).rglob("*"), reverse=True):
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()

    def _audio(self, rel: str, key: str, clip: Any) -> str:
        self.clips += 1
        if not self.state.fresh(rel, key):
            (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
            media.write_audio(self.out / rel, clip.wave, clip.sample_rate)
            self.state.done(rel, key)
        return rel

    def _steering(self, rel_dir: str, key: str, intervention_for: Any, alphas: Sequence[float]
                  ) -> list[dict[str, Any]]:
        """Steer at each α (cached as ``<rel_dir>/steer.json`` with its audio); rows of paired shifts."""
        rel = f"{rel_dir}/steer.json"
        audio = [(f"{rel_dir}/a{_alpha_name(a)}_p{j}{media.AUDIO_SUFFIX}", _key(key, a, j))
                 for a in alphas for j in range(len(self.prompts))]
        if self.state.fresh(rel, key) and all([self.state.fresh(f, k) for f, k in audio]):  # all checked: kept
            self.clips += len(audio)
            return json.loads((self.out / rel).read_text())["alphas"]
        results = []
        for alpha in alphas:
            clips = self.synthesize(intervention_for(alpha))
            files = [self._audio(f"{rel_dir}/a{_alpha_name(alpha)}_p{j}{media.AUDIO_SUFFIX}", _key(key, alpha, j), c)
                     for j, c in enumerate(clips)]
            steered = measure([c.wave for c in clips], [c.sample_rate for c in clips])
            shifts = [c.to_row() for c in compare_profiles(self.base_profiles, steered, PROBES,
                                                           n_bootstrap=self.s.n_bootstrap, seed=self.s.seed)]
            results.append({"alpha": alpha, "audio": files, "finished": [bool(c.finished) for c in clips],
                            "shifts": shifts})
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out / rel, json.dumps({"alphas": results}, allow_nan=True, default=float).encode())
        self.state.done(rel, key)
        return results

    def _steering_table(self, results: list[dict[str, Any]], root: str) -> str:
        header = ["α", *[f"prompt {j + 1}" for j in range(len(self.prompts))]] + \
            [f"Δ{PROBE_LABELS[p][0]}" + (f" ({PROBE_LABELS[p][1]})" if PROBE_LABELS[p][1] else "") for p in PROBES]
        base = ["0 (unsteered)", *[pages.audio(f"{root}steer/unsteered_p{j}{media.AUDIO_SUFFIX}")
                                   for j in range(len(self.prompts))]] + ["" for _ in PROBES]
        rows = [base]
        for r in results:
            shifts = {x["probe"]: x for x in r["shifts"]}
            rows.append([f"{r['alpha']:+g}", *[pages.audio(root + f) for f in r["audio"]],
                         *[_shift_cell(shifts.get(p)) for p in PROBES]])
        return pages.table(header, rows, left=1 + len(self.prompts), raw=True)

    def latent_page(self, latent: int) -> None:
        s, t = self.s, self.table
        rel_dir = f"latents/{latent}"
        row = t.row(latent)
        parts = [f"<h1>Latent #{latent}</h1>",
                 f"<p>Rises most with <strong>{pages.e(row['top_emotion'])}</strong> ({self.scores[0]} Δ "
                 f"{_num(row['top_delta.' + self.scores[0]])}). Fires at {_num(row['fire_rate_step'])} of decode steps and "
                 f"in {_num(row['fire_rate_utterance'])} of utterances; mean activation when firing "
                 f"{_num(row['mean_act'])}{' (dead: never fires in this store)' if row['dead'] else ''}.</p>",
                 "<p>Feature sets: " + (" ".join(f'<span class="tag">{pages.e(n)}</span>' for n in self.sets_of(latent))
                                        or "none") + "</p>",
                 "<h2>Δ by emotion and score</h2>", self._delta_table(latent)]
        e_rows = [self.ind.emotion_row(e) for e in self.ind.emotions]
        rate = self.ind.rows_fired[:, latent] / np.maximum(self.ind.rows_total, 1)
        per_step = self.ind.value_sum[:, latent] / np.maximum(self.ind.rows_total, 1)
        colours = [media.emotion_colour(e) for e in self.ind.emotions]
        parts += ['<h2>Activation by emotion and speaker</h2><div class="grid">',
                  '<div class="card"><p>mean activation per decode step, by emotion</p>'
                  + media.svg_bars(self.ind.emotions, per_step[e_rows], colours) + "</div>",
                  '<div class="card"><p>share of decode steps it fires at, by emotion</p>'
                  + media.svg_bars(self.ind.emotions, rate[e_rows], colours) + "</div>",
                  '<div class="card"><p>mean activation per decode step, by speaker</p>'
                  + media.svg_bars(list(self.speakers), self.speaker_mean[:, latent]) + "</div></div>"]
        parts.append(f"<h2>Top {s.top_n} utterances</h2><p class='muted'>Spoken again from the stored speech "
                     "tokens; under the spectrogram (F0 in cyan) the latent's activation at each decode step.</p>")
        for j, (u, peak) in enumerate(self.scanner.top(latent)):
            utt = str(self.utt_ids[u])
            prompt, tokens = self.stored_prompt(u)
            key = _key(self.base_key, "utt", utt)
            audio_rel = f"audio/{_file_name(utt)}{media.AUDIO_SUFFIX}"
            self.clips += 1
            if not self.state.fresh(audio_rel, key):
                wave, rate_hz = self.wave_of(u)
                (self.out / "audio").mkdir(exist_ok=True)
                media.write_audio(self.out / audio_rel, wave, rate_hz)
                self.state.done(audio_rel, key)
            fig_rel = f"{rel_dir}/top{j}_{_file_name(utt)}.png"
            fig_key = _key(self.base_key, "fig", latent, utt)
            if not self.state.fresh(fig_rel, fig_key):
                wave, rate_hz = self.wave_of(u)
                (self.out / rel_dir).mkdir(parents=True, exist_ok=True)
                media.clip_figure(self.out / fig_rel, wave, rate_hz, self.activation_of(u, latent), self.token_rate,
                                  f"#{latent} on {utt}: peak {peak:.2f}")
                self.state.done(fig_rel, fig_key)
            emotion = self.store.utterances["emotion"][u].as_py()
            parts.append(f'<div class="clip card"><img class="activation-plot" src="../{fig_rel}" width="512" '
                         f'height="208" alt="spectrogram, F0 and activation of latent {latent} on {pages.e(utt)}">'
                         f'<div><p><strong>{pages.e(prompt.text)}</strong></p><p>speaker {pages.e(prompt.speaker)}, '
                         f'{pages.e(emotion)}, {len(tokens)} tokens, peak activation {peak:.2f}</p>'
                         f'{pages.audio("../" + audio_rel)}</div></div>')
        if not self.scanner.top(latent):
            parts.append("<p>It fires in no utterance of the store.</p>")
        results = self._steering(rel_dir, _key(self.base_key, "steer", latent, s.steer_alphas),
                                 lambda a: SAEFeatureSteering(self.sae, [latent], a), s.steer_alphas)
        parts += [f"<h2>Steered alone</h2><p class='muted'>{len(self.prompts)} {pages.e(s.prompt_emotion)} prompts "
                  f"(speaker {pages.e(self.prompt_speaker)}), this latent alone set to its value + α at every decode "
                  "step; shifts are steered − unsteered of the same prompt and seed, with 95% t intervals and "
                  "paired-t p.</p>", self._steering_table(results, "../")]
        cos = (self.unit_dec @ self.unit_dec[latent]).numpy()
        cos[latent] = -np.inf
        near = np.argsort(-cos, kind="stable")[:8]
        parts += ["<h2>Nearest latents by decoder cosine</h2>",
                  pages.table(["latent", "cosine", "top emotion", "feature sets"],
                              [[self._link(int(i), "../"), f"{cos[i]:.3f}", pages.e(t.columns["top_emotion"][i]),
                                pages.e(", ".join(self.sets_of(int(i))) or "–")] for i in near], raw=True)]
        self._write_page(f"latents/{latent}.html", pages.page(f"Latent #{latent}", "".join(parts), self.footer, "../"))

    def _link(self, latent: int, root: str) -> str:
        if latent in self.page_latents:
            return f'<a href="{root}latents/{latent}.html">#{latent}</a>'
        return f'<a href="{root}index.html?filter={latent}">#{latent}</a>'

    def _delta_table(self, latent: int) -> str:
        c = self.table.columns
        rows = []
        for emotion in self.emotions:
            cells = [pages.e(emotion)]
            for score in self.scores:
                k = f"{score}.{emotion}"
                q = c[f"q.{k}"][latent]
                cells += [f"{c[f'delta.{k}'][latent]:+.3g} [{c[f'ci_low.{k}'][latent]:+.2g}, "
                          f"{c[f'ci_high.{k}'][latent]:+.2g}]", f'<span class="{"sig" if q < 0.05 else ""}">'
                          f"{format_p(q)}</span>", _num(c[f"held_out.{k}"][latent], signed=True)]
            rows.append(cells)
        header = ["emotion"] + [f"{score} {name}" for score in self.scores for name in ("Δ [95% CI]", "q", "held-out Δ")]
        return pages.table(header, rows, raw=True)

    def emotion_page(self, emotion: str) -> None:
        s = self.s
        rel_dir = f"emotions/{_file_name(emotion)}"
        steered_ids = self.given[emotion].feature_ids if emotion in self.given else self.own_sets[(self.scores[0], emotion)]
        source = "the given selection" if emotion in self.given else f"this atlas's {self.scores[0]} set"
        parts = [f"<h1>{pages.e(emotion)}</h1>", f"<p>{self.pairs[emotion].n_pairs} ({pages.e(emotion)}, "
                 f"Neutral) pairs in the store.</p>", "<h2>Feature sets</h2>"]
        sets = ([("selection (" + (self.given[emotion].selection or {}).get("score", "any_step") + ")",
                  self.given[emotion].feature_ids)] if emotion in self.given else [])
        sets += [(f"{score} (top {s.m} by Δ)", self.own_sets[(score, emotion)]) for score in self.scores]
        parts.append(pages.table(["set", "latents"], [[pages.e(name), " ".join(self._link(i, "../") for i in ids)
                                                        or "–"] for name, ids in sets], raw=True))
        if steered_ids and s.emotion_alphas:
            mode = "sae" if len(steered_ids) <= self.sae.cfg.k else "closed_form"
            results = self._steering(rel_dir, _key(self.base_key, "emotion", emotion, steered_ids, s.emotion_alphas,
                                                    mode),
                                     lambda a: SAEFeatureSteering(self.sae, steered_ids, a, mode=mode),
                                     s.emotion_alphas)
            parts += [f"<h2>The set steered together</h2><p class='muted'>{source}: latents "
                      f"{', '.join(map(str, steered_ids))}, each + α at every decode step.</p>",
                      self._steering_table(results, "../")]
        cells = [r for r in self.table1_rows if r.get("emotion") == emotion]
        if cells:
            header = ["direction", "method", "α", "n", "SER acc", "Emo-SIM", "WER", "SpkSIM", "DNSMOS"]
            rows = [[r["direction"], r["method"], r.get("alpha", ""), r.get("n", ""),
                     _num(_float(r.get("ser_hit"))), _num(_float(r.get("emo_sim_matched"))),
                     _num(_float(r.get("wer"))), _num(_float(r.get("spk_sim"))), _num(_float(r.get("dnsmos_ovrl")))]
                    for r in cells]
            parts += ["<h2>Table 1 cells</h2>", pages.table(header, rows, left=2)]
        self._write_page(f"emotions/{_file_name(emotion)}.html", pages.page(emotion, "".join(parts), self.footer, "../"))

    def emotions_page(self) -> None:
        rows = [[f'<a href="emotions/{_file_name(e)}.html">{pages.e(e)}</a>', self.pairs[e].n_pairs,
                 " ".join(self._link(i, "") for i in (self.given[e].feature_ids if e in self.given
                                                       else self.own_sets[(self.scores[0], e)]))]
                for e in self.emotions]
        body = "<h1>Emotions</h1>" + pages.table(["emotion", "pairs", "steered set"], rows, raw=True)
        self._write_page("emotions.html", pages.page("Emotions", body, self.footer, ""))

    def index_page(self) -> None:
        c, d = self.table.columns, self.table.d_sae
        keep = [k for k in c if k.split(".")[0] in ("id", "fire_rate_step", "fire_rate_utterance", "mean_act", "dead",
                                                    "top_emotion", "delta", "ci_low", "ci_high", "q", "held_out")]
        latents = []
        for i in range(d):
            row = {k: _json_value(c[k][i]) for k in keep}
            row["page"] = f"latents/{i}.html" if i in self.page_latents else None
            row["sets"] = ", ".join(self.sets_of(i))
            row["stability"] = self.stability.get(i)
            latents.append(row)
        top_delta = c[f"top_delta.{self.scores[0]}"]
        colours = [media.emotion_colour(str(c["top_emotion"][i])) if top_delta[i] > 0 else "#bbbbbb"
                   for i in range(d)]
        xy = _pca_2d(self.unit_dec.numpy())
        links = [f"latents/{i}.html" if i in self.page_latents else f"index.html?filter={i}" for i in range(d)]
        titles = [f"#{i} {c['top_emotion'][i]} Δ {top_delta[i]:+.2f}" for i in range(d)]
        histograms = []
        for emotion in self.emotions:
            values = c[f"delta.{self.scores[0]}.{emotion}"]
            edges = np.linspace(min(values.min(), -0.05), max(values.max(), 0.05), 25)
            hist_links = [f"index.html?score={self.scores[0]}&emotion={emotion}&min={edges[b]:.4f}&max="
                          f"{edges[b + 1] + (1e-9 if b == len(edges) - 2 else 0):.4f}" for b in range(len(edges) - 1)]
            histograms.append(media.svg_histogram(values, edges, hist_links, media.emotion_colour(emotion),
                                                  f"{emotion}: {self.scores[0]} Δ"))
        meta = {"emotions": self.emotions, "scores": list(self.scores), "colours": media.PALETTE}
        summary = (f"{d} latents of the SAE on <code>{pages.e(self.store.spec.hookpoint)}</code> of "
                   f"<code>{pages.e(self.model.backbone_id)}</code>, over {self.store.num_utterances} utterances "
                   f"({self.store.num_rows} decode steps); {len(self.page_latents)} latents have a page "
                   f'(<a href="emotions.html">emotions</a>). Decoder directions for TensorBoard\'s projector: '
                   "<code>tensorboard --logdir tensorboard</code> in this folder. The site: __SITE_MB__ MB in "
                   f"{self.clips} clips and {len(self.page_latents) + len(self.emotions) + 2} pages (bounded by "
                   f"--max_mb {self.s.max_mb:g}).")
        body = pages.index_body(meta, latents, media.svg_map(xy, colours, links, titles), "".join(histograms), summary)
        text = pages.page("emoctl atlas", body, self.footer, "", script=pages.INDEX_JS)
        rest = sum(p.stat().st_size for p in self.out.rglob("*") if p.is_file() and p.name != "index.html")
        atomic_write_bytes(self.out / "index.html",
                           text.replace("__SITE_MB__", f"{(rest + len(text.encode())) / 1e6:.1f}").encode())

    def projector(self) -> None:
        """Decoder directions with each latent's top emotion and Δ as metadata, for TensorBoard's projector."""
        from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard's import costs seconds


        c = self.table.columns
        header = ["latent", "top_emotion", "dead", *[f"delta_{self.scores[0]}_{e}" for e in self.emotions]]
        metadata = [[str(i), str(c["top_emotion"][i]), str(bool(c["dead"][i])),
                     *[f"{c[f'delta.{self.scores[0]}.{e}'][i]:.4f}" for e in self.emotions]] for i in range(self.table.d_sae)]
        folder = self.out / "tensorboard"
        shutil.rmtree(folder, ignore_errors=True)  # the projector's files are rewritten whole
        with SummaryWriter(str(folder)) as writer:
            writer.add_embedding(self.sae.W_dec.detach().float().cpu(), metadata=metadata, metadata_header=header,
                                 tag="sae_decoder_directions")


def _pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows (signs fixed, so a rebuild draws the same map)."""
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    signs = np.sign(xy[np.abs(xy).argmax(axis=0), [0, 1]])
    return xy * np.where(signs == 0, 1, signs)


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(f"{value:.4g}") if math.isfinite(value) else None  # 4 digits: the index stays small
    return str(value)


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _num(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:+.3g}" if signed else f"{value:.3g}"


def _shift_cell(row: dict[str, Any] | None) -> str:
    if row is None or not math.isfinite(row.get("mean_diff", math.nan)):
        return "–"
    sig = row["ci_low"] > 0 or row["ci_high"] < 0
    mean = f"{row['mean_diff']:+.3g}"
    return (f'<span class="{"sig" if sig else ""}">{mean}</span> [{row["ci_low"]:+.2g}, {row["ci_high"]:+.2g}], '
            f"p={format_p(row['p_t'])}")


def build_atlas(settings: AtlasSettings) -> AtlasSummary:
    """Build (or resume) the site; see the module docstring."""
    settings.check()
    check_output_dir(settings.out_dir, "out_dir")
    return _Builder(settings).build()


__all__ = ["AtlasSettings", "AtlasSummary", "build_atlas"]
