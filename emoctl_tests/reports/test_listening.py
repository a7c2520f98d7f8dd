"""The blind listening test: scoring synthetic panels whose true means are known, each refusal of a bad ratings
file, Krippendorff's alpha, and a rater page driven in headless Chromium from a tiny Table 1 report's clips to
the scored table."""
from __future__ import annotations

import csv
import io
import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

from emoctl.errors import ConfigError
from emoctl.evaluation.summary import csv_bytes
from emoctl.reports.listening.build import build_listening_site
from emoctl.reports.listening.score import score_listening
from emoctl.reports.listening.stats import krippendorff_alpha, two_way_bootstrap
from emoctl_tests.helpers.browser import chromium, console_errors, wait_for
from emoctl_tests.helpers.cli import REPO, parse_emoctl

SITE = "0123456789abcdef"
TRUE_EMOS = {"unsteered": 2.0, "global": 3.0, "sae_emotion": 4.0}


def _synthetic_key(n_prompts: int, methods: dict[str, float]) -> list[dict]:
    rows = []
    for p in range(n_prompts):
        for m in methods:
            rows.append({"site_id": SITE, "mode": "mos", "item_id": f"i{p:02d}{m}", "kind": "clip", "method": m,
                         "direction": "induction", "emotion": "Angry" if p % 2 else "Sad",
                         "target": "Angry" if p % 2 else "Sad", "utt_id": f"u{p}", "expected_emos": "",
                         "expected_nmos": ""})
    rows.append({**rows[0], "item_id": "check", "kind": "attention", "expected_emos": 2, "expected_nmos": 2})
    return rows


def _rate(mu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ratings 1-5 of a (raters, clips) matrix of true means: rater bias, clip effect and noise, rounded."""
    raters, clips = mu.shape
    noisy = mu + rng.normal(0, 0.3, (raters, 1)) + rng.normal(0, 0.3, (1, clips)) + rng.normal(0, 0.6, mu.shape)
    return np.clip(np.rint(noisy), 1, 5)


def _write_panel(folder: Path, key: list[dict], n_raters: int, seed: int = 0, careless: int = 0) -> list[Path]:
    """One ratings file per rater, as a page downloads it; ``careless`` raters answer the check with 5."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = [r for r in key if r["kind"] == "clip"]
    mu = np.array([TRUE_EMOS[r["method"]] for r in clips])[None, :].repeat(n_raters, axis=0)
    emos, nmos = _rate(mu, rng), _rate(np.full_like(mu, 3.5), rng)
    files = []
    for i in range(n_raters):
        rows = [{"site_id": SITE, "rater_id": f"r{i:02d}", "item_id": c["item_id"], "scale": scale,
                 "rating": int(values[i, j]), "timestamp": "2000-01-01T00:00:00Z"}
                for j, c in enumerate(clips) for scale, values in (("emos", emos), ("nmos", nmos))]
        check = 5 if i < careless else 2
        rows += [{**rows[0], "item_id": "check", "scale": s, "rating": check} for s in ("emos", "nmos")]
        files.append(folder / f"ratings_r{i:02d}.csv")
        files[-1].write_bytes(csv_bytes(rows))
    return files


def _read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_scores_order_the_methods_as_their_true_means_and_drop_careless_raters(tmp_path):
    key = _synthetic_key(12, TRUE_EMOS)
    (tmp_path / "key.csv").write_bytes(csv_bytes(key))
    files = _write_panel(tmp_path / "ratings", key, n_raters=12, careless=2)
    result = parse_emoctl("listen", "score", *map(str, files), "--key", str(tmp_path / "key.csv"), "--out_dir",
                          str(tmp_path / "out"), "--n_bootstrap", "400")  # a shell glob's file names, then flags
    assert result.returncode == 0, result.stderr
    table = {r["method"]: r for r in _read_csv(tmp_path / "out" / "listening.csv") if r["scope"] == "method"}
    emos = {m: float(r["emos"]) for m, r in table.items()}
    assert sorted(emos, key=emos.get) == ["unsteered", "global", "sae_emotion"]
    assert all(r["n_raters"] == "10" for r in table.values())  # the two careless raters are out
    for r in table.values():
        assert float(r["emos_low"]) < float(r["emos"]) < float(r["emos_high"])
    paired = {(r["scale"], r["method_a"], r["method_b"]): r for r in _read_csv(tmp_path / "out" / "listening_paired.csv")}
    big = paired[("emos", "sae_emotion", "unsteered")]
    assert float(big["diff"]) > 1.5 and float(big["q"]) < 0.01  # 12 clips, two points apart
    assert float(paired[("nmos", "sae_emotion", "unsteered")]["q"]) > 0.05  # naturalness is the same
    md = (tmp_path / "out" / "listening.md").read_text()
    assert "10 of 12 raters kept (2 dropped; dropped for a missed attention check: r00, r01)" in md
    assert md.splitlines()[2].startswith("*Made with*") and (tmp_path / "out" / "listening.png").is_file()


def test_two_way_bootstrap_intervals_cover_the_true_mean():
    rng = np.random.default_rng(1)
    truth = _rate(np.full((400, 4000), 3.3), np.random.default_rng(0)).mean()  # the rounded scale's own mean
    covered = []
    for rep in range(80):
        _, low, high = two_way_bootstrap(_rate(np.full((15, 20), 3.3), rng), n_bootstrap=400, seed=rep)
        covered.append(low <= truth <= high)
    assert 0.85 <= np.mean(covered) <= 1.0, np.mean(covered)


def test_krippendorff_alpha_is_one_for_identical_raters_and_near_zero_for_random_ones():
    rng = np.random.default_rng(0)
    item = rng.integers(1, 6, size=200).astype(float)
    same = np.tile(item, (5, 1))
    for metric in ("interval", "ordinal", "nominal"):
        assert krippendorff_alpha(same, metric) == pytest.approx(1.0)
    noise = rng.integers(1, 6, size=(20, 200)).astype(float)
    assert abs(krippendorff_alpha(noise, "interval")) < 0.05 and abs(krippendorff_alpha(noise, "ordinal")) < 0.05
    # Krippendorff's own example (4 coders x 12 units with gaps): 0.743 nominal, 0.815 ordinal, 0.849 interval.
    n = np.nan
    example = np.array([[1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
                        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]])
    assert [round(krippendorff_alpha(example, m), 3) for m in ("nominal", "ordinal", "interval")] == \
        [0.743, 0.815, 0.849]


@pytest.mark.parametrize("edit, message", [
    (lambda rows: [{**r, "site_id": "ffffffffffffffff"} for r in rows],
     r"ratings_r00.csv line 2 is a rating of the listening site 'ffffffffffffffff', but the key .*key.csv is of "
     r"site '0123456789abcdef'.*Score it with the key.csv built with those pages"),
    (lambda rows: [{k: v for k, v in r.items() if k != "timestamp"} for r in rows],
     r"ratings_r00.csv lacks the columns \['timestamp'\].*Send the file as downloaded"),
    (lambda rows: [{**r, "rating": 7} if i == 2 else r for i, r in enumerate(rows)],
     r"ratings_r00.csv line 4 has the EMOS rating '7', off the 1-5 scale.*Use the file as the page downloaded it"),
    (lambda rows: rows + [rows[1]],
     r"ratings_r00.csv line \d+ rates item i00unsteered on nmos for rater r00 a second time \(first at .*line 3\).*"
     r"Pass each rater's file once"),
])
def test_each_bad_ratings_file_is_refused_naming_file_line_and_fix(tmp_path, edit, message):
    key = _synthetic_key(4, TRUE_EMOS)
    (tmp_path / "key.csv").write_bytes(csv_bytes(key))
    [ratings] = _write_panel(tmp_path / "ratings", key, n_raters=1)
    ratings.write_bytes(csv_bytes(edit(_read_csv(ratings))))
    with pytest.raises(ConfigError, match=message):
        score_listening([str(ratings)], str(tmp_path / "key.csv"), str(tmp_path / "out"), n_bootstrap=50)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_ab_preferences_give_shares_and_a_binomial_test(tmp_path):
    rows = [{"site_id": SITE, "mode": "ab", "item_id": f"p{i}", "kind": "clip", "method_a": a, "method_b": b,
             "direction": "induction", "emotion": "Sad", "target": "Sad", "utt_id": f"u{i}",
             "expected_preference": ""}
            for i, (a, b) in enumerate([("sae_emotion", "unsteered"), ("unsteered", "sae_emotion")] * 5)]
    (tmp_path / "key.csv").write_bytes(csv_bytes(rows))
    ratings = [{"site_id": SITE, "rater_id": f"r{k}", "item_id": r["item_id"], "scale": "preference",
                "rating": "A" if r["method_a"] == "sae_emotion" else "B", "timestamp": "t"}
               for k in range(4) for r in rows]
    (tmp_path / "all.csv").write_bytes(csv_bytes(ratings))
    assert parse_emoctl("listen", "score", str(tmp_path / "all.csv"), "--key", str(tmp_path / "key.csv"),
                        "--out_dir", str(tmp_path / "out"), "--n_bootstrap", "100").returncode == 0
    [share] = _read_csv(tmp_path / "out" / "listening.csv")
    assert (share["method_a"], share["method_b"], float(share["share_a"])) == ("sae_emotion", "unsteered", 1.0)
    [test] = _read_csv(tmp_path / "out" / "listening_paired.csv")
    assert (test["wins_a"], test["wins_b"]) == ("40", "0") and float(test["p"]) < 1e-10


def _fake_report(folder: Path, methods: tuple[str, ...] = ("unsteered", "global", "sae_emotion"),
                 n_prompts: int = 3, audio: bool = True) -> Path:
    """A Table 1 report folder with 0.3 s tones as its clips (what build reads: table1_clips.csv and clips/)."""
    import soundfile

    (folder / "clips").mkdir(parents=True)
    rows = []
    for p in range(n_prompts):
        for k, m in enumerate(methods):
            name = f"clips/t-{p}__{m}.flac"
            soundfile.write(folder / name, 0.1 * np.sin(np.arange(4800) * (0.05 + 0.01 * k)), 16000)
            rows.append({"direction": "induction", "emotion": "Sad", "method": m, "alpha": 4.0 if k else 0.0,
                         "utt_id": f"t-{p}", "text": f"text {p}", "speaker": "0017", "condition": "Neutral",
                         "target": "Sad", **({"audio": name} if audio else {})})
    (folder / "table1_clips.csv").write_bytes(csv_bytes(rows))
    return folder


def test_an_ab_site_is_blind_seeded_per_rater_and_pairs_every_two_methods(tmp_path):
    report = _fake_report(tmp_path / "report")
    info = build_listening_site(str(report), str(tmp_path / "site"), raters=3, seed=1, mode="ab",
                                clips_per_method=2, attention_checks=1)
    key = _read_csv(tmp_path / "site" / "key.csv")
    clips = [r for r in key if r["kind"] == "clip"]
    assert len(clips) == 3 * 2 and len(key) == 7 and info["items_per_page"] == 7  # 3 pairs x 2 prompts + 1 check
    assert {frozenset((r["method_a"], r["method_b"])) for r in clips} == \
        {frozenset(p) for p in (("unsteered", "global"), ("unsteered", "sae_emotion"), ("global", "sae_emotion"))}
    [check] = [r for r in key if r["kind"] == "attention"]
    assert check["expected_preference"] in ("A", "B")
    orders = []
    for rater in ("r1", "r2", "r3"):
        page = (tmp_path / "site" / "site" / f"rater_{rater}.html").read_text()
        assert info["site_id"] in page and not any(m in page for m in ("unsteered", "global", "sae_emotion"))
        orders.append([i for i in (r["item_id"] for r in key) if i in page])
        orders[-1].sort(key=page.index)
    assert len({tuple(o) for o in orders}) > 1  # each rater hears the items in another order
    assert sorted((tmp_path / "site" / "site" / "audio").iterdir())[0].name.startswith("a")
    assert len(list((tmp_path / "site" / "site" / "audio").iterdir())) == 2 * 3  # 2 prompts x 3 methods
    again = build_listening_site(str(report), str(tmp_path / "site"), raters=3, seed=1, mode="ab",
                                 clips_per_method=2, attention_checks=1)
    assert again["site_id"] == info["site_id"]  # same inputs and seed, same site (rebuilt in place)
    with pytest.raises(ConfigError, match=r"table1_clips.csv names no audio files.*--save_audio true"):
        build_listening_site(str(_fake_report(tmp_path / "silent", audio=False)), str(tmp_path / "s2"))
    with pytest.raises(ConfigError, match=r"holds files that are not a listening site"):
        build_listening_site(str(report), str(report))
    # a clips file naming a file outside its report is refused: the site would copy it to the raters
    (tmp_path / "secret.flac").write_bytes(b"a file of the user's, outside the report")
    clips_csv = report / "table1_clips.csv"
    rows = clips_csv.read_text().splitlines()
    first = rows[1].split(",")
    audio_at = rows[0].split(",").index("audio")
    first[audio_at] = "../secret.flac"
    clips_csv.write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n")
    with pytest.raises(ConfigError, match=r"line 2 names the audio file '../secret.flac', which lies outside"):
        build_listening_site(str(report), str(tmp_path / "s3"))
    assert not (tmp_path / "s3").exists()


# ---- the pages in a browser ------------------------------------------------------------------------------------

SPEAKERS = ["0017", "0018"]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, corpus_root: Path) -> Path:
    """A Table 1 report folder with audio: one induction cell, 2 texts x 2 speakers, two methods (the second an
    extra method that attaches nothing, standing in for a steering method: the pages only play clips)."""
    from emoctl.backbones.loading import load_backbone
    from emoctl.evaluation.scoring import References, Scorers
    from emoctl.evaluation.texts import corpus_test_sentences
    from emoctl.metrics.loading import load_recognizer
    from emoctl.reports.table1_cells import Cell, run_cells
    from emoctl.reports.table1_methods import SteeringMethods
    from emoctl.synthesis import SamplingConfig

    out = tmp_path_factory.mktemp("table1")
    backbone = load_backbone("mini_tts", None)
    texts, record = corpus_test_sentences(corpus_root)
    scorers = Scorers(load_recognizer("mini", None), None, None, None)
    refs = References(corpus_root, record["sentences"], SPEAKERS, scorers, used=texts[:2])
    methods = SteeringMethods(sae=None, feature_sets={}, mean_differences={})
    run = {"texts": texts[:2], "speakers": SPEAKERS, "scorers": scorers, "refs": refs, "seed": 3,
           "sampling": SamplingConfig(batch_size=4, max_new_tokens=300), "tag": "table", "progress": False,
           "audio_dir": out / "clips"}
    cells = [Cell("induction", "Angry")]
    rows = run_cells(backbone, methods, ["unsteered"], cells, alphas={}, **run)
    rows += run_cells(backbone, methods, ["emoshift"], cells, alphas={"emoshift": 1.0},
                      extra_method=lambda cell, alpha, batch, start: nullcontext(), **run)
    (out / "table1_clips.csv").write_bytes(csv_bytes(rows))
    return out


ANSWERS = {"unsteered": ("2", "3"), "emoshift": ("4", "3")}
"""What the test's rater gives each method's clips on (EMOS, NMOS)."""


def test_a_rater_page_plays_rates_downloads_and_scores_in_chromium(tiny_report, tmp_path):
    site = tmp_path / "site_out"
    build_listening_site(str(tiny_report), str(site), raters=2, seed=5, attention_checks=2)
    key = {r["item_id"]: r for r in _read_csv(site / "key.csv")}
    page_html = (site / "site" / "rater_r1.html").read_text()
    assert "unsteered" not in page_html and "emoshift" not in page_html  # blind: no method named
    assert "key.csv" not in page_html and "http" not in page_html.replace("http-equiv", "")  # no key link, no CDN
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium(download_dir=downloads) as driver:
        driver.get((site / "site" / "rater_r1.html").as_uri())
        durations = wait_for(lambda: driver.execute_script(
            "const a = [...document.querySelectorAll('audio')];"
            "return a.every(x => x.readyState >= 1) ? a.map(x => x.duration) : null;"), 30, "the audio to load")
        assert len(durations) == len(key) and all(d > 0 for d in durations)
        assert console_errors(driver) == []
        sections = driver.find_elements("css selector", "section.item")
        assert [s.get_attribute("data-item") for s in sections] != list(key)  # its own order, not the key's
        for section in sections:
            item = key[section.get_attribute("data-item")]
            if item["kind"] == "attention":
                answer = (item["expected_emos"], item["expected_nmos"])
                assert f"choose {answer[0]} on both scales" in section.text
            else:
                answer = ANSWERS[item["method"]]
            for scale, value in zip(("emos", "nmos"), answer):
                radio = section.find_element("css selector", f"input[data-scale='{scale}'][value='{value}']")
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", radio)
                radio.click()
        assert driver.find_element("id", "progress").text == f"{len(key)} of {len(key)} rated"
        driver.refresh()  # the ratings survive a reload (localStorage)
        wait_for(lambda: driver.find_element("id", "progress").text == f"{len(key)} of {len(key)} rated", 10,
                 "the kept ratings after a reload")
        if os.environ.get("EMOCTL_SCREENSHOTS") == "1":
            driver.execute_script("window.scrollTo(0, 0);")
            driver.save_screenshot(str(REPO / "docs" / "images" / "listening_page.png"))
        driver.find_element("id", "download").click()
        [ratings] = wait_for(lambda: [p for p in downloads.glob("*.csv")] if not list(downloads.glob("*.crdownload"))
                             else None, 20, "the downloaded ratings CSV")
        assert console_errors(driver) == []
    rows = _read_csv(ratings)
    assert len(rows) == 2 * len(key) and {r["rater_id"] for r in rows} == {"r1"}
    result = parse_emoctl("listen", "score", str(ratings), "--key", str(site / "key.csv"), "--out_dir",
                          str(tmp_path / "scores"), "--n_bootstrap", "200")
    assert result.returncode == 0, result.stderr
    table = {r["method"]: r for r in _read_csv(tmp_path / "scores" / "listening.csv") if r["scope"] == "method"}
    assert {m: (float(r["emos"]), float(r["nmos"]), r["n_clips"]) for m, r in table.items()} == \
        {"unsteered": (2.0, 3.0, "4"), "emoshift": (4.0, 3.0, "4")}
    paired = {(r["scale"], r["method_a"]): r for r in _read_csv(tmp_path / "scores" / "listening_paired.csv")}
    assert float(paired[("emos", "emoshift")]["diff"]) == 2.0 and paired[("emos", "emoshift")]["method_b"] == "unsteered"
    assert "1 of 1 raters kept (0 dropped" in (tmp_path / "scores" / "listening.md").read_text()
