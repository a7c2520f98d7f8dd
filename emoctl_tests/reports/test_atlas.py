"""The feature atlas: its one-pass statistics against brute force, a real site built from the committed mini TTS
and SAE and opened in headless Chromium, resuming, and the refusals."""
from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import soundfile as sf
import torch

from emoctl.errors import ConfigError, StoreError
from emoctl.reports.atlas import AtlasSettings, build_atlas
from emoctl.reports.atlas.scan import AtlasScan
from emoctl.sae.export import load_pretrained
from emoctl.selection.feature_set import FeatureSet
from emoctl.selection.indicators import collect_indicators
from emoctl.selection.latent_table import latent_table
from emoctl.selection.pairs import pair_utterances
from emoctl.selection.select import select_one
from emoctl.store import ActivationStore, ActivationWriter, StoreSpec, UtteranceMeta
from emoctl_tests.helpers.browser import chromium, console_errors, wait_for
from emoctl_tests.helpers.cli import REPO, RECIPES, run_emoctl

pytestmark = pytest.mark.usefixtures("one_thread")

SAE = REPO / "emoctl" / "assets" / "sae_mini"
SELECTION = REPO / "emoctl" / "assets" / "select_mini"
TEXTS = ["Kids are talking by the door.", "The green lamp is on the table.", "We walked home in the rain.",
         "Please bring the blue box."]


def test_the_scan_keeps_each_latents_top_utterances_by_true_peak_across_chunks():
    """A random Top-k code stream in chunks that cut utterances in two: the running top-N equals brute force."""
    rng = np.random.default_rng(0)
    d_sae, k, top_n = 12, 3, 4
    lengths = rng.integers(1, 9, size=40)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = int(lengths.sum())
    utt_of_row = np.repeat(np.arange(40), lengths)
    idx = torch.from_numpy(np.stack([rng.choice(d_sae, k, replace=False) for _ in range(rows)]))
    vals = torch.from_numpy(rng.exponential(1.0, (rows, k)).astype(np.float32)) * (torch.rand(rows, k) > 0.3)
    speaker = rng.integers(0, 3, size=40)
    scan = AtlasScan(d_sae, top_n, first, lengths, speaker, 3)
    for a in range(0, rows, 7):  # 7-row chunks: most utterances straddle two
        scan(utt_of_row[a:a + 7], vals[a:a + 7], idx[a:a + 7])
    dense = np.zeros((rows, d_sae), np.float32)
    np.put_along_axis(dense, idx.numpy(), vals.numpy(), axis=1)
    peaks = np.stack([dense[utt_of_row == u].max(axis=0) for u in range(40)])  # (utts, d_sae)
    for latent in range(d_sae):
        order = sorted(range(40), key=lambda u: (-peaks[u, latent], u))
        expected = [(u, float(peaks[u, latent])) for u in order[:top_n] if peaks[u, latent] > 0]
        got = scan.top(latent)
        assert [u for u, _ in got] == [u for u, _ in expected]
        assert np.allclose([v for _, v in got], [v for _, v in expected])
    rate, mean = scan.by_speaker()
    for s in range(3):
        mine = np.isin(utt_of_row, np.flatnonzero(speaker == s))
        assert np.allclose(mean[s], dense[mine].sum(axis=0) / max(mine.sum(), 1))
        assert np.allclose(rate[s], (dense[mine] > 0).sum(axis=0) / max(mine.sum(), 1))


@pytest.fixture(scope="module")
def mini_store(tmp_path_factory):
    """40 utterances of the committed mini TTS at resid_pre.5 (4 texts x 2 speakers x 5 emotions), harvested
    through `emoctl harvest`, so the store carries each utterance's speech tokens."""
    store = tmp_path_factory.mktemp("atlas") / "store"
    result = run_emoctl("harvest", "--config", str(RECIPES / "harvest_mini.yaml"), "--model.init_args.max_new_tokens=250",
                        f"--trainer.callbacks.init_args.path={store}", "--trainer.enable_progress_bar=false",
                        "--data.init_args.corpus=null", f"--data.init_args.texts=[{', '.join(TEXTS)}]",
                        '--data.init_args.speakers=["0011", "0012"]', "--data.init_args.batch_size=10")
    assert result.returncode == 0, result.stderr[-3000:]
    return store


def test_a_harvest_stores_each_utterances_text_and_tokens_and_they_speak_again(mini_store):
    from emoctl.backbones.loading import load_backbone
    from emoctl.harvest.module import batch_seed

    store = ActivationStore(mini_store)
    speech = store.speech().to_pydict()
    table = store.utterances.to_pydict()
    assert speech["utt_id"] == table["utt_id"] and set(speech["text"]) == set(TEXTS)
    assert all(v == "" for v in speech["voice_clip"])  # the mini TTS knows its voices by name
    # one stored row per fed token: as many tokens as rows, or one more when the cap cut it
    assert all(len(t) in (n, n + 1) for t, n in zip(speech["speech_tokens"], table["num_rows"]))
    # the tokens are the generation's: the first batch generated again gives them back
    from emoctl.backbones.sampling import Sampling
    from emoctl.harvest.prompts import GridPrompt
    tts = load_backbone("mini_tts")
    first = [GridPrompt(text=speech["text"][i], voice=table["speaker"][i], emotion=table["emotion"][i],
                        utt_id=table["utt_id"][i]) for i in range(10)]
    gen = tts.generate(first, Sampling(max_new_tokens=250, temperature=1.0), seed=batch_seed(0, table["utt_id"][0]))
    assert [g.tolist() for g in gen.tokens] == [list(t) for t in speech["speech_tokens"][:10]]


def _small_selection(tmp_path: Path) -> Path:
    """The committed feature sets cut to their first two latents (same SAE digest, so they are still checked)."""
    out = tmp_path / "selection"
    out.mkdir()
    for path in SELECTION.glob("features_*.json"):
        fs = FeatureSet.load(path)
        fs.features = fs.features[:2]
        fs.save(out / path.name)
    return out


def _settings(store: Path, out: Path, selection: Path | None, **over) -> AtlasSettings:
    base = dict(sae=str(SAE), store=str(store), out_dir=str(out), selection=str(selection) if selection else None,
                table1=str(REPO / "reports"), top_n=2, top_per_score=0, n_random=1, m=2, steer_alphas=[40.0],
                emotion_alphas=[8.0], n_prompts=2, scores=["any_step"], max_new_tokens=150, n_bootstrap=200, progress=False)
    return AtlasSettings(**{**base, **over})


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.refs.append(value)


def _local_refs(site: Path) -> list[tuple[Path, str]]:
    refs = []
    for page in site.rglob("*.html"):
        parser = _Links()
        parser.feed(page.read_text())
        refs += [(page, r) for r in parser.refs if not urlparse(r).scheme]
    return refs


@pytest.fixture(scope="module")
def atlas_site(mini_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    selection = _small_selection(root)
    summary = build_atlas(_settings(mini_store, root / "atlas", selection))
    return root / "atlas", summary, selection


def test_the_atlas_has_a_row_per_latent_with_the_selections_numbers_and_every_link_resolves(atlas_site, mini_store):
    site, summary, selection = atlas_site
    sae = load_pretrained(SAE)
    assert summary.latents == sae.cfg.d_sae == 1024 and summary.emotion_pages == 4
    index = (site / "index.html").read_text()
    latents = json.loads(re.search(r'id="atlas-latents">(.*?)</script>', index).group(1))
    assert [r["id"] for r in latents] == list(range(1024))
    # the Δ, q and CI of a latent equal what `emoctl select` computes for it on the same store
    store = ActivationStore(mini_store)
    ind = collect_indicators(store, sae, progress=False, per_step=True)
    pairs = pair_utterances(ind.utt_id, ind.emotion, ind.pair_key)
    fs, _ = select_one(ind, pairs["Angry"], m=3, alpha=None, correction="bh", n_bootstrap=200, confidence=0.95,
                       seed=0, provenance={}, score="any_step")
    for f in fs.features:  # the index keeps 4 significant digits
        row = latents[f.id]
        assert row["delta.any_step.Angry"] == pytest.approx(f.delta, rel=1e-3)
        assert row["q.any_step.Angry"] == pytest.approx(f.q_value, rel=1e-3)
        assert (row["ci_low.any_step.Angry"], row["ci_high.any_step.Angry"]) == pytest.approx((f.ci_low, f.ci_high),
                                                                                            rel=1e-3)
    paged = {r["id"] for r in latents if r["page"]}
    given = {i for p in selection.glob("*.json") for i in FeatureSet.load(p).feature_ids}
    assert given <= paged and summary.latent_pages == len(paged)
    assert all((site / r["page"]).is_file() for r in latents if r["page"])
    refs = _local_refs(site)
    missing = sorted({(p.name, r) for p, r in refs
                      if not (p.parent / unquote(urlparse(r).path)).exists()})
    assert not missing and len(refs) > 100
    clips = sorted(site.rglob("*.ogg"))
    assert clips and all(sf.info(str(c)).duration > 0 for c in clips)
    assert (site / "atlas_info.json").is_file() and "Made with" in index
    assert list((site / "tensorboard").rglob("projector_config.pbtxt"))
    table = latent_table(ind, pairs, scores=("any_step",), n_bootstrap=10)
    assert table.columns["top_emotion"].shape == (1024,)


def test_a_rebuild_keeps_every_medium_and_rewrites_nothing_else(atlas_site, mini_store, tmp_path):
    site, first, selection = atlas_site
    copy = tmp_path / "atlas"
    shutil.copytree(site, copy)
    media = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.suffix in (".ogg", ".png")}
    again = build_atlas(_settings(mini_store, copy, selection))
    assert again.kept >= len(media) and again.clips == first.clips
    assert {p: (copy / p).read_bytes() for p in media} == media
    # another α grid redoes the steering media of every page, and only those; the old grid's files are pruned
    other = build_atlas(_settings(mini_store, copy, selection, steer_alphas=[20.0]))
    assert other.kept < again.kept and list(copy.rglob("ap20_p0.ogg")) and not list(copy.rglob("ap40_p0.ogg"))
    figures = {p: b for p, b in media.items() if p.suffix == ".png"}
    assert figures and {p: (copy / p).read_bytes() for p in figures} == figures
    # a latent that loses its page loses its media
    fewer = build_atlas(_settings(mini_store, copy, None, n_random=0, m=1, steer_alphas=[20.0]))
    assert fewer.latent_pages < other.latent_pages
    assert len(list((copy / "latents").glob("*.html"))) == fewer.latent_pages
    assert len(list((copy / "latents").glob("*/"))) == fewer.latent_pages


def test_the_site_works_in_a_browser(atlas_site, tmp_path):
    """Headless Chromium from file://: no console error, sorting and filtering change the table, a latent page's
    audio loads with a duration, its activation plots are drawn; screenshots of both pages are saved (PNG)."""
    site, summary, _ = atlas_site
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with chromium() as driver:
        driver.get((site / "index.html").as_uri())
        wait_for(lambda: driver.find_elements("css selector", "#body tr"), what="the latent table")
        assert console_errors(driver) == []
        first_ids = lambda: [r.text for r in driver.find_elements("css selector", "#body tr td:first-child")][:5]
        before = first_ids()
        driver.find_element("css selector", '#head th[data-k="id"]').click()
        after = first_ids()
        assert after != before and after[0] == "#1023"
        shown = driver.find_element("id", "shown").text
        driver.find_element("id", "alive").click()
        assert driver.find_element("id", "shown").text != shown
        driver.find_element("id", "filter").send_keys("Angry")
        wait_for(lambda: driver.find_element("id", "shown").text.split()[0] != "1024", what="the filter")
        assert len(driver.find_elements("css selector", "#decoder-map circle")) == 1024
        driver.save_screenshot(str(shots / "atlas_index.png"))
        page = next(iter(sorted((site / "latents").glob("*.html"))))
        driver.get(page.as_uri())
        durations = wait_for(lambda: (lambda d: d if d and all(x and x > 0 for x in d) else None)(
            driver.execute_script("return [...document.querySelectorAll('audio')].map(a => a.duration)")),
            what="every audio element's duration")
        assert len(durations) >= 2
        plots = driver.execute_script("return [...document.querySelectorAll('img.activation-plot')]"
                                      ".map(i => i.complete && i.naturalWidth)")
        assert plots and all(w and w > 0 for w in plots)
        assert console_errors(driver) == []
        driver.save_screenshot(str(shots / "atlas_latent.png"))
    for name in ("atlas_index.png", "atlas_latent.png"):
        shot = (shots / name).read_bytes()
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000  # a drawn page, not a blank one


def test_a_store_without_speech_tokens_is_refused_with_the_command_that_makes_one(tmp_path):
    store = tmp_path / "old"
    with ActivationWriter(store, StoreSpec(d_model=192, dtype="float32", hookpoint="resid_pre.5")) as writer:
        for i, emotion in enumerate(["Neutral", "Angry"]):
            writer.append(UtteranceMeta(f"u{i}", "t0", "0011", emotion), torch.randn(5, 192))
    with pytest.raises(StoreError, match=r"carry no speech tokens.*make store-mini"):
        build_atlas(_settings(store, tmp_path / "site", None))
    assert not (tmp_path / "site").exists()


def test_bad_settings_are_refused_before_any_work(tmp_path, mini_store):
    with pytest.raises(ConfigError, match=r"n_prompts=1 \(>= 2"):
        build_atlas(_settings(mini_store, tmp_path / "site", None, n_prompts=1))
    with pytest.raises(ConfigError, match=r"steer_alphas=\[0.0\]"):
        build_atlas(_settings(mini_store, tmp_path / "site", None, steer_alphas=[0.0]))
    with pytest.raises(ConfigError, match="would take about .* over --max_mb 0.01"):
        build_atlas(_settings(mini_store, tmp_path / "site", None, max_mb=0.01))
    with pytest.raises(ConfigError, match=r"--latents \[5000\] are out of range"):
        build_atlas(_settings(mini_store, tmp_path / "site", None, latents=[5000]))
    with pytest.raises(ConfigError, match="holds no features_"):
        build_atlas(_settings(mini_store, tmp_path / "site", tmp_path))
    assert not (tmp_path / "site" / "index.html").exists()
