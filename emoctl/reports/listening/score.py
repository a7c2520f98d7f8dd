"""Scoring a listening test: the raters' CSV files checked against the site's key, then EMOS, NMOS or preferences.

:func:`score_listening` reads the files the rater pages download (``site_id,rater_id,item_id,scale,rating,
timestamp``) and refuses, with a paragraph naming the file and line, a file of another site, missing columns,
an unknown item or scale, a rating off its scale and a rating given twice. Raters who miss an attention check
(answer it otherwise, or leave it unanswered) are dropped before anything is computed.

MOS mode: per method (and per method x cell) the mean EMOS and NMOS with a 95% interval from a two-way
bootstrap over raters and clips; every pair of methods compared on the prompts both have, by a Wilcoxon
signed-rank test over the clips' mean ratings, with Benjamini-Hochberg q per scale; Krippendorff's alpha
(interval and ordinal) per scale. A/B mode: per pair of methods the share of ratings preferring each method or
neither (two-way bootstrap intervals) and an exact binomial test of the two methods' wins (ties left out);
Krippendorff's alpha (nominal). Files: listening.md, listening.csv, listening_paired.csv, listening.png and
listening_info.json (written last, with the provenance record).
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from emoctl.errors import ConfigError
from emoctl.evaluation.summary import csv_bytes
from emoctl.io.fsio import atomic_write_bytes, check_output_dir, save_figure_atomically
from emoctl.io.provenance import collect, stamp, write_report_info
from emoctl.reports.listening.build import AB_SCALES, MOS_SCALES, PROMPT_FIELDS
from emoctl.reports.listening.stats import binomial_p, krippendorff_alpha, two_way_bootstrap, wilcoxon_paired
from emoctl.reports.table1_methods import method_label
from emoctl.selection.stats import benjamini_hochberg

RATING_COLUMNS = ("site_id", "rater_id", "item_id", "scale", "rating", "timestamp")
KEY_COLUMNS = ("site_id", "mode", "item_id", "kind", "direction", "emotion", "target", "utt_id")
PREFERENCES = ("A", "B", "none")
SCALE_LABELS = {"emos": "EMOS", "nmos": "NMOS", "preference": "preference"}


@dataclass
class Ratings:
    """The checked ratings of every file: (rater, item, scale) -> rating, and where each came from."""

    values: dict[tuple[str, str, str], str] = field(default_factory=dict)
    where: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def raters(self) -> list[str]:
        return sorted({r for r, _, _ in self.values})


def read_key(path: str | Path) -> list[dict]:
    """The rows of a site's key.csv, checked: one site, one mode, the columns scoring needs, unique item ids."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"key={path} is not a file; pass --key <site folder>/key.csv, written by `emoctl listen "
                          "build` beside the site/ folder.")
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    missing = [c for c in KEY_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise ConfigError(f"the key {path} has no rows or lacks the columns {missing}; it is not a key.csv of "
                          "`emoctl listen build`. Pass the key.csv written beside the site/ folder.")
    sites, modes = {r["site_id"] for r in rows}, {r["mode"] for r in rows}
    if len(sites) != 1 or len(modes) != 1 or not modes <= {"mos", "ab"}:
        raise ConfigError(f"the key {path} mixes sites {sorted(sites)} or modes {sorted(modes)}; a key is one site's. "
                          "Rebuild the site with `emoctl listen build` rather than merging keys.")
    ids = [r["item_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"the key {path} names an item id twice; it was edited. Rebuild the site with `emoctl listen "
                          "build`.")
    return rows


def read_ratings(files: Sequence[str | Path], key: list[dict], key_path: str | Path) -> Ratings:
    """Every ratings file checked against the key; refuses the first problem with its file, line and fix."""
    if not files:
        raise ConfigError("no ratings files given; pass the CSV files the rater pages downloaded, e.g. "
                          "`emoctl listen score ratings/*.csv --key site/key.csv`.")
    site_id, mode = key[0]["site_id"], key[0]["mode"]
    items = {r["item_id"]: r for r in key}
    scales = MOS_SCALES if mode == "mos" else AB_SCALES
    out = Ratings()
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"the ratings file {path} does not exist; pass the CSV files the rater pages downloaded.")
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
        missing = [c for c in RATING_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"the ratings file {path} lacks the columns {missing} (it has {reader.fieldnames or []}); "
                              f"a rater page's Download button writes {', '.join(RATING_COLUMNS)}. Send the file as "
                              "downloaded, not re-saved from a spreadsheet that renamed or dropped columns.")
        for line, row in enumerate(reader, start=2):
            where = f"{path} line {line}"
            if row["site_id"] != site_id:
                raise ConfigError(f"{where} is a rating of the listening site {row['site_id']!r}, but the key "
                                  f"{key_path} is of site {site_id!r}: the file came from another build of the "
                                  "pages (another report, seed or set of methods). Score it with the key.csv built "
                                  "with those pages, or leave the file out.")
            item = items.get(row["item_id"])
            if item is None:
                raise ConfigError(f"{where} rates the item {row['item_id']!r}, which the key {key_path} does not "
                                  "hold; the file was edited. Use the file as the page downloaded it.")
            if row["scale"] not in scales:
                raise ConfigError(f"{where} has the scale {row['scale']!r}; a {mode} site's scales are "
                                  f"{', '.join(scales)}. Use the file as the page downloaded it.")
            _check_value(row["rating"], row["scale"], where)
            cell = (row["rater_id"], row["item_id"], row["scale"])
            if cell in out.values:
                raise ConfigError(f"{where} rates item {row['item_id']} on {row['scale']} for rater "
                                  f"{row['rater_id']} a second time (first at {out.where[cell]}); the same ratings "
                                  "were passed twice or two files carry one rater id. Pass each rater's file once.")
            out.values[cell], out.where[cell] = row["rating"], where
    return out


def _check_value(value: str, scale: str, where: str) -> None:
    if scale == "preference":
        if value not in PREFERENCES:
            raise ConfigError(f"{where} has the preference {value!r}, off the scale {', '.join(PREFERENCES)}; use "
                              "the file as the page downloaded it.")
        return
    if value not in ("1", "2", "3", "4", "5"):
        raise ConfigError(f"{where} has the {SCALE_LABELS[scale]} rating {value!r}, off the 1-5 scale (whole "
                          "numbers 1 to 5); the file was edited. Use the file as the page downloaded it.")


def attention_failures(ratings: Ratings, key: list[dict]) -> dict[str, list[str]]:
    """Rater -> the attention items answered otherwise than their instruction asked (or left unanswered)."""
    checks = [r for r in key if r["kind"] == "attention"]
    failed: dict[str, list[str]] = {}
    for rater in ratings.raters():
        wrong = []
        for check in checks:
            for column, expected in check.items():
                if column.startswith("expected_") and expected != "":
                    given = ratings.values.get((rater, check["item_id"], column[len("expected_"):]))
                    if given != str(expected):
                        wrong.append(check["item_id"])
                        break
        if wrong:
            failed[rater] = wrong
    return failed


def score_listening(ratings: Sequence[str], key: str, out_dir: str, n_bootstrap: int = 2000,
                    confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """Check the ratings files against the key, drop raters who fail attention checks, write the report files."""
    if n_bootstrap < 1 or not 0.0 < confidence < 1.0:
        raise ConfigError(f"n_bootstrap={n_bootstrap} must be >= 1 and confidence={confidence} in (0, 1).")
    out = check_output_dir(out_dir, "out_dir")
    key_rows = read_key(key)
    checked = read_ratings(ratings, key_rows, key)
    failed = attention_failures(checked, key_rows)
    kept = [r for r in checked.raters() if r not in failed]
    if not kept:
        raise ConfigError(f"every rater ({', '.join(checked.raters())}) failed an attention check of the key {key}, "
                          "so no rating is left to score; check that the key is the site's, or collect new ratings.")
    mode = key_rows[0]["mode"]
    clips = [r for r in key_rows if r["kind"] == "clip"]
    boot = {"n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed}
    if mode == "mos":
        summary, paired, agreement = _score_mos(checked, clips, kept, boot)
    else:
        summary, paired, agreement = _score_ab(checked, clips, kept, boot)
    record = collect(paths={"key": key, "ratings": sorted(str(f) for f in ratings)}, seeds={"bootstrap": seed},
                     protocol={"mode": mode, "site_id": key_rows[0]["site_id"], "n_bootstrap": n_bootstrap,
                               "confidence": confidence})
    facts = {"site_id": key_rows[0]["site_id"], "mode": mode, "raters": checked.raters(), "kept": kept,
             "dropped": failed, "agreement": agreement}
    out.mkdir(parents=True, exist_ok=True)
    body = (_mos_markdown if mode == "mos" else _ab_markdown)(summary, paired, agreement, facts, boot)
    atomic_write_bytes(out / "listening.md", stamp(body, record, "listening_info.json").encode())
    atomic_write_bytes(out / "listening.csv", csv_bytes(summary))
    atomic_write_bytes(out / "listening_paired.csv", csv_bytes(paired))
    save_figure_atomically(_figure(summary, mode), out / "listening.png")
    write_report_info(out / "listening_info.json", facts, record,
                      [out / "listening.csv", out / "listening_paired.csv"])
    print(f"{len(kept)} of {len(checked.raters())} raters kept ({len(failed)} failed an attention check); written "
          f"to {out}/ (listening.md, listening.csv, listening_paired.csv, listening.png)")
    return summary


def _matrix(ratings: Ratings, raters: list[str], items: list[str], scale: str, code=float) -> np.ndarray:
    """(raters, items) of the ratings on ``scale`` coded as numbers; NaN where a rater skipped an item."""
    m = np.full((len(raters), len(items)), np.nan)
    for i, rater in enumerate(raters):
        for j, item in enumerate(items):
            value = ratings.values.get((rater, item, scale))
            if value is not None:
                m[i, j] = code(value)
    return m


def _prompt(row: dict) -> tuple[str, ...]:
    return tuple(row[k] for k in PROMPT_FIELDS)


def _score_mos(ratings: Ratings, clips: list[dict], raters: list[str], boot: dict
               ) -> tuple[list[dict], list[dict], dict]:
    methods = list(dict.fromkeys(r["method"] for r in clips))
    cells = list(dict.fromkeys((r["direction"], r["emotion"]) for r in clips))
    summary: list[dict] = []
    scopes = [("all", "all", None)] + [(d, e, (d, e)) for d, e in cells]
    for direction, emotion, cell in scopes:
        for method in methods:
            items = [r["item_id"] for r in clips if r["method"] == method
                     and (cell is None or (r["direction"], r["emotion"]) == cell)]
            if not items:
                continue
            row = {"scope": "method" if cell is None else "cell", "method": method, "direction": direction,
                   "emotion": emotion, "n_clips": len(items)}
            for scale in MOS_SCALES:
                m = _matrix(ratings, raters, items, scale)
                if not np.isfinite(m).any():
                    row |= {scale: math.nan, f"{scale}_low": math.nan, f"{scale}_high": math.nan,
                            f"{scale}_n": 0}
                    continue
                mean, low, high = two_way_bootstrap(m, **boot)
                row |= {scale: mean, f"{scale}_low": low, f"{scale}_high": high,
                        f"{scale}_n": int(np.isfinite(m).sum())}
            row["n_raters"] = len(raters)
            summary.append(row)
    paired: list[dict] = []
    by_method = {m: {_prompt(r): r["item_id"] for r in clips if r["method"] == m} for m in methods}
    pairs = [(a, b) for a, b in combinations(methods, 2)]
    pairs = [(b, a) if a == "unsteered" else (a, b) for a, b in pairs]  # "X vs Unsteered"
    for scale in MOS_SCALES:
        rows = []
        for a, b in pairs:
            shared = [p for p in by_method[a] if p in by_method[b]]
            if not shared:
                continue
            mean_a = np.nanmean(_matrix(ratings, raters, [by_method[a][p] for p in shared], scale), axis=0) \
                if shared else np.array([])
            mean_b = np.nanmean(_matrix(ratings, raters, [by_method[b][p] for p in shared], scale), axis=0)
            ok = np.isfinite(mean_a) & np.isfinite(mean_b)
            rows.append({"scale": scale, "method_a": a, "method_b": b, "n_clips": int(ok.sum()),
                         "mean_a": float(mean_a[ok].mean()) if ok.any() else math.nan,
                         "mean_b": float(mean_b[ok].mean()) if ok.any() else math.nan,
                         "diff": float((mean_a[ok] - mean_b[ok]).mean()) if ok.any() else math.nan,
                         "p": wilcoxon_paired(mean_a[ok], mean_b[ok])})
        q = benjamini_hochberg(np.array([r["p"] for r in rows]))
        for r, value in zip(rows, q):
            r["q"] = float(value)
        paired += rows
    items = [r["item_id"] for r in clips]
    agreement = {scale: {metric: krippendorff_alpha(_matrix(ratings, raters, items, scale), metric)
                         for metric in ("interval", "ordinal")} for scale in MOS_SCALES}
    return summary, paired, agreement


def _score_ab(ratings: Ratings, clips: list[dict], raters: list[str], boot: dict
              ) -> tuple[list[dict], list[dict], dict]:
    by_pair: dict[tuple[str, str], list[dict]] = defaultdict(list)
    order: list[str] = []
    for r in clips:
        for m in (r["method_a"], r["method_b"]):
            if m not in order:
                order.append(m)
    for r in clips:
        first, second = sorted((r["method_a"], r["method_b"]), key=order.index)
        if first == "unsteered":
            first, second = second, first  # "X vs Unsteered"
        by_pair[(first, second)].append(r)
    summary: list[dict] = []
    paired: list[dict] = []
    codes: dict[str, np.ndarray] = {}
    for (first, second), rows in by_pair.items():
        items = [r["item_id"] for r in rows]

        def winner(value: str, row: dict) -> str:
            return {"A": row["method_a"], "B": row["method_b"]}.get(value, "none")

        matrix = np.full((len(raters), len(items)), np.nan)  # 1: first preferred, 2: second, 0: neither
        for i, rater in enumerate(raters):
            for j, row in enumerate(rows):
                value = ratings.values.get((rater, row["item_id"], "preference"))
                if value is not None:
                    won = winner(value, row)
                    matrix[i, j] = 1.0 if won == first else 2.0 if won == second else 0.0
        codes[f"{first} vs {second}"] = matrix
        record = {"method_a": first, "method_b": second, "n_items": len(items),
                  "n_ratings": int(np.isfinite(matrix).sum())}
        for name, code in (("a", 1.0), ("b", 2.0), ("none", 0.0)):
            share = np.where(np.isfinite(matrix), (matrix == code).astype(float), np.nan)
            if np.isfinite(share).any():
                mean, low, high = two_way_bootstrap(share, **boot)
            else:
                mean = low = high = math.nan
            record |= {f"share_{name}": mean, f"share_{name}_low": low, f"share_{name}_high": high}
        summary.append(record)
        wins, losses, ties = int((matrix == 1).sum()), int((matrix == 2).sum()), int((matrix == 0).sum())
        paired.append({"scale": "preference", "method_a": first, "method_b": second, "wins_a": wins,
                       "wins_b": losses, "ties": ties, "p": binomial_p(wins, losses)})
    q = benjamini_hochberg(np.array([r["p"] for r in paired]))
    for r, value in zip(paired, q):
        r["q"] = float(value)
    all_codes = np.concatenate(list(codes.values()), axis=1) if codes else np.zeros((len(raters), 0))
    agreement = {"preference": {"nominal": krippendorff_alpha(all_codes, "nominal")}}
    return summary, paired, agreement


def _fmt(value: float, digits: int = 2) -> str:
    return "–" if not math.isfinite(value) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}"


def _ci(row: dict, name: str) -> str:
    return f"{_fmt(row[name])} [{_fmt(row[name + '_low'])}, {_fmt(row[name + '_high'])}]"


def _header(facts: dict, boot: dict) -> list[str]:
    dropped = facts["dropped"]
    said = (f"; dropped for a missed attention check: {', '.join(sorted(dropped))}" if dropped else "")
    return [f"Site `{facts['site_id']}`: {len(facts['kept'])} of {len(facts['raters'])} raters kept "
            f"({len(dropped)} dropped{said}). Intervals: {boot['confidence']:.0%} percentile, two-way bootstrap over "
            f"raters and clips ({boot['n_bootstrap']} resamples, seed {boot['seed']}).", ""]


def _mos_markdown(summary: list[dict], paired: list[dict], agreement: dict, facts: dict, boot: dict) -> str:
    lines = ["# Listening test: EMOS and NMOS per method", "", *_header(facts, boot),
             "EMOS: how strongly a clip conveys its target emotion; NMOS: how natural it sounds (1 to 5 each). "
             "Methods were hidden from the raters (opaque clip ids, a random order per rater).", "",
             "## Mean opinion scores", "", "| method | EMOS | NMOS | clips | raters |", "|---|---|---|---:|---:|"]
    for r in (r for r in summary if r["scope"] == "method"):
        lines.append(f"| {method_label(r['method'])} | {_ci(r, 'emos')} | {_ci(r, 'nmos')} | {r['n_clips']} | "
                     f"{r['n_raters']} |")
    lines += ["", "## Per cell", "", "| direction | emotion | method | EMOS | NMOS | clips |",
              "|---|---|---|---|---|---:|"]
    for r in (r for r in summary if r["scope"] == "cell"):
        lines.append(f"| {r['direction']} | {r['emotion']} | {method_label(r['method'])} | {_ci(r, 'emos')} | "
                     f"{_ci(r, 'nmos')} | {r['n_clips']} |")
    lines += ["", "## Paired comparisons", "",
              "Each pair of methods on the prompts both have: the clips' mean ratings over the kept raters, "
              "Wilcoxon signed-rank p over clips (zero differences dropped), Benjamini-Hochberg q per scale; bold "
              "where q < 0.05.", "", "| scale | A vs B | clips | A | B | A − B | p | q |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in paired:
        q = _p(r["q"])
        lines.append(f"| {SCALE_LABELS[r['scale']]} | {method_label(r['method_a'])} vs {method_label(r['method_b'])} "
                     f"| {r['n_clips']} | {_fmt(r['mean_a'])} | {_fmt(r['mean_b'])} | {r['diff']:+.2f} | "
                     f"{_p(r['p'])} | {f'**{q}**' if r['q'] < 0.05 else q} |")
    lines += ["", "## Agreement between raters", "", "Krippendorff's alpha over every clip and kept rater (1: raters "
              "agree perfectly; 0: as much agreement as chance).", "",
              "| scale | α (interval) | α (ordinal) |", "|---|---:|---:|"]
    for scale, values in agreement.items():
        lines.append(f"| {SCALE_LABELS[scale]} | {_fmt(values['interval'], 3)} | {_fmt(values['ordinal'], 3)} |")
    return "\n".join(lines) + "\n"


def _ab_markdown(summary: list[dict], paired: list[dict], agreement: dict, facts: dict, boot: dict) -> str:
    lines = ["# Listening test: A/B preference for the target emotion", "", *_header(facts, boot),
             "Each item played two methods' clips of one prompt (which one was A was drawn per item); raters chose "
             "the clip that conveys the target emotion better, or no preference.", "",
             "## Preference shares", "", "| A vs B | prefer A | prefer B | no preference | items | ratings |",
             "|---|---|---|---|---:|---:|"]
    for r in summary:
        lines.append(f"| {method_label(r['method_a'])} vs {method_label(r['method_b'])} | {_ci(r, 'share_a')} | "
                     f"{_ci(r, 'share_b')} | {_ci(r, 'share_none')} | {r['n_items']} | {r['n_ratings']} |")
    lines += ["", "## Binomial tests", "", "Wins of A against wins of B (no preference left out), exact two-sided "
              "binomial p, Benjamini-Hochberg q over the pairs.", "", "| A vs B | wins A | wins B | ties | p | q |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in paired:
        lines.append(f"| {method_label(r['method_a'])} vs {method_label(r['method_b'])} | {r['wins_a']} | "
                     f"{r['wins_b']} | {r['ties']} | {_p(r['p'])} | {_p(r['q'])} |")
    lines += ["", "## Agreement between raters", "",
              f"Krippendorff's alpha (nominal) over every item: {_fmt(agreement['preference']['nominal'], 3)}."]
    return "\n".join(lines) + "\n"


def _figure(summary: list[dict], mode: str):
    """MOS: EMOS and NMOS per method with their intervals; A/B: preference shares per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if mode == "mos":
        rows = [r for r in summary if r["scope"] == "method"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110, sharey=True)
        for ax, scale in zip(axes, MOS_SCALES):
            means = np.array([r[scale] for r in rows])
            errors = np.array([[r[scale] - r[f"{scale}_low"] for r in rows], [r[f"{scale}_high"] - r[scale]
                                                                                for r in rows]])
            ax.bar(range(len(rows)), means, yerr=np.nan_to_num(errors), capsize=4, color="#6a8caf")
            ax.set_xticks(range(len(rows)), [method_label(r["method"]) for r in rows], rotation=20, ha="right",
                          fontsize=8)
            ax.set_ylim(1, 5)
            ax.set_title(f"{SCALE_LABELS[scale]} (95% CI)")
        fig.tight_layout()
        return fig
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(summary)), dpi=110)
    for i, r in enumerate(summary):
        left = 0.0
        for name, color in (("share_a", "#4c72b0"), ("share_none", "#bbbbbb"), ("share_b", "#dd8452")):
            value = r[name] if math.isfinite(r[name]) else 0.0
            ax.barh(i, value, left=left, color=color, label=name if i == 0 else None)
            left += value
    ax.set_yticks(range(len(summary)), [f"{method_label(r['method_a'])} vs {method_label(r['method_b'])}"
                                        for r in summary], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of ratings: prefer A | no preference | prefer B")
    fig.tight_layout()
    return fig
