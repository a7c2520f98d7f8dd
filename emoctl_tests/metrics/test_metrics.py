"""Model-based metrics on real bundled models and eSpeak NG speech: WER, SpkSIM, DNSMOS, SER maths, evaluate."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import stats

from emoctl.corpus.espeak import synthesize
from emoctl.errors import ConfigError
from emoctl.metrics.audio import prepare_clip
from emoctl.metrics.dnsmos import load_dnsmos
from emoctl.metrics.emo_sim import emo_sim_matched, emo_sim_prototype, emotion_prototypes, ser_accuracy
from emoctl.metrics.emotion2vec import Emotion2Vec, map_to_esd
from emoctl.commands.evaluate import evaluate
from emoctl.emotions import ESD_EMOTIONS
from emoctl.metrics.speaker import cosine_to_centroid, load_speaker_encoder
from emoctl.metrics.stats import mean_ci
from emoctl.metrics.wer import corpus_wer, load_asr, normalize_text, number_to_words, word_error_rate
from emoctl_tests.helpers.cli import run_emoctl

torch.set_num_threads(1)

# Sentences eSpeak NG says clearly enough for Whisper tiny.en (measured: 0-17% WER each with en-us+m3).
SENTENCES = ("A large rock fell from the mountain.", "Please bring the red book tomorrow.",
             "I will call you tomorrow morning.", "Give me back my book right now.")


@pytest.fixture(scope="module")
def speech() -> dict[str, list[np.ndarray]]:
    """Each sentence spoken by two eSpeak voices, male en-us+m3 and female en-us+f2 (22050 Hz)."""
    return {voice: [synthesize(s, voice)[0] for s in SENTENCES] for voice in ("en-us+m3", "en-us+f2")}


@pytest.fixture(scope="module")
def whisper():
    return load_asr("whisper")


@pytest.fixture(scope="module")
def encoder():
    return load_speaker_encoder("resemblyzer")


@pytest.fixture(scope="module")
def dnsmos():
    return load_dnsmos()


# ------------------------------------------------------------------------------------------- normalization, WER

@pytest.mark.parametrize("text, expected", [
    ("Hello, World!", "hello world"),
    ("I have 121 apples & 3.14 pies", "i have one hundred twenty one apples and three point one four pies"),
    ("The 21st of May, 1,000 people", "the twenty first of may one thousand people"),
    ("Don't stop \u2014 it\u2019s 50% well-known.", "don't stop it's fifty percent well known"),
    ("2nd 3rd 12th 20th 100th", "second third twelfth twentieth one hundredth"),
    ("  'Quoted'   spaces  ", "quoted spaces"),
    ("The Harbour's woollen Theatre, grey", "the harbour's woolen theater gray"),  # possessive kept as written
    ("In front of the harbour, my neighbours", "in front of the harbor my neighbors"),
])
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_number_to_words():
    assert [number_to_words(n) for n in (0, 13, 40, 99, 1000, 2_000_017)] == [
        "zero", "thirteen", "forty", "ninety nine", "one thousand", "two million seventeen"]
    assert normalize_text("1990") == normalize_text("one thousand nine hundred ninety")


def test_wer_hand_computed():
    # "sat" -> "sit" is a substitution, the second "the" is deleted, "down" is inserted: 3 errors / 6 words.
    assert word_error_rate(["the cat sit on mat down"], ["The cat sat on the mat."]) == [pytest.approx(3 / 6)]
    assert word_error_rate(["Same words, here."], ["same words here"]) == [0.0]
    assert word_error_rate(["Same words, here."], ["same words here"], normalize=False)[0] > 0
    # Pooled: (3 + 1) errors over (6 + 2) words; the mean per clip would be (0.5 + 0.5) / 2.
    pooled = corpus_wer(["the cat sit on mat down", "hello"], ["the cat sat on the mat", "hello world"])
    assert pooled == pytest.approx(4 / 8)
    with pytest.raises(ConfigError, match="clip 1.*no words"):
        word_error_rate(["a", "b"], ["a", " ?! "])


def test_whisper_transcribes_espeak_speech(whisper, speech):
    hyps = whisper.transcribe(speech["en-us+m3"], 22050)
    assert all(isinstance(h, str) and h for h in hyps)
    assert corpus_wer(hyps, SENTENCES) < 0.35  # measured 0.08; eSpeak is hard for tiny.en but far from 100%
    assert word_error_rate([SENTENCES[0]], [SENTENCES[0]]) == [0.0]
    assert load_asr("whisper") is whisper  # one instance per process


def test_whisper_token_cap_cuts_only_what_speech_cannot_hold(whisper, speech):
    from emoctl.metrics.wer import FasterWhisperASR

    assert whisper.max_new_tokens(3 * 16000) == 16 + 24  # 8 tokens a second of 16 kHz audio, plus 16
    assert FasterWhisperASR(max_tokens_per_second=None).max_new_tokens(3 * 16000) is None
    with pytest.raises(ConfigError, match="max_tokens_per_second"):
        FasterWhisperASR(max_tokens_per_second=0)
    # Real speech fits the default cap: the same transcripts as with no cap at all.
    uncapped = FasterWhisperASR(max_tokens_per_second=None)
    uncapped.__dict__["model"] = whisper.model  # the same loaded model, so only the cap differs
    clips = speech["en-us+m3"][:2]
    assert whisper.transcribe(clips, 22050) == uncapped.transcribe(clips, 22050)
    # A cap below what the speech needs does cut it (so the cap really reaches the decoder): four sentences
    # in one clip need about 40 tokens, and a cap of 0.01 a second leaves 17.
    tight = FasterWhisperASR(max_tokens_per_second=0.01)
    tight.__dict__["model"] = whisper.model
    long_clip = [np.concatenate([np.r_[w, np.zeros(4410, np.float32)] for w in speech["en-us+m3"]])]
    full, cut = uncapped.transcribe(long_clip, 22050)[0], tight.transcribe(long_clip, 22050)[0]
    assert 0 < len(cut.split()) < len(full.split()) - 5, (cut, full)


def test_pocketsphinx_transcribes_espeak_speech(speech):
    asr = load_asr("pocketsphinx")
    hyps = asr.transcribe(speech["en-us+f2"][:3], 22050)
    assert corpus_wer(hyps, SENTENCES[:3]) < 0.8  # measured 0.45: weak, but it hears words


def test_whisper_model_dir_errors(tmp_path):
    tone = (0.1 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)).astype(np.float32)  # not silence, not DC
    with pytest.raises(ConfigError, match="does not exist"):
        load_asr("whisper", str(tmp_path / "nowhere")).transcribe([tone], 16000)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="no model.bin.*ct2-transformers-converter"):
        load_asr("whisper", str(tmp_path)).transcribe([tone], 16000)


# ------------------------------------------------------------------------------------------- speaker, DNSMOS

def test_speaker_similarity_separates_voices(encoder, speech):
    male = encoder.embed(speech["en-us+m3"], 22050)  # (4, 256)
    female = encoder.embed(speech["en-us+f2"], 22050)
    assert male.shape == (4, 256) and torch.allclose(male.norm(dim=1), torch.ones(4))
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    same = torch.cat([(male @ male.T)[off_diagonal], (female @ female.T)[off_diagonal]]).mean()  # different texts
    cross = (male @ female.T)[off_diagonal].mean()
    assert same > cross + 0.1  # measured 0.79 vs 0.58
    # SpkSIM of a clip against its voice's other clips beats the other voice's clips.
    assert cosine_to_centroid(male[:1], male[1:]) > cosine_to_centroid(male[:1], female[1:])


def test_dnsmos_clean_beats_noisy_and_matches_reference_script(dnsmos, speech):
    clean = speech["en-us+m3"][0]
    noisy = np.clip(clean + 0.05 * np.random.default_rng(0).standard_normal(clean.size), -1, 1).astype(np.float32)
    good, bad = dnsmos([clean, noisy], 22050)
    assert 1.0 <= bad.ovrl < good.ovrl - 0.5 and bad.bak < good.bak - 1.0  # measured 2.82 vs 1.80, 3.64 vs 1.65
    assert all(1.0 <= v <= 5.0 for v in good.to_row().values())
    # The same ONNX models through speechmos's own scoring loop give the same numbers.
    import speechmos.dnsmos

    clean_16k = prepare_clip(clean, 22050, target_rate=16000)
    reference = speechmos.dnsmos.run(clean_16k, 16000)
    ours = dnsmos([clean_16k], 16000)[0]
    assert ours.ovrl == pytest.approx(reference["ovrl_mos"], abs=1e-4)
    assert ours.p808 == pytest.approx(float(reference["p808_mos"]), abs=1e-3)


# ------------------------------------------------------------------------------------------- bad audio

BAD_CLIPS = {
    "empty": (np.zeros(0, np.float32), 16000, "shorter than"),
    "zeros": (np.zeros(16000, np.float32), 16000, "every sample is zero"),
    "nan": (np.full(16000, np.nan, np.float32), 16000, "NaN or infinite"),
    "stereo": (np.full((2, 16000), 0.1, np.float32), 16000, "mono audio.*shape \\(2, 16000\\)"),
    "3-d": (np.full((1, 1, 16000), 0.1, np.float32), 16000, "mono audio"),
    "1 kHz": (np.full(1000, 0.1, np.float32), 1000, "1000 Hz is outside"),
}


@pytest.mark.parametrize("case", list(BAD_CLIPS))
def test_bad_audio_gives_a_clear_error_in_every_metric(case, whisper, encoder, dnsmos):
    wave, rate, message = BAD_CLIPS[case]
    for metric in (whisper.transcribe, encoder.embed, dnsmos):
        with pytest.raises(ConfigError, match=f"bad.wav: .*{message}"):
            metric([wave], rate, names=["bad.wav"])


def test_a_dc_only_clip_counts_as_silence_in_every_metric(whisper, encoder, dnsmos):
    """A constant offset holds no sound however far from zero it sits: silence is judged after removing the
    clip's mean, so a stuck vocoder's DC output is refused as an all-zero one is, while quiet speech is kept."""
    dc = np.full(16000, 0.25, np.float32)
    dithered = dc + np.float32(1e-6) * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    pcm = np.full(16000, -3000, np.int16)  # a DC offset in 16-bit PCM
    for wave in (dc, dithered, pcm):
        for metric in (whisper.transcribe, encoder.embed, dnsmos):
            with pytest.raises(ConfigError, match=r"dc.wav: every sample is within one 16-bit step of the clip's "
                                                  r"mean -?0\.\d+ \(a constant DC offset: silence\)"):
                metric([wave], 16000, names=["dc.wav"])
    quiet = (0.25 + 0.001 * np.sin(np.arange(16000) / 3)).astype(np.float32)  # -60 dBFS of signal on the offset
    assert prepare_clip(quiet, 16000).shape == (16000,)


def test_whisper_transcribes_a_clip_longer_than_its_window_in_windows(whisper, speech):
    """A clip longer than Whisper's 30 s window is decoded window by window with a budget per window: 70 s of
    speech is transcribed to its end, and no clip length asks for more tokens than Whisper's context holds."""
    from emoctl.metrics.wer import MAX_WINDOW_TOKENS

    gap = np.zeros(11025, np.float32)  # 0.5 s at 22050 Hz
    block = np.concatenate([np.r_[w, gap] for w in speech["en-us+m3"]])
    repeats = int(np.ceil(70 * 22050 / block.size))
    long_clip = np.concatenate([block] * repeats)
    assert long_clip.size / 22050 > 60  # 16 + 8 tokens a second of it is more than Whisper's 448
    assert whisper.max_new_tokens(10 * 60 * 16000) == MAX_WINDOW_TOKENS  # a 10-minute clip: 224 per window
    hypothesis = whisper.transcribe([long_clip], 22050)[0]
    reference = " ".join(SENTENCES * repeats)
    assert corpus_wer([hypothesis], [reference]) < 0.5, hypothesis
    last_words = normalize_text(SENTENCES[-1]).split()[-3:]
    assert " ".join(last_words) in normalize_text(hypothesis)[-200:], hypothesis  # the last window was decoded


def test_prepare_clip_accepts_column_vectors_and_pcm():
    pcm = (np.sin(np.arange(8000) / 5) * 16384).astype(np.int16)
    out = prepare_clip(pcm[:, None], 8000, target_rate=16000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    assert np.abs(out).max() == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------------------------------------------------- SER maths

def test_map_to_esd_renormalizes_the_five_mapped_classes():
    probs = torch.tensor([[0.10, 0.20, 0.05, 0.30, 0.10, 0.05, 0.10, 0.05, 0.05],  # angry .. unknown
                          [0.00, 0.50, 0.50, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00]])  # only dropped classes
    mapped = map_to_esd(probs)
    kept = torch.tensor([0.10, 0.10, 0.30, 0.10, 0.05])  # Neutral, Angry, Happy, Sad, Surprise
    assert torch.allclose(mapped[0], kept / 0.65)
    assert torch.allclose(mapped[1], torch.full((5,), 0.2))
    # funasr's "中文/english" labels in another order map by name, not by position.
    order = [4, 0, 1, 2, 3, 5, 6, 7, 8]
    names = ["中立/neutral", "生气/angry", "厌恶/disgusted", "恐惧/fearful", "开心/happy", "其他/other", "难过/sad",
             "吃惊/surprised", "<unk>"]
    assert torch.allclose(map_to_esd(probs[:, order], names), mapped)
    with pytest.raises(ConfigError, match="shape"):
        map_to_esd(torch.ones(2, 5))


def test_emotion2vec_errors_name_the_folder_and_the_package(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path / 'missing'} does not exist"):
        Emotion2Vec(tmp_path / "missing")
    with pytest.raises(ConfigError, match="lacks config.yaml, model.pt, tokens.txt"):
        Emotion2Vec(tmp_path)  # funasr is installed (make install); the folder is checked before it reads it


def test_ser_accuracy_with_wilson_interval():
    estimate = ser_accuracy(["Angry", "Happy", "Sad", "Sad"], ["Angry", "Happy", "Sad", "Neutral"], ESD_EMOTIONS)
    reference = stats.binomtest(3, 4).proportion_ci(confidence_level=0.95, method="wilson")
    assert (estimate.value, estimate.n) == (0.75, 4)
    assert (estimate.low, estimate.high) == pytest.approx((reference.low, reference.high))
    with pytest.raises(ConfigError, match="Calm"):
        ser_accuracy(["Angry"], ["Calm"], ESD_EMOTIONS)


def test_emo_sim_matched_and_prototype():
    generated = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    references = torch.tensor([[1.0, 1.0], [0.0, 1.0], [float("nan"), float("nan")]])
    matched = emo_sim_matched(generated, references, "rec")
    assert matched.mode == "matched" and matched.label == "emo_sim_matched"
    assert matched.values[:2].tolist() == pytest.approx([1 / math.sqrt(2), 1.0]) and math.isnan(matched.values[2])
    assert matched.summary().n == 2
    prototypes = emotion_prototypes(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), ["Angry", "Angry", "Sad"])
    assert torch.allclose(prototypes["Angry"], torch.tensor([0.5, 0.5]))
    proto = emo_sim_prototype(generated, ["Angry", "Sad", "Happy"], prototypes, "rec")
    assert proto.mode == "prototype"
    assert proto.values[:2].tolist() == pytest.approx([1 / math.sqrt(2), 1.0]) and math.isnan(proto.values[2])


def test_mean_ci_matches_t_interval_and_drops_nan():
    values = [0.1, 0.4, 0.2, float("nan"), 0.3]
    estimate = mean_ci(values)
    low, high = stats.t.interval(0.95, 3, loc=0.25, scale=stats.sem([0.1, 0.4, 0.2, 0.3]))
    assert (estimate.value, estimate.n, estimate.n_dropped) == (pytest.approx(0.25), 4, 1)
    assert (estimate.low, estimate.high) == pytest.approx((low, high))
    assert mean_ci(values, bounds=(0.2, 0.3)).low == 0.2


# ------------------------------------------------------------------------------------------- emoctl evaluate

def _write_clips(root: Path) -> list[dict]:
    """Two speakers x two sentences; references are the same sentence at another pitch."""
    rows = []
    for speaker, voice in (("0011", "en-us+m3"), ("0012", "en-us+f2")):
        for index, (text, emotion) in enumerate(zip(SENTENCES[:2], ("Neutral", "Happy"))):
            name = f"{speaker}_{index}"
            sf.write(root / f"{name}.wav", synthesize(text, voice)[0], 22050)
            sf.write(root / f"{name}_ref.wav", synthesize(text, voice, pitch=60)[0], 22050)
            rows.append({"clip": f"{name}.wav", "text": text, "speaker": speaker, "target_emotion": emotion,
                         "reference": f"{name}_ref.wav"})
    return rows


def test_evaluate_end_to_end_through_the_cli(tmp_path):
    audio, out = tmp_path / "audio", tmp_path / "out"
    audio.mkdir()
    rows = _write_clips(audio)
    (audio / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_emoctl("evaluate", "--audio", str(audio), "--manifest", str(audio / "manifest.jsonl"),
                        "--out", str(out), "--threads", "1", "--ser", "mini")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out / "clips.csv", newline="") as stream:
        table = list(csv.DictReader(stream))
    assert [r["clip"] for r in table] == [r["clip"] for r in rows]
    for row in table:
        assert 0.0 <= float(row["wer"]) <= 0.5, row
        assert 0.6 < float(row["spk_sim"]) <= 1.0, row  # same voice as its references (measured 0.92)
        for key in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"):
            assert 1.0 <= float(row[key]) <= 5.0, (key, row)
    summary = (out / "summary.md").read_text()
    assert "| SpkSIM | 0." in summary and "| DNSMOS OVRL |" in summary and "faster-whisper:tiny.en" in summary
    assert "SER accuracy" in summary and "| Happy | 2 |" in summary
    assert sorted(p.name for p in out.iterdir()) == ["clips.csv", "summary.md"]  # no temporary files left

    # SER and Emo-SIM go through the reports' scoring path: recomputed here from the recognizer itself, each row's
    # matched Emo-SIM is against its own reference and its prototype is the mean of its emotion's references.
    from emoctl.commands.evaluate import _load_audio
    from emoctl.metrics.loading import load_recognizer

    recognizer = load_recognizer("mini", None)
    waves = {name: _load_audio(audio, name) for r in rows for name in (r["clip"], r["reference"])}
    result_of = {name: recognizer([wave], 16000) for name, wave in waves.items()}
    embedding = {name: res.embeddings[0] for name, res in result_of.items()}
    for row, written in zip(rows, table):
        own = result_of[row["clip"]]
        assert written["predicted"] == own.predicted()[0]
        assert float(written["ser_hit"]) == float(own.predicted()[0] == row["target_emotion"])
        assert float(written["p_target"]) == pytest.approx(float(own.prob_of(row["target_emotion"])[0]), abs=1e-5)
        matched = torch.nn.functional.cosine_similarity(embedding[row["clip"]], embedding[row["reference"]], dim=0)
        assert float(written["emo_sim_matched"]) == pytest.approx(float(matched), abs=1e-5)
        prototype = torch.stack([embedding[r["reference"]] for r in rows
                                 if r["target_emotion"] == row["target_emotion"]]).mean(0)
        expected = torch.nn.functional.cosine_similarity(embedding[row["clip"]], prototype, dim=0)
        assert float(written["emo_sim_prototype"]) == pytest.approx(float(expected), abs=1e-5)


def test_a_manifest_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Spreadsheet programs save CSV with a UTF-8 byte order mark; it must not rename the first column."""
    from emoctl.commands.evaluate import read_manifest

    csv_path, jsonl_path = tmp_path / "manifest.csv", tmp_path / "manifest.jsonl"
    csv_path.write_bytes("clip,text,speaker,target_emotion\nc0.wav,Hello there.,0011,Angry\n".encode("utf-8-sig"))
    jsonl_path.write_bytes((json.dumps({"clip": "c0.wav", "text": "Hello there.", "speaker": "0011",
                                        "target_emotion": "Angry"}) + "\n").encode("utf-8-sig"))
    for path in (csv_path, jsonl_path):
        rows = read_manifest(path)
        assert [(r.clip, r.text, r.speaker, r.target_emotion) for r in rows] == [
            ("c0.wav", "Hello there.", "0011", "Angry")], path
    csv_path.write_bytes(b"clip,text\n\xff\xfe,x\n")
    with pytest.raises(ConfigError, match="manifest.csv is not UTF-8 text"):
        read_manifest(csv_path)


def test_evaluate_rejects_bad_input_before_loading_models(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.wav", synthesize("Hello there.", "en-us+m3")[0], 22050)
    sf.write(audio / "silent.wav", np.zeros(22050, np.float32), 22050)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("clip,text,speaker,target_emotion,reference\n"
                        "good.wav,Hello there.,0011,Neutral,\nsilent.wav,Hello there.,0011,Happy,good.wav\n")
    with pytest.raises(ConfigError, match="silent.wav: every sample is zero"):
        evaluate(audio, manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    manifest.write_text("clip,text,speaker\ngood.wav,Hello there.,0011\n")
    with pytest.raises(ConfigError, match="manifest.csv:2: missing or empty target_emotion"):
        evaluate(audio, manifest, tmp_path / "out")
    manifest.write_text("clip,text,speaker,target_emotion\ngood.wav,Hello there.,0011,Neutral\n")
    result = run_emoctl("evaluate", "--audio", str(audio), "--manifest", str(manifest), "--out", str(tmp_path / "o"),
                        "--ser", "emotion2vec", "--ser_model_dir", str(tmp_path / "e2v"))
    assert result.returncode == 1 and "e2v does not exist" in result.stderr.replace("\n", " ")


