"""The backbone contract suite on CosyVoice2 (upstream's real ``Qwen2LM`` around a Qwen2 model, random weights in
the release layout), plus what only CosyVoice2 has to prove: tokens equal upstream's own ``Qwen2LM.inference``,
teacher-forced logits equal the inference loop's at every position, a batch equals each prompt alone, upstream's
dropped ids are dropped as upstream drops them, and the release's files are read as data."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from emoctl.backbones import Phase, Prompt
from emoctl.backbones.conditions import EmotionClip, EmotionLabel, EmotionVector, InstructText, VoiceClip, VoiceName
from emoctl.backbones.cosyvoice2.reference import upstream_inference
from emoctl.backbones.loading import BackboneSpec, load_backbone
from emoctl.backbones.sampling import Sampling
from emoctl.errors import ConfigError
from emoctl.harvest.recorder import ActivationRecorder
from emoctl.testing import BackboneContract

TEXTS = ["Kids are talking by the door.", "The birch canoe slid on the smooth planks today.", "Go now."]
UPSTREAM = dict(top_p=0.8, top_k=25, ras_window=10, ras_tau=0.1)  # the release's ras_sampling


def _clip(release, i: int) -> VoiceClip:
    return VoiceClip(str(release.parent / "clips" / f"ref{i}.wav"))


@pytest.fixture(scope="module")
def backbone(cosyvoice2_release):
    return load_backbone("cosyvoice2", str(cosyvoice2_release))


@pytest.fixture(scope="module")
def prompts(cosyvoice2_release, backbone):
    return [Prompt(TEXTS[0], _clip(cosyvoice2_release, 0), backbone.condition_for("Angry")),
            Prompt(TEXTS[1], _clip(cosyvoice2_release, 1), backbone.condition_for("Neutral")),
            Prompt(TEXTS[2], _clip(cosyvoice2_release, 2), InstructText("A tired old man mumbles."))]


@pytest.fixture(scope="module")
def sampling():
    return Sampling(**UPSTREAM, max_new_tokens=24)


@pytest.fixture(scope="module")
def beam_sampling():
    return None  # upstream decodes one hypothesis per prompt


@pytest.fixture(scope="module")
def refused_prompts(cosyvoice2_release):
    clip = _clip(cosyvoice2_release, 0)
    return [Prompt(TEXTS[0], clip, EmotionLabel("Angry")),
            Prompt(TEXTS[0], clip, EmotionVector((0.0,) * 8)),
            Prompt(TEXTS[0], clip, EmotionClip(clip.path)),
            Prompt(TEXTS[0], VoiceName("英文女"), InstructText("Calm."))]  # no spk2info in CosyVoice2


@pytest.fixture(scope="module")
def refused_sampling():
    return {"num_beams": 2, "repetition_penalty": 2.0}


@pytest.fixture(scope="module")
def steer_hookpoint():
    return "resid_pre.1"


@pytest.fixture(scope="module")
def finish_block(backbone):
    """Qwen2DecoderLayer after ``residual + self_attn(...)``: ``r + mlp(post_attention_layernorm(r))``."""
    layers = backbone.qwen.layers

    def finish(layer: int, r):
        return r + layers[layer].mlp(layers[layer].post_attention_layernorm(r))

    return finish


class TestCosyVoice2Contract(BackboneContract):
    """Every contract check, on upstream's Qwen2LM loaded from a release folder."""


# ------------------------------------------------------------------ CosyVoice2's own proofs
def _upstream_inference(backbone, prompt: Prompt, seed: int, full_mask: bool = True
                        ) -> tuple[list[int], torch.Tensor]:
    """Upstream's own instruct2 decode (:func:`emoctl.backbones.cosyvoice2.reference.upstream_inference`: with
    the full-length step mask unless ``full_mask`` is False); its tokens and the logits its ``llm_decoder``
    computed at every step.  ``test_upstream_loop_without_the_mask_shim_attends_to_one_position`` pins why the
    mask is needed."""
    logits: list[torch.Tensor] = []
    handle = backbone.llm.llm_decoder.register_forward_hook(lambda m, i, o: logits.append(o.detach().clone()))
    try:
        tokens = upstream_inference(backbone, prompt, seed, full_mask=full_mask)
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
    """Training sees what inference sees (instruction prepended, upstream's training interleave not used):
    logits equal to float error at every position, the stop position included; batched and padded alike."""
    tokens = []
    for prompt, seed in zip(prompts, (11, 12, 13)):
        expected, logits = _upstream_inference(backbone, prompt, seed)
        out = backbone.teacher_forced([prompt], [torch.tensor(expected)])
        assert out.logits.shape[1] == len(expected) + 1 == logits.shape[0]
        assert out.logits.shape[2] == backbone.vocab_size == backbone.stop_token + 3
        torch.testing.assert_close(out.logits[0], logits, atol=2e-5, rtol=0)
        assert out.targets[0, -1].item() == backbone.stop_token
        tokens.append(torch.tensor(expected))
    batched = backbone.teacher_forced(prompts, tokens)
    for b, t in enumerate(tokens):
        alone = backbone.teacher_forced([prompts[b]], [t]).logits[0]
        torch.testing.assert_close(batched.logits[b, :len(t) + 1], alone, atol=2e-5, rtol=0)
        assert (batched.targets[b, len(t) + 1:] == -100).all()


def test_upstream_loop_without_the_mask_shim_attends_to_one_position(backbone, prompts):
    """Why the reference needs its shim: under transformers 5 upstream's own loop reads its (1, 1) step mask as
    "the first position only", so its step logits leave the full-attention ones the adapter computes."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers 4 reads the short mask as full attention")
    _, shimmed = _upstream_inference(backbone, prompts[0], 3)
    _, unshimmed = _upstream_inference(backbone, prompts[0], 3, full_mask=False)
    torch.testing.assert_close(unshimmed[0], shimmed[0], atol=1e-6, rtol=0)  # the prefill step agrees
    n = min(len(shimmed), len(unshimmed))
    assert (unshimmed[1:n] - shimmed[1:n]).abs().max() > 1e-3


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


@pytest.fixture(scope="module")
def dropping_backbone(cosyvoice2_release, tmp_path_factory):
    """The release with bistream's fill id (stop + 2) as likely as a speech token: upstream drops it when drawn
    and feeds the previous input again, so utterances run steps that add no token."""
    folder = tmp_path_factory.mktemp("cosyvoice2_fill") / "release"
    shutil.copytree(cosyvoice2_release, folder)
    state = torch.load(folder / "llm.pt", weights_only=True)
    stop = 6561
    state["llm_decoder.weight"][stop + 2] = state["llm_decoder.weight"][:stop].mean(0)
    state["llm_decoder.bias"][stop + 2] = torch.logsumexp(state["llm_decoder.bias"][:stop], 0) - 2.0
    torch.save(state, folder / "llm.pt")
    return load_backbone("cosyvoice2", str(folder))


def test_dropped_ids_are_dropped_as_upstream_drops_them(dropping_backbone, prompts):
    """With the fill id drawn at about one step in ten, tokens still equal upstream's loop (which drops it and
    feeds its previous input again), and the recorder keeps one state per fed token, at the step that fed it."""
    backbone = dropping_backbone
    prompt = prompts[1]
    expected, logits = _upstream_inference(backbone, prompt, 5)
    out = backbone.generate([prompt], backbone.upstream_sampling, seed=5)
    assert out.tokens[0].tolist() == expected
    steps = logits.shape[0]  # one llm_decoder call per step upstream ran
    assert steps > len(expected) + 1, "the fill id must have been drawn for this check to mean anything"
    fed = out.decode_steps[0]
    assert len(fed) == len(expected) and bool((fed[1:] > fed[:-1]).all()) and int(fed[-1]) >= len(expected)
    every_step: list[torch.Tensor] = []
    handle = backbone.hooks.add_reader("lm_out", lambda x, ctx: every_step.append(x[0].clone()), phases=[Phase.DECODE])
    try:
        with ActivationRecorder(backbone, "lm_out") as recorder:
            recorder.start()
            again = backbone.generate([prompt], backbone.upstream_sampling, seed=5)
    finally:
        handle.remove()
    rows = recorder.rows(again)[0]
    assert torch.equal(again.tokens[0], out.tokens[0]) and rows.shape == (len(expected), backbone.hidden_size)
    assert torch.equal(rows, torch.stack([every_step[int(s)] for s in fed]))
    assert not torch.equal(rows, torch.stack(every_step[:len(fed)]))  # step i is not token i's state here


def test_decode_hooks_see_one_position_per_row_and_lm_out_is_two_dimensional(backbone, prompts, sampling):
    shapes: dict[tuple[str, Phase], set] = {}
    handles = [backbone.hooks.add_reader(h, lambda x, ctx, h=h: shapes.setdefault((h, ctx.phase), set()).add(
        tuple(x.shape)), phases=None) for h in ("resid_pre.0", "attn_out.1", "lm_out")]
    try:
        out = backbone.generate(prompts, sampling, seed=1)
        backbone.teacher_forced(prompts, out.tokens)
    finally:
        for h in handles:
            h.remove()
    d = backbone.hidden_size
    assert shapes[("resid_pre.0", Phase.DECODE)] == {(3, 1, d)} == shapes[("attn_out.1", Phase.DECODE)]
    assert shapes[("lm_out", Phase.DECODE)] == {(3, d)} and shapes[("lm_out", Phase.PREFILL)] == {(3, d)}
    (tf,) = shapes[("lm_out", Phase.TEACHER_FORCED)]
    assert tf == (3, max(len(t) for t in out.tokens) + 1, d)


def test_conditions_instructions_and_the_voice_reach_the_flow_only(cosyvoice2_release, backbone):
    assert backbone.speakers == [] and backbone.condition_for("Neutral") == backbone.neutral_emotion
    assert backbone.upstream_sampling == Sampling(**UPSTREAM)
    assert backbone.token_rate == 25.0 and backbone.sample_rate == 24000
    custom = load_backbone("cosyvoice2", str(cosyvoice2_release), instructions={"Neutral": "Calm.", "Angry": "Rage."})
    assert custom.condition_for("Angry") == InstructText("Rage.") and custom.emotions == ["Neutral", "Angry"]
    with pytest.raises(ConfigError, match="no instruction for emotion 'Sad'"):
        custom.condition_for("Sad")
    with pytest.raises(ConfigError, match=r"without <\|endofprompt\|>"):
        load_backbone("cosyvoice2", str(cosyvoice2_release), instructions={"Neutral": "Calm.<|endofprompt|>"})
    with pytest.raises(ConfigError, match=r"backbone.options \['voice'\] mean nothing to the cosyvoice2"):
        BackboneSpec("cosyvoice2", str(cosyvoice2_release), options={"voice": "x"}).load()
    # The instruction's marker is one id of the Qwen2 tokenizer, and it is what separates instruction and text.
    marker = backbone.text_ids("<|endofprompt|>")
    assert len(marker) == 1 and backbone.text_ids("Calm.<|endofprompt|>")[-1] == marker[0]
    # The LLM hears no voice in instruct2 mode; the flow does.
    a = backbone.generate([Prompt(TEXTS[0], _clip(cosyvoice2_release, 0), backbone.neutral_emotion)],
                          temperature=0, max_new_tokens=20)
    b = backbone.generate([Prompt(TEXTS[0], _clip(cosyvoice2_release, 1), backbone.neutral_emotion)],
                          temperature=0, max_new_tokens=20)
    assert torch.equal(a.tokens[0], b.tokens[0])
    voice0, voice1 = (Prompt(TEXTS[0], _clip(cosyvoice2_release, i), backbone.neutral_emotion) for i in (0, 1))
    state = torch.random.get_rng_state()
    w1, rate = backbone.vocode(a.tokens[0], voice0)
    assert torch.equal(torch.random.get_rng_state(), state), "vocoding must not draw from the caller's generator"
    w2, _ = backbone.vocode(a.tokens[0], voice1)
    w3, _ = backbone.vocode(a.tokens[0], voice0)
    assert rate == 24000 and w1.shape == w2.shape == (a.tokens[0].numel() * 960,)  # 40 ms a token
    assert not np.array_equal(w1, w2) and np.array_equal(w1, w3)


def test_building_the_vocoder_leaves_every_global_generator_as_it_was(cosyvoice2_release):
    """Upstream's CausalConditionalCFM seeds Python's, NumPy's and torch's generators when built."""
    import random

    from emoctl.backbones.cosyvoice2.release import CosyVoice2Release
    from emoctl.backbones.cosyvoice2.vocoder import CausalFlowHiftVocoder

    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    CausalFlowHiftVocoder(CosyVoice2Release.open(cosyvoice2_release), torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_the_speech_tokenizer_gives_25_tokens_a_second(backbone):
    rng = np.random.default_rng(0)
    for rate, seconds in ((16000, 1.0), (24000, 2.0)):
        tokens = backbone.speech_tokenizer.encode((0.1 * rng.standard_normal(int(rate * seconds))).astype(np.float32),
                                                  rate)
        assert abs(tokens.numel() - 25 * seconds) <= 1 and int(tokens.max()) < backbone.stop_token, tokens.numel()


def test_release_errors_name_every_missing_file_and_refuse_unfit_weights(cosyvoice2_release, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone("cosyvoice2", str(tmp_path / "nowhere"))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(cosyvoice2_release / "cosyvoice2.yaml", partial)
    with pytest.raises(ConfigError) as err:
        load_backbone("cosyvoice2", str(partial))
    for name in ("llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx",
                 "CosyVoice-BlankEN/config.json", "CosyVoice-BlankEN/vocab.json"):
        assert name in str(err.value)
    broken = tmp_path / "broken"
    shutil.copytree(cosyvoice2_release, broken)
    state = torch.load(broken / "llm.pt", weights_only=True)
    state["llm_decoder.bias"][0] = float("nan")
    torch.save(state, broken / "llm.pt")
    with pytest.raises(ConfigError, match="NaN or Inf weights"):
        load_backbone("cosyvoice2", str(broken))
    state["llm_decoder.bias"][0] = 0.0
    del state["llm.model.model.norm.weight"]
    torch.save(state, broken / "llm.pt")
    with pytest.raises(ConfigError, match=r"llm.pt does not fit the Qwen2LM.*1 missing key"):
        load_backbone("cosyvoice2", str(broken))


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_the_release_files_are_read_as_data(cosyvoice2_release, tmp_path):
    """cosyvoice2.yaml builds only the released classes (its !apply: seeds are never called), the Qwen2
    config.json and tokenizer_config.json cannot name code to import, and the Qwen2 folder is the release's own."""
    folder = tmp_path / "crafted"
    shutil.copytree(cosyvoice2_release, folder)
    marker = tmp_path / "ran"
    yaml_path = folder / "cosyvoice2.yaml"
    text = yaml_path.read_text(encoding="utf-8")
    yaml_path.write_text(text.replace("__set_seed1: !apply:random.seed [1986]",
                                      f"__set_seed1: !apply:pathlib.Path.touch ['{marker}']"), encoding="utf-8")
    load_backbone("cosyvoice2", str(folder))  # loads: the call is recorded, never made
    assert not marker.exists()
    cases = [
        (text.replace("!new:cosyvoice.llm.llm.Qwen2Encoder", "!new:subprocess.Popen"),
         r"llm.llm is !new:subprocess.Popen; at llm.llm emoctl builds only cosyvoice.llm.llm.Qwen2Encoder"),
        (text.replace("pretrain_path: !ref <qwen_pretrain_path>", "pretrain_path: /elsewhere"),
         r"llm.llm.pretrain_path is '/elsewhere'; emoctl reads the Qwen2 model of the release folder itself"),
        (text.replace("!ref <chunk_size> * <token_mel_ratio>", "!ref <chunk_size> + <token_mel_ratio>"),
         r"neither a plain <key> reference nor a product"),
        (text.replace("output_size: 512\n        attention_heads: 8", "output_size: 256\n        attention_heads: 8"),
         r"hard-wired to 512"),
    ]
    for crafted, message in cases:
        yaml_path.write_text(crafted, encoding="utf-8")
        with pytest.raises(ConfigError, match=message):
            load_backbone("cosyvoice2", str(folder))
    yaml_path.write_text(text, encoding="utf-8")
    qwen = folder / "CosyVoice-BlankEN"
    original = (qwen / "config.json").read_text()
    for changes, message in [({"auto_map": {"AutoModel": "evil.Model"}}, r"key\(s\) auto_map"),
                             ({"model_type": "llama"}, r"model_type 'llama'"),
                             ({"hidden_size": 96}, r"llm_input_size is 64 but .*hidden_size 96")]:
        (qwen / "config.json").write_text(original)
        _edit_json(qwen / "config.json", **changes)
        with pytest.raises(ConfigError, match=message):
            load_backbone("cosyvoice2", str(folder))
    (qwen / "config.json").write_text(original)
    _edit_json(qwen / "tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.Tok", None]})
    with pytest.raises(ConfigError, match="auto_map, which names code to import"):
        load_backbone("cosyvoice2", str(folder))
    _edit_json(qwen / "tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast")
    with pytest.raises(ConfigError, match="tokenizer_class 'PreTrainedTokenizerFast'"):
        load_backbone("cosyvoice2", str(folder))


def test_the_training_examples_encoder_form_is_read_too(cosyvoice2_release, tmp_path):
    """The training example writes the flow encoder with use_dynamic_chunk and no static_chunk_size (only
    streaming reads them); both forms build the same flow."""
    folder = tmp_path / "example_form"
    shutil.copytree(cosyvoice2_release, folder)
    path = folder / "cosyvoice2.yaml"
    path.write_text(path.read_text().replace("static_chunk_size: !ref <chunk_size>\n",
                                             "use_dynamic_chunk: True\n"), encoding="utf-8")
    backbone = load_backbone("cosyvoice2", str(folder))
    tokens = torch.arange(12) * 37
    prompt = Prompt(TEXTS[2], _clip(cosyvoice2_release, 0), backbone.neutral_emotion)
    reference = load_backbone("cosyvoice2", str(cosyvoice2_release))
    assert np.array_equal(backbone.vocode(tokens, prompt)[0], reference.vocode(tokens, prompt)[0])


# ------------------------------------------------------------------ the recipes, through emoctl's commands
def test_the_sae_pipeline_runs_from_the_cosyvoice2_recipes(cosyvoice2_release, backbone, corpus_root, tmp_path):
    """recipes/harvest_cosyvoice2.yaml and recipes/sae_cosyvoice2.yaml as a user runs them, shrunk to this CPU and
    the tiny release: the store holds one decode state per fed token at the recipe's RAS settings, the SAE fits
    and exports, selection finds emotion sets, and α = 0 steering leaves tokens bit-identical while α ≠ 0 does not."""
    from emoctl.commands.select import select_features
    from emoctl.sae.export import load_pretrained
    from emoctl.steering import SAEFeatureSteering, steer
    from emoctl.store.reader import ActivationStore
    from emoctl_tests.helpers.cli import RECIPES, run_emoctl

    store, runs = tmp_path / "store", tmp_path / "runs"
    overrides = tmp_path / "small.yaml"
    overrides.write_text(json.dumps({
        "trainer": {"accelerator": "cpu", "callbacks": [{"class_path": "emoctl.callbacks.ActivationHarvester",
                                                         "init_args": {"path": str(store), "hookpoint": "resid_pre.1",
                                                                       "phases": ["decode"]}}]},
        "model": {"init_args": {"backbone": {"kind": "cosyvoice2", "path": str(cosyvoice2_release), "device": "cpu"},
                                "max_new_tokens": 200}},
        "data": {"init_args": {"esd": {"root": str(corpus_root), "split": "held_out", "limit": 2},
                               "speakers": ["0011", "0012"], "batch_size": 10}}}))
    result = run_emoctl("harvest", "--config", str(RECIPES / "harvest_cosyvoice2.yaml"), "--config", str(overrides),
                        timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    opened = ActivationStore(str(store))
    manifest = (store / "manifest.json").read_text()
    assert backbone.backbone_id in manifest and '"ras_window": 10' in manifest
    utterances = opened.utterances.to_pydict()
    assert len(utterances["utt_id"]) == 2 * 2 * 5 and set(utterances["emotion"]) == set(backbone.emotions)
    assert opened.d_model == backbone.hidden_size and opened.num_rows == sum(utterances["num_rows"])
    result = run_emoctl(
        "fit", "--config", str(RECIPES / "sae_cosyvoice2.yaml"), "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.strategy=auto", "--trainer.precision=32-true", "--trainer.max_steps=30",
        "--trainer.val_check_interval=15", f"--trainer.default_root_dir={runs}",
        f"--trainer.logger.init_args.save_dir={runs}", "--trainer.logger.init_args.version=v0",
        "--model.init_args.sae.d_in=64", "--model.init_args.sae.d_sae=128", "--model.init_args.sae.k=8",
        "--model.init_args.sae.k_aux=32", "--model.init_args.sae.hook_name=resid_pre.1",
        "--model.init_args.warmup_steps=5", f"--data.init_args.path={store}", "--data.init_args.batch_size=64",
        "--data.init_args.num_workers=0", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    sae_dir = runs / "sae_cosyvoice2" / "v0" / "sae"
    sets = select_features(str(store), str(sae_dir), str(tmp_path / "select"), m=4, progress=False)
    assert set(sets) == {"Angry", "Happy", "Sad", "Surprise"}
    sae = load_pretrained(sae_dir)
    prompts = [Prompt(TEXTS[2], _clip(cosyvoice2_release, 0), backbone.neutral_emotion)]
    settings = dict(UPSTREAM, max_new_tokens=30, seed=3)
    base = backbone.generate(prompts, **settings).tokens[0]
    with steer(backbone, SAEFeatureSteering(sae, sets["Angry"].feature_ids, 0.0)):
        zero = backbone.generate(prompts, **settings).tokens[0]
    with steer(backbone, SAEFeatureSteering(sae, sets["Angry"].feature_ids, 50.0)):
        pushed = backbone.generate(prompts, **settings).tokens[0]
    assert torch.equal(base, zero) and not torch.equal(base, pushed)


def test_cocoemo_layers_and_directions_run_from_the_cosyvoice2_recipe(cosyvoice2_release, backbone, corpus_root,
                                                                      tmp_path):
    """recipes/evaluation/inspect_layers_cosyvoice2.yaml through `emoctl inspect layers` and `emoctl extract`:
    every attention output scored, the directions written at the chosen layers, and steering with them as one
    intervention moves the tokens (α = 0 leaves them bit-identical)."""
    from emoctl.cli import main
    from emoctl.selection.layers import Discriminability
    from emoctl.steering import SteeringVectors, steer, vector_steering
    from emoctl_tests.helpers.cli import REPO

    common = ["--config", str(REPO / "recipes" / "evaluation" / "inspect_layers_cosyvoice2.yaml"),
              "--backbone.path", str(cosyvoice2_release), "--backbone.device", "cpu", "--corpus_root", str(corpus_root),
              "--speakers", '["0011", "0012", "0013"]', "--emotions", '["Angry"]', "--n_train_texts", "3",
              "--sampling.max_new_tokens", "200", "--progress", "false"]
    points = ["attn_out.0", "attn_out.1", "resid_pre.1"]
    assert main(["inspect", "layers", *common, "--n_eval_texts", "2", "--hookpoints", json.dumps(points),
                 "--out_dir", str(tmp_path / "layers")]) == 0
    scored = Discriminability.load(tmp_path / "layers" / "discriminability.json")
    assert [s.hookpoint for s in scored.scores] == points and scored.backbone == backbone.backbone_id
    assert main(["extract", *common, "--discriminability", str(tmp_path / "layers" / "discriminability.json"),
                 "--top", "2", "--out_dir", str(tmp_path / "dirs")]) == 0
    vectors = SteeringVectors.load(tmp_path / "dirs")  # the recipe's family: attention outputs only
    assert vectors.hookpoints == scored.top(2, "attn_out") and vectors.emotions == ["Angry"]
    assert sorted(vectors.hookpoints) == ["attn_out.0", "attn_out.1"]
    prompts = [Prompt(TEXTS[2], _clip(cosyvoice2_release, 0), backbone.neutral_emotion)]
    settings = dict(UPSTREAM, max_new_tokens=30, seed=3)
    base = backbone.generate(prompts, **settings).tokens[0]
    with steer(backbone, vector_steering(vectors, "Angry", 0.0)):
        zero = backbone.generate(prompts, **settings).tokens[0]
    with steer(backbone, vector_steering(vectors, "Angry", 8.0)):
        pushed = backbone.generate(prompts, **settings).tokens[0]
    assert torch.equal(base, zero) and not torch.equal(base, pushed)


@pytest.mark.parametrize("kind", ["cosyvoice", "cosyvoice2"])
def test_bench_cosyvoice_times_equal_work_against_upstreams_loop(kind, capsys):
    """`emoctl bench cosyvoice --kind ...` on the tiny release: every decoding row makes the same tokens (the
    benchmark stops otherwise), and each ratio is against upstream's loop timed in the same run."""
    from emoctl.bench.cosyvoice import bench_cosyvoice

    rows = bench_cosyvoice(batch_size=3, max_new_tokens=8, train_tokens=20, full_size=False, kind=kind)
    assert [r["row"] for r in rows][1:] == ["adapter, one at a time", "adapter, batch 3",
                                            "frozen teacher-forced forward (no grad)", "EmoShift training step"]
    assert rows[0]["ratio"] == 1.0 and all(r["seconds"] > 0 for r in rows)
    assert ("Qwen2LM.inference" if kind == "cosyvoice2" else "TransformerLM.inference") in rows[0]["row"]
    assert "| decoding | seconds |" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="runs cosyvoice or cosyvoice2"):
        bench_cosyvoice(kind="indextts2")


@pytest.mark.slow
def test_full_size_llm_loads_strictly_decodes_and_matches_upstream(tmp_path):
    """The released LLM's shape (Qwen2.5-0.5B's 24 layers at 896 with the 151,936-row text embedding, plus the
    speech embedding and head: 505.8 M parameters, the 2.02 GB of the released llm.pt in float32) with random
    weights, through load_backbone; a batch of two equals each prompt alone, and upstream's loop."""
    from emoctl.backbones.cosyvoice2.random_release import RandomReleaseSize, write_random_release
    from emoctl.backbones.indextts2.random_release import write_voice_clip

    root = write_random_release(tmp_path / "full", RandomReleaseSize.full())
    (root.parent / "clips").mkdir()
    for i, f0 in enumerate((140.0, 220.0)):
        write_voice_clip(root.parent / "clips" / f"ref{i}.wav", seconds=2.0, f0=f0, seed=i)
    backbone = load_backbone("cosyvoice2", str(root))
    assert sum(p.numel() for p in backbone.llm.parameters()) == 505_803_812  # tied text embedding counted once
    assert backbone.hidden_size == 896 and backbone.num_layers == 24
    prompts = [Prompt(TEXTS[2], _clip(root, 0), backbone.condition_for("Angry")),
               Prompt(TEXTS[0], _clip(root, 1), backbone.condition_for("Sad"))]
    settings = Sampling(**UPSTREAM, max_new_tokens=12, seed=2)
    batch = backbone.generate(prompts, settings)
    for b, prompt in enumerate(prompts):
        alone = backbone.generate([prompt], Sampling(**{**vars(settings), "seed": 2 + b}))
        assert torch.equal(batch.tokens[b], alone.tokens[0])
    expected = upstream_inference(backbone, prompts[0], 3, max_tokens=12)
    assert backbone.generate([prompts[0]], backbone.upstream_sampling, seed=3, max_new_tokens=12).tokens[0].tolist() \
        == expected
