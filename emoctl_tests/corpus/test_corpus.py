"""eSpeak NG binding and the ESD-shaped corpus built with it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

import emoctl
from emoctl.corpus import EMOTIONS, build_corpus, generate_sentences, plan_corpus, split_sizes
from emoctl.corpus.build import TRIM_MARGIN_S
from emoctl.corpus.espeak import SAMPLE_RATE, synthesize
from emoctl.errors import ConfigError
from emoctl_tests.helpers.cli import REPO

SENTENCE = "The quick brown fox jumps over the lazy dog."


def median_f0(samples: np.ndarray, sample_rate: int) -> float:
    """Median F0 (Hz) over voiced frames, by pyworld's DIO + StoneMask."""
    import pyworld

    x = samples.astype(np.float64)
    f0, times = pyworld.dio(x, sample_rate, f0_floor=50.0, f0_ceil=500.0)
    f0 = pyworld.stonemask(x, f0, times, sample_rate)
    return float(np.median(f0[f0 > 0]))


# ---------------------------------------------------------------- synthesize

def test_synthesize_gives_speech_of_plausible_duration():
    samples, sample_rate = synthesize(SENTENCE)
    assert sample_rate == SAMPLE_RATE == 22050
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert np.abs(samples).max() <= 1.0
    rms = float(np.sqrt(np.mean(samples ** 2)))
    assert rms > 0.02, rms
    seconds = len(samples) / sample_rate
    assert 1.5 < seconds < 5.0, seconds  # 9 words at 175 words per minute


def test_synthesize_is_deterministic_whatever_came_before():
    first, _ = synthesize(SENTENCE, "en-us+m3", pitch=40)
    synthesize("Something else, spoken by another voice.", "en+f4", rate=300, pitch=90, pitch_range=90)
    synthesize(SENTENCE, "en-us+klatt2")
    again, _ = synthesize(SENTENCE, "en-us+m3", pitch=40)
    assert np.array_equal(first, again)


@pytest.mark.parametrize("voice", ["en-gb", "xx-nonexistent", "en-us+m99", ""])
def test_unknown_voice_is_a_config_error(voice):
    synthesize(SENTENCE, "en+f2")  # a good voice first: the bad one must not fall back to it
    with pytest.raises(ConfigError, match="voice"):
        synthesize(SENTENCE, voice)


@pytest.mark.parametrize("kwargs", [{"text": ""}, {"text": "   "}, {"pitch": 101}, {"rate": 20}, {"volume": -1},
                                    {"pitch_range": 1.5}])
def test_bad_arguments_are_config_errors(kwargs):
    kwargs = {"text": SENTENCE, **kwargs}
    with pytest.raises(ConfigError):
        synthesize(**kwargs)


def test_knobs_move_pitch_rate_and_volume():
    low, sr = synthesize(SENTENCE, pitch=20)
    high, _ = synthesize(SENTENCE, pitch=80)
    assert median_f0(high, sr) > 1.25 * median_f0(low, sr)
    slow, _ = synthesize(SENTENCE, rate=120)
    fast, _ = synthesize(SENTENCE, rate=260)
    assert len(slow) > 1.5 * len(fast)
    soft, _ = synthesize(SENTENCE, volume=40)
    loud, _ = synthesize(SENTENCE, volume=160)
    assert np.sqrt(np.mean(loud ** 2)) > 2.0 * np.sqrt(np.mean(soft ** 2))


# ---------------------------------------------------------------- sentences

def test_sentences_are_5_to_12_words_unique_and_seeded():
    sentences = generate_sentences(300, seed=0)
    assert len(sentences) == 300
    assert len({s.lower() for s in sentences}) == 300
    lengths = [len(s.split()) for s in sentences]
    assert min(lengths) >= 5 and max(lengths) <= 12
    assert len(set(lengths)) >= 5  # varied lengths, not one template
    assert all(s[0].isupper() and s.endswith(".") for s in sentences)
    assert generate_sentences(300, seed=0) == sentences
    assert generate_sentences(40, seed=0) == sentences[:40]
    other = generate_sentences(300, seed=1)
    assert len(set(other) & set(sentences)) < 30


def test_sentence_count_is_validated():
    with pytest.raises(ConfigError):
        generate_sentences(0)


# ---------------------------------------------------------------- corpus

N_SENTENCES, N_SPEAKERS = 9, 2  # 9 sentences: 1 evaluation, 1 test, 7 train per emotion


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(str(tmp_path_factory.mktemp("corpus") / "esd"), n_sentences=N_SENTENCES,
                        speakers=N_SPEAKERS, seed=0, progress=False)


def read_transcript(root: Path, speaker: str) -> list[tuple[str, str, str]]:
    lines = (root / speaker / f"{speaker}.txt").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t")) for line in lines]


def test_layout_matches_esd(corpus):
    assert split_sizes(N_SENTENCES) == {"evaluation": 1, "test": 1, "train": 7}
    assert split_sizes(350) == {"evaluation": 20, "test": 30, "train": 300}
    wavs = {p.stem: p for p in corpus.rglob("*.wav")}
    assert len(wavs) == len(list(corpus.rglob("*.wav"))) == N_SPEAKERS * len(EMOTIONS) * N_SENTENCES
    sentences = generate_sentences(N_SENTENCES, seed=0)
    listed = set()
    for speaker in ("0011", "0012"):
        rows = read_transcript(corpus, speaker)
        assert len(rows) == len(EMOTIONS) * N_SENTENCES
        for utt_id, text, emotion in rows:
            spk, number = utt_id.split("_")
            block, index = divmod(int(number) - 1, 350)
            assert spk == speaker and len(number) == 6
            assert emotion == EMOTIONS[block] and text == sentences[index]
            split = "evaluation" if index < 1 else "test" if index < 2 else "train"
            assert wavs[utt_id] == corpus / speaker / emotion / split / f"{utt_id}.wav"
            listed.add(utt_id)
            with wave.open(str(wavs[utt_id])) as wav:
                assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
                assert 1.0 < wav.getnframes() / 16000 < 6.0
    assert listed == set(wavs)
    speakers = json.loads((corpus / "speakers.json").read_text())
    assert speakers["0011"]["sex"] == "M" and speakers["0012"]["sex"] == "F"
    assert speakers["0012"]["voice"].endswith("+f1")


def test_silence_is_trimmed_to_the_fixed_margin(corpus):
    samples, sample_rate = read_wav(corpus / "0011" / "Neutral" / "train" / "0011_000005.wav")
    margin = round(TRIM_MARGIN_S * sample_rate)
    envelope = np.abs(samples)
    sound = np.flatnonzero(envelope > 0.01 * envelope.max())
    # the first and last sound sit at the margin (a few samples of resampling ringing aside)
    assert abs(sound[0] - margin) < 0.01 * sample_rate
    assert abs(len(samples) - 1 - sound[-1] - margin) < 0.01 * sample_rate


def test_manifest_records_prosody_and_a_checksum_of_the_files(corpus):
    manifest = json.loads((corpus / "corpus.json").read_text())
    assert manifest["seed"] == 0 and manifest["settings"]["sample_rate"] == 16000
    assert manifest["emoctl_version"] == emoctl.__version__
    plan = {u.utt_id: u for u in plan_corpus(N_SENTENCES, N_SPEAKERS, 0)}
    assert [u["id"] for u in manifest["utterances"]] == list(plan)
    digests = {}
    for row in manifest["utterances"]:
        assert {k: row[k] for k in ("rate", "pitch", "pitch_range", "volume")} == plan[row["id"]].knobs
        data = (corpus / row["path"]).read_bytes()
        assert row["num_samples"] == (len(data) - 44) // 2
        digests[row["path"]] = hashlib.sha256(data).hexdigest()
        assert row["sha256"] == digests[row["path"]]
    for path in ["speakers.json", "0011/0011.txt", "0012/0012.txt"]:
        digests[path] = hashlib.sha256((corpus / path).read_bytes()).hexdigest()
    lines = "".join(f"{p}\t{digests[p]}\n" for p in sorted(digests))
    assert manifest["checksum"]["value"] == hashlib.sha256(lines.encode()).hexdigest()
    assert not (corpus / ".emoctl-corpus-build.json").exists()


def test_same_seed_is_bit_identical_other_seed_differs(corpus, tmp_path):
    again = build_corpus(str(tmp_path / "again"), n_sentences=N_SENTENCES, speakers=N_SPEAKERS, seed=0,
                         workers=2, progress=False)
    assert tree_bytes(again) == tree_bytes(corpus)
    other = tree_bytes(build_corpus(str(tmp_path / "other"), n_sentences=N_SENTENCES, speakers=N_SPEAKERS, seed=1,
                                    progress=False))
    reference = tree_bytes(corpus)
    assert other.keys() == reference.keys()  # same layout
    wav_paths = [p for p in reference if p.endswith(".wav")]
    assert sum(other[p] != reference[p] for p in wav_paths) == len(wav_paths)  # new sentences and jitter


def test_resume_rebuilds_exactly_the_missing_files(corpus, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(corpus, partial)
    wavs = sorted(partial.rglob("*.wav"))
    deleted = wavs[3::11]
    for path in deleted:
        path.unlink()
    damaged = wavs[5]
    damaged.write_bytes(damaged.read_bytes()[:1000])  # as if cut short by another tool
    stray = damaged.with_name(f".{damaged.name}.999.tmp")
    stray.write_bytes(b"half a file")  # as left by a killed build
    untouched = {p: p.stat().st_mtime_ns for p in wavs if p not in deleted and p != damaged}
    time.sleep(0.01)

    build_corpus(str(partial), n_sentences=N_SENTENCES, speakers=N_SPEAKERS, seed=0, progress=False)

    assert all(p.stat().st_mtime_ns == mtime for p, mtime in untouched.items())  # not rewritten
    assert not stray.exists()
    assert tree_bytes(partial) == tree_bytes(corpus)


def test_resume_after_sigkill_is_bit_identical(corpus, tmp_path):
    root = tmp_path / "killed"
    script = (f"from emoctl.corpus import build_corpus\n"
              f"build_corpus({str(root)!r}, n_sentences={N_SENTENCES}, speakers={N_SPEAKERS}, seed=0, progress=False)")
    process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while len(list(root.rglob("*.wav"))) < 20 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(list(root.rglob("*.wav")))
    assert 20 <= written < N_SPEAKERS * len(EMOTIONS) * N_SENTENCES  # killed mid-way
    assert not (root / "corpus.json").exists()
    build_corpus(str(root), n_sentences=N_SENTENCES, speakers=N_SPEAKERS, seed=0, progress=False)
    assert tree_bytes(root) == tree_bytes(corpus)


def test_root_with_other_settings_or_foreign_files_is_refused(corpus, tmp_path):
    with pytest.raises(ConfigError, match="seed"):
        build_corpus(str(corpus), n_sentences=N_SENTENCES, speakers=N_SPEAKERS, seed=5, progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    (broken / "corpus.json").write_text("{ truncated")
    with pytest.raises(ConfigError, match="corpus.json"):
        build_corpus(str(broken), n_sentences=N_SENTENCES, speakers=N_SPEAKERS, progress=False)
    foreign = tmp_path / "someone_elses_esd"
    foreign.mkdir()
    (foreign / "README.txt").write_text("ESD")
    with pytest.raises(ConfigError, match="not empty"):
        build_corpus(str(foreign), n_sentences=N_SENTENCES, speakers=N_SPEAKERS, progress=False)


@pytest.mark.parametrize("kwargs", [{"n_sentences": 0}, {"n_sentences": 351}, {"speakers": 0}, {"speakers": 99},
                                    {"seed": -1}, {"sample_rate": 100}, {"workers": 0}, {"n_sentences": 2.5}])
def test_bad_build_arguments_are_config_errors(kwargs, tmp_path):
    with pytest.raises(ConfigError):
        build_corpus(str(tmp_path / "c"), **{"progress": False, **kwargs})
    assert not (tmp_path / "c").exists()


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768, wav.getframerate()


def test_emotions_differ_as_intended(corpus):
    """Sad is slower, lower and softer than Angry; Surprise is the highest, on the same sentences."""
    manifest = json.loads((corpus / "corpus.json").read_text())
    by_emotion = {e: {"seconds": [], "f0": [], "rms": []} for e in EMOTIONS}
    for row in manifest["utterances"]:
        if row["speaker"] != "0011":
            continue
        samples, sample_rate = read_wav(corpus / row["path"])
        stats = by_emotion[row["emotion"]]
        stats["seconds"].append(len(samples) / sample_rate)
        stats["f0"].append(median_f0(samples, sample_rate))
        stats["rms"].append(float(np.sqrt(np.mean(samples ** 2))))
    mean = {e: {k: float(np.mean(v)) for k, v in s.items()} for e, s in by_emotion.items()}
    assert mean["Sad"]["seconds"] > 1.2 * mean["Angry"]["seconds"]
    assert mean["Sad"]["f0"] < mean["Neutral"]["f0"] < mean["Surprise"]["f0"]
    assert mean["Surprise"]["f0"] == max(m["f0"] for m in mean.values())
    assert mean["Angry"]["rms"] > 1.5 * mean["Sad"]["rms"]


def test_gaussian_classifier_reaches_the_analytic_bayes_accuracy():
    from scipy.stats import norm

    from emoctl.corpus.ceiling import fit_gaussian_classes, predict_gaussian_classes

    rng = np.random.default_rng(0)
    gap = 1.5  # two unit Gaussians 1.5 apart in the first of two dims: Bayes accuracy Phi(0.75) = 0.773
    labels = rng.integers(0, 2, 40000)
    x = rng.standard_normal((40000, 2)) + np.stack([labels * gap, np.zeros(40000)], 1)
    model = fit_gaussian_classes(x[:20000], labels[:20000], 2)
    accuracy = float(np.mean(predict_gaussian_classes(x[20000:], *model) == labels[20000:]))
    assert accuracy == pytest.approx(norm.cdf(gap / 2), abs=0.01)


def test_prosody_ceiling_of_the_corpus_bounds_the_embedded_recognizer(corpus_root):
    import json as _json

    from emoctl.commands.corpus import prosody_ceiling
    from emoctl.metrics.ser_mini import DEFAULT_MINI_SER_DIR

    result = prosody_ceiling(str(corpus_root))
    confusion = np.asarray(result["confusion"])
    assert confusion.sum() == result["test_utterances"] == 1300
    assert result["accuracy"] == pytest.approx(np.trace(confusion) / 1300)
    ser = _json.loads((DEFAULT_MINI_SER_DIR / "training.json").read_text())["test"]["original"]["accuracy"]
    assert ser <= result["accuracy"] < 1.0  # the classes overlap by design; no recognizer hears more than the knobs
    with pytest.raises(ConfigError, match="test_split"):
        prosody_ceiling(str(corpus_root), test_split="dev")


def test_a_flat_copy_gets_the_same_splits_through_every_reader(tmp_path):
    """One rule for a flat ESD copy (no split folders): read_esd, open_esd, list_corpus_clips (and so the SER
    data module and the mini TTS's codec fitting, which list through it) give every clip the same split."""
    import soundfile

    from emoctl.backbones.mini_tts.tokenize_corpus import iter_corpus_waves
    from emoctl.corpus.esd import FLAT_SPLIT, list_corpus_clips, open_esd, read_esd

    lines = []
    for speaker in ("0011", "0012"):
        for block, emotion in ((0, "Neutral"), (1, "Angry")):
            folder = tmp_path / speaker / emotion
            folder.mkdir(parents=True)
            for n in range(60, 0, -1):  # written in reverse, so order on disk is not id order
                utt = f"{speaker}_{block * 350 + n:06d}"
                soundfile.write(folder / f"{utt}.wav", np.zeros(160, dtype=np.float32), 16000)
                lines.append(f"{utt}\tSentence {n}.\t{emotion}")
        (tmp_path / speaker / f"{speaker}.txt").write_text("\n".join(lines) + "\n")
        lines = []
    by_reader = {u.utt_id: u.split for u in read_esd(tmp_path)}
    assert {u.utt_id: u.split for u in open_esd(tmp_path)} == by_reader
    assert {c.utt_id: c.split for c in list_corpus_clips(tmp_path)} == by_reader
    for split in ("train", "evaluation", "test"):
        listed = list_corpus_clips(tmp_path, split=split)
        assert {c.utt_id for c in listed} == {u for u, s in by_reader.items() if s == split}
    n_eval, n_test = FLAT_SPLIT
    assert sorted(by_reader.values()).count("evaluation") == 4 * n_eval
    assert sorted(by_reader.values()).count("test") == 4 * n_test
    assert by_reader["0011_000001"] == "evaluation" and by_reader["0011_000021"] == "test"
    assert by_reader["0011_000051"] == "train" and by_reader["0012_000351"] == "evaluation"
    assert len(list(iter_corpus_waves(tmp_path, split="train"))) == 4 * (60 - n_eval - n_test)
