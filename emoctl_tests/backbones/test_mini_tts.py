"""The mini TTS backbone: probabilities, cached and batched generation, hooks, persistence, errors, training.

Tiny configs with random weights and random tokens; no corpus needed (the data
module test writes a few short tones in ESD layout).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from data_modules.tts_corpus import LengthBucketSampler, TTSBatch, TTSCorpusDataModule
from emoctl.backbones import Phase, Prompt
from emoctl.backbones.mini_tts import CharTokenizer, MiniTTS, MiniTTSConfig
from emoctl.backbones.mini_tts.codec import SpeechCodec
from emoctl.backbones.mini_tts.module import MiniTTSModule
from emoctl.training import OptimizerConfig, warmup_then_decay
from emoctl.errors import ConfigError
from emoctl_tests.helpers.tiny_tts import (
    EMOTIONS, PROMPTS, SPEAKERS, TINY, EmotionPatternData, batches, pattern, random_codec, random_tts,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tts() -> MiniTTS:
    return random_tts()


def random_targets(n: int, lengths: list[int], vocab: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (length,), generator=g) for length in lengths[:n]]


# ------------------------------------------------------------------ probabilities
def test_teacher_forced_logits_are_log_probabilities_and_ce_is_env_plus_f0_ce(tts):
    targets = random_targets(4, [7, 3, 12, 1], tts.stop_token)
    out = tts.teacher_forced(PROMPTS, targets)
    B, T, V = out.logits.shape
    assert (B, T, V) == (4, 13, 6 * 4 + 1) and V == tts.vocab_size
    assert torch.allclose(out.logits.logsumexp(-1), torch.zeros(B, T), atol=1e-5)
    # Targets: the tokens, then STOP, then ignored padding.
    assert out.targets[1].tolist() == [*targets[1].tolist(), tts.stop_token] + [-100] * 9

    # The same quantity from the two heads' raw logits, with torch's cross-entropy on each head.
    lm = tts.lm
    captured = {}
    with tts.hooks.add_reader("lm_out", lambda x, ctx: captured.setdefault("h", x.clone()), phases=None):
        tts.teacher_forced(PROMPTS, targets)
    h = captured["h"]  # (B, T, d)
    env_logits, f0_logits = lm.env_head(h), lm.f0_head(h)
    valid = out.targets != -100
    stop = out.targets == tts.stop_token
    tok = out.targets[valid & ~stop]
    env_t = torch.where(stop, 6, out.targets.clamp(min=0) // 4)[valid]
    env_sum = F.cross_entropy(env_logits[valid], env_t, reduction="sum")
    f0_sum = F.cross_entropy(f0_logits[valid & ~stop], tok % 4, reduction="sum")
    expected = (env_sum + f0_sum) / valid.sum()
    assert torch.allclose(out.loss(), expected, atol=1e-5)
    assert out.loss() > 0.5  # a random model is far from certain; guards against a degenerate comparison


def test_factorized_nll_equals_gather_on_joint_log_probs(tts):
    targets = random_targets(4, [5, 9, 2, 4], tts.stop_token, seed=3)
    speech, lengths = tts.pad_targets(targets)
    out = tts.teacher_forced_factors(PROMPTS, speech, lengths)
    joint = tts.lm.token_log_probs(out.env_logp, out.f0_logp)
    valid = out.targets != -100
    direct = -joint.gather(-1, out.targets.clamp(min=0)[..., None]).squeeze(-1) * valid
    assert torch.allclose(tts.lm.nll(out.env_logp, out.f0_logp, out.targets), direct, atol=1e-6)


# ------------------------------------------------------------------- generation
def greedy_by_recomputation(tts: MiniTTS, prompt: Prompt, max_new: int) -> list[int]:
    """Reference decoder: no cache, the whole sequence re-run through teacher_forced at every step."""
    tokens: list[int] = []
    for _ in range(max_new):
        with torch.no_grad():
            logits = tts.teacher_forced([prompt], [torch.tensor(tokens, dtype=torch.long)]).logits
        nxt = int(logits[0, len(tokens)].argmax())
        if nxt == tts.stop_token:
            break
        tokens.append(nxt)
    return tokens


def test_kv_cached_greedy_equals_recomputing_the_full_sequence():
    tts = random_tts(seed=1, dtype=torch.float64)
    lengths = []
    for prompt in PROMPTS:
        cached = tts.generate([prompt], max_new_tokens=25, temperature=0).tokens[0].tolist()
        assert cached == greedy_by_recomputation(tts, prompt, 25)
        lengths.append(len(cached))
    assert min(lengths) < 25 and max(lengths) == 25  # covers rows that stop and rows cut by the budget


def test_batched_greedy_equals_one_prompt_at_a_time():
    tts = random_tts(seed=2, dtype=torch.float64)
    batched = tts.generate(PROMPTS, max_new_tokens=30, temperature=0)
    singles = [tts.generate([p], max_new_tokens=30, temperature=0) for p in PROMPTS]
    assert [t.tolist() for t in batched.tokens] == [s.tokens[0].tolist() for s in singles]
    assert batched.finished == [s.finished[0] for s in singles]
    assert batched.prefill_lengths == [len(CharTokenizer().encode(p.text)) + 3 for p in PROMPTS]
    assert len({tuple(t.tolist()) for t in batched.tokens}) == len(PROMPTS)


def test_sampling_is_seeded_and_top_k_1_is_greedy(tts):
    a = tts.generate(PROMPTS, max_new_tokens=20, temperature=1.0, seed=7)
    b = tts.generate(PROMPTS, max_new_tokens=20, temperature=1.0, seed=7)
    c = tts.generate(PROMPTS, max_new_tokens=20, temperature=1.0, seed=8)
    assert [t.tolist() for t in a.tokens] == [t.tolist() for t in b.tokens]
    assert [t.tolist() for t in a.tokens] != [t.tolist() for t in c.tokens]
    greedy = tts.generate(PROMPTS, max_new_tokens=20, temperature=0)
    top1 = tts.generate(PROMPTS, max_new_tokens=20, temperature=1.3, top_k=1, seed=3)
    assert [t.tolist() for t in top1.tokens] == [t.tolist() for t in greedy.tokens]
    for tokens, done in zip(a.tokens, a.finished):
        assert done or len(tokens) == 20
        assert tokens.numel() == 0 or int(tokens.max()) < tts.stop_token


def test_generation_budget_is_capped_by_the_position_table(tts):
    with torch.no_grad():
        bias = tts.lm.env_head.bias[-1].item()
        tts.lm.env_head.bias[-1] = -1e4  # never stop
        try:
            out = tts.generate(PROMPTS[:2], max_new_tokens=1000, temperature=0)
        finally:
            tts.lm.env_head.bias[-1] = bias
    assert [len(t) for t in out.tokens] == [TINY["max_speech_tokens"]] * 2 and out.finished == [False, False]


# ------------------------------------------------------------------------ hooks
def test_decode_hooks_fire_once_per_step_with_one_position_and_prefill_once(tts):
    decode_calls, prefill_calls = [], []
    d = tts.hidden_size

    def on_decode(x, ctx):
        decode_calls.append((tuple(x.shape), ctx.step, ctx.active.clone()))

    def on_prefill(x, ctx):
        prefill_calls.append(tuple(x.shape))

    with tts.hooks.add_reader("resid_pre.1", on_decode), \
            tts.hooks.add_reader("resid_pre.1", on_prefill, phases=[Phase.PREFILL]), \
            tts.hooks.add_reader("lm_out", on_prefill, phases=[Phase.PREFILL]):
        out = tts.generate(PROMPTS, max_new_tokens=30, temperature=0)
    lengths = [len(t) for t in out.tokens]
    # Decode step k feeds token k; it runs while some row has a token k and needs its successor.
    n_steps = max(n + done for n, done in zip(lengths, out.finished)) - 1
    assert [c[1] for c in decode_calls] == list(range(n_steps))
    assert all(shape == (4, 1, d) for shape, _, _ in decode_calls)
    for shape, step, active in decode_calls:
        assert active.tolist() == [step < n for n in lengths]
    prefix = max(out.prefill_lengths)
    assert prefill_calls == [(4, prefix, d), (4, 1, d)]  # resid_pre.1 sees the prompt, lm_out the last position
    assert not tts.hooks.has_hooks()


def test_resid_pre_in_teacher_forcing_equals_output_hidden_states(tts):
    targets = random_targets(4, [6, 2, 9, 4], tts.stop_token, seed=5)
    seen = {}
    handles = [tts.hooks.add_reader(f"resid_pre.{i}", lambda x, ctx: seen.__setitem__(ctx.hookpoint, x.clone()),
                                    phases=[Phase.TEACHER_FORCED]) for i in range(tts.num_layers)]
    with torch.no_grad():
        tts.teacher_forced(PROMPTS, targets)
        enc = tts.encode_prompts(PROMPTS)
        speech, lengths = tts.pad_targets(targets)
        embeds = torch.cat([tts.lm.embed_prefix(enc.speaker_ids, enc.emotion_ids, enc.text_ids, enc.text_mask),
                            tts.lm.embed_speech(speech)], dim=1)
        mask = torch.cat([enc.prefix_mask(), torch.ones_like(speech)], dim=1)
        reference = tts.lm.gpt(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
    for h in handles:
        h.remove()
    assert enc.padded  # the comparison covers the masked (left-padded) case
    for i in range(tts.num_layers):
        assert torch.equal(seen[f"resid_pre.{i}"], reference.hidden_states[i])
    assert not torch.equal(reference.hidden_states[1], reference.hidden_states[2])


def test_lm_out_writer_steers_generation_and_decode_gating_spares_the_prefill(tts):
    base = tts.generate(PROMPTS, max_new_tokens=15, temperature=0)
    direction = torch.randn(tts.hidden_size, generator=torch.Generator().manual_seed(0)) * 10
    with tts.hooks.add_writer("lm_out", lambda x, ctx: x + direction):  # decode only
        steered = tts.generate(PROMPTS, max_new_tokens=15, temperature=0)
    assert [t[:1].tolist() for t in steered.tokens] == [t[:1].tolist() for t in base.tokens]  # 1st token: prefill
    assert [t.tolist() for t in steered.tokens] != [t.tolist() for t in base.tokens]


# -------------------------------------------------------------------- persistence
def test_save_load_reproduces_logits_ids_and_codec(tmp_path):
    codec = random_codec()
    tts = random_tts(seed=4, codec=codec)
    tts.metadata = {"corpus": {"seed": 3}}
    folder = tts.save(tmp_path / "model")
    loaded = MiniTTS.load(folder)
    targets = random_targets(4, [4, 8, 1, 3], tts.stop_token, seed=9)
    with torch.no_grad():
        assert torch.equal(tts.teacher_forced(PROMPTS, targets).logits, loaded.teacher_forced(PROMPTS, targets).logits)
    assert loaded.backbone_id == tts.backbone_id and loaded.backbone_id.startswith("mini-tts@")
    assert loaded.speakers == SPEAKERS and loaded.emotions == EMOTIONS and loaded.metadata == tts.metadata
    assert loaded.codec.digest == codec.digest and not any(p.requires_grad for p in loaded.parameters())
    config = json.loads((folder / "config.json").read_text())
    assert config["codec_digest"] == codec.digest and config["model"]["d_model"] == 32
    wave, rate = loaded.vocode(torch.tensor([1, 5, 9, 13, 22, 23, 2, 7]), Prompt("hi", "0012", "Angry"))
    assert rate == 16000 and wave.dtype == np.float32 and abs(len(wave) / rate - 8 / 50) < 0.03
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0
    assert (tmp_path / "model").is_dir() and not list(tmp_path.glob(".*partial"))
    # A different model gets a different id.
    assert random_tts(seed=5).backbone_id != tts.backbone_id


# ------------------------------------------------------------------------ errors
def test_bad_prompts_and_hookpoints_raise_config_errors_naming_the_value(tts):
    with pytest.raises(ConfigError, match=r"'0099'.*0011, 0012"):
        tts.generate([Prompt("hi", "0099", "Angry")], max_new_tokens=2)
    with pytest.raises(ConfigError, match=r"'Bored'.*Neutral, Angry, Sad"):
        tts.teacher_forced([Prompt("hi", "0011", "Bored")], [torch.tensor([1])])
    with pytest.raises(ConfigError, match="empty text"):
        tts.generate([Prompt("   ", "0011", "Angry")], max_new_tokens=2)
    with pytest.raises(ConfigError, match=r"\['#', '@'\]"):
        tts.generate([Prompt("mail @ 5 #", "0011", "Angry")], max_new_tokens=2)
    with pytest.raises(ConfigError, match="resid_pre.3"):
        tts.hooks.add_reader("resid_pre.3", lambda x, ctx: None)  # 3 blocks: resid_pre.0 .. resid_pre.2
    with pytest.raises(ConfigError, match=r"outside \[0, 24\)"):
        tts.teacher_forced(PROMPTS[:1], [torch.tensor([3, 24])])
    with pytest.raises(ConfigError, match="max_text_tokens=40"):
        tts.generate([Prompt("a" * 41, "0011", "Angry")], max_new_tokens=2)


def test_bad_checkpoints_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no MiniTTS checkpoint folder"):
        MiniTTS.load(tmp_path / "nowhere")
    folder = random_tts().save(tmp_path / "model")
    (folder / "model.safetensors").rename(tmp_path / "weights")
    with pytest.raises(ConfigError, match="lacks model.safetensors"):
        MiniTTS.load(folder)
    (tmp_path / "weights").rename(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["model"]["d_model"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="do not match the model described"):
        MiniTTS.load(folder)
    config["model"]["d_model"] = 32
    config["speakers"] = ["0011", "0012", "0013"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="speaker_embedding"):
        MiniTTS.load(folder)


# ---------------------------------------------------------------------- training
def test_training_through_lightning_learns_emotion_dependent_tokens_and_exports(tmp_path):
    import lightning.pytorch as pl

    from emoctl.callbacks.export import export_callbacks

    pl.seed_everything(0, verbose=False)
    module = MiniTTSModule(model=MiniTTSConfig(**{**TINY, "n_layer": 2, "dropout": 0.0}), speakers=SPEAKERS,
                           emotions=EMOTIONS,
                           optimizer=OptimizerConfig(lr=3e-3, betas=(0.9, 0.98), weight_decay=0.01, warmup_steps=20,
                                                     min_lr_fraction=0.05), export_dir=str(tmp_path / "export"))
    val = batches(EmotionPatternData(48, seed=1), 48, shuffle=False)
    with torch.no_grad():
        start = module._losses(next(iter(val)))["loss"].item()
    trainer = pl.Trainer(accelerator="cpu", max_steps=250, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         val_check_interval=250, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                         callbacks=export_callbacks(module))
    trainer.fit(module, train_dataloaders=batches(EmotionPatternData(256, seed=0), 16, shuffle=True), val_dataloaders=val)
    final = trainer.callback_metrics["val/loss"].item()
    assert start > math.log(25) - 0.7  # near uniform over 24 tokens + STOP at the start
    assert final < 0.1 * start, (start, final)
    assert trainer.callback_metrics["val/env_acc"] > 0.95 and trainer.callback_metrics["val/f0_acc"] > 0.95
    # The exported folder loads and speaks each emotion's pattern, then stops.
    tts = MiniTTS.load(tmp_path / "export")
    prompts = [Prompt("two five one", "0012", e) for e in EMOTIONS]
    out = tts.generate(prompts, max_new_tokens=20, temperature=0)
    assert [t.tolist() for t in out.tokens] == [pattern(e).tolist() for e in range(3)]
    assert out.finished == [True, True, True]
    meta = json.loads((tmp_path / "export" / "config.json").read_text())["metadata"]
    assert meta["training"]["global_step"] == 250 and meta["training"]["hparams"]["optimizer"]["lr"] == 3e-3


def test_warmup_then_cosine_and_linear_decay():
    cos = warmup_then_decay(10, 110, "cosine", 0.1)
    lin = warmup_then_decay(10, 110, "linear", 0.0)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0) and cos(10) == pytest.approx(1.0)
    assert cos(60) == pytest.approx(0.55) and cos(110) == pytest.approx(0.1)
    assert lin(60) == pytest.approx(0.5) and lin(500) == pytest.approx(0.0)


# ------------------------------------------------------------------ data module
def write_tiny_corpus(root: Path) -> dict[str, str]:
    """2 speakers x 2 emotions x (3 train + 1 evaluation) tones of 0.2-0.4 s; one transcript in UTF-16."""
    import soundfile

    texts = {}
    for s, speaker in enumerate(["0011", "0012"]):
        lines = []
        for e, emotion in enumerate(["Neutral", "Angry"]):
            for k, split in enumerate(["train", "train", "train", "evaluation"]):
                utt = f"{speaker}_{e * 350 + k + 1:06d}"
                seconds = 0.2 + 0.1 * (k % 3)
                t = np.arange(int(16000 * seconds)) / 16000
                wave = 0.3 * np.sin(2 * np.pi * (120 + 40 * e + 20 * s) * t) * np.hanning(len(t))
                folder = root / speaker / emotion / split
                folder.mkdir(parents=True, exist_ok=True)
                soundfile.write(folder / f"{utt}.wav", wave.astype(np.float32), 16000)
                texts[utt] = f"Sentence {k} \u2014 it\u2019s {emotion.lower()}."
                lines.append(f"{utt}\t{texts[utt]}\t{emotion}")
        (root / speaker / f"{speaker}.txt").write_bytes(
            "\n".join(lines).encode("utf-16" if speaker == "0012" else "utf-8"))
    (root / "corpus.json").write_text(json.dumps({"seed": 11}))
    return texts


def test_corpus_data_module_reads_texts_tokens_and_shares_batches_by_rank(tmp_path):
    texts = write_tiny_corpus(tmp_path / "corpus")
    random_codec().save(tmp_path / "codec")
    dm = TTSCorpusDataModule(str(tmp_path / "corpus"), str(tmp_path / "codec"), batch_size=2, bucket_batches=2)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_items) == 12 and len(dm.val_items) == 4
    for prompt, tokens in zip(dm.train_items.prompts, dm.train_items.tokens):
        assert prompt.text == texts[prompt.utt_id] and prompt.speaker == prompt.utt_id[:4]
        seconds = 0.2 + 0.1 * ((int(prompt.utt_id[-3:]) - 1) % 350 % 3)
        assert len(tokens) == int(seconds * 50) + 1 and int(tokens.max()) < 24
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, TTSBatch) and batch.speech.shape == (2, int(batch.speech_lengths.max()))
    assert dm.describe()["corpus_records"] == {"corpus.json": {"seed": 11}}
    # Every rank gets equal, disjoint shares; epochs reorder; val keeps every clip on one rank.
    lengths = [len(t) for t in dm.train_items.tokens]
    shares = [[b.tolist() for b in LengthBucketSampler(lengths, 2, shuffle=True, rank=r, world_size=2,
                                                        bucket_batches=3)] for r in range(2)]
    flat = [i for share in shares for b in share for i in b]
    assert len(shares[0]) == len(shares[1]) == 3 and sorted(flat) == list(range(12))
    for b in shares[0] + shares[1]:  # a window of 3 batches sorted by length: batch lengths differ by <= 1 step
        assert max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 5
    sampler = LengthBucketSampler(lengths, 2, shuffle=True)
    first = [b.tolist() for b in sampler]
    sampler.set_epoch(1)
    assert [b.tolist() for b in sampler] != first
    # The module accepts the corpus and one training step runs on a real batch.
    module = MiniTTSModule(model=MiniTTSConfig(**TINY), speakers=SPEAKERS, emotions=["Neutral", "Angry"])
    loss = module._losses(batch)["loss"]
    assert torch.isfinite(loss) and loss > 0


def test_corpus_without_codec_or_with_unknown_speaker_is_a_config_error(tmp_path):
    import lightning.pytorch as pl

    write_tiny_corpus(tmp_path / "corpus")
    dm = TTSCorpusDataModule(str(tmp_path / "corpus"), str(tmp_path / "codec"), batch_size=2)
    with pytest.raises(ConfigError, match="fit_codec"):
        dm.prepare_data()
    random_codec().save(tmp_path / "codec")
    module = MiniTTSModule(model=MiniTTSConfig(**TINY), speakers=["0011"], emotions=["Neutral", "Angry"])
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"speakers \['0012'\]"):
        trainer.fit(module, datamodule=dm)


def test_token_cache_is_written_as_it_goes_resumes_and_skips_unused_splits(tmp_path, monkeypatch):
    import shutil

    from emoctl.backbones.mini_tts import tokenize_corpus as tc
    from emoctl.io.keyed_cache import read_keyed_arrays

    root = tmp_path / "corpus"
    write_tiny_corpus(root)
    test_dir = root / "0011" / "Angry" / "test"  # one test-split clip, which training never reads
    test_dir.mkdir()
    shutil.copy(root / "0011" / "Angry" / "evaluation" / "0011_000354.wav", test_dir / "0011_000355.wav")
    with open(root / "0011" / "0011.txt", "ab") as f:
        f.write("\n0011_000355\tA test sentence.\tAngry".encode())
    codec = random_codec()
    sources = [tc.AudioSource.of_file(p, root) for p in sorted(root.rglob("*.wav")) if p.parent.name != "test"]
    cache = tmp_path / "tokens.npz"
    calls = []
    encode = tc._PathEncoder.__call__

    def interrupted(self, source):
        calls.append(source)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return encode(self, source)

    monkeypatch.setattr(tc._PathEncoder, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tc.tokenize_sources(sources, codec, cache, workers=1, progress=False, flush_every=2)
    assert len(read_keyed_arrays(cache, "tokens")) == 4  # flushed after clips 2 and 4; clip 5 was not flushed
    calls.clear()
    monkeypatch.setattr(tc._PathEncoder, "__call__", encode)
    resumed = tc.tokenize_sources(sources, codec, cache, workers=1, progress=False, flush_every=2)
    fresh = tc.tokenize_sources(sources, codec, tmp_path / "fresh.npz", workers=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(resumed, fresh))
    # A run that reads a subset keeps the others in the cache (jobs on different splits share it).
    tc.tokenize_sources(sources[:3], codec, cache, workers=1, progress=False)
    assert len(read_keyed_arrays(cache, "tokens")) == len(sources) == 16
    # The data module tokenizes train and its validation split only, not the test split.
    codec.save(tmp_path / "codec")
    dm = TTSCorpusDataModule(str(root), str(tmp_path / "codec"), cache_dir=str(tmp_path / "dm"), batch_size=2)
    dm.prepare_data()
    (dm_cache,) = (tmp_path / "dm").rglob("*.npz")
    keys = set(read_keyed_arrays(dm_cache, "tokens"))
    assert len(keys) == 16 and not any("/test/" in k for k in keys)
    assert any(u.split == "test" for u in dm.utterances())  # the reader does see the test clip


def test_fitting_the_codec_caches_the_training_clips_tokens_from_the_same_analysis(tmp_path, monkeypatch):
    from data_modules.tts_corpus import CodecFit
    from emoctl.backbones.mini_tts import tokenize_corpus as tc
    from emoctl.io.keyed_cache import read_keyed_arrays

    root = tmp_path / "corpus"
    write_tiny_corpus(root)
    encoded = []
    encode = tc._PathEncoder.__call__
    monkeypatch.setattr(tc._PathEncoder, "__call__", lambda self, source: encoded.append(source) or
                        encode(self, source))
    dm = TTSCorpusDataModule(str(root), str(tmp_path / "codec"), cache_dir=str(tmp_path / "dm"), batch_size=2,
                             tokenize_workers=1, fit_codec=CodecFit(n_env_codes=4, n_f0_bins=4, workers=1))
    dm.prepare_data()
    # Only the 4 evaluation clips were analyzed again; the 12 training clips came from the codec's fit.
    assert len(encoded) == 4 and all("/evaluation/" in str(s) for s in encoded)
    (cache,) = (tmp_path / "dm").rglob("*.npz")
    cached = read_keyed_arrays(cache, "tokens")
    sources = [tc.AudioSource.of_file(p, root) for p in sorted(root.rglob("*.wav"))]
    fresh = tc.tokenize_sources(sources, SpeechCodec.load(tmp_path / "codec"), tmp_path / "fresh.npz", workers=1,
                                progress=False)
    assert len(cached) == len(sources) == 16
    for source, tokens in zip(sources, fresh):  # the same tokens a plain encode gives
        assert cached[source.key][0] == source.stamp
        assert np.array_equal(cached[source.key][1], tokens.numpy())
