"""The backbone contract suite on IndexTTS2 (upstream's real classes, random weights in the release layout),
plus what only IndexTTS2 has to prove: the KV cache is used, a batch equals each prompt alone, tokens equal
upstream's own ``inference_speech``, and recorded rows are the returned hypothesis's states."""
from __future__ import annotations

import math

import pytest
import soundfile as sf
import torch

from emoctl.backbones import Phase, Prompt
from emoctl.backbones.conditions import EmotionClip, EmotionLabel, EmotionVector, InstructText, VoiceClip, VoiceName
from emoctl.backbones.loading import load_backbone
from emoctl.backbones.sampling import Sampling
from emoctl.errors import ConfigError
from emoctl.testing import BackboneContract

TEXTS = ["Kids are talking by the door.", "The birch canoe slid on the smooth planks today.", "Go now."]
# upstream's infer() defaults, with a short budget
UPSTREAM = dict(temperature=0.8, top_k=30, top_p=0.8, repetition_penalty=10.0)


def _clip(release, i: int) -> VoiceClip:
    return VoiceClip(str(release.parent / "clips" / f"ref{i}.wav"))


@pytest.fixture(scope="module")
def backbone(indextts2_release):
    return load_backbone("indextts2", str(indextts2_release))


@pytest.fixture(scope="module")
def prompts(indextts2_release, backbone):
    return [Prompt(TEXTS[0], _clip(indextts2_release, 0), backbone.condition_for("Angry")),
            Prompt(TEXTS[1], _clip(indextts2_release, 1), backbone.condition_for("Neutral")),
            Prompt(TEXTS[2], _clip(indextts2_release, 2), EmotionClip(_clip(indextts2_release, 1).path, 0.6))]


@pytest.fixture(scope="module")
def sampling():
    return Sampling(**UPSTREAM, max_new_tokens=24)


@pytest.fixture(scope="module")
def beam_sampling():
    return Sampling(**UPSTREAM, num_beams=3, length_penalty=0.0, max_new_tokens=24, seed=4)


@pytest.fixture(scope="module")
def refused_prompts(indextts2_release):
    voice = _clip(indextts2_release, 0)
    return [Prompt(TEXTS[0], VoiceName("0011"), EmotionVector((0.0,) * 8)),
            Prompt(TEXTS[0], voice, EmotionLabel("Angry")),
            Prompt(TEXTS[0], voice, InstructText("speak angrily"))]


@pytest.fixture(scope="module")
def refused_sampling():
    return {"ras_window": 10}


@pytest.fixture(scope="module")
def steer_hookpoint():
    return "resid_pre.1"


@pytest.fixture(scope="module")
def finish_block(backbone):
    """Upstream's GPT2Block after its attention's add: r + mlp(ln_2(r))."""
    blocks = backbone.gpt.gpt.h
    return lambda layer, r: r + blocks[layer].mlp(blocks[layer].ln_2(r))


class TestIndexTTS2Contract(BackboneContract):
    """Every contract check, on upstream's UnifiedVoice loaded from a release folder."""

    # released mel positions: decode token k sits at k + 2, teacher forcing at k + 1
    decode_matches_teacher_forced = False


# ------------------------------------------------------------------ IndexTTS2's own proofs
def test_decode_rows_equal_teacher_forced_states_at_training_positions(backbone, prompts, sampling, beam_sampling):
    """With training mel positions, the cached decode and a teacher-forced pass place every token alike, so the
    recorded rows of the returned hypothesis (batched, and under beams after reorderings) must equal the
    teacher-forced states of its tokens."""
    contract = BackboneContract()
    seeded = Sampling(**{**vars(sampling), "seed": 11})
    backbone.mel_positions = "training"
    try:
        for settings in (seeded, beam_sampling):
            out, rows = contract._recorded(backbone, prompts, settings, "resid_pre.1")
            assert any(r.shape[0] > 3 for r in rows)
            contract._check_rows(backbone, prompts, out, rows, "resid_pre.1", True, 1e-4)
    finally:
        backbone.mel_positions = "released"
    # and with the released positions they differ, so the check above can fail: the longest utterance of the
    # batch, generated alone with its own seed
    out, rows = contract._recorded(backbone, prompts, seeded, "resid_pre.1")
    b = max(range(len(rows)), key=lambda i: rows[i].shape[0])
    alone = Sampling(**{**vars(sampling), "seed": 11 + b})
    out, rows = contract._recorded(backbone, [prompts[b]], alone, "resid_pre.1")
    assert rows[0].shape[0] > 1
    with pytest.raises(AssertionError):
        contract._check_rows(backbone, [prompts[b]], out, rows, "resid_pre.1", True, 1e-4)


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(UPSTREAM), dict(UPSTREAM, num_beams=3)],
                         ids=["greedy", "sampling", "beam-sampling"])
def test_a_batch_equals_each_prompt_alone(backbone, prompts, settings):
    """Left padding, attention and positions are right: prompt b of a seeded batch draws what it draws alone
    with seed + b."""
    together = backbone.generate(prompts, seed=7, max_new_tokens=16, **settings)
    for b, prompt in enumerate(prompts):
        alone = backbone.generate([prompt], seed=7 + b, max_new_tokens=16, **settings)
        assert torch.equal(alone.tokens[0], together.tokens[b]), (b, settings)
    assert len({tuple(t.tolist()) for t in together.tokens}) == len(prompts)


@pytest.mark.parametrize("settings", [dict(do_sample=False), dict(UPSTREAM, do_sample=True),
                                      dict(UPSTREAM, do_sample=True, num_beams=3)],
                         ids=["greedy", "sampling", "beam-sampling"])
def test_tokens_equal_upstreams_inference_speech(indextts2_release, backbone, prompts, settings):
    """Fidelity: upstream's own ``UnifiedVoice.inference_speech`` (Hugging Face ``generate``, cache repaired)
    on the same weights, conditioning, settings and seed returns the adapter's tokens, token for token; and
    unrepaired under this transformers version, it recomputes the whole sequence at every step."""
    from indextts.gpt.model_v2 import UnifiedVoice

    from emoctl.backbones.indextts2.upstream import repair_cached_generate

    upstream = UnifiedVoice(**backbone.release.config.gpt)
    upstream.load_state_dict(torch.load(indextts2_release / "gpt.pth", weights_only=True))
    upstream.eval().post_init_gpt2_config(kv_cache=True)
    lengths: list[int] = []
    upstream.gpt.h[0].register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    do_sample = settings.pop("do_sample")
    beams = settings.pop("num_beams", 1)
    ours = Sampling(**{**settings, "temperature": settings.get("temperature", 0.8) if do_sample else 0.0},
                    num_beams=beams, length_penalty=0.0, max_new_tokens=40, seed=5)

    def upstream_tokens(prompt: Prompt, **extra: object) -> torch.Tensor:
        features = backbone._clip(prompt.voice.path, None).features
        emovec = backbone._conditioning(prompt)[2]
        width = torch.tensor([features.shape[-1]])
        torch.manual_seed(5)
        with torch.no_grad():
            codes, _ = upstream.inference_speech(
                features, torch.tensor([backbone.text_ids(prompt.text)], dtype=torch.int32), features,
                cond_lengths=width, emo_cond_lengths=width, emo_vec=emovec, do_sample=do_sample, num_beams=beams,
                length_penalty=0.0, max_generate_length=40, num_return_sequences=1, **settings, **extra)
        codes = codes[0]
        stops = (codes == backbone.gpt.stop_mel_token).nonzero()
        return codes[:int(stops[0, 0])] if stops.numel() else codes

    if beams == 1:  # the trap: transformers 5.24's generate never hands upstream its cache
        upstream_tokens(prompts[0], min_new_tokens=4)
        assert lengths[1:4] == [lengths[0] + 1, lengths[0] + 2, lengths[0] + 3], lengths[:4]
    repair_cached_generate(upstream.inference_model)
    compared = []
    for prompt in prompts:
        lengths.clear()
        expected = upstream_tokens(prompt)
        assert set(lengths[1:]) <= {1}, "the repaired upstream decodes through its cache"
        got = backbone.generate([prompt], ours).tokens[0]
        assert torch.equal(got, expected), (got.tolist()[:10], expected.tolist()[:10])
        compared.append(got.numel())
    assert max(compared) >= 8, compared  # long enough that equality means something


def test_emotion_conditions_follow_upstreams_rules(backbone, prompts, indextts2_release):
    """Neutral is the voice's own emotion (the zero vector mixes nothing in: upstream's merge of the voice with
    itself read at 16 kHz); a weight scales like upstream's emo_alpha; a vector of the wrong length and a
    missing clip are refused by name."""
    voice = prompts[0]
    speaker = backbone._clip(voice.voice.path, None)
    at_16k = backbone._clip(voice.voice.path, 16000).features
    own = backbone.gpt.merge_emovec(speaker.features, at_16k, torch.tensor([1024]), torch.tensor([at_16k.shape[-1]]))
    neutral = backbone._emotion_vector(voice.with_emotion(backbone.condition_for("Neutral")), speaker)
    torch.testing.assert_close(neutral, own, atol=0, rtol=0)
    angry = backbone._emotion_vector(voice.with_emotion(backbone.condition_for("Angry")), speaker)
    full = backbone._emotion_vector(voice.with_emotion(EmotionVector((0, 1, 0, 0, 0, 0, 0, 0), 1.0)), speaker)
    torch.testing.assert_close(angry, 0.8 * full + 0.2 * own, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(angry, own)
    assert [backbone.condition_for(e).key for e in ("Happy", "Sad", "Surprise")] == [
        "vector[1,0,0,0,0,0,0,0]*0.8", "vector[0,0,1,0,0,0,0,0]*0.8", "vector[0,0,0,0,0,0,1,0]*0.8"]
    with pytest.raises(ConfigError, match="8 weights"):
        backbone.generate([voice.with_emotion(EmotionVector((1.0, 0.0)))], max_new_tokens=2)
    with pytest.raises(ConfigError, match="reference clip .*nowhere.wav does not exist"):
        backbone.generate([Prompt(TEXTS[0], VoiceClip("/nowhere.wav"), backbone.neutral_emotion)], max_new_tokens=2)


def test_a_release_with_the_wrong_gpt_weights_is_refused(indextts2_release, tmp_path):
    """A gpt.pth that does not fit config.yaml names the file and the keys; so does a damaged one."""
    import shutil

    from emoctl.backbones.indextts2.backbone import IndexTTS2
    from emoctl.backbones.indextts2.release import ReleaseFolder

    copy = tmp_path / "release"
    shutil.copytree(indextts2_release, copy, ignore=shutil.ignore_patterns("gpt.pth"))
    state = torch.load(indextts2_release / "gpt.pth", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("gpt.h.1.")}, copy / "gpt.pth")
    with pytest.raises(ConfigError, match=r"gpt\.pth does not fit the UnifiedVoice .* missing key\(s\)"):
        IndexTTS2(ReleaseFolder.open(copy))
    state["mel_head.bias"] = state["mel_head.bias"][:-1]
    torch.save(state, copy / "gpt.pth")
    with pytest.raises(ConfigError, match=r"gpt\.pth does not fit the UnifiedVoice .*mel_head\.bias"):
        IndexTTS2(ReleaseFolder.open(copy))
    (copy / "gpt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"cannot read the GPT checkpoint .*gpt\.pth"):
        IndexTTS2(ReleaseFolder.open(copy))


def test_phases_gate_the_latent_pass(backbone, prompts):
    """The latent pass vocode runs after generation is phase teacher_forced: decode-only readers stay silent."""
    seen = []
    with backbone.hooks.add_reader("resid_pre.0", lambda x, ctx: seen.append(ctx.phase)):
        latent = backbone.latent(torch.tensor([5, 6, 7, 8]), prompts[0])
    assert latent.shape == (1, 4, backbone.hidden_size) and seen == []
    with backbone.hooks.add_reader("resid_pre.0", lambda x, ctx: seen.append(ctx.phase), phases=None):
        backbone.latent(torch.tensor([5, 6, 7, 8]), prompts[0])
    assert seen == [Phase.TEACHER_FORCED]


def test_harvest_fit_select_and_steer_on_indextts2(indextts2_release, corpus_root, backbone, tmp_path):
    """The SAE pipeline through emoctl's own commands on IndexTTS2: harvest an ESD folder with reference clips
    and emotion vectors (the IndexTTS2 recipe, shrunk), fit the SAE recipe on CPU, select, then steer: α = 0
    leaves the tokens bit-identical and α ≠ 0 changes them."""
    import json

    from emoctl_tests.helpers.cli import RECIPES, run_emoctl
    from emoctl.sae.export import load_pretrained
    from emoctl.commands.select import select_features
    from emoctl.steering import SAEFeatureSteering, steer
    from emoctl.store.reader import ActivationStore

    store, runs = tmp_path / "store", tmp_path / "runs"
    overrides = tmp_path / "small.yaml"
    overrides.write_text(json.dumps({
        "trainer": {"accelerator": "cpu", "callbacks": [{"class_path": "emoctl.callbacks.ActivationHarvester",
                                                         "init_args": {"path": str(store), "hookpoint": "resid_pre.1",
                                                                       "phases": ["decode"]}}]},
        "model": {"init_args": {"backbone": {"kind": "indextts2", "path": str(indextts2_release), "device": "cpu"},
                                "max_new_tokens": 24, "num_beams": 1}},
        "data": {"init_args": {"esd": {"root": str(corpus_root), "split": "held_out", "limit": 3},
                               "speakers": ["0011", "0012"], "batch_size": 10}}}))
    result = run_emoctl("harvest", "--config", str(RECIPES / "harvest_indextts2.yaml"), "--config", str(overrides),
                        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    opened = ActivationStore(str(store))
    manifest = json.loads((store / "manifest.json").read_text())
    assert backbone.backbone_id in json.dumps(manifest) and "resid_pre.1" in json.dumps(manifest)
    utterances = opened.utterances.to_pydict()
    stored = len(utterances["utt_id"])  # an utterance that drew the stop token first has no row to store
    assert 20 <= stored <= 3 * 2 * 5 and set(utterances["speaker"]) == {"0011", "0012"}
    assert stored == 30 or f"{30 - stored} empty (STOP first), not stored" in result.stdout + result.stderr
    assert set(utterances["emotion"]) == {"Neutral", "Angry", "Happy", "Sad", "Surprise"}
    assert max(utterances["num_rows"]) <= 23  # one row per fed token: at most max_new_tokens - 1
    assert 0 < opened.num_rows == sum(utterances["num_rows"]) and opened.d_model == backbone.hidden_size

    result = run_emoctl(
        "fit", "--config", str(RECIPES / "sae_indextts2.yaml"), "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.strategy=auto", "--trainer.precision=32-true", "--trainer.max_steps=30",
        "--trainer.val_check_interval=15", f"--trainer.default_root_dir={runs}",
        f"--trainer.logger.init_args.save_dir={runs}", "--trainer.logger.init_args.version=v0",
        "--model.init_args.sae.d_sae=256", "--model.init_args.sae.k=8", "--model.init_args.sae.k_aux=64",
        "--model.init_args.sae.hook_name=resid_pre.1", "--model.init_args.warmup_steps=5",
        f"--data.init_args.path={store}", "--data.init_args.batch_size=64", "--data.init_args.num_workers=0",
        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    sae_dir = runs / "sae_indextts2" / "v0" / "sae"
    sets = select_features(str(store), str(sae_dir), str(tmp_path / "select"), m=4, progress=False)
    assert set(sets) == {"Angry", "Happy", "Sad", "Surprise"}

    sae = load_pretrained(sae_dir)
    prompts = [Prompt(TEXTS[0], _clip(indextts2_release, 0), backbone.condition_for("Angry"))]
    settings = dict(UPSTREAM, max_new_tokens=16, seed=3)
    base = backbone.generate(prompts, **settings).tokens[0]
    with steer(backbone, SAEFeatureSteering(sae, sets["Angry"].feature_ids, 0.0)):
        zero = backbone.generate(prompts, **settings).tokens[0]
    with steer(backbone, SAEFeatureSteering(sae, sets["Angry"].feature_ids, 50.0)):
        pushed = backbone.generate(prompts, **settings).tokens[0]
    assert torch.equal(base, zero) and not torch.equal(base, pushed)

    # and acoustic attribution of a selected feature, the speaker voiced by its reference clip
    from emoctl.backbones.loading import BackboneSpec
    from emoctl.commands.attribute import attribute_features

    spec = BackboneSpec("indextts2", str(indextts2_release))
    with pytest.raises(ConfigError, match="give --corpus_root"):
        attribute_features(str(sae_dir), str(tmp_path / "select"), str(tmp_path / "attr"), backbone=spec)
    rows = attribute_features(str(sae_dir), str(tmp_path / "select"), str(tmp_path / "attr"), backbone=spec,
                              emotions=["Angry"], m=1, n_texts=1, speakers=["0019"], corpus_root=str(corpus_root),
                              temperature=0.8, top_k=30, max_new_tokens=12, n_bootstrap=20, progress=False)
    assert len(rows) >= 1 and rows[0]["feature"] == sets["Angry"].feature_ids[0]
    assert (tmp_path / "attr" / "attribution.md").is_file()

    # and a small atlas of it: stored utterances spoken again through IndexTTS2's vocoder chain from their
    # reference clips, a latent steered alone, the site's links and media in place
    from emoctl.reports.atlas import AtlasSettings, build_atlas

    summary = build_atlas(AtlasSettings(
        sae=str(sae_dir), store=str(store), out_dir=str(tmp_path / "atlas"), backbone=spec,
        corpus_root=str(corpus_root), scores=["any_step"], m=1, top_n=1, top_per_score=0, n_random=0,
        steer_alphas=[50.0], emotion_alphas=[], n_prompts=2, temperature=0.8, top_k=30, max_new_tokens=12,
        n_bootstrap=20, progress=False))
    site = tmp_path / "atlas"
    assert summary.latents == 256 and 1 <= summary.latent_pages <= 4 and (site / "index.html").is_file()
    clips = sorted(site.rglob("*.ogg"))
    assert len(clips) >= summary.latent_pages * 3 and all(sf.info(str(c)).duration > 0 for c in clips)
    assert list((site / "latents").glob("*/top0_*.png"))

    # and speaking under segments (two emotions' features composed, complementary schedules) through the contract
    from emoctl.evaluation.protocol import EvaluationProtocol
    from emoctl.reports.speak import SpeakSettings, run_speak
    from emoctl.synthesis import SamplingConfig

    segments = {"segments": [{"emotion": "Angry", "alpha": 50, "start_step": 4, "end_step": 8},
                             {"emotion": "Sad", "alpha": 50}]}
    protocol = EvaluationProtocol(speakers=["0019"], n_texts=1, sampling=SamplingConfig(max_new_tokens=12,
                                                                                          temperature=0.8, top_k=30))
    common = dict(method="sae_emotion", sae=str(sae_dir), selection=str(tmp_path / "select"), backbone=spec,
                  corpus_root=str(corpus_root), protocol=protocol, min_part_s=0.01, progress=False)
    with pytest.raises(ConfigError, match="past the token cap"):
        run_speak(SpeakSettings(schedule={"switch": {"at_s": 30}}, emotion="Angry", alpha=50,
                                out_dir=str(tmp_path / "never"), **common))
    assert not (tmp_path / "never").exists()
    run_speak(SpeakSettings(schedule=segments, out_dir=str(tmp_path / "speak"), **common))
    info = json.loads((tmp_path / "speak" / "speak_info.json").read_text())
    assert [(p["start"], p["end"], p["target"]) for p in info["parts"]] == [(0, 4, "Neutral"), (4, 8, "Angry"),
                                                                            (8, 12, "Sad")]
    assert info["tokens_kept_before_steering"] == 1 and info["hookpoint"] == "resid_pre.1"
    assert sorted(f.name for f in (tmp_path / "speak" / "audio").iterdir()) == [
        f"speak-t00-0019.{setting}.wav" for setting in ("scheduled", "unsteered")]

    # and calibrating α -> P(target) there: one curve per method and emotion, of this backbone, refused elsewhere
    from emoctl.evaluation.calibration import Calibration, alphas_for_intensity
    from emoctl.reports.calibration import CalibrationSettings, run_calibration

    run_calibration(CalibrationSettings(methods=["sae_emotion"], emotions=["Angry"], alphas={"sae_emotion": [50.0]},
                                        layer=None, sae=str(sae_dir), selection=str(tmp_path / "select"), store=None,
                                        backbone=spec, corpus_root=str(corpus_root), out_dir=str(tmp_path / "cal"),
                                        protocol=EvaluationProtocol(speakers=["0019"], n_texts=1, split="evaluation",
                                                                    reference_clips=1, sampling=protocol.sampling),
                                        n_bootstrap=20, progress=False))
    calibration = Calibration.load(tmp_path / "cal")
    assert calibration.backbone_id == backbone.backbone_id
    (curve,) = calibration.curves
    assert [p.alpha for p in curve.points] == [0.0, 50.0] and all(p.n == 1 for p in curve.points)
    assert all(0 <= p.p_target <= 1 and math.isfinite(p.wer) for p in curve.points)
    with pytest.raises(ConfigError, match="calibrates backbone indextts2"):
        alphas_for_intensity(tmp_path / "cal", "sae_emotion", ["Angry"], 0.5, load_backbone("mini_tts").backbone_id)


def test_reports_voice_indextts2_by_each_speakers_reference_clip(backbone, corpus_root):
    """Reports name speakers as the corpus does; a backbone that clones clips gets each speaker's reference
    clip (its first Neutral training clip), labelled with the speaker, and Table 1's prompts pass its checks."""
    from emoctl.evaluation.protocol import EvaluationProtocol
    from emoctl.reports.table1_cells import Cell, cell_prompts

    protocol = EvaluationProtocol(speakers=["0019", "0020"])
    assert protocol.voices(backbone, corpus_root) == ["0019", "0020"]
    assert EvaluationProtocol().voices(backbone, corpus_root) == ["0017", "0018", "0019", "0020"]
    voice = protocol.voice_for(backbone, corpus_root)
    texts, _ = protocol.texts(corpus_root)
    clip = voice("0019", texts[0])
    first_neutral = sorted((corpus_root / "0019" / "Neutral" / "train").glob("*.wav"))[0]
    assert isinstance(clip, VoiceClip) and clip.speaker == "0019" and clip.path == str(first_neutral)
    prompts = cell_prompts(backbone, Cell("induction", "Angry"), texts, ["0019", "0020"], "table", voice)
    backbone.check_prompts(prompts)
    assert [p.speaker for p in prompts] == ["0019", "0020"] * len(texts)
    assert all(p.emotion == backbone.condition_for("Neutral") for p in prompts)  # induction starts from Neutral
    with pytest.raises(ConfigError, match=r"protocol.speakers \['0042'\] are not speakers of"):
        EvaluationProtocol(speakers=["0042"]).voices(backbone, corpus_root)


@pytest.mark.slow
def test_the_released_gpt_shape_loads_and_decodes_in_bounded_memory(tmp_path):
    """Random weights at the released size (24 blocks x 1280, 20 heads, 12000 text tokens, 1815 mel positions):
    the adapter loads upstream's key layout, every hookpoint has the real shape, and decoding stays cached."""
    import resource

    from emoctl.backbones.indextts2.random_release import (RandomReleaseSize, write_random_release,
                                                           write_voice_clip)

    root = write_random_release(tmp_path / "release", RandomReleaseSize.released_gpt())
    tts = load_backbone("indextts2", str(root))
    assert (tts.num_layers, tts.hidden_size, tts.vocab_size) == (24, 1280, 8194)
    assert round(sum(p.numel() for p in tts.gpt.parameters()) / 1e6, 1) == 866.0  # REFERENCE.md's count
    assert tts.hookpoints[16] == "resid_pre.16" and tts.hookpoints[24 + 16] == "attn_out.16"
    assert len(tts.hookpoints) == 2 * 24 + 1  # resid_pre and attn_out per block, and lm_out
    voice = VoiceClip(str(write_voice_clip(tmp_path / "voice.wav")))
    shapes = []
    with tts.hooks.add_reader("resid_pre.16", lambda x, ctx: shapes.append(tuple(x.shape))):
        out = tts.generate([Prompt(TEXTS[0], voice, tts.condition_for("Sad")),
                            Prompt(TEXTS[1], voice, tts.neutral_emotion)], **UPSTREAM, max_new_tokens=6, seed=0)
    fed = max(len(t) if done else len(t) - 1 for t, done in zip(out.tokens, out.finished))
    assert fed > 0 and len(shapes) == fed and set(shapes) == {(2, 1, 1280)}  # one cached position per step
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert peak_gb < 12, f"peak resident memory {peak_gb:.1f} GB"


def test_upstreams_own_infer_runs_on_the_release_and_the_adapter_reproduces_it(indextts2_release, backbone,
                                                                             tmp_path, monkeypatch):
    """End-to-end fidelity: upstream's ``IndexTTS2(...).infer()``, offline on the release folder (its hub
    downloads pointed at the folder's hf_cache/, and only the Qwen text-to-emotion model and the nemo text
    normalizer, which cannot be had here and which infer() does not use for these inputs, replaced), with
    its default 3-beam sampling: the adapter's tokens for the same clip, emotion vector and seed equal the
    codes upstream generated, and its audio equals upstream's int16 samples given the same s2mel noise."""
    import shutil

    import numpy as np
    from omegaconf import OmegaConf

    import indextts.infer_v2 as infer_v2
    import indextts.utils.maskgct_utils as maskgct_utils
    from emoctl.backbones.indextts2.upstream import repair_cached_generate
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel

    cache = indextts2_release / "hf_cache"
    local = {("amphion/MaskGCT", "semantic_codec/model.safetensors"): cache / "semantic_codec_model.safetensors",
             ("funasr/campplus", "campplus_cn_common.bin"): cache / "campplus_cn_common.bin"}
    w2v = str(cache / "w2v-bert-2.0")

    class _Offline:
        def __init__(self, real):
            self.real = real

        def from_pretrained(self, name, **kwargs):
            assert name == "facebook/w2v-bert-2.0", name
            return self.real.from_pretrained(w2v, local_files_only=True)

    class _NoNormalizer:  # nemo-text-processing is not installed; the test texts need no normalization
        def __init__(self, *args, **kwargs):
            pass

        def load(self):
            pass

        def normalize(self, text):
            return text

    monkeypatch.setattr(infer_v2, "hf_hub_download", lambda repo, filename: str(local[(repo, filename)]))
    monkeypatch.setattr(infer_v2, "SeamlessM4TFeatureExtractor", _Offline(SeamlessM4TFeatureExtractor))
    monkeypatch.setattr(maskgct_utils, "Wav2Vec2BertModel", _Offline(Wav2Vec2BertModel))
    monkeypatch.setattr(infer_v2, "QwenEmotion", lambda path: None)
    monkeypatch.setattr(infer_v2, "TextNormalizer", _NoNormalizer)
    cfg = OmegaConf.load(indextts2_release / "config.yaml")
    cfg.vocoder.name = str(cache / "bigvgan")  # BigVGAN.from_pretrained reads a local folder as is
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    upstream = infer_v2.IndexTTS2(model_dir=str(indextts2_release), cfg_path=str(tmp_path / "config.yaml"),
                                  device="cpu")
    repair_cached_generate(upstream.gpt.inference_model)
    seen: dict = {}
    generate, cfm = upstream.gpt.inference_speech, upstream.s2mel.models["cfm"]
    sample = cfm.inference

    def spy_generate(*args, **kwargs):
        seen["codes"], latent = generate(*args, **kwargs)
        return seen["codes"], latent

    def spy_sample(*args, **kwargs):
        seen["rng"] = torch.get_rng_state()
        return sample(*args, **kwargs)

    monkeypatch.setattr(upstream.gpt, "inference_speech", spy_generate)
    monkeypatch.setattr(cfm, "inference", spy_sample)
    clip = _clip(indextts2_release, 1)
    torch.manual_seed(21)
    rate, upstream_wav = upstream.infer(clip.path, TEXTS[1], None, emo_vector=[0, 1, 0, 0, 0, 0, 0, 0],
                                       emo_alpha=0.8, max_mel_tokens=24, interval_silence=0)
    codes = seen["codes"][0]
    stops = (codes == backbone.gpt.stop_mel_token).nonzero()
    codes = codes[:int(stops[0, 0])] if stops.numel() else codes

    prompt = Prompt(TEXTS[1], clip, backbone.condition_for("Angry"))  # one-hot angry at weight 0.8
    ours = backbone.generate([prompt], **UPSTREAM, num_beams=3, length_penalty=0.0, max_new_tokens=24, seed=21)
    assert codes.numel() >= 3 and torch.equal(ours.tokens[0], codes), (ours.tokens[0].tolist(), codes.tolist())
    torch.set_rng_state(seen["rng"])
    backbone.vocode_seed = None  # s2mel's noise from the global RNG, as upstream draws it
    try:
        wave, our_rate = backbone.vocode(ours.tokens[0], prompt)
    finally:
        backbone.vocode_seed = 0
    ours_int16 = (torch.from_numpy(wave) * 32767).clamp(-32767, 32767).to(torch.int16).numpy()
    assert our_rate == rate == 22050 and ours_int16.shape == upstream_wav[:, 0].shape
    assert np.abs(ours_int16.astype(np.int32) - upstream_wav[:, 0]).max() <= 2
    assert np.abs(upstream_wav).max() > 100  # not silence
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_bench_harvest_indextts2_compares_equal_work_with_upstream(capsys):
    """The benchmark's rows generate the same tokens (it refuses to print otherwise) and the table names them."""
    from emoctl.bench.harvest_indextts2 import bench_harvest_indextts2

    rows = bench_harvest_indextts2(batch_size=2, max_new_tokens=4, full_size=False)
    assert [r["row"] for r in rows][0].startswith("upstream inference_speech") and len(rows) == 5
    assert rows[0]["ratio"] == 1.0 and all(r["tokens_per_s"] > 0 for r in rows)
    assert "8 tokens in every row" in capsys.readouterr().out  # 2 prompts x 4 tokens, the stop token disabled


def test_row_repetition_penalty_is_hugging_faces_arithmetic_with_per_row_padding():
    """The adapter's own penalty (transformers 5.17 refuses a per-row ignore length) against transformers'
    processor: per row, Hugging Face's result on that row with its padding cut off."""
    from transformers import RepetitionPenaltyLogitsProcessor

    from emoctl.backbones.indextts2.backbone import RowRepetitionPenalty

    g = torch.Generator().manual_seed(0)
    B, T, V = 4, 12, 50
    ids = torch.randint(0, V + 3, (B, T), generator=g)  # a few ids beyond the head's vocabulary, as HF allows
    scores = torch.randn(B, V, generator=g) * 3
    padding = torch.tensor([0, 3, 7, 11])
    ours = RowRepetitionPenalty(1.3, padding)(ids, scores.clone())
    for b in range(B):
        theirs = RepetitionPenaltyLogitsProcessor(1.3)(ids[b:b + 1, int(padding[b]):], scores[b:b + 1].clone())
        assert torch.equal(ours[b:b + 1], theirs)
    assert not torch.equal(ours, scores)  # the penalty did something
