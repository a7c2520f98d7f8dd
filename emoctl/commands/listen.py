"""``emoctl listen``: a blind listening test of a Table 1 report (rater pages, then the scores of their ratings).

``listen build`` writes a static site (one page per rater, methods hidden, audio copied in, working from
``file://`` offline) and the key that unblinds it; ``listen score`` checks the ratings files the pages download
against that key and reports EMOS / NMOS or A/B preferences per method (:mod:`emoctl.reports.listening`,
:mod:`emoctl.reports.listening.score`).
"""
from __future__ import annotations

from typing import Literal

from emoctl.errors import ConfigError
from emoctl.reports.listening.build import build_listening_site
from emoctl.reports.listening.score import score_listening


def listen_build(report: str, out_dir: str = "reports/listening", raters: int = 20, seed: int = 0,
                 mode: Literal["mos", "ab"] = "mos", methods: list[str] | None = None,
                 clips_per_method: int | None = None, attention_checks: int = 2,
                 directions: list[str] | None = None) -> dict:
    """Write the rater pages, audio and key of a blind listening test of a Table 1 report kept with its audio.

    Args:
        report: Out_dir of ``emoctl report table1 --save_audio true`` (table1_clips.csv and clips/).
        out_dir: Where site/ (what the raters get), key.csv and listening_site.json go; replaced whole.
        raters: Number of rater pages (each holds every item, in its own order).
        seed: Seed of the clip choice, the opaque ids, A/B sides, attention checks and every page's order.
        mode: "mos" (EMOS and NMOS, 1-5, per clip) or "ab" (which of two methods' clips of one prompt conveys
            the target emotion better).
        methods: Methods of the report to include (default every one); ab pairs every two of them.
        clips_per_method: Prompts to draw (each spoken by every method); default every prompt all methods share.
        attention_checks: Items per page whose instruction asks for a fixed answer (raters who miss one are
            dropped by ``listen score``).
        directions: "induction" and/or "suppression" (default both).
    """
    return build_listening_site(report, out_dir, raters=raters, seed=seed, mode=mode, methods=methods,
                                clips_per_method=clips_per_method, attention_checks=attention_checks,
                                directions=directions)


def listen_score(ratings: list[str], key: str | None = None, out_dir: str = "reports/listening_scores",
                 n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> list[dict]:
    """Score the ratings files of a listening site: EMOS / NMOS or preferences per method, paired tests, agreement.

    Args:
        ratings: The CSV files the rater pages downloaded (a shell glob such as ratings/*.csv).
        key: The site's key.csv (beside its site/ folder).
        out_dir: Where listening.md, listening.csv, listening_paired.csv, listening.png and listening_info.json go.
        n_bootstrap: Resamples of the two-way (raters x clips) bootstrap.
        confidence: Coverage of the intervals.
        seed: Seed of the bootstrap.
    """
    if key is None:
        raise ConfigError("listen score needs --key, the key.csv that `emoctl listen build` wrote beside the site/ "
                          "folder the ratings came from.")
    return score_listening(ratings, key, out_dir, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
