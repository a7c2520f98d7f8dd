"""The backbone contract suite on the committed mini TTS, plus the (B, d) hookpoint checks it cannot reach."""
from __future__ import annotations

import pytest
import torch

from emoctl.backbones import Phase, Prompt
from emoctl.backbones.conditions import EmotionClip, EmotionVector, InstructText, VoiceClip
from emoctl.backbones.loading import load_backbone
from emoctl.backbones.sampling import Sampling
from emoctl.emosteer import EmoSteer, steer as emosteer
from emoctl.emosteer.layer import EmoSteerConfig
from emoctl.harvest.recorder import ActivationRecorder
from emoctl.steering import steer
from emoctl.steering.directions import DirectionSteering
from emoctl.testing import BackboneContract

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["Kids are talking by the door.", "The birch canoe slid on the smooth planks today.", "Go now."]


# The contract's fixtures, module-level so the class below only names the suite it runs.
@pytest.fixture(scope="module")
def backbone():
    return load_backbone("mini_tts")


@pytest.fixture(scope="module")
def prompts():
    return [Prompt(TEXTS[0], "0017", "Neutral"), Prompt(TEXTS[1], "0018", "Angry"), Prompt(TEXTS[2], "0019", "Sad")]


@pytest.fixture(scope="module")
def sampling():
    return Sampling(temperature=0.8, top_k=50, max_new_tokens=150)


@pytest.fixture(scope="module")
def beam_sampling():
    return Sampling(temperature=0.8, top_k=50, top_p=0.9, num_beams=3, max_new_tokens=150, seed=4)


@pytest.fixture(scope="module")
def refused_prompts():
    return [Prompt(TEXTS[0], VoiceClip("/data/ref.wav"), "Angry"),
            Prompt(TEXTS[0], "0017", EmotionVector((0, 0.8, 0, 0, 0, 0, 0, 0), 0.6)),
            Prompt(TEXTS[0], "0017", EmotionClip("/data/angry.wav")),
            Prompt(TEXTS[0], "0017", InstructText("speak angrily"))]


@pytest.fixture(scope="module")
def refused_sampling():
    return {"repetition_penalty": 10.0, "ras_window": 10}


@pytest.fixture(scope="module")
def steer_hookpoint():
    return "resid_pre.3"


@pytest.fixture(scope="module")
def finish_block(backbone):
    """GPT2Block after its attention's add: r + mlp(ln_2(r))."""
    blocks = backbone.lm.gpt.h
    return lambda layer, r: r + blocks[layer].mlp(blocks[layer].ln_2(r))


class TestMiniTTSContract(BackboneContract):
    """Every contract check, on the committed mini TTS."""


def test_greedy_beam_search_returns_the_best_scoring_hypothesis():
    """Beam search with K beams scores at least as well as greedy decoding (its first beam is the greedy path
    until a better one overtakes it), and K = 1 is exactly greedy."""
    tts = load_backbone("mini_tts")
    prompts = [Prompt(t, "0018", "Happy") for t in TEXTS]
    greedy = tts.generate(prompts, temperature=0, max_new_tokens=400)
    one = tts.generate(prompts, temperature=0, num_beams=1, max_new_tokens=400)
    beams = tts.generate(prompts, temperature=0, num_beams=4, max_new_tokens=400)
    assert all(torch.equal(a, b) for a, b in zip(greedy.tokens, one.tokens))
    assert beams.beams == 4 and all(beams.finished)

    def score(tokens, prompt):  # Hugging Face's beam score at length_penalty 1: log-probability per token
        nll, valid = tts.teacher_forced_nll([prompt], tokens[None], torch.tensor([tokens.numel()]))
        return -float(nll[0, :tokens.numel() + 1].sum()) / tokens.numel()  # the tokens and the stop

    compared = 0
    for g, g_done, b, p in zip(greedy.tokens, greedy.finished, beams.tokens, prompts):
        if g_done:  # a greedy loop that never stops has no finished score to beat
            assert score(b, p) >= score(g, p) - 1e-6
            compared += 1
    assert compared >= 2


def test_a_one_position_hookpoint_is_read_and_written_as_one_row_per_prompt():
    """CosyVoice calls its head on (B, d): the recorder keeps each row whole, and steering edits it exactly as
    it edits the (B, 1, d) input of the same states."""
    tts = load_backbone("mini_tts")
    g = torch.Generator().manual_seed(0)
    x2 = torch.randn(3, tts.hidden_size, generator=g)
    recorder = ActivationRecorder(tts, "lm_out", phases=("decode",))
    with recorder:
        recorder.start()
        with tts.hooks.phase(Phase.DECODE, step=0):
            tts.lm.lm_out(x2)
    assert torch.equal(recorder._steps[0], x2)  # three rows of width d, not one feature per row

    v = torch.randn(tts.hidden_size, generator=g)
    layer = EmoSteer(EmoSteerConfig(hidden_size=tts.hidden_size))
    with torch.no_grad():
        layer.weight.normal_(generator=g)
    edited = []
    for x in (x2, x2[:, None]):
        with steer(tts, DirectionSteering(v, [1.0, 0.0, 2.0], "lm_out")), \
                emosteer(tts, layer, ["Angry", "Sad", "Neutral"], alpha=3.0):
            # registered after the steering hooks, so it sees what the head receives
            probe = tts.lm.lm_out.register_forward_pre_hook(lambda m, args: edited.append(args[0].clone()))
            try:
                with tts.hooks.phase(Phase.DECODE, step=0):
                    tts.lm.lm_out(x)
            finally:
                probe.remove()
    flat, seq = edited
    assert flat.shape == x2.shape and seq.shape == (3, 1, tts.hidden_size)
    torch.testing.assert_close(flat, seq[:, 0], atol=1e-6, rtol=0)
    W = {e: layer.weight[i] for i, e in enumerate(layer.layer_emotions)}
    eps = layer.config.epsilon
    # two steer() calls are two write hooks in turn: the EmoSteer shift sees the direction-steered state
    expected = torch.stack([(x2[0] + v) + eps * 3.0 * ((x2[0] + v) @ W["Angry"]),
                            x2[1] + eps * 3.0 * (x2[1] @ W["Sad"]),
                            x2[2] + 2.0 * v])  # Neutral has no layer (identity)
    torch.testing.assert_close(flat, expected, atol=1e-5, rtol=1e-5)


def test_the_data_module_tokenizes_with_the_backbones_own_tokenizer(tmp_path):
    """EmoShift and SFT recipes name the backbone, not a codec folder: its speech tokenizer encodes the clips,
    and the cache is keyed by its digest; a codec folder or the backbone, not both or neither."""
    from data_modules.tts_corpus import TTSCorpusDataModule
    from emoctl.backbones.loading import DEFAULT_MINI_TTS_DIR, BackboneSpec
    from emoctl.corpus.build import build_corpus
    from emoctl.errors import ConfigError

    root = build_corpus(str(tmp_path / "corpus"), n_sentences=20, speakers=2, workers=1, progress=False)
    common = dict(batch_size=2, speakers=["0011"], emotions=["Angry", "Sad"], tokenize_workers=1)
    by_backbone = TTSCorpusDataModule(str(root), backbone=BackboneSpec(), cache_dir=str(tmp_path / "a"), **common)
    by_codec = TTSCorpusDataModule(str(root), str(DEFAULT_MINI_TTS_DIR / "codec"), cache_dir=str(tmp_path / "b"),
                                   **common)
    for dm in (by_backbone, by_codec):
        dm.prepare_data()
        dm.setup("fit")
    assert by_backbone.tokenizer_digest == load_backbone("mini_tts").tokenizer_digest == by_codec.tokenizer_digest
    assert list(tmp_path.joinpath("a").glob(f"*{by_backbone.tokenizer_digest}*"))  # the cache names the tokenizer
    a, b = by_backbone.train_items, by_codec.train_items
    assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))
    with pytest.raises(ConfigError, match="not both"):
        TTSCorpusDataModule(str(root), str(DEFAULT_MINI_TTS_DIR / "codec"), backbone=BackboneSpec())
    with pytest.raises(ConfigError, match="not neither"):
        TTSCorpusDataModule(str(root))
