"""The mini TTS's speech codec: token layout, prosody through a round trip, persistence, caching, errors.

The codec is fitted once per module on a few dozen short eSpeak NG clips
(32 envelope codes, to stay fast) and checked on sentences it never saw.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile
import torch

from emoctl.backbones.mini_tts.codec import SpeechCodec
from emoctl.backbones.mini_tts.kmeans import kmeans, nearest_centroid
from emoctl.backbones.mini_tts.tokenize_corpus import cache_path, iter_corpus_waves, tokenize_corpus
from emoctl.corpus.esd import list_corpus_clips
from emoctl.corpus.espeak import synthesize
from emoctl.errors import ConfigError

TRAIN_SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Where are we going tomorrow morning?",
                   "Please put the books back on the shelf.", "It was a bright cold day in April.",
                   "We will meet at the station at noon.", "Nobody expected the train to be so late."]
TEST_SENTENCES = ["The children laughed at the clown's tricks.", "I lost my keys somewhere in the garden.",
                  "Dinner will be ready in ten minutes."]
VOICES = ["en-us+m3", "en+f2"]
# quiet-and-low, plain, loud-and-high: the prosody range the codec must keep
PROSODY = [dict(pitch=30, pitch_range=25, volume=60, rate=150), dict(),
           dict(pitch=75, pitch_range=85, volume=160, rate=190)]
N_ENV_CODES = 32


def _clips(sentences: list[str]) -> list[tuple[np.ndarray, int]]:
    return [synthesize(s, v, **p) for s in sentences for v in VOICES for p in PROSODY]


def _f0_track(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """F0 every 5 ms (0 = unvoiced) by DIO + StoneMask: one estimator for original and round trip."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pyworld
    x = wave.astype(np.float64)
    f0, times = pyworld.dio(x, sample_rate, f0_floor=50.0, f0_ceil=600.0, frame_period=5.0)
    return pyworld.stonemask(x, f0, times, sample_rate)


def _mean_f0(wave: np.ndarray, sample_rate: int) -> float:
    f0 = _f0_track(wave, sample_rate)
    return float(f0[f0 > 0].mean())


def _rms(wave: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))


@pytest.fixture(scope="module")
def train_clips():
    return _clips(TRAIN_SENTENCES)


@pytest.fixture(scope="module")
def codec(train_clips):
    return SpeechCodec.fit(train_clips, n_env_codes=N_ENV_CODES, seed=0, progress=False)


@pytest.fixture(scope="module")
def test_clips():
    return _clips(TEST_SENTENCES)


def test_tokens_are_50_per_second_and_in_vocabulary(codec, test_clips):
    assert codec.vocab_size == N_ENV_CODES * 32 and codec.sample_rate == 16000 and codec.frame_rate == 50.0
    for wave, sample_rate in test_clips[:4]:
        tokens = codec.encode(wave, sample_rate)
        seconds = len(wave) / sample_rate
        assert tokens.dtype == torch.int64 and tokens.ndim == 1
        assert abs(len(tokens) - seconds * 50) <= 1.5
        assert int(tokens.min()) >= 0 and int(tokens.max()) < codec.vocab_size
    # speech uses voiced bins and more than a handful of envelope codes
    env, f0_bin = codec.split(codec.encode(*test_clips[0]))
    assert (f0_bin > 0).float().mean() > 0.3 and (f0_bin == 0).any()
    assert len(env.unique()) >= 8


def test_split_join_round_trip(codec):
    tokens = torch.randint(codec.vocab_size, (500,), generator=torch.Generator().manual_seed(0))
    env, f0_bin = codec.split(tokens)
    assert int(env.max()) < codec.n_env_codes and int(f0_bin.max()) < codec.n_f0_bins
    assert torch.equal(codec.join(env, f0_bin), tokens)
    assert int(codec.join(torch.tensor(3), torch.tensor(5))) == 3 * codec.n_f0_bins + 5
    assert torch.equal(codec.join(np.array([1]), np.array([0])), torch.tensor([codec.n_f0_bins]))


def test_f0_bins_order_and_unvoiced(codec):
    hz = np.array([0.0, 1.0, codec.f0_lo * 1.01, 120.0, 200.0, codec.f0_hi * 0.99, 5000.0])
    bins = codec.f0_to_bin(hz)
    assert bins[0] == 0 and bins[1] == 1 and bins[-1] == codec.n_f0_bins - 1
    assert np.all(np.diff(bins[1:]) >= 0)
    inside = hz[2:6]   # a voiced bin decodes to within half a bin step of the input
    step = np.log(codec.f0_hi / codec.f0_lo) / (codec.n_f0_bins - 1)
    assert np.all(np.abs(np.log(codec.bin_to_f0(codec.f0_to_bin(inside)) / inside)) <= step / 2 + 1e-9)
    assert codec.bin_to_f0(np.array([0]))[0] == 0.0


def test_round_trip_keeps_f0_rms_duration_and_voicing_on_held_out_clips(codec, test_clips):
    by_prosody = {i: [] for i in range(len(PROSODY))}     # clip order: sentence, voice, prosody
    for n, (wave, sample_rate) in enumerate(test_clips):
        out, out_rate = codec.decode(codec.encode(wave, sample_rate))
        assert out.dtype == np.float32 and out.ndim == 1 and out_rate == 16000
        f0_in, f0_out = _mean_f0(wave, sample_rate), _mean_f0(out, out_rate)
        assert abs(f0_out / f0_in - 1) < 0.05, (f0_in, f0_out)
        assert abs(_rms(out) / _rms(wave) - 1) < 0.20, (_rms(wave), _rms(out))
        assert abs((len(out) / out_rate) / (len(wave) / sample_rate) - 1) < 0.05
        voiced_in, voiced_out = _f0_track(wave, sample_rate) > 0, _f0_track(out, out_rate) > 0
        frames = min(len(voiced_in), len(voiced_out))
        assert (voiced_in[:frames] == voiced_out[:frames]).mean() > 0.8
        by_prosody[n % len(PROSODY)].append((f0_in, f0_out, _rms(wave), _rms(out)))
    means = np.array([np.mean(v, 0) for v in by_prosody.values()])   # (prosody, 4)
    for column_in, column_out in [(0, 1), (2, 3)]:   # F0, RMS: the settings keep their order
        assert np.array_equal(np.argsort(means[:, column_in]), np.argsort(means[:, column_out]))


def test_higher_pitch_and_louder_setting_survive_round_trip(codec):
    sentence = TEST_SENTENCES[1]
    low, _ = synthesize(sentence, "en-us+m3", pitch=30)
    high, _ = synthesize(sentence, "en-us+m3", pitch=75)
    quiet, _ = synthesize(sentence, "en-us+m3", volume=60)
    loud, sample_rate = synthesize(sentence, "en-us+m3", volume=160)
    f0 = {name: _mean_f0(*codec.decode(codec.encode(w, sample_rate))) for name, w in [("low", low), ("high", high)]}
    rms = {name: _rms(codec.decode(codec.encode(w, sample_rate))[0]) for name, w in [("quiet", quiet), ("loud", loud)]}
    f0_ratio_in = _mean_f0(high, sample_rate) / _mean_f0(low, sample_rate)
    rms_ratio_in = _rms(loud) / _rms(quiet)
    assert f0_ratio_in > 1.3 and rms_ratio_in > 2.0               # the settings differ clearly to begin with
    assert f0["high"] / f0["low"] > 1 + 0.8 * (f0_ratio_in - 1)
    assert rms["loud"] / rms["quiet"] > 1 + 0.7 * (rms_ratio_in - 1)


def test_int16_pcm_encodes_like_its_float_scaling(codec, test_clips):
    wave, sample_rate = test_clips[4]
    pcm = np.round(wave * 32767).astype(np.int16)
    assert torch.equal(codec.encode(pcm, sample_rate), codec.encode(pcm.astype(np.float32) / 32768, sample_rate))


def test_resampled_input_gives_the_same_frame_count(codec, test_clips):
    wave, sample_rate = test_clips[0]
    import soxr
    at_16k = soxr.resample(wave, sample_rate, 16000)
    a, b = codec.encode(wave, sample_rate), codec.encode(at_16k, 16000)
    assert abs(len(a) - len(b)) <= 1
    n = min(len(a), len(b))
    assert (a[:n] == b[:n]).float().mean() > 0.7   # same content, tiny resampling differences


def test_save_load_gives_identical_tokens_and_audio(codec, test_clips, tmp_path):
    codec.save(tmp_path / "codec")
    size = sum(p.stat().st_size for p in (tmp_path / "codec").iterdir())
    assert size < 2_000_000
    loaded = SpeechCodec.load(tmp_path / "codec")
    assert loaded.digest == codec.digest and loaded.vocab_size == codec.vocab_size
    wave, sample_rate = test_clips[2]
    tokens = codec.encode(wave, sample_rate)
    assert torch.equal(loaded.encode(wave, sample_rate), tokens)
    assert np.array_equal(loaded.decode(tokens)[0], codec.decode(tokens)[0])
    # a table changed behind the digest's back is caught
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(tmp_path / "codec" / "codec.safetensors"))
    tensors["log_gain"] = tensors["log_gain"] + 1.0
    save_file(tensors, str(tmp_path / "codec" / "codec.safetensors"))
    with pytest.raises(ConfigError, match="digest"):
        SpeechCodec.load(tmp_path / "codec")
    with pytest.raises(ConfigError, match="No speech codec"):
        SpeechCodec.load(tmp_path / "nowhere")
    # a codec fitted under other analysis constants would give other tokens: refuse it
    codec.save(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "codec.json").read_text())
    config["analysis"]["dio_frame_period_ms"] = 20.0
    (tmp_path / "old" / "codec.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="analysis settings"):
        SpeechCodec.load(tmp_path / "old")


def test_fit_is_deterministic_for_a_seed(train_clips, codec):
    subset = train_clips[::3]
    a = SpeechCodec.fit(subset, n_env_codes=16, seed=3, progress=False)
    b = SpeechCodec.fit(iter(subset), n_env_codes=16, seed=3, progress=False, workers=2)   # generator, 2 processes
    c = SpeechCodec.fit(subset, n_env_codes=16, seed=4, progress=False)
    assert torch.equal(a.env_centroids, b.env_centroids) and torch.equal(a.log_gain, b.log_gain)
    assert a.digest == b.digest
    assert a.digest != c.digest and a.digest != codec.digest


def test_decoded_code_power_is_the_mean_power_of_its_frames(codec, train_clips):
    """A code decodes to the mean *power* of its training frames, not exp(mean log power) (Jensen)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pyworld
    frames = [codec.analyze(w, sr) for w, sr in train_clips]
    codes = np.concatenate([codec.encode_frames(f) // codec.n_f0_bins for f in frames])
    power = np.concatenate([f.power for f in frames])
    counts = np.bincount(codes, minlength=codec.n_env_codes)
    used = np.flatnonzero(counts >= 20)
    assert len(used) >= codec.n_env_codes // 2
    mean_power = np.bincount(codes, weights=power, minlength=codec.n_env_codes)[used] / counts[used]
    decoded_power = pyworld.decode_spectral_envelope(codec.coded_envelope(used), codec.sample_rate,
                                                     codec.fft_size).sum(1)
    np.testing.assert_allclose(np.log(decoded_power), np.log(mean_power), atol=0.02)
    mean_log_power = np.bincount(codes, weights=np.log(power), minlength=codec.n_env_codes)[used] / counts[used]
    assert np.all(codec.log_gain.numpy()[used] >= 0) and float(codec.log_gain[used].max()) > 0.01
    np.testing.assert_allclose(codec.log_gain.numpy()[used], np.log(mean_power) - mean_log_power, atol=0.02)


def _write_corpus(root, clips):
    """A tiny ESD-layout corpus: 2 speakers x 2 emotions x (train, test), wavs at 22050 Hz."""
    i = 0
    for speaker in ("0011", "0012"):
        for emotion in ("Neutral", "Angry"):
            for split in ("train", "test"):
                wave, sample_rate = clips[i]
                folder = root / speaker / emotion / split
                folder.mkdir(parents=True, exist_ok=True)
                soundfile.write(folder / f"{speaker}_{i:06d}.wav", wave, sample_rate, subtype="FLOAT")
                i += 1


def test_corpus_listing_and_fit_iterator(tmp_path, test_clips):
    _write_corpus(tmp_path, test_clips)
    (tmp_path / "0011" / "0011.txt").write_text("ignored\n")
    assert len(list_corpus_clips(tmp_path)) == 8
    train = list_corpus_clips(tmp_path, split="train", emotions=["Angry"])
    assert [(c.speaker, c.emotion, c.split) for c in train] == [("0011", "Angry", "train"), ("0012", "Angry", "train")]
    waves = list(iter_corpus_waves(tmp_path, split="test"))
    assert len(waves) == 4 and all(sr == 22050 for _, sr in waves)
    np.testing.assert_allclose(waves[0][0], test_clips[1][0], atol=1e-7)
    with pytest.raises(ConfigError, match="No clips"):
        list_corpus_clips(tmp_path / "0011")


def test_token_cache_is_reused_and_invalidated(tmp_path, codec, train_clips, test_clips):
    _write_corpus(tmp_path, test_clips)
    tokens = tokenize_corpus(tmp_path, codec, progress=False)
    assert len(tokens) == 8
    clips = list_corpus_clips(tmp_path)
    for clip in clips:
        assert torch.equal(tokens[clip.utt_id], codec.encode(*soundfile.read(clip.path, dtype="float32")))
    cache = cache_path(tmp_path, codec)
    assert cache.is_file() and codec.digest in cache.name

    # Plant different tokens in the cache: a second call must return them, proving it read the cache.
    with np.load(cache) as z:
        planted = {k: z[k] for k in z.files}
    planted["tokens"] = (planted["tokens"] + 1) % codec.vocab_size
    np.savez(cache, **planted)
    reused = tokenize_corpus(tmp_path, codec, progress=False)
    assert all(torch.equal(reused[k], (tokens[k] + 1) % codec.vocab_size) for k in tokens)

    # A re-rendered clip is re-encoded; the others still come from the cache.
    changed = clips[3]
    soundfile.write(changed.path, train_clips[0][0], train_clips[0][1], subtype="FLOAT")
    partly = tokenize_corpus(tmp_path, codec, progress=False)
    assert torch.equal(partly[changed.utt_id], codec.encode(*train_clips[0]))
    assert torch.equal(partly[clips[0].utt_id], reused[clips[0].utt_id])

    # Another codec (another digest) gets its own, freshly computed cache, here with 2 worker processes.
    other = SpeechCodec.fit(train_clips[::2], n_env_codes=16, seed=1, progress=False)
    assert other.digest != codec.digest
    fresh = tokenize_corpus(tmp_path, other, cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert cache_path(tmp_path, other, tmp_path / "cache").is_file()
    for clip in clips:
        assert torch.equal(fresh[clip.utt_id], other.encode(*soundfile.read(clip.path, dtype="float32")))


@pytest.mark.parametrize("wave, sample_rate, message", [
    (np.zeros(0, np.float32), 16000, "empty"),
    (np.array([0.0, np.nan, 0.1] * 1000, np.float32), 16000, "NaN"),
    (np.zeros((16000, 2), np.float32), 16000, "mono"),
    (np.zeros(16000, np.float32), 0, "sample_rate"),
    (np.array(["a", "b"]), 16000, "dtype"),
])
def test_bad_audio_is_a_config_error(codec, wave, sample_rate, message):
    with pytest.raises(ConfigError, match=message):
        codec.encode(wave, sample_rate)


def test_bad_tokens_and_fit_input_are_config_errors(codec):
    with pytest.raises(ConfigError, match="outside"):
        codec.decode(torch.tensor([0, codec.vocab_size]))
    with pytest.raises(ConfigError, match="1-D integer"):
        codec.decode(torch.zeros(3))
    with pytest.raises(ConfigError, match="empty"):
        SpeechCodec.fit([], n_env_codes=4, progress=False)
    with pytest.raises(ConfigError, match="f0_range"):
        SpeechCodec.fit([], f0_range=(300.0, 100.0), progress=False)


def test_kmeans_recovers_separated_clusters_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = centres.repeat_interleave(200, 0) + 0.1 * torch.randn(800, 2, generator=gen)
    result = kmeans(points, 4, seed=0)
    found, _ = nearest_centroid(centres, result.centroids)
    assert len(found.unique()) == 4                                  # one centroid per true cluster
    assert torch.allclose(result.centroids[found], centres, atol=0.05)
    assert result.inertia < 0.05
    assert torch.equal(kmeans(points, 4, seed=0).centroids, result.centroids)
