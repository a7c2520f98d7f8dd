"""The backbone contract suite on CosyVoice-300M-Instruct (upstream's real classes, random weights in the
release layout), plus what only CosyVoice has to prove: tokens equal upstream's own ``TransformerLM.inference``,
teacher-forced logits equal the inference loop's at every position, a batch equals each prompt alone, the
ONNX front ends run through onnxruntime, and EmoShift trains on it while ``llm.pt`` still loads strictly."""
from __future__ import annotations

import logging
import pickle
import shutil

import numpy as np
import pytest
import soundfile
import torch

from emoctl.backbones import Phase, Prompt
from emoctl.backbones.conditions import EmotionClip, EmotionLabel, EmotionVector, InstructText, VoiceClip, VoiceName
from emoctl.backbones.loading import BackboneSpec, load_backbone
from emoctl.backbones.sampling import Sampling
from emoctl.errors import ConfigError
from emoctl.testing import BackboneContract

TEXTS = ["Kids are talking by the door.", "The birch canoe slid on the smooth planks today.", "Go now."]
UPSTREAM = dict(top_p=0.8, top_k=25, ras_window=10, ras_tau=0.1)  # the release's ras_sampling


def _clip(release, i: int) -> VoiceClip:
    return VoiceClip(str(release.parent / "clips" / f"ref{i}.wav"))


@pytest.fixture(scope="module")
def backbone(cosyvoice_release):
    return load_backbone("cosyvoice", str(cosyvoice_release))


@pytest.fixture(scope="module")
def prompts(cosyvoice_release, backbone):
    return [Prompt(TEXTS[0], VoiceName("英文女"), backbone.condition_for("Angry")),
            Prompt(TEXTS[1], _clip(cosyvoice_release, 1), backbone.condition_for("Neutral")),
            Prompt(TEXTS[2], VoiceName("英文男"), InstructText("A tired old man mumbles."))]


@pytest.fixture(scope="module")
def sampling():
    return Sampling(**UPSTREAM, max_new_tokens=24)


@pytest.fixture(scope="module")
def beam_sampling():
    return None  # upstream decodes one hypothesis per prompt


@pytest.fixture(scope="module")
def refused_prompts(cosyvoice_release):
    voice = VoiceName("英文女")
    return [Prompt(TEXTS[0], voice, EmotionLabel("Angry")),
            Prompt(TEXTS[0], voice, EmotionVector((0.0,) * 8)),
            Prompt(TEXTS[0], voice, EmotionClip(_clip(cosyvoice_release, 0).path))]


@pytest.fixture(scope="module")
def refused_sampling():
    return {"num_beams": 2, "repetition_penalty": 2.0}


@pytest.fixture(scope="module")
def steer_hookpoint():
    return "resid_pre.1"


@pytest.fixture(scope="module")
def finish_block(backbone):
    """Upstream's TransformerEncoderLayer after ``residual + dropout(x_att)`` (dropout is off in eval)."""
    layers = backbone.llm.llm.encoders

    def finish(layer: int, r):
        block = layers[layer]
        if block.normalize_before:
            return r + block.feed_forward(block.norm2(r))
        x = block.norm1(r)
        return block.norm2(x + block.feed_forward(x))

    return finish


class TestCosyVoiceContract(BackboneContract):
    """Every contract check, on upstream's TransformerLM loaded from a release folder."""


# ------------------------------------------------------------------ CosyVoice's own proofs
def _upstream_inference(backbone, prompt: Prompt, seed: int) -> tuple[list[int], torch.Tensor]:
    """Upstream's own instruct decode (``TransformerLM.inference`` fed as ``frontend_instruct`` feeds it: the
    instruction's tokens as prompt_text, no speaker embedding) under ``torch.manual_seed(seed)``; its tokens
    and the logits its ``llm_decoder`` computed at every step."""
    ids = backbone.text_ids(prompt.text)
    instruction = backbone.text_ids(prompt.emotion.text + "<endofprompt>")
    logits: list[torch.Tensor] = []
    handle = backbone.llm.llm_decoder.register_forward_hook(lambda m, i, o: logits.append(o.detach().clone()))
    try:
        torch.manual_seed(seed)
        tokens = list(backbone.llm.inference(
            text=torch.tensor([ids], dtype=torch.int32), text_len=torch.tensor([len(ids)], dtype=torch.int32),
            prompt_text=torch.tensor([instruction], dtype=torch.int32),
            prompt_text_len=torch.tensor([len(instruction)], dtype=torch.int32),
            prompt_speech_token=torch.zeros(1, 0, dtype=torch.int32),
            prompt_speech_token_len=torch.tensor([0], dtype=torch.int32), embedding=torch.zeros(0, 192)))
    finally:
        handle.remove()
    return tokens, torch.cat([x.reshape(1, -1) for x in logits])


@pytest.mark.parametrize("index, seed", [(0, 3), (1, 5), (2, 7)])
def test_tokens_equal_upstream_inference_for_the_same_seed(backbone, prompts, index, seed):
    expected, _ = _upstream_inference(backbone, prompts[index], seed)
    out = backbone.generate([prompts[index]], backbone.upstream_sampling, seed=seed)
    assert out.tokens[0].tolist() == expected
    assert out.finished == [True] and len(expected) >= 2 * len(backbone.text_ids(prompts[index].text))  # min length


def test_teacher_forced_logits_equal_the_inference_loops_at_every_position(backbone, prompts):
    """Training sees what inference sees: instruction prepended, no speaker embedding (upstream's training
    forward has neither), logits equal to float error at every position, the stop position included."""
    for prompt, seed in zip(prompts, (11, 12, 13)):
        tokens, logits = _upstream_inference(backbone, prompt, seed)
        out = backbone.teacher_forced([prompt], [torch.tensor(tokens)])
        assert out.logits.shape[1] == len(tokens) + 1 == logits.shape[0]
        torch.testing.assert_close(out.logits[0], logits, atol=2e-5, rtol=0)
        assert out.targets[0, -1].item() == backbone.stop_token
    # batched and padded, the same logits row by row
    tokens = [torch.tensor(_upstream_inference(backbone, p, s)[0]) for p, s in zip(prompts, (11, 12, 13))]
    batched = backbone.teacher_forced(prompts, tokens)
    for b, t in enumerate(tokens):
        alone = backbone.teacher_forced([prompts[b]], [t]).logits[0]
        torch.testing.assert_close(batched.logits[b, :len(t) + 1], alone, atol=2e-5, rtol=0)
        assert (batched.targets[b, len(t) + 1:] == -100).all()


@pytest.mark.parametrize("how", ["greedy", "seeded"])
def test_a_batch_equals_each_prompt_decoded_alone(backbone, prompts, how):
    settings = Sampling(temperature=0.0, max_new_tokens=40) if how == "greedy" else \
        Sampling(**UPSTREAM, max_new_tokens=40, seed=21)
    batch = backbone.generate(prompts, settings)
    for b, prompt in enumerate(prompts):
        alone = backbone.generate([prompt], settings if how == "greedy" else Sampling(**{**vars(settings),
                                                                                         "seed": 21 + b}))
        assert torch.equal(batch.tokens[b], alone.tokens[0]), (b, batch.tokens[b], alone.tokens[0])
        assert batch.finished[b] == alone.finished[0]
    assert len({len(t) for t in batch.tokens}) > 1, "rows of different lengths make the check meaningful"


def test_decode_hooks_see_one_position_per_row_and_lm_out_is_two_dimensional(backbone, prompts, sampling):
    shapes: dict[tuple[str, Phase], set] = {}
    handles = [backbone.hooks.add_reader(h, lambda x, ctx, h=h: shapes.setdefault((h, ctx.phase), set()).add(
        tuple(x.shape)), phases=None) for h in ("resid_pre.0", "lm_out")]
    try:
        out = backbone.generate(prompts, sampling, seed=1)
        backbone.teacher_forced(prompts, out.tokens)
    finally:
        for h in handles:
            h.remove()
    d = backbone.hidden_size
    assert shapes[("resid_pre.0", Phase.DECODE)] == {(3, 1, d)}
    assert shapes[("lm_out", Phase.DECODE)] == {(3, d)} and shapes[("lm_out", Phase.PREFILL)] == {(3, d)}
    (tf,) = shapes[("lm_out", Phase.TEACHER_FORCED)]
    assert tf == (3, max(len(t) for t in out.tokens) + 1, d)


def test_conditions_instructions_voices_and_options(cosyvoice_release, backbone):
    assert backbone.speakers == ["英文女", "英文男"]
    assert backbone.condition_for("Neutral") == backbone.neutral_emotion
    assert backbone.upstream_sampling == Sampling(**UPSTREAM)
    custom = load_backbone("cosyvoice", str(cosyvoice_release), instructions={"Neutral": "Calm.", "Angry": "Rage."})
    assert custom.condition_for("Angry") == InstructText("Rage.") and custom.emotions == ["Neutral", "Angry"]
    with pytest.raises(ConfigError, match="no instruction for emotion 'Sad'"):
        custom.condition_for("Sad")
    with pytest.raises(ConfigError, match="needs a Neutral instruction"):
        load_backbone("cosyvoice", str(cosyvoice_release), instructions={"Angry": "Rage."})
    with pytest.raises(ConfigError, match="without <endofprompt>"):
        load_backbone("cosyvoice", str(cosyvoice_release), instructions={"Neutral": "Calm.<endofprompt>"})
    with pytest.raises(ConfigError, match=r"backbone.options \['temperature'\] mean nothing to the cosyvoice"):
        BackboneSpec("cosyvoice", str(cosyvoice_release), options={"temperature": 1.0}).load()
    with pytest.raises(ConfigError, match="mean nothing to the mini_tts backbone; it takes none"):
        BackboneSpec("mini_tts", options={"instructions": {}}).load()
    with pytest.raises(ConfigError, match="unknown speaker '0011'"):
        backbone.generate([Prompt(TEXTS[0], VoiceName("0011"), backbone.neutral_emotion)], max_new_tokens=2)
    # The LLM hears no voice in instruct mode (upstream drops the speaker embedding); the flow does.
    a = backbone.generate([Prompt(TEXTS[0], VoiceName("英文女"), backbone.neutral_emotion)], temperature=0,
                          max_new_tokens=20)
    b = backbone.generate([Prompt(TEXTS[0], _clip(cosyvoice_release, 2), backbone.neutral_emotion)], temperature=0,
                          max_new_tokens=20)
    assert torch.equal(a.tokens[0], b.tokens[0])
    women = backbone.xvector(VoiceName("英文女"))
    clip0, clip1 = backbone.xvector(_clip(cosyvoice_release, 0)), backbone.xvector(_clip(cosyvoice_release, 1))
    assert women.shape == clip0.shape == (1, 192) and not torch.allclose(clip0, clip1)
    w1, _ = backbone.vocode(a.tokens[0], Prompt(TEXTS[0], VoiceName("英文女"), backbone.neutral_emotion))
    w2, _ = backbone.vocode(a.tokens[0], Prompt(TEXTS[0], VoiceName("英文男"), backbone.neutral_emotion))
    w3, _ = backbone.vocode(a.tokens[0], Prompt(TEXTS[0], VoiceName("英文女"), backbone.neutral_emotion))
    assert w1.shape == w2.shape and not np.array_equal(w1, w2) and np.array_equal(w1, w3)  # seeded flow noise


def test_onnx_front_ends_on_corpus_clips(backbone, tmp_path):
    """The tokenizer runs through onnxruntime on recordings at any rate (resampled to 16 kHz), gives 50 tokens a
    second, survives pickling (data workers hold it) and refuses what upstream refuses."""
    tokenizer = backbone.speech_tokenizer
    rng = np.random.default_rng(0)
    for rate, seconds in ((16000, 1.0), (22050, 2.0), (24000, 0.5)):
        wave = (0.1 * rng.standard_normal(int(rate * seconds))).astype(np.float32)
        tokens = tokenizer.encode(wave, rate)
        assert tokens.dtype == torch.long and abs(tokens.numel() - 50 * seconds) <= 1, (rate, tokens.numel())
        assert 0 <= int(tokens.min()) and int(tokens.max()) < backbone.stop_token
    again = pickle.loads(pickle.dumps(tokenizer))
    assert torch.equal(again.encode(wave, 24000), tokenizer.encode(wave, 24000)) and again.digest == tokenizer.digest
    with pytest.raises(ConfigError, match="at most 30 s"):
        tokenizer.encode(np.zeros(16000 * 31, dtype=np.float32), 16000)
    with pytest.raises(ConfigError, match="NaN or Inf"):
        tokenizer.encode(np.full(1600, np.nan, dtype=np.float32), 16000)
    soundfile.write(tmp_path / "v.wav", (0.2 * rng.standard_normal(16000)).astype(np.float32), 16000)
    x = backbone.campplus(soundfile.read(tmp_path / "v.wav", dtype="float32")[0], 16000)
    assert x.shape == (1, 192) and torch.isfinite(x).all()
    assert torch.equal(backbone.xvector(VoiceClip(str(tmp_path / "v.wav"))), x)


def test_release_errors_name_every_missing_file_and_refuse_unfit_weights(cosyvoice_release, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone("cosyvoice", str(tmp_path / "nowhere"))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(cosyvoice_release / "cosyvoice.yaml", partial)
    with pytest.raises(ConfigError) as err:
        load_backbone("cosyvoice", str(partial))
    for name in ("llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v1.onnx", "spk2info.pt"):
        assert name in str(err.value)
    broken = tmp_path / "broken"
    shutil.copytree(cosyvoice_release, broken)
    state = torch.load(broken / "llm.pt", weights_only=True)
    state["steer.weight"] = torch.zeros(2, 2)  # an attached module's parameter: strict loading refuses it
    torch.save(state, broken / "llm.pt")
    with pytest.raises(ConfigError, match=r"llm.pt does not fit the TransformerLM.*steer.weight"):
        load_backbone("cosyvoice", str(broken))
    del state["steer.weight"]
    state["llm_decoder.bias"][0] = float("nan")
    torch.save(state, broken / "llm.pt")
    with pytest.raises(ConfigError, match="NaN or Inf weights"):
        load_backbone("cosyvoice", str(broken))


def test_cosyvoice_yaml_is_read_as_data_and_builds_only_upstream_classes(cosyvoice_release, tmp_path):
    """HyperPyYAML would run ``!apply:`` calls and build any class a downloaded file names; emoctl runs none
    and builds only the released file's class at each position (backbones/test_crafted_cosyvoice.py tries the payloads)."""
    folder = tmp_path / "crafted"
    shutil.copytree(cosyvoice_release, folder)
    marker = tmp_path / "ran"
    text = (folder / "cosyvoice.yaml").read_text(encoding="utf-8")
    text = text.replace("__set_seed1: !apply:random.seed [1986]", f"__set_seed1: !apply:pathlib.Path.touch ['{marker}']")
    (folder / "cosyvoice.yaml").write_text(text, encoding="utf-8")
    load_backbone("cosyvoice", str(folder))  # loads: the call is recorded, never made
    assert not marker.exists()
    hostile = text.replace("!new:cosyvoice.transformer.encoder.TransformerEncoder", "!new:subprocess.Popen", 1)
    (folder / "cosyvoice.yaml").write_text(hostile, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"llm.llm is !new:subprocess.Popen; at llm.llm emoctl builds only "
                                          r"cosyvoice.transformer.encoder.TransformerEncoder"):
        load_backbone("cosyvoice", str(folder))
    (folder / "cosyvoice.yaml").write_text("llm: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read .*cosyvoice.yaml"):
        load_backbone("cosyvoice", str(folder))


def test_emoshift_trains_on_cosyvoice_from_the_embedded_corpus_and_llm_pt_still_loads_strictly(
        cosyvoice_release, corpus_root, tmp_path):
    """EmoShift end to end on the reduced model: the embedded corpus's clips (two speakers, Neutral and Angry)
    tokenized by the release's ONNX tokenizer into a cache keyed by its digest, prompts
    voiced by reference clips, the layer on ``lm_out`` (the input of ``llm_decoder``); a short fit lowers the
    steered loss below the unsteered one, the layer exports and reloads, α = 0 generates bit-identically, and
    the LLM's weights are untouched and load strictly."""
    import lightning.pytorch as pl

    from data_modules.tts_corpus import TTSCorpusDataModule
    from emoctl.callbacks.export import export_callbacks
    from emoctl.emosteer.layer import EmoSteer, EmoSteerConfig
    from emoctl.training import OptimizerConfig
    from emoctl.emosteer.module import EmoShiftModule
    from emoctl.emosteer.objective import teacher_forced_nll
    from emoctl.emosteer import steer

    instructions = {"Neutral": "A calm voice.", "Angry": "A furious voice."}
    spec = BackboneSpec("cosyvoice", str(cosyvoice_release), options={"instructions": instructions})
    data = TTSCorpusDataModule(str(corpus_root), backbone=spec, batch_size=8, cache_dir=str(tmp_path / "cache"),
                               speakers=["0011", "0012"], bucket_batches=1, voice="clip", emotions=["Neutral", "Angry"],
                               tokenize_workers=0)
    pl.seed_everything(0, verbose=False)
    module = EmoShiftModule(EmoSteerConfig(hidden_size=128, emotions=["Neutral", "Angry"], neutral="layer"), spec,
                            optimizer=OptimizerConfig(lr=1.0, warmup_steps=0), export_dir=str(tmp_path / "layer"))
    assert module.parameter_report()["trainable"] == 2 * 128 * 128
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    with torch.no_grad():
        start = module._losses(batch)["loss"].item()
        unsteered = teacher_forced_nll(module.backbone, module.backbone_prompts(batch[0]), batch[1], batch[2]).mean()
    assert start == pytest.approx(unsteered.item(), rel=1e-4)  # W starts at zero: the layer is the identity
    trainer = pl.Trainer(accelerator="cpu", max_steps=30, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=export_callbacks(module))
    trainer.fit(module, datamodule=data)
    with torch.no_grad():
        steered = module._losses(batch)["loss"].item()
    print(f"EmoShift on the reduced CosyVoice: loss {start:.4f} -> {steered:.4f}")
    assert steered < start - 0.01, (start, steered)
    layer = EmoSteer.load(tmp_path / "layer")
    assert torch.equal(layer.weight, module.emosteer.weight.detach())
    backbone = module.backbone
    prompt = Prompt(TEXTS[0], VoiceName("英文女"), backbone.condition_for("Neutral"))
    base = backbone.generate([prompt], Sampling(**UPSTREAM, max_new_tokens=30, seed=4))
    with steer(backbone, layer, ["Angry"], alpha=0.0):
        zero = backbone.generate([prompt], Sampling(**UPSTREAM, max_new_tokens=30, seed=4))
    with steer(backbone, layer, ["Angry"], alpha=3.0):  # the paper's strongest useful intensity
        strong = backbone.generate([prompt], Sampling(**UPSTREAM, max_new_tokens=30, seed=4))
    assert torch.equal(base.tokens[0], zero.tokens[0]) and not torch.equal(base.tokens[0], strong.tokens[0])
    # The sweep report runs on CosyVoice as on the mini TTS: ESD speakers voiced by their reference clips.
    from emoctl.evaluation.protocol import EvaluationProtocol
    from emoctl.commands.steer import emoshift_sweep
    from emoctl.synthesis import SamplingConfig

    protocol = EvaluationProtocol(speakers=["0011", "0012"], split="evaluation", n_texts=1, reference_clips=1,
                                  sampling=SamplingConfig(temperature=1.0, **UPSTREAM, max_new_tokens=30, batch_size=4))
    from emoctl.evaluation.emoshift_setup import SteeringSetup

    plain = BackboneSpec("cosyvoice", str(cosyvoice_release))  # no options: the layer's instructions are used
    assert SteeringSetup.load(str(tmp_path / "layer"), plain).backbone.instructions == instructions
    with pytest.raises(ConfigError, match="trained with backbone.options"):
        SteeringSetup.load(str(tmp_path / "layer"), BackboneSpec("cosyvoice", str(cosyvoice_release),
                                                                 options={"instructions": {"Neutral": "Hi."}}))
    summary = emoshift_sweep(str(tmp_path / "layer"), plain, corpus_root=str(corpus_root), alphas=[0.0, 1.0],
                             out_dir=str(tmp_path / "sweep"), protocol=protocol, progress=False)
    overall = {r["method"]: r for r in summary if r["emotion"] == "all"}
    assert set(overall) == {"unsteered", "alpha=0", "alpha=1"}, set(overall)
    for key, value in overall["unsteered"].items():  # the layer at α = 0 changes no clip (scores to float noise)
        if key not in ("method", "alpha") and isinstance(value, float):
            assert overall["alpha=0"][key] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), key
    assert (tmp_path / "sweep" / "emoshift_sweep.md").is_file()
    # A layer trained under condition 'emotion' has no Neutral start to calibrate or to switch from: refused
    # before anything is spoken, naming the layer.
    from emoctl.reports.calibration import CalibrationSettings, run_calibration
    from emoctl.reports.speak import SpeakSettings, run_speak

    with pytest.raises(ConfigError, match="trained under condition 'emotion'; a calibration induces emotions"):
        run_calibration(CalibrationSettings(methods=["emoshift"], layer=str(tmp_path / "layer"), emotions=["Angry"],
                                            backbone=plain, corpus_root=str(corpus_root),
                                            out_dir=str(tmp_path / "cal"), progress=False))
    with pytest.raises(ConfigError, match="trained under condition 'emotion'; speak tells the backbone Neutral"):
        run_speak(SpeakSettings(schedule={"switch": {"at_step": 10}}, emotion="Angry", alpha=1.0,
                                layer=str(tmp_path / "layer"), backbone=plain, corpus_root=str(corpus_root),
                                out_dir=str(tmp_path / "speak"), protocol=protocol, progress=False))
    assert not (tmp_path / "cal").exists() and not (tmp_path / "speak").exists()
    released = torch.load(cosyvoice_release / "llm.pt", weights_only=True)
    assert list(backbone.llm.state_dict()) == list(released)
    assert all(torch.equal(v, released[k]) for k, v in backbone.llm.state_dict().items())
    backbone.llm.load_state_dict(released, strict=True)


@pytest.mark.slow
def test_full_size_llm_loads_strictly_decodes_and_matches_upstream(tmp_path):
    """The released LLM's shape (310.7M parameters: 6 Conformer text blocks, 14 LLM blocks at d = 1024) with
    random weights, through load_backbone; a batch of two equals each prompt alone, and upstream's loop."""
    from emoctl.backbones.cosyvoice_instruct.random_release import RandomReleaseSize, write_random_release

    root = write_random_release(tmp_path / "full", RandomReleaseSize.full())
    backbone = load_backbone("cosyvoice", str(root))
    assert sum(p.numel() for p in backbone.llm.parameters()) == 310_718_465
    assert backbone.hidden_size == 1024 and backbone.num_layers == 14
    prompts = [Prompt(TEXTS[0], VoiceName("英文女"), backbone.condition_for("Angry")),
               Prompt(TEXTS[2], VoiceName("英文男"), backbone.condition_for("Sad"))]
    settings = Sampling(**UPSTREAM, max_new_tokens=12, seed=2)
    batch = backbone.generate(prompts, settings)
    for b, prompt in enumerate(prompts):
        alone = backbone.generate([prompt], Sampling(**{**vars(settings), "seed": 2 + b}))
        assert torch.equal(batch.tokens[b], alone.tokens[0])
    expected, _ = _upstream_inference(backbone, prompts[1], 3)
    assert backbone.generate([prompts[1]], backbone.upstream_sampling, seed=3).tokens[0].tolist() == expected


@pytest.mark.parametrize("kind, width", [("cosyvoice", 128), ("cosyvoice2", 64)])
def test_the_emoshift_recipe_trains_through_the_emoctl_command(kind, width, request, tmp_path):
    """recipes/emoshift_<kind>.yaml as a user runs it, with the GPU settings swapped for this CPU and the tiny
    release and an ESD-layout tree as the folders: it trains on clips the release's own speech tokenizer encodes,
    exports, and the export names the backbone."""
    import json

    from emoctl_tests.helpers.cli import REPO, run_emoctl
    from emoctl_tests.helpers.esd import write_esd

    write_esd(tmp_path / "esd", flat=False, per_emotion=4, emotions=("Neutral", "Angry"), ascii_only=True)
    release = str(request.getfixturevalue(f"{kind}_release"))
    result = run_emoctl(
        "fit", "--config", str(REPO / "recipes" / f"emoshift_{kind}.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.precision", "32-true", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--model.init_args.backbone.path", release, "--model.init_args.layer.emotions", "[Neutral, Angry]",
        "--model.init_args.layer.hidden_size", str(width), "--model.init_args.optimizer.warmup_steps", "0",
        "--model.init_args.export_dir", str(tmp_path / "layer"),
        "--data.init_args.backbone.path", release, "--data.init_args.corpus_root", str(tmp_path / "esd"),
        "--data.init_args.emotions", "[Neutral, Angry]", "--data.init_args.speakers", "[\"0011\", \"0012\"]",
        "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
        "--data.init_args.tokenize_workers", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "layer" / "emosteer.json").read_text())["metadata"]
    assert meta["backbone_kind"] == kind and meta["backbone_path"] == release
    assert meta["training"]["global_step"] == 2 and meta["condition"] == "emotion"


def test_importing_upstream_leaves_the_process_logging_as_it_was():
    """Upstream's file_utils calls logging.basicConfig(level=DEBUG) on import (numba then logs ~34,000 lines per
    run); the adapter's imports put the root logger back. A fresh process, so the import really runs."""
    import subprocess
    import sys

    code = ("import logging, sys\n"
            "from emoctl.backbones.cosyvoice_instruct.upstream import require_cosyvoice\n"
            "require_cosyvoice()\n"
            "assert 'cosyvoice.utils.file_utils' in sys.modules, sorted(m for m in sys.modules if 'cosyvoice' in m)\n"
            "root = logging.getLogger()\n"
            "print(root.level, len(root.handlers))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(logging.WARNING), "0"]
