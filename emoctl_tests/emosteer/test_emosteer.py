"""EmoShift: the EmoSteer layer's math, its hook, save/load, training through Lightning, the ESD reader, recipes.

A tiny random MiniTTS (from test_mini_tts.random_tts) stands in for the
backbone; ESD trees are written in tmp with short tones.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile
import torch
import yaml

from emoctl_tests.helpers.cli import RECIPES, REPO, parse_emoctl
from data_modules.tts_corpus import collate
from emoctl.backbones import Phase, Prompt
from emoctl.backbones.loading import BackboneSpec
from emoctl.callbacks.export import export_callbacks
from emoctl.emosteer import EmoSteer, EmoSteerConfig, steer
from emoctl.emosteer.module import EmoShiftModule
from emoctl.emosteer.sft import SFTModule
from emoctl.errors import ConfigError
from emoctl.training import OptimizerConfig
from emoctl_tests.helpers.tiny_tts import EMOTIONS, random_tts

PROMPTS = [Prompt("hello there", "0011", "Angry"), Prompt("hi", "0012", "Sad"),
           Prompt("what a day it is", "0011", "Neutral")]


pytestmark = pytest.mark.usefixtures("one_thread")


def random_layer(rank: int | None = None, neutral: str = "identity", scale: float = 1.0, seed: int = 0) -> EmoSteer:
    """A layer with non-zero random matrices (a fresh one is the identity)."""
    torch.manual_seed(seed)
    layer = EmoSteer(EmoSteerConfig(hidden_size=32, emotions=EMOTIONS, neutral=neutral, rank=rank, epsilon=1e-3))
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, scale)
    return layer


# ---------------------------------------------------------------- the layer and its hook
def test_hook_applies_exactly_h_plus_alpha_eps_hW_per_row():
    tts, layer = random_tts(), random_layer(scale=20.0)
    seen: dict[str, torch.Tensor] = {}
    reader = tts.hooks.add_reader("lm_out", lambda x, ctx: seen.__setitem__("h", x.clone()),
                                  phases=[Phase.TEACHER_FORCED])
    # A module after the hookpoint's input sees the written tensor: capture it in the head's input.
    head_in: dict[str, torch.Tensor] = {}
    handle = tts.lm.env_head.register_forward_pre_hook(lambda m, a: head_in.__setitem__("h", a[0].clone()))
    targets = [torch.tensor([1, 2, 3]), torch.tensor([4, 5]), torch.tensor([6])]
    emotions = ["Angry", {"Sad": 0.5, "Angry": 0.25}, "Neutral"]
    with steer(tts, layer, emotions, alpha=[2.0, 3.0, 5.0], phases=[Phase.TEACHER_FORCED]):
        tts.teacher_forced(PROMPTS, targets)
    reader.remove(), handle.remove()
    h = seen["h"].double()  # (B, T, d), read before the writer (readers added first run first)
    W = {e: layer.weight[layer.layer_emotions.index(e)].detach().double() for e in layer.layer_emotions}
    expected = torch.stack([
        h[0] + 2.0 * 1e-3 * h[0] @ W["Angry"],
        h[1] + 3.0 * 1e-3 * (0.5 * h[1] @ W["Sad"] + 0.25 * h[1] @ W["Angry"]),
        h[2],  # Neutral has no layer: untouched even at alpha 5
    ])
    assert torch.allclose(head_in["h"].double(), expected, atol=1e-5, rtol=1e-5)
    shift = (head_in["h"].double() - h)[:2].norm() / h[:2].norm()
    assert shift > 0.05  # the shift is large enough that a wrong formula would fail the check
    assert torch.equal(head_in["h"][2], seen["h"][2])


def test_compound_weights_combine_linearly_and_low_rank_is_A_times_B():
    for rank in (None, 3):
        layer = random_layer(rank=rank, scale=0.7)
        h = torch.randn(2, 5, 32)
        a = layer.shift(h, layer.coefficients(["Angry", "Angry"]))
        s = layer.shift(h, layer.coefficients(["Sad", "Sad"]))
        mix = layer.shift(h, layer.coefficients([{"Angry": 0.3, "Sad": 0.7}, {"Angry": -1.0, "Sad": 2.0}], alpha=2.0))
        assert torch.allclose(mix[0], 2.0 * (0.3 * a[0] + 0.7 * s[0]), atol=1e-5)
        assert torch.allclose(mix[1], 2.0 * (-a[1] + 2.0 * s[1]), atol=1e-5)
        W = layer.matrices()[layer.layer_emotions.index("Sad")]
        assert torch.allclose(s, h @ W, atol=1e-4)
    with pytest.raises(ConfigError, match="unknown emotion 'Fear'"):
        layer.coefficients(["Fear"])


def test_fresh_layers_start_at_identity_and_low_rank_gets_gradients():
    h = torch.randn(2, 4, 32)
    for rank in (None, 4):
        layer = EmoSteer(EmoSteerConfig(hidden_size=32, emotions=EMOTIONS, rank=rank))
        out = layer(h, layer.coefficients(["Angry", "Sad"]))
        assert torch.equal(out, h)
        out.pow(2).sum().backward()
        grads = [p.grad for p in layer.parameters()]
        if rank is None:
            assert grads[0].abs().sum() > 0
        else:  # A = random, B = 0: B's gradient is non-zero, A's is zero until B moves
            assert layer.A.grad.abs().sum() == 0 and layer.B.grad.abs().sum() > 0
    full = EmoSteer(EmoSteerConfig(hidden_size=32, emotions=EMOTIONS))
    low = EmoSteer(EmoSteerConfig(hidden_size=32, emotions=EMOTIONS, rank=4))
    with_neutral = EmoSteer(EmoSteerConfig(hidden_size=32, emotions=EMOTIONS, neutral="layer"))
    assert full.num_parameters() == 2 * 32 * 32  # Angry and Sad; Neutral is the identity
    assert low.num_parameters() == 2 * 2 * 32 * 4 and with_neutral.num_parameters() == 3 * 32 * 32


def test_alpha_zero_and_zero_layer_generate_bit_identically_to_the_backbone():
    tts = random_tts()
    base = tts.generate(PROMPTS, max_new_tokens=25, temperature=0)
    sampled = tts.generate(PROMPTS, max_new_tokens=25, temperature=1.0, seed=3)
    layer = random_layer(scale=30.0)
    with steer(tts, layer, ["Angry", "Sad", "Angry"], alpha=0.0):
        zero_alpha = tts.generate(PROMPTS, max_new_tokens=25, temperature=0)
        zero_alpha_sampled = tts.generate(PROMPTS, max_new_tokens=25, temperature=1.0, seed=3)
    with steer(tts, EmoSteer(EmoSteerConfig(hidden_size=32, emotions=EMOTIONS)), ["Angry", "Sad", "Angry"]):
        zero_w = tts.generate(PROMPTS, max_new_tokens=25, temperature=0)
    with steer(tts, layer, ["Angry", "Sad", "Angry"], alpha=1.0):
        steered = tts.generate(PROMPTS, max_new_tokens=25, temperature=0)
    for a, b, c, d, e in zip(base.tokens, zero_alpha.tokens, zero_w.tokens, sampled.tokens, zero_alpha_sampled.tokens):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(d, e)
    # ... while a non-zero layer does change what is generated (so the equalities above can fail).
    assert any(not torch.equal(a, s) for a, s in zip(base.tokens, steered.tokens))
    assert not tts.hooks.has_hooks()


@pytest.mark.parametrize("rank", [None, 3])
def test_save_and_load_reproduce_outputs(tmp_path, rank):
    tts, layer = random_tts(), random_layer(rank=rank, scale=30.0, neutral="layer")
    layer.save(tmp_path / "layer", metadata={"backbone_id": tts.backbone_id})
    loaded = EmoSteer.load(tmp_path / "layer")
    assert loaded.config == layer.config and loaded.metadata == {"backbone_id": tts.backbone_id}
    outs = []
    for candidate in (layer, loaded):
        with steer(tts, candidate, ["Angry", "Sad", "Neutral"], alpha=1.5):
            outs.append(tts.generate(PROMPTS, max_new_tokens=20, temperature=0).tokens)
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    assert not list(tmp_path.glob(".*partial"))
    (tmp_path / "layer" / "emosteer.safetensors").unlink()
    with pytest.raises(ConfigError, match="emosteer.safetensors is missing"):
        EmoSteer.load(tmp_path / "layer")


# ------------------------------------------------------------------- training
from emoctl_tests.helpers.tiny_tts import EmotionPatternData  # noqa: E402  (emotion-dependent token patterns)


def loader(n: int, seed: int, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(EmotionPatternData(n, seed), batch_size=batch_size, shuffle=shuffle,
                                       collate_fn=lambda items: collate(*zip(*items)),
                                       generator=torch.Generator().manual_seed(0))


def tiny_trainer(tmp_path: Path, steps: int, module: pl.LightningModule, **kwargs) -> pl.Trainer:
    """A short CPU fit that ends, like ``emoctl fit``, with the module's export."""
    return pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                      check_val_every_n_epoch=None, val_check_interval=steps, callbacks=export_callbacks(module),
                      **kwargs)


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    """A tiny random MiniTTS with dropout, saved as a checkpoint folder (EmoShift loads backbones by path)."""
    tts = random_tts()
    with torch.no_grad():  # dropout > 0, so a backbone left in train mode would show in the outputs
        for module in tts.lm.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.3
    tts.lm.gpt.config.attn_pdrop = 0.3
    folder = tmp_path_factory.mktemp("backbone") / "mini_tts"
    tts.save(folder)
    return folder


def test_training_moves_only_the_layer_and_leaves_the_backbone_bit_identical(tmp_path, backbone_dir):
    pl.seed_everything(0, verbose=False)
    module = EmoShiftModule(EmoSteerConfig(hidden_size=32, emotions=list(EMOTIONS)), BackboneSpec(path=str(backbone_dir)),
                            optimizer=OptimizerConfig(lr=0.05, warmup_steps=0))
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    report = module.parameter_report()
    assert report["trainable"] == 2 * 32 * 32 and report["backbone"] == sum(before[k].numel() for k in before)
    trainer = tiny_trainer(tmp_path, 6, module, enable_checkpointing=True)
    trainer.fit(module, train_dataloaders=loader(48, 0, 8, True), val_dataloaders=loader(8, 1, 8, False))
    assert trainer.global_step == 6
    after = module.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert module.emosteer.weight.abs().sum() > 0
    assert not module.backbone_was_training and not module.backbone.training
    optimizer_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimizer_params == {id(p) for p in module.emosteer.parameters()}
    assert all(p.grad is None for p in module.backbone.parameters())
    # Checkpoints hold the layer only; the export sits beside them and loads to the trained matrices.
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("*.ckpt")), weights_only=True)  # as a resume loads it
    assert set(ckpt["state_dict"]) == {"emosteer.weight"} and ckpt["emoshift_backbone_id"] == module.backbone_id
    exported = EmoSteer.load(tmp_path / "emosteer")
    assert torch.equal(exported.weight, module.emosteer.weight.detach())
    meta = json.loads((tmp_path / "emosteer" / "emosteer.json").read_text())["metadata"]
    assert meta["backbone_id"] == module.backbone_id and meta["training"]["global_step"] == 6


# Adam is invariant to the scale of W, so with eps = 1e-3 an lr of ~1 on W is an lr of ~1e-3 on eps*W.
LEARN_LR = {None: 1.0, 4: 1.0}


@pytest.mark.parametrize("rank", [None, 4])
def test_layer_alone_learns_emotion_patterns_under_the_neutral_condition(tmp_path, backbone_dir, rank):
    pl.seed_everything(0, verbose=False)
    module = EmoShiftModule(EmoSteerConfig(hidden_size=32, emotions=list(EMOTIONS), rank=rank),
                            BackboneSpec(path=str(backbone_dir)), condition="neutral",
                            optimizer=OptimizerConfig(lr=LEARN_LR[rank], warmup_steps=5))
    val = loader(48, 1, 48, False)
    batch = next(iter(val))
    with torch.no_grad():
        start = module._losses(batch)["loss"].item()
    trainer = tiny_trainer(tmp_path, 60, module, enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=loader(192, 0, 16, True), val_dataloaders=val)
    final = trainer.callback_metrics["val/loss"].item()
    print(f"rank={rank}: val loss {start:.3f} -> {final:.3f}")
    assert final < 0.7 * start, (start, final)
    # The backbone alone, told Neutral, is no better than at the start: the gain is the layer's.
    with torch.no_grad():
        from emoctl.emosteer.objective import teacher_forced_nll
        alone = teacher_forced_nll(module.backbone, module.backbone_prompts(batch[0]), batch[1], batch[2]).mean()
    assert alone.item() == pytest.approx(start, rel=1e-5)


# -------------------------------------------------------------------- the ESD reader
from emoctl.corpus.esd import read_esd, read_esd_hf  # noqa: E402
from emoctl_tests.helpers.esd import ENCODINGS, write_esd

@pytest.mark.parametrize("flat", [False, True], ids=["split-folders", "flat"])
def test_esd_reader_reads_both_layouts_and_all_three_encodings(tmp_path, flat):
    texts = write_esd(tmp_path, flat=flat)
    assert (tmp_path / "0012" / "0012.txt").read_bytes()[:2] == b"\xff\xfe"
    utts = read_esd(tmp_path, flat_split=(1, 1))
    assert len(utts) == 24 and {u.speaker for u in utts} == set(ENCODINGS)
    for u in utts:
        assert u.text == texts[u.utt_id] and u.sample_rate == 16000
        k = (int(u.utt_id[-6:]) - 1) % 350
        assert u.split == ("evaluation" if k == 0 else "test" if k == 1 else "train"), u
    angry = read_esd(tmp_path, emotions=["Angry"], speakers=["0013"], flat_split=(1, 1))
    assert [u.utt_id for u in angry] == [f"0013_{351 + k:06d}" for k in range(4)]


def test_esd_flat_split_follows_id_order_20_30_rest(tmp_path):
    write_esd(tmp_path, flat=True, per_emotion=55, emotions=("Sad",))
    utts = [u for u in read_esd(tmp_path, speakers=["0011"]) if u.speaker == "0011"]
    assert [u.split for u in utts] == ["evaluation"] * 20 + ["test"] * 30 + ["train"] * 5


def test_esd_reader_gives_clear_errors(tmp_path):
    write_esd(tmp_path / "ok", flat=False)
    with pytest.raises(ConfigError, match="unknown emotion 'Fear' in data.emotions"):
        read_esd(tmp_path / "ok", emotions=["Fear"])
    with pytest.raises(ConfigError, match=r"0014 is missing"):
        read_esd(tmp_path / "ok", speakers=["0011", "0014"])
    # Mandarin speakers only.
    (tmp_path / "zh" / "0001" / "Neutral").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no English ESD speakers.*0001"):
        read_esd(tmp_path / "zh")
    # A transcript line for a clip whose wav is gone, and a wav with no line.
    bad = tmp_path / "ok"
    next((bad / "0011" / "Angry" / "train").glob("*.wav")).unlink()
    with pytest.raises(ConfigError, match="0011.txt lists 1 clips without audio"):
        read_esd(bad)
    stray = bad / "0011" / "Angry" / "train" / "0011_009999.wav"
    soundfile.write(stray, np.zeros(1600, np.float32), 16000)
    with pytest.raises(ConfigError, match="0011_009999.wav has no line"):
        read_esd(bad, emotions=["Angry"], speakers=["0011"])
    # An emotion folder with a name ESD does not have.
    write_esd(tmp_path / "odd", flat=False)
    (tmp_path / "odd" / "0011" / "Angry").rename(tmp_path / "odd" / "0011" / "angry_v2")
    with pytest.raises(ConfigError, match="unknown emotion folder .*angry_v2"):
        read_esd(tmp_path / "odd")


def test_esd_sample_rate_is_resampled_with_a_warning_or_refused(tmp_path):
    write_esd(tmp_path, flat=False, rate=22050)
    with pytest.warns(UserWarning, match="24 clips .* 22050 Hz"):
        assert len(read_esd(tmp_path)) == 24
    with pytest.raises(ConfigError, match="22050 Hz, not data.sample_rate=16000"):
        read_esd(tmp_path, on_sample_rate="error")


def test_esd_hugging_face_copy_from_save_to_disk(tmp_path):
    import datasets

    texts = write_esd(tmp_path / "esd", flat=False)
    disk = read_esd(tmp_path / "esd", flat_split=(1, 1))
    by_split: dict[str, dict[str, list]] = {}
    for u in disk:
        rows = by_split.setdefault("validation" if u.split == "evaluation" else u.split,
                                   {"audio": [], "text": [], "speaker": [], "emotion": [], "utt_id": []})
        rows["audio"].append(str(u.path)), rows["text"].append(u.text), rows["speaker"].append(int(u.speaker))
        rows["emotion"].append(u.emotion.lower()), rows["utt_id"].append(u.utt_id)
    dd = datasets.DatasetDict({k: datasets.Dataset.from_dict(v).cast_column("audio", datasets.Audio())
                               for k, v in by_split.items()})
    dd.save_to_disk(str(tmp_path / "hf"))
    shutil.rmtree(tmp_path / "esd")  # the copy must not need the original wavs
    hf = read_esd_hf(tmp_path / "hf")
    assert [(u.utt_id, u.speaker, u.emotion, u.split, u.text) for u in hf] == \
        [(u.utt_id, u.speaker, u.emotion, u.split, texts[u.utt_id]) for u in disk]
    wave, rate = soundfile.read(io.BytesIO(hf[0].audio))
    assert rate == 16000 and len(wave) == int(16000 * 0.1)
    # A copy of Mandarin speakers only is refused with the English speakers named.
    sound = tmp_path / "zh.wav"
    soundfile.write(sound, np.zeros(1600, np.float32), 16000)
    zh = datasets.Dataset.from_dict({"audio": [str(sound)], "text": ["x"], "speaker": ["0003"], "emotion": ["Sad"]})
    zh.cast_column("audio", datasets.Audio()).save_to_disk(str(tmp_path / "hf_zh"))
    with pytest.raises(ConfigError, match="no English ESD speakers .*0011-0020.*0003"):
        read_esd_hf(tmp_path / "hf_zh")


# ------------------------------------------------------- data module, SFT and recipes
def test_emoshift_and_sft_train_on_an_esd_tree_through_the_data_module(tmp_path, backbone_dir):
    from data_modules.tts_corpus import TTSCorpusDataModule
    from emoctl.backbones.mini_tts import MiniTTS
    from emoctl_tests.helpers.tiny_tts import random_codec

    write_esd(tmp_path / "esd", flat=True, per_emotion=5, emotions=("Neutral", "Angry", "Sad"), ascii_only=True)
    random_codec().save(tmp_path / "codec")

    def data() -> TTSCorpusDataModule:
        return TTSCorpusDataModule(str(tmp_path / "esd"), str(tmp_path / "codec"), batch_size=4, flat_split=(1, 1),
                                   speakers=["0011", "0012"], bucket_batches=1)

    module = EmoShiftModule(EmoSteerConfig(hidden_size=32, emotions=list(EMOTIONS)), BackboneSpec(path=str(backbone_dir)),
                            condition="neutral", optimizer=OptimizerConfig(lr=1.0, warmup_steps=0))
    trainer = tiny_trainer(tmp_path / "emoshift", 3, module, enable_checkpointing=False)
    trainer.fit(module, datamodule=data())
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["val/loss"])
    assert len(list((tmp_path / "esd").glob(".tokens-*.npz"))) == 1  # the token cache sits next to the data
    meta = json.loads((tmp_path / "emoshift" / "emosteer" / "emosteer.json").read_text())["metadata"]
    assert meta["data"]["train_clips"] == 2 * 3 * 3 and meta["parameters"]["trainable"] == 2 * 32 * 32

    sft = SFTModule(BackboneSpec(path=str(backbone_dir)), optimizer=OptimizerConfig(lr=1e-3, warmup_steps=0))
    before = {k: v.clone() for k, v in sft.backbone.state_dict().items()}
    report = sft.parameter_report()
    assert report["trainable"] == report["backbone"] == sum(v.numel() for v in before.values())
    trainer = tiny_trainer(tmp_path / "sft", 3, sft, enable_checkpointing=False)
    trainer.fit(sft, datamodule=data())
    tuned = MiniTTS.load(tmp_path / "sft" / "sft_backbone")
    changed = [k for k, v in tuned.lm.state_dict().items() if not torch.equal(v, before[f"lm.{k}"])]
    assert len(changed) > 0.8 * len(before)  # (nearly) every tensor moved: it is full fine-tuning
    assert tuned.metadata["sft"]["global_step"] == 3


def test_emoshift_trains_and_exports_through_the_emoctl_command(tmp_path, backbone_dir):
    """The path a user takes: LightningCLI builds the module from YAML (its hparams then hold the backbone as a
    plain mapping, not a BackboneSpec), trains, and the export records the backbone it was trained on."""
    from emoctl_tests.helpers.cli import run_emoctl
    from emoctl_tests.helpers.tiny_tts import random_codec

    write_esd(tmp_path / "esd", flat=True, per_emotion=5, emotions=("Neutral", "Angry", "Sad"), ascii_only=True)
    random_codec().save(tmp_path / "codec")
    recipe = {
        "seed_everything": 0,
        "trainer": {"max_steps": 3, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run"), "num_sanity_val_steps": 0, "limit_val_batches": 1},
        "model": {"class_path": "emoctl.emosteer.module.EmoShiftModule",
                  "init_args": {"backbone": {"kind": "mini_tts", "path": str(backbone_dir)}, "condition": "neutral",
                                "layer": {"hidden_size": 32, "emotions": list(EMOTIONS)},
                                "optimizer": {"lr": 1.0, "warmup_steps": 0}, "export_dir": str(tmp_path / "layer")}},
        "data": {"class_path": "data_modules.tts_corpus.TTSCorpusDataModule",
                 "init_args": {"corpus_root": str(tmp_path / "esd"), "codec_dir": str(tmp_path / "codec"),
                               "batch_size": 4, "flat_split": [1, 1], "speakers": ["0011", "0012"],
                               "bucket_batches": 1}},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = run_emoctl("fit", "--config", str(tmp_path / "recipe.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "layer" / "emosteer.json").read_text())["metadata"]
    assert meta["backbone_kind"] == "mini_tts" and meta["backbone_path"] == str(backbone_dir)
    assert meta["training"]["global_step"] == 3


def test_batches_can_carry_a_reference_clip_of_the_speaker_instead_of_its_name(tmp_path):
    """For zero-shot backbones (IndexTTS2, CosyVoice): each prompt's voice is a Neutral training clip of its own
    speaker on disk, never the utterance it teacher-forces."""
    from data_modules.tts_corpus import TTSCorpusDataModule
    from emoctl.backbones.conditions import VoiceClip
    from emoctl.corpus.esd import open_esd
    from emoctl_tests.helpers.tiny_tts import random_codec

    write_esd(tmp_path / "esd", flat=True, per_emotion=5, emotions=("Neutral", "Angry"), ascii_only=True)
    random_codec().save(tmp_path / "codec")
    data = TTSCorpusDataModule(str(tmp_path / "esd"), str(tmp_path / "codec"), batch_size=2, flat_split=(1, 1),
                               speakers=["0011", "0012"], bucket_batches=1, voice="clip")
    data.prepare_data()
    data.setup("fit")
    clips = {u.utt_id: u for u in open_esd(tmp_path / "esd", speakers=["0011", "0012"], flat_split=(1, 1))}
    prompts = data.train_items.prompts + data.val_items.prompts
    assert len(prompts) == 2 * 2 * 4  # train and evaluation splits (the test clip of each is left out)
    for prompt in prompts:
        assert isinstance(prompt.voice, VoiceClip)
        reference = next(u for u in clips.values() if str(u.path) == prompt.voice.path)
        assert reference.speaker == clips[prompt.utt_id].speaker and reference.emotion == "Neutral"
        assert reference.split == "train" and reference.text != clips[prompt.utt_id].text  # never its sentence
    assert len({p.voice.path for p in prompts}) == 2 * 2  # each speaker's first clip, and its second for that one
    with pytest.raises(ConfigError, match="data.voice must be"):
        TTSCorpusDataModule(str(tmp_path / "esd"), str(tmp_path / "codec"), voice="speaker")


@pytest.mark.parametrize("recipe, cls", [("emoshift_mini.yaml", "EmoShiftModule"),
                                         ("emoshift_cosyvoice.yaml", "EmoShiftModule"),
                                         ("sft_mini.yaml", "SFTModule")])
def test_recipes_load_through_the_cli(recipe, cls):
    result = parse_emoctl("fit", "--config", str(RECIPES / recipe), "--print_config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    args = resolved["model"]["init_args"]
    assert resolved["model"]["class_path"].endswith(cls)
    assert resolved["data"]["class_path"].endswith("TTSCorpusDataModule")
    if recipe == "emoshift_mini.yaml":
        assert args["backbone"] == {"kind": "mini_tts", "path": "emoctl/assets/mini_tts", "device": "cpu",
                                    "options": None}
        assert args["condition"] == "neutral" and args["layer"]["hidden_size"] == 192
        assert args["optimizer"] == {"lr": 1.0, "betas": [0.9, 0.999], "weight_decay": 0.0, "warmup_steps": 50,
                                     "schedule": "cosine", "min_lr_fraction": 0.1}
        assert resolved["data"]["init_args"]["corpus_root"] == "runs/corpus/esd_espeak"
        assert resolved["data"]["init_args"]["backbone"] == args["backbone"]  # tokens of its own model
        assert resolved["trainer"]["max_time"] == "00:00:20:00" and resolved["trainer"]["accelerator"] == "cpu"
    if recipe == "emoshift_cosyvoice.yaml":
        layer = args["layer"]
        assert layer["epsilon"] == 0.001 and len(layer["emotions"]) == 5 and layer["neutral"] == "layer"
        assert layer["hidden_size"] == 1024 and args["optimizer"]["lr"] == 1.0
        assert resolved["trainer"]["strategy"] == "ddp" and resolved["trainer"]["precision"] == "bf16-mixed"
    if recipe == "sft_mini.yaml":
        mini = yaml.safe_load((RECIPES / "emoshift_mini.yaml").read_text())
        assert resolved["trainer"]["max_steps"] == mini["trainer"]["max_steps"]
        data, mini_data = resolved["data"]["init_args"], mini["data"]["init_args"]
        assert data["backbone"] == {"device": "cpu", "options": None, **mini_data["backbone"]}  # its tokenizer
        assert data == {**data, **mini_data, "backbone": data["backbone"]}


def test_committed_layer_fits_the_committed_backbone_and_lowers_held_out_nll(corpus_root):
    """emoctl/assets/emoshift_mini (what Table 1 steers with) was trained for this backbone: on held-out
    speakers' test clips under the Neutral condition, its emotions make the real speech tokens more likely."""
    from emoctl.backbones.loading import load_backbone
    from emoctl.backbones.mini_tts.codec import SpeechCodec
    from emoctl.corpus.esd import list_corpus_clips, read_wave
    from emoctl.emosteer.objective import teacher_forced_nll
    from emoctl.evaluation.texts import corpus_test_sentences

    asset = REPO / "emoctl" / "assets" / "emoshift_mini"
    layer = EmoSteer.load(asset)
    backbone = load_backbone("mini_tts", None)
    meta = json.loads((asset / "emosteer.json").read_text())["metadata"]
    assert meta["backbone_id"] == backbone.backbone_id and layer.config.hidden_size == backbone.hidden_size
    trained_on = set(meta["data"]["speakers"] or [])
    assert trained_on and not trained_on & {"0017", "0018", "0019", "0020"}  # Table 1 speaks as these
    texts, record = corpus_test_sentences(corpus_root)
    codec = SpeechCodec.load(REPO / "emoctl" / "assets" / "mini_tts" / "codec")
    clips = [c for c in list_corpus_clips(corpus_root, split="test", emotions=layer.layer_emotions)
             if c.speaker in ("0019", "0020")][::13][:12]
    assert {c.emotion for c in clips} == set(layer.layer_emotions)
    text_of = {u["id"]: record["sentences"][u["sentence_index"]] for u in record["utterances"]}
    prompts = [Prompt(text_of[c.utt_id], c.speaker, "Neutral", c.utt_id) for c in clips]
    tokens = [torch.as_tensor(codec.encode(*read_wave(c.path))) for c in clips]
    speech = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True)
    lengths = torch.tensor([len(t) for t in tokens])
    with torch.no_grad():
        plain = teacher_forced_nll(backbone, prompts, speech, lengths).mean()
        with steer(backbone, layer, [c.emotion for c in clips], 1.0, phases=[Phase.TEACHER_FORCED]):
            steered = teacher_forced_nll(backbone, prompts, speech, lengths).mean()
    assert steered < plain - 0.05, (float(plain), float(steered))


def test_reports_read_an_esd_folder_without_a_corpus_record(tmp_path):
    """Reports index sentences by split; a real ESD folder has no corpus.json, so its sentences and split sizes
    come from its transcripts and split folders, and a folder out of ESD's order is refused."""
    from emoctl.corpus.build import read_corpus_record
    from emoctl.evaluation.texts import split_sentences

    texts = write_esd(tmp_path / "esd", flat=False, per_emotion=4, emotions=("Neutral", "Sad"), ascii_only=True)
    record = read_corpus_record(tmp_path / "esd")
    assert record["splits"] == {"evaluation": 1, "test": 1, "train": 2}
    assert record["sentences"] == [texts[f"0011_{k:06d}"] for k in range(1, 5)]
    assert split_sentences(tmp_path / "esd", "test", 5)[0] == [texts["0011_000002"]]
    moved = tmp_path / "esd" / "0011" / "Neutral"
    (moved / "evaluation" / "0011_000001.wav").rename(moved / "train" / "0011_000001.wav")
    with pytest.raises(ConfigError, match="not split as evaluation, then test, then train"):
        read_corpus_record(tmp_path / "esd")
    with pytest.raises(ConfigError, match="no finished corpus at .*nothing"):
        (tmp_path / "nothing").mkdir()
        read_corpus_record(tmp_path / "nothing")


def test_one_prompt_is_steered_as_it_is_inside_a_batch():
    """A single prompt's emotion mix is one row of coefficients; it must reach the hooked rows as a batch's do."""
    tts = random_tts()
    layer = random_layer(scale=30.0)
    with steer(tts, layer, ["Angry"], alpha=1.0):
        one = tts.generate(PROMPTS[:1], max_new_tokens=25, temperature=0)
    with steer(tts, layer, ["Angry", "Sad", "Angry"], alpha=1.0):
        many = tts.generate(PROMPTS, max_new_tokens=25, temperature=0)
    base = tts.generate(PROMPTS[:1], max_new_tokens=25, temperature=0)
    assert torch.equal(one.tokens[0], many.tokens[0]) and not torch.equal(one.tokens[0], base.tokens[0])
