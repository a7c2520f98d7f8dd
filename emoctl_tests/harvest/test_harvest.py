"""Harvest: decode-phase gating, rows equal a teacher-forced recomputation, pairs, kill and resume, errors, CLI.

A tiny random MiniTTS (the helper of test_mini_tts) saved with MiniTTS.save stands in for the trained
checkpoint; every test runs the real backbone, the real store and the real CLI.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from emoctl_tests.helpers.cli import REPO, RECIPES, parse_emoctl, run_emoctl
from data_modules import CorpusTexts, PromptGridDataModule
from emoctl.backbones import Phase
from emoctl.backbones import loading
from emoctl.backbones.loading import BackboneSpec, load_backbone
from emoctl.backbones.mini_tts import MiniTTS
from emoctl.errors import ConfigError, StoreError
from emoctl.harvest import ActivationRecorder, HarvestModule
from emoctl.harvest.run import harvest_into
from emoctl.store import ActivationStore
from emoctl_tests.helpers.tiny_tts import EMOTIONS, SPEAKERS, random_tts

TEXTS = ["hello there", "good day to you", "no way", "what a nice cat", "we sat by the sea", "it is late",
         "come here now", "a red bus", "the sun is up", "see you soon", "so it goes", "i like tea"]
HOOK = "resid_pre.1"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # also makes in-process rows bit-comparable with OMP_NUM_THREADS=1 subprocesses
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_tts(seed=0).save(tmp_path_factory.mktemp("ckpt") / "tiny_tts")


def _module(checkpoint: Path, **kwargs) -> HarvestModule:
    return HarvestModule(BackboneSpec(path=str(checkpoint)), max_new_tokens=kwargs.pop("max_new_tokens", 40), **kwargs)


def _grid(texts=TEXTS[:4], batch_size: int = 4, **kwargs) -> PromptGridDataModule:
    return PromptGridDataModule(texts=list(texts), batch_size=batch_size, **kwargs)


def _segments(path: Path) -> dict[str, np.ndarray]:
    store = ActivationStore(path)
    return {u: store.segment(u).numpy() for u in store.utterances["utt_id"].to_pylist()}


def _teacher_forced_states(tts: MiniTTS, prompt, tokens: torch.Tensor, hookpoint: str = HOOK
                           ) -> tuple[torch.Tensor, int]:
    """(P + T, d) states at ``hookpoint`` from one unpadded teacher-forced pass, and the prefix length P."""
    seen = {}
    with tts.hooks.add_reader(hookpoint, lambda x, ctx: seen.__setitem__("x", x.detach().clone()),
                              phases=[Phase.TEACHER_FORCED]), torch.no_grad():
        tts.teacher_forced([prompt], [tokens])
    prefix = len(tts.tokenizer.encode(prompt.text)) + 3
    return seen["x"][0], prefix


# ------------------------------------------------------------------------------ rows and gating
@pytest.mark.parametrize("beams", [1, 2])
def test_stored_rows_are_decode_states_equal_to_a_teacher_forced_pass(checkpoint, tmp_path, beams):
    """With beams, too: the store holds the states along the returned hypothesis, none of a dropped beam."""
    module, grid = _module(checkpoint, num_beams=beams), _grid()
    assert module.generation_settings().get("num_beams", 1) == beams  # part of the store's identity when used
    session = harvest_into(tmp_path / "store", module, grid, HOOK, progress=False)
    segments = _segments(tmp_path / "store")
    tts = module.backbone
    checked = truncated = 0
    for batch in grid.all_batches():  # the same seeds give the same tokens again
        out = module.generate_batch(batch)
        for prompt, tokens, finished in zip(out.prompts, out.generation.tokens, out.generation.finished):
            if len(tokens) == 0:
                assert prompt.utt_id not in segments  # STOP first: nothing to store
                continue
            rows = segments[prompt.utt_id]
            # One row per decode step: every generated token is fed back, except the last of a cut utterance.
            assert rows.shape[0] == (len(tokens) if finished else len(tokens) - 1)
            states, prefix = _teacher_forced_states(tts, prompt, tokens)
            expected = states[prefix: prefix + rows.shape[0]].numpy()  # the positions of tokens 0 .. n-1
            scale = float(np.abs(expected).max())  # random weights: states of size ~10, float32 noise ~1e-5
            np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-6 * scale * 10)
            # Not the prefill: the start-of-speech state is not among the rows.
            assert not np.allclose(rows[0], states[prefix - 1].numpy(), atol=1e-3)
            checked += 1
            truncated += not finished
    assert checked >= 12 and session.written == checked
    assert 0 < truncated < checked  # both kinds of utterance were covered


def test_grid_asks_the_backbone_for_conditions_and_files_utterances_under_the_corpus_name():
    """A backbone asked by instruction (CosyVoice) gets its own condition in every prompt, while the store keeps
    the corpus's emotion name, so selection pairs Angry with Neutral as it does on the mini TTS."""
    from emoctl.backbones.conditions import EmotionLabel, InstructText

    grid = _grid(TEXTS[:1], speakers=["0011"], emotions=["Angry"])
    grid.bind_backbone(["0011"], ["Neutral", "Angry"], lambda e: InstructText(f"speak in a {e.lower()} tone"))
    prompts = grid.prompts
    assert [p.emotion for p in prompts] == [InstructText("speak in a neutral tone"),
                                            InstructText("speak in a angry tone")]
    assert [p.meta().emotion for p in prompts] == ["Neutral", "Angry"]
    assert [p.utt_id for p in prompts] == ["t0000-0011-Neutral", "t0000-0011-Angry"]
    plain = _grid(TEXTS[:1], speakers=["0011"], emotions=["Angry"])
    plain.bind_backbone(["0011"], ["Neutral", "Angry"])  # labels: the mini TTS's way, unchanged
    assert [p.emotion for p in plain.prompts] == [EmotionLabel("Neutral"), EmotionLabel("Angry")]
    assert [p.meta().emotion for p in plain.prompts] == ["Neutral", "Angry"]


def test_reader_gating_prefill_and_teacher_forced_passes_are_not_recorded(checkpoint):
    tts = load_backbone("mini_tts", str(checkpoint))
    grid = _grid(TEXTS[:2])
    grid.bind_backbone(tts.speakers, tts.emotions)
    prompts = grid.prompts[:3]
    decode_only = ActivationRecorder(tts, HOOK)
    with decode_only:
        decode_only.start()
        tts.teacher_forced(prompts, [torch.arange(5), torch.arange(3), torch.arange(7)])
        assert decode_only.rows(tts.generate(prompts[:1], max_new_tokens=1, seed=0))[0].shape[0] == 0
        decode_only.start()
        gen = tts.generate(prompts, max_new_tokens=30, seed=3)
        decode_rows = decode_only.rows(gen)
    both = ActivationRecorder(tts, HOOK, phases=["prefill", "decode"])
    with both:
        both.start()
        gen2 = tts.generate(prompts, max_new_tokens=30, seed=3)
        both_rows = both.rows(gen2)
    assert not tts.hooks.has_hooks()  # detached
    for b, prompt in enumerate(prompts):
        n = len(gen.tokens[b]) - (0 if gen.finished[b] else 1)
        P = gen.prefill_lengths[b]
        assert decode_rows[b].shape[0] == n and both_rows[b].shape[0] == P + n
        torch.testing.assert_close(both_rows[b][P:], decode_rows[b])
        states, prefix = _teacher_forced_states(tts, prompt, gen.tokens[b])
        assert prefix == P
        torch.testing.assert_close(both_rows[b][:P], states[:P], rtol=1e-4, atol=1e-4)  # left padding removed


def test_pairs_share_text_and_speaker_and_every_emotion_has_its_neutral_twin(checkpoint, tmp_path):
    harvest_into(tmp_path / "store", _module(checkpoint), _grid(emotions=["Angry", "Sad"]), HOOK, progress=False)
    store = ActivationStore(tmp_path / "store")
    table = store.utterances.to_pylist()
    groups = defaultdict(list)
    for row in table:
        groups[row["pair_key"]].append(row)
        assert row["utt_id"] == f"{row['text_id']}-{row['speaker']}-{row['emotion']}"
        assert row["condition"] == f"prompt={row['emotion']}"
    assert len(groups) == 4 * len(SPEAKERS)
    for key, rows in groups.items():
        assert len({(r["text_id"], r["speaker"]) for r in rows}) == 1 and key == f"{rows[0]['speaker']}|{rows[0]['text_id']}"
        emotions = {r["emotion"] for r in rows}
        assert emotions <= set(EMOTIONS) and ("Neutral" in emotions or len(rows) < 3)  # empty ones are absent
    assert sum(r["emotion"] == "Neutral" for r in table) >= 6  # Neutral added though not asked for
    assert store.spec.hookpoint == HOOK and store.spec.layer == 1 and store.spec.backbone.startswith("mini-tts@")
    assert store.manifest["created"]["extra"]["harvest"]["phases"] == ["decode"]


def test_grid_batches_are_fixed_shared_by_rank_and_skipped_when_committed():
    grid = _grid(TEXTS[:5], batch_size=4)
    grid.bind_backbone(SPEAKERS, EMOTIONS)
    batches = grid.all_batches()
    assert len(grid.prompts) == 5 * 2 * 3 and len(batches) == 8
    shares = [grid.pending_batches(r, 3) for r in range(3)]
    assert sorted(b.index for s in shares for b in s) == list(range(8))
    grid.skip_utt_ids([p.utt_id for p in batches[0].prompts] + [batches[1].prompts[0].utt_id])
    pending = grid.pending_batches()
    assert [b.index for b in pending] == list(range(1, 8))  # a partly committed batch is redone whole
    assert pending[0] == batches[1]  # same prompts, same key, so the same seed
    held = CorpusTexts(split="held_out").texts()
    train = CorpusTexts(split="train", limit=3).texts()
    unseen = CorpusTexts(split="unseen", n_unseen=2).texts()
    assert [t for t, _ in held][:2] == ["s0000", "s0001"] and len(held) == 17 + 26
    assert [t for t, _ in train] == ["s0043", "s0044", "s0045"]
    assert [t for t, _ in unseen] == ["s0300", "s0301"]
    assert not {s for _, s in unseen} & {s for _, s in CorpusTexts(split="all").texts()}


# ------------------------------------------------------------------------------ kill and resume
def _harvest_cli_args(checkpoint: Path, store: Path) -> list[str]:
    return ["harvest", "--config", str(RECIPES / "harvest_mini.yaml"),
            f"--model.init_args.backbone.path={checkpoint}", "--model.init_args.max_new_tokens=60",
            f"--trainer.callbacks.init_args.path={store}", f"--trainer.callbacks.init_args.hookpoint={HOOK}",
            "--trainer.callbacks.init_args.shard_rows=64", "--trainer.enable_progress_bar=false",
            "--data.init_args.corpus=null", f"--data.init_args.texts=[{', '.join(TEXTS)}]",
            "--data.init_args.batch_size=4"]


def _committed(store: Path) -> int:
    index = store / "index-r0000.json"
    if not index.is_file():
        return 0
    try:
        return sum(s["num_utterances"] for s in json.loads(index.read_text())["shards"])
    except (json.JSONDecodeError, KeyError):
        return 0


def test_harvest_killed_and_restarted_equals_an_uninterrupted_one(checkpoint, tmp_path):
    reference = tmp_path / "reference"
    harvest_into(reference, _module(checkpoint, max_new_tokens=60), _grid(TEXTS), HOOK, shard_rows=64,
                 progress=False)
    expected = _segments(reference)

    store = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "emoctl", *_harvest_cli_args(checkpoint, store)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # start-up alone took minutes on the shared 2-core machine
        while _committed(store) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGSTOP)
        committed = _committed(store)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 0 < committed < len(expected), f"kill landed at {committed} of {len(expected)}: {proc.stderr.read()[-2000:]}"
    # The killed store looks whole to a reader but is refused for what it lacks, until the resume finishes it.
    killed = ActivationStore(store)
    assert not killed.finished and ActivationStore(reference).finished
    with pytest.raises(StoreError, match="unfinished: its harvest has not marked it complete"):
        killed.require_finished("train on")

    resumed = run_emoctl(*_harvest_cli_args(checkpoint, store), cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"({committed} already committed" in resumed.stderr + resumed.stdout
    got = _segments(store)
    assert sorted(got) == sorted(expected)
    for utt_id, rows in expected.items():
        assert np.array_equal(got[utt_id], rows), utt_id  # bit-identical
    assert json.loads((store / "manifest.json").read_text())["num_utterances"] == len(expected)  # consolidated
    assert ActivationStore(store).finished


# ------------------------------------------------------------------------------ bad input
def test_the_recorder_reads_an_attention_output_as_it_reads_a_block_input(checkpoint):
    """At ``attn_out.1`` the recorder keeps one row per fed token, equal to the same positions of a teacher-forced
    pass: an output hookpoint harvests like an input one."""
    tts = load_backbone("mini_tts", str(checkpoint))
    grid = _grid(TEXTS[:2])
    grid.bind_backbone(tts.speakers, tts.emotions)
    prompts = grid.prompts[:2]
    recorder = ActivationRecorder(tts, "attn_out.1")
    with recorder:
        recorder.start()
        gen = tts.generate(prompts, max_new_tokens=20, seed=3)
        rows = recorder.rows(gen)
    for b, prompt in enumerate(prompts):
        n = len(gen.tokens[b]) - (0 if gen.finished[b] else 1)
        states, prefix = _teacher_forced_states(tts, prompt, gen.tokens[b], "attn_out.1")
        assert rows[b].shape == (n, tts.hidden_size)
        torch.testing.assert_close(rows[b], states[prefix:prefix + n], rtol=1e-4, atol=1e-4)  # tokens 0 .. n-1
    with pytest.raises(ConfigError, match=r"attn_out.0 .. attn_out.2"):
        ActivationRecorder(tts, "attn_out.7")


def test_bad_names_texts_and_hookpoints_are_config_errors_naming_the_value(checkpoint, tmp_path):
    tts = load_backbone("mini_tts", str(checkpoint))
    with pytest.raises(ConfigError, match=r"unknown speaker '0099'.*0011, 0012"):
        _grid(speakers=["0011", "0099"]).bind_backbone(tts.speakers, tts.emotions)
    with pytest.raises(ConfigError, match=r"unknown emotion 'Bored'.*Neutral, Angry, Sad"):
        _grid(emotions=["Bored"]).bind_backbone(tts.speakers, tts.emotions)
    with pytest.raises(ConfigError, match=r"empty text '  ' at t0001"):
        _grid(["hi", "  "])
    empty_file = tmp_path / "texts.txt"
    empty_file.write_text("\n\n")
    with pytest.raises(ConfigError, match="texts.txt holds no text"):
        PromptGridDataModule(texts_file=str(empty_file))
    with pytest.raises(ConfigError, match="exactly one of"):
        PromptGridDataModule(texts=["a"], corpus=CorpusTexts())
    with pytest.raises(ConfigError, match=r"hookpoint 'resid_pre.9' is out of range.*3 blocks"):
        ActivationRecorder(tts, "resid_pre.9")
    with pytest.raises(ConfigError, match=r"unknown hookpoint 'resid_post.1'"):
        ActivationRecorder(tts, "resid_post.1")
    with pytest.raises(ConfigError, match="teacher_forced"):
        ActivationRecorder(tts, HOOK, phases=["teacher_forced"])
    module = _module(checkpoint)
    with pytest.raises(ConfigError, match=r"characters the tokenizer cannot read.*'\{'"):
        module.bind_prompts(_grid(["hi {there}"]))


def test_missing_mismatched_and_unsupported_checkpoints_are_clear_errors(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "DEFAULT_MINI_TTS_DIR", tmp_path / "assets" / "mini_tts")
    with pytest.raises(ConfigError, match=r"default mini TTS checkpoint .*assets/mini_tts is missing.*"
                                          r"emoctl fit --config recipes/mini_tts.yaml"):
        load_backbone()
    with pytest.raises(ConfigError, match="no MiniTTS checkpoint folder at .*nowhere"):
        load_backbone("mini_tts", str(tmp_path / "nowhere"))
    other = random_tts(seed=1)
    other.lm.gpt.h = other.lm.gpt.h[:2]  # a 2-block model's weights under the 3-block config
    mixed = random_tts(seed=0).save(tmp_path / "mixed")
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in other.lm.state_dict().items()}, str(mixed / "model.safetensors"))
    with pytest.raises(ConfigError, match="do not match the model described in"):
        load_backbone("mini_tts", str(mixed))
    with pytest.raises(ConfigError, match=r"IndexTTS2 checkpoint folder /models/IndexTTS-2 does not exist"):
        load_backbone("indextts2", "/models/IndexTTS-2")
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "gpt.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"lacks 13 file\(s\).*config\.yaml \(from IndexTeam/IndexTTS-2\).*"
                                          r"hf_cache/campplus_cn_common\.bin \(from funasr/campplus"):
        load_backbone("indextts2", str(tmp_path / "release"))
    with pytest.raises(ConfigError, match=r"cosyvoice backbone has no embedded default.*CosyVoice-300M-Instruct"):
        load_backbone("cosyvoice")
    with pytest.raises(ConfigError, match=r"lacks 7 file\(s\).*cosyvoice\.yaml, llm\.pt, .*spk2info\.pt"):
        load_backbone("cosyvoice", str(tmp_path / "release"))
    with pytest.raises(ConfigError, match="unknown backbone kind 'vits'"):
        load_backbone("vits")
    # A store harvested from one backbone is not resumed with another.
    harvest_into(tmp_path / "store", _module(checkpoint), _grid(TEXTS[:1]), HOOK, progress=False)
    other_ckpt = random_tts(seed=5).save(tmp_path / "other")
    with pytest.raises(ConfigError, match=r"other settings.*backbone_id"):
        harvest_into(tmp_path / "store", _module(other_ckpt), _grid(TEXTS[:1]), HOOK, progress=False)


# ------------------------------------------------------------------------------ CLI and recipes
def test_harvest_command_is_listed_and_its_recipes_resolve():
    overview = run_emoctl("--help")
    assert overview.returncode == 0 and "harvest" in overview.stdout
    harvest = parse_emoctl("harvest", "--config", str(RECIPES / "harvest_mini.yaml"), "--print_config")
    assert harvest.returncode == 0, harvest.stderr
    import yaml

    resolved = yaml.safe_load(harvest.stdout)
    assert resolved["return_predictions"] is False
    assert resolved["trainer"]["callbacks"][0]["init_args"]["hookpoint"] == "resid_pre.5"
    assert resolved["data"]["init_args"]["corpus"]["split"] == "held_out"
    sae = parse_emoctl("fit", "--config", str(RECIPES / "sae_mini.yaml"), "--print_config")
    assert sae.returncode == 0, sae.stderr
    resolved = yaml.safe_load(sae.stdout)
    assert resolved["model"]["init_args"]["sae"]["d_in"] == 192
    build = resolved["data"]["init_args"]["build"]
    assert build["class_path"].endswith("HarvestedStore") and build["init_args"]["hookpoint"] == "resid_pre.5"


def test_sae_mini_fit_goes_from_a_backbone_checkpoint_to_an_exported_sae(checkpoint, tmp_path):
    store = tmp_path / "store"
    overrides = tmp_path / "tiny.yaml"  # a nested dataclass is nulled in YAML (jsonargparse refuses it as a flag)
    overrides.write_text(json.dumps({"data": {"init_args": {"build": {"init_args": {
        "backbone": {"path": str(checkpoint)}, "hookpoint": HOOK, "corpus": None, "texts": TEXTS, "speakers": None,
        "max_new_tokens": 60}}}}}))
    result = run_emoctl(
        "fit", "--config", str(RECIPES / "sae_mini.yaml"), "--config", str(overrides),
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.logger.init_args.version=v0", "--trainer.max_steps=30", "--trainer.val_check_interval=15",
        f"--data.init_args.path={store}", "--data.init_args.batch_size=128",
        "--model.init_args.sae.d_in=32", "--model.init_args.sae.d_sae=64", "--model.init_args.sae.k=4",
        f"--model.init_args.sae.hook_name={HOOK}", "--model.init_args.warmup_steps=5",
        cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    harvested = ActivationStore(store)
    assert harvested.spec.hookpoint == HOOK and harvested.num_utterances >= 60 and harvested.d_model == 32
    assert not list(tmp_path.glob(".store.building"))
    cfg = json.loads((tmp_path / "sae_mini" / "v0" / "sae" / "cfg.json").read_text())
    assert cfg["d_in"] == 32 and cfg["d_sae"] == 64 and cfg["k"] == 4 and cfg["metadata"]["hook_name"] == HOOK


@pytest.mark.parametrize("commit_every_s", [0.0, 3600.0])
def test_a_harvest_commits_by_time_so_a_kill_loses_a_bounded_amount(commit_every_s, tmp_path):
    """With commit_every_s = 0 every generated batch is committed as it ends (what a kill would keep); with an
    hour nothing is committed until the shard fills or the harvest closes."""
    from emoctl.harvest.session import HarvestSession
    from emoctl.store import ActivationStore

    module = HarvestModule(BackboneSpec(), max_new_tokens=12)
    grid = _grid(TEXTS[:1], batch_size=2, speakers=["0017", "0018"], emotions=["Angry"])
    module.bind_prompts(grid)
    settings = {"generation": module.generation_settings(), "prompts": grid.describe()}
    session = HarvestSession(tmp_path / "store", module.backbone, HOOK, ["decode"], settings,
                             commit_every_s=commit_every_s)
    with session.recorder, torch.inference_mode():
        for batch in grid.pending_batches():
            session.recorder.start()
            out = module.generate_batch(batch)
            session.write(out.prompts, out.generation)
    assert session.written == 4
    before_close = ActivationStore(tmp_path / "store").num_utterances  # what a kill here would leave
    assert before_close == (4 if commit_every_s == 0 else 0)
    session.close()
    assert ActivationStore(tmp_path / "store").num_utterances == 4
