"""A blind listening test of a Table 1 report: a static site of rater pages and the key that unblinds it.

The papers judge steering by ear: EMOS (does the clip sound like the target emotion? 1-5) and NMOS
(naturalness, 1-5) from a panel of raters, or a preference between two methods. :func:`build_listening_site`
turns a Table 1 report kept with its audio (``emoctl report table1 --save_audio true``) into:

* ``site/``: ``index.html`` and one ``rater_<id>.html`` per rater, the clips copied into ``site/audio/`` under
  opaque ids; each page holds the same items in its own seeded order, names no method, and works from
  ``file://`` offline (:mod:`emoctl.reports.listening.pages`). This folder is what the raters get.
* ``key.csv`` beside it (not linked from any page): item id -> method, cell, prompt and audio file, and the
  answer each attention check asks for; ``listening_site.json``: the settings and provenance.

Every method's clips are of the same prompts (same text, speaker and seed), so ratings of two methods are
paired by prompt. A site id, a digest of the items, audio and settings, is written into every page, every
downloaded ratings file and the key, so ``emoctl listen score`` refuses ratings of another site.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from emoctl.errors import ConfigError
from emoctl.evaluation.summary import csv_bytes
from emoctl.io.fsio import atomic_folder, check_output_dir
from emoctl.io.provenance import collect, write_report_info
from emoctl.reports.listening.pages import index_page, rater_page
from emoctl.reports.table1_cells import AUDIO_COLUMN

SITE_INFO = "listening_site.json"
KEY_FILE = "key.csv"
SITE_DIR = "site"
PROMPT_FIELDS = ("direction", "emotion", "utt_id")
"""What makes a prompt: clips of one prompt by different methods share text, speaker and sampling seed."""
MOS_SCALES = ("emos", "nmos")
AB_SCALES = ("preference",)
ATTENTION_MOS_VALUES = (1, 2, 4, 5)
"""The fixed answers an MOS attention check may ask for (3 is left out: it is the answer of a rater who does
not read)."""


@dataclass(frozen=True)
class ClipRef:
    """One scored clip of the report: its prompt, method and audio file."""

    direction: str
    emotion: str
    utt_id: str
    method: str
    row: dict

    @property
    def prompt(self) -> tuple[str, str, str]:
        return self.direction, self.emotion, self.utt_id


def build_listening_site(report: str, out_dir: str, raters: int = 20, seed: int = 0,
                         mode: Literal["mos", "ab"] = "mos", methods: Sequence[str] | None = None,
                         clips_per_method: int | None = None, attention_checks: int = 2,
                         directions: Sequence[str] | None = None) -> dict:
    """Write the rater pages, audio and key of a blind listening test of ``report``; returns the site's info."""
    if raters < 1:
        raise ConfigError(f"raters={raters} must be >= 1 (one page per rater).")
    if attention_checks < 0:
        raise ConfigError(f"attention_checks={attention_checks} must be >= 0 (items that ask for a fixed answer).")
    if mode not in ("mos", "ab"):
        raise ConfigError(f"mode={mode!r} must be 'mos' (EMOS and NMOS per clip) or 'ab' (preference per pair).")
    target = check_output_dir(out_dir, "out_dir")
    if target.exists() and any(target.iterdir()) and not (target / SITE_INFO).is_file():
        raise ConfigError(f"out_dir={out_dir} holds files that are not a listening site (no {SITE_INFO}); the "
                          "site replaces the whole folder, so choose an empty or new folder.")
    report_dir = Path(report)
    clips = read_report_clips(report_dir)
    chosen = _choose_methods(clips, methods, report_dir)
    if mode == "ab" and len(chosen) < 2:
        raise ConfigError(f"mode='ab' compares two methods per item; methods={list(chosen)} names one. Give two or "
                          "more with --methods.")
    wanted_directions = set(directions or {c.direction for c in clips})
    by_prompt: dict[tuple[str, str, str], dict[str, ClipRef]] = {}
    for clip in clips:
        if clip.method in chosen and clip.direction in wanted_directions:
            by_prompt.setdefault(clip.prompt, {})[clip.method] = clip
    prompts = [p for p, per_method in by_prompt.items() if all(m in per_method for m in chosen)]
    if not prompts:
        raise ConfigError(f"{report_dir / 'table1_clips.csv'} has no prompt with clips of every method "
                          f"{list(chosen)} (directions {sorted(wanted_directions)}); choose methods of the same "
                          "cells with --methods.")
    rng = np.random.default_rng(seed)
    if clips_per_method is not None:
        if not 1 <= clips_per_method <= len(prompts):
            raise ConfigError(f"clips_per_method={clips_per_method}: {report_dir} has {len(prompts)} prompts with "
                              f"clips of every method {list(chosen)}; choose 1 to {len(prompts)}.")
        keep = sorted(rng.choice(len(prompts), size=clips_per_method, replace=False))
        prompts = [prompts[i] for i in keep]

    # Opaque ids: clip files and items are numbered in a seeded random order, so no id tells a method.
    used = [by_prompt[p][m] for p in prompts for m in chosen]
    clip_ids = _opaque_ids(rng, len(used), "a")
    audio_of = {(c.prompt, c.method): f"audio/{clip_ids[i]}.flac" for i, c in enumerate(used)}
    key_rows = _mos_items(prompts, chosen, by_prompt, audio_of) if mode == "mos" else \
        _ab_items(prompts, chosen, by_prompt, audio_of, rng)
    key_rows += _attention_items(key_rows, attention_checks, mode, rng)
    item_ids = _opaque_ids(rng, len(key_rows), "i")
    for row, item_id in zip(key_rows, item_ids):
        row["item_id"] = item_id

    sources = {audio_of[(c.prompt, c.method)]: report_dir / c.row[AUDIO_COLUMN] for c in used}
    site_id = _site_id(mode, seed, raters, key_rows, sources)
    key = [{"site_id": site_id, "mode": mode, **{k: row[k] for k in row if k != "page"}} for row in key_rows]
    width = len(str(raters))
    rater_ids = [f"r{i + 1:0{width}d}" for i in range(raters)]
    record = collect(paths={"report": report_dir / "table1_clips.csv",
                            "report_info": report_dir / "table1_info.json"
                            if (report_dir / "table1_info.json").is_file() else None},
                     seeds={"order": seed},
                     protocol={"mode": mode, "raters": raters, "methods": list(chosen), "prompts": len(prompts),
                               "attention_checks": attention_checks, "directions": sorted(wanted_directions)})
    info = {"site_id": site_id, "mode": mode, "raters": rater_ids, "methods": list(chosen), "prompts": len(prompts),
            "items_per_page": len(key_rows), "attention_checks": attention_checks, "seed": seed,
            "report": str(report_dir)}

    with atomic_folder(target) as staging:
        site = staging / SITE_DIR
        (site / "audio").mkdir(parents=True)
        for name, source in sources.items():
            shutil.copyfile(source, site / name)
        pages = []
        for r, rater_id in enumerate(rater_ids):
            order = np.random.default_rng([seed, r + 1]).permutation(len(key_rows))
            items = [key_rows[i]["page"] | {"id": key_rows[i]["item_id"]} for i in order]
            href = f"rater_{rater_id}.html"
            (site / href).write_text(rater_page(site_id, rater_id, mode, items, raters), encoding="utf-8")
            pages.append((rater_id, href))
        (site / "index.html").write_text(index_page(site_id, mode, pages, len(key_rows)), encoding="utf-8")
        (staging / KEY_FILE).write_bytes(csv_bytes(key))
        write_report_info(staging / SITE_INFO, info, record, [staging / KEY_FILE])
    print(f"listening site {site_id}: {raters} rater pages of {len(key_rows)} items ({len(prompts)} prompts x "
          f"{len(chosen)} methods, {attention_checks} attention checks) in {target / SITE_DIR}/ (give raters that "
          f"folder); the key is {target / KEY_FILE}, outside it.")
    return info


def read_report_clips(report_dir: Path) -> list[ClipRef]:
    """The clips of a Table 1 report that kept its audio; refuses a report without it."""
    path = report_dir / "table1_clips.csv"
    if not path.is_file():
        raise ConfigError(f"report={report_dir} has no table1_clips.csv; point --report at the out_dir of "
                          "`emoctl report table1 --save_audio true`.")
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    missing = [c for c in ("direction", "emotion", "method", "utt_id", "target", AUDIO_COLUMN)
               if not rows or c not in rows[0]]
    if missing == [AUDIO_COLUMN]:
        raise ConfigError(f"{path} names no audio files (no {AUDIO_COLUMN} column): the report was written without "
                          "its clips. Run `emoctl report table1` again with --save_audio true (finished blocks are "
                          "not reused without audio) and build the site from that folder.")
    if missing:
        raise ConfigError(f"{path} has no rows or lacks the columns {missing}; it is not a Table 1 clips file. Point "
                          "--report at the out_dir of `emoctl report table1 --save_audio true`.")
    inside = report_dir.resolve()
    for line, row in enumerate(rows, start=2):
        audio = report_dir / row[AUDIO_COLUMN]
        if row[AUDIO_COLUMN] and not audio.resolve().is_relative_to(inside):
            raise ConfigError(f"{path} line {line} names the audio file {row[AUDIO_COLUMN]!r}, which lies outside "
                              f"{report_dir}; a report's clips are inside its folder, so the file was edited. The "
                              "site copies the files it names, so nothing outside the report is taken: restore it.")
        if not row[AUDIO_COLUMN] or not audio.is_file():
            raise ConfigError(f"{path} line {line} names the audio file {row[AUDIO_COLUMN]!r}, which is not in "
                              f"{report_dir}; the clips folder was moved or pruned. Copy it back or rerun the "
                              "report with --save_audio true.")
    return [ClipRef(r["direction"], r["emotion"], r["utt_id"], r["method"], r) for r in rows]


def _choose_methods(clips: list[ClipRef], methods: Sequence[str] | None, report_dir: Path) -> list[str]:
    present = list(dict.fromkeys(c.method for c in clips))
    if methods is None:
        return present
    unknown = [m for m in methods if m not in present]
    if unknown:
        raise ConfigError(f"methods {unknown} have no clips in {report_dir / 'table1_clips.csv'}; its methods are "
                          f"{', '.join(present)}.")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"methods={list(methods)} names a method twice; name each once.")
    return list(methods)


def _prompt_fields(clip: ClipRef) -> dict:
    return {"direction": clip.direction, "emotion": clip.emotion, "target": clip.row["target"],
            "utt_id": clip.utt_id, "text": clip.row.get("text", ""), "speaker": clip.row.get("speaker", "")}


def _mos_items(prompts, methods, by_prompt, audio_of) -> list[dict]:
    rows = []
    for p in prompts:
        for m in methods:
            clip = by_prompt[p][m]
            rows.append({"kind": "clip", "method": m, "alpha": clip.row.get("alpha", ""), **_prompt_fields(clip),
                         "audio": audio_of[(p, m)], "expected_emos": "", "expected_nmos": "",
                         "page": {"audio": audio_of[(p, m)], "target": clip.row["target"]}})
    return rows


def _ab_items(prompts, methods, by_prompt, audio_of, rng: np.random.Generator) -> list[dict]:
    """Every pair of methods on every prompt; which method is A is drawn per item (position bias averages out)."""
    rows = []
    for first, second in combinations(methods, 2):
        for p in prompts:
            a, b = (first, second) if rng.random() < 0.5 else (second, first)
            clip = by_prompt[p][a]
            rows.append({"kind": "clip", "method_a": a, "method_b": b, **_prompt_fields(clip),
                         "audio_a": audio_of[(p, a)], "audio_b": audio_of[(p, b)], "expected_preference": "",
                         "page": {"audio_a": audio_of[(p, a)], "audio_b": audio_of[(p, b)],
                                  "target": clip.row["target"]}})
    return rows


def _attention_items(items: list[dict], n: int, mode: str, rng: np.random.Generator) -> list[dict]:
    """Copies of real items whose instruction asks for a fixed answer; the key records the answer."""
    checks = []
    for k in range(n):
        base = items[int(rng.integers(len(items)))]
        row = {key: value for key, value in base.items() if key != "page"} | {"kind": "attention"}
        if mode == "mos":
            value = int(rng.choice(ATTENTION_MOS_VALUES))
            row |= {"expected_emos": value, "expected_nmos": value}
            instruction = f"Attention check: whatever you hear, choose {value} on both scales for this clip."
        else:
            choice = "A" if rng.random() < 0.5 else "B"
            row["expected_preference"] = choice
            instruction = f"Attention check: whatever you hear, choose {choice} for this pair."
        checks.append(row | {"page": base["page"] | {"instruction": instruction}})
    return checks


def _opaque_ids(rng: np.random.Generator, n: int, prefix: str) -> list[str]:
    """``n`` distinct random ids (6 hex digits after ``prefix``)."""
    return [f"{prefix}{v:06x}" for v in rng.choice(16 ** 6, size=n, replace=False)]


def _site_id(mode: str, seed: int, raters: int, items: list[dict], sources: dict[str, Path]) -> str:
    """A digest of what the pages hold: settings, items (key rows) and the bytes of every audio file."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps({"mode": mode, "seed": seed, "raters": raters, "items": items}, sort_keys=True,
                        default=str).encode())
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + hashlib.blake2b(sources[name].read_bytes(), digest_size=16).digest())
    return h.hexdigest()
