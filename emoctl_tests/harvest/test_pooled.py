"""Pooled states at many hookpoints: the last position is the last generated token's decode state, pooling does not
depend on the batch, and the pair sources pair what they say they pair."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from emoctl.backbones import Phase, Prompt
from emoctl.backbones.conditions import VoiceName
from emoctl.backbones.loading import load_backbone
from emoctl.backbones.sampling import Sampling
from emoctl.corpus.esd import open_esd, read_wave
from emoctl.errors import ConfigError
from emoctl.harvest.pooled import generated_pairs, paired_states, pooled_states, recorded_pairs
from emoctl_tests.helpers.tiny_tts import PROMPTS, random_tts

pytestmark = pytest.mark.usefixtures("one_thread")
POINTS = ["resid_pre.1", "attn_out.2", "lm_out"]


@pytest.fixture(scope="module")
def tts():
    return random_tts()


def test_the_last_position_is_the_decode_state_of_the_last_generated_token(tts):
    """Teacher-forced over its own tokens, an utterance's last position holds what decoding its last token held."""
    steps: dict[str, list[torch.Tensor]] = {h: [] for h in POINTS}
    handles = [tts.hooks.add_reader(h, (lambda h: lambda x, ctx: steps[h].append(x[:, -1].clone()))(h))
               for h in POINTS]
    try:
        with torch.no_grad():
            out = tts.generate(PROMPTS[:1], max_new_tokens=40, seed=3, temperature=1.0)
    finally:
        for handle in handles:
            handle.remove()
    assert out.finished[0] and out.tokens[0].numel() >= 2
    pooled = pooled_states(tts, PROMPTS[:1], out.tokens, POINTS)
    for h in POINTS:
        assert pooled[h].shape == (1, tts.hidden_size)
        torch.testing.assert_close(pooled[h][0], steps[h][-1][0], atol=1e-4, rtol=0)
        assert not torch.allclose(pooled[h][0], steps[h][-2][0], atol=1e-3)  # and not the step before it


def test_pooling_is_per_utterance_whatever_the_batch_and_mean_is_over_the_speech_tokens(tts):
    tokens = [torch.arange(7) % tts.stop_token, torch.arange(2, 5), torch.arange(11) % tts.stop_token]
    together = pooled_states(tts, PROMPTS[:3], tokens, POINTS)
    alone = [pooled_states(tts, [p], [t], POINTS) for p, t in zip(PROMPTS[:3], tokens)]
    for h in POINTS:
        torch.testing.assert_close(together[h], torch.cat([a[h] for a in alone]), atol=0, rtol=0)
    seen = {}
    handle = tts.hooks.add_reader("attn_out.2", lambda x, ctx: seen.__setitem__("x", x.clone()),
                                  phases=[Phase.TEACHER_FORCED])
    try:
        with torch.no_grad():
            tts.teacher_forced(PROMPTS[1:2], tokens[1:2])
    finally:
        handle.remove()
    mean = pooled_states(tts, PROMPTS[1:2], tokens[1:2], ["attn_out.2"], pool="mean")["attn_out.2"][0]
    torch.testing.assert_close(mean, seen["x"][0, -3:].mean(0), atol=1e-6, rtol=0)  # its 3 tokens' positions
    assert not torch.allclose(mean, seen["x"][0].mean(0), atol=1e-4)  # not the prompt's positions too


def test_refusals_name_what_is_wrong(tts):
    with pytest.raises(ConfigError, match="hookpoints \\['resid_pre.9'\\] are not this backbone's"):
        pooled_states(tts, PROMPTS[:1], [torch.arange(3)], ["resid_pre.9"])
    with pytest.raises(ConfigError, match="has no speech tokens"):
        pooled_states(tts, PROMPTS[:1], [torch.zeros(0, dtype=torch.long)], POINTS)
    with pytest.raises(ConfigError, match="pool='max'"):
        pooled_states(tts, PROMPTS[:1], [torch.arange(3)], POINTS, pool="max")
    with pytest.raises(ConfigError, match="one token sequence per prompt"):
        pooled_states(tts, PROMPTS[:2], [torch.arange(3)], POINTS)


def test_generated_pairs_share_seed_text_and_voice_and_are_read_told_neutral(tts):
    sampling = Sampling(temperature=1.0, max_new_tokens=58)
    pairs = generated_pairs(tts, ["ab cd", "efg"], ["0011", "0012"], ["Angry", "Sad"],
                            lambda s, t: VoiceName(s), sampling, seed=5, batch_size=3)
    assert len(pairs) + pairs.dropped == 8 and len(pairs) >= 2  # a random tiny TTS often runs to the cap
    for e, emo, neu in zip(pairs.emotions, pairs.emotional, pairs.neutral):
        assert emo.text == neu.text and emo.speaker == neu.speaker
        assert emo.emotion_key == neu.emotion_key == "Neutral"  # read back told Neutral
        assert emo.utt_id.startswith(f"{e}|")
    # Each side is what its prompts generate as the grid's first batch with the batch's seed (5 + 0).
    grid = [("0011", "ab cd"), ("0011", "efg"), ("0012", "ab cd")]  # emotion-major, then speaker, then text
    by_id = {p.utt_id: i for i, p in enumerate(pairs.emotional)}
    sides = {side: tts.generate([Prompt(t, VoiceName(spk), emotion) for spk, t in grid],
                                Sampling(temperature=1.0, max_new_tokens=58, seed=5))
             for emotion, side in (("Angry", "emotional"), ("Neutral", "neutral"))}
    for i, (spk, _) in enumerate(grid):
        kept = by_id.get(f"Angry|{spk}|{i}")
        both_finished = sides["emotional"].finished[i] and sides["neutral"].finished[i]
        assert (kept is not None) == both_finished  # dropped exactly when a side ran to the cap
        if kept is not None:
            assert torch.equal(sides["emotional"].tokens[i], pairs.emotional_tokens[kept])
            assert torch.equal(sides["neutral"].tokens[i], pairs.neutral_tokens[kept])
    assert any(f"Angry|{spk}|{i}" in by_id for i, (spk, _) in enumerate(grid))  # the check above compared tokens
    assert any(not torch.equal(a, b) for a, b in zip(pairs.emotional_tokens, pairs.neutral_tokens))
    states = paired_states(tts, pairs, POINTS)
    assert states.counts() == {e: pairs.emotions.count(e) for e in sorted(set(pairs.emotions))}
    assert states.emotional["lm_out"].shape == (len(pairs), tts.hidden_size)


def test_generated_pairs_refuse_a_cap_every_pair_hits(tts):
    with pytest.raises(ConfigError, match="hit the token cap \\(max_new_tokens=1\\); raise it"):
        generated_pairs(tts, ["ab cd"], ["0011"], ["Angry"], lambda s, t: VoiceName(s),
                        Sampling(temperature=1.0, max_new_tokens=1), seed=0)


def test_recorded_pairs_pair_a_speakers_readings_of_one_sentence_in_the_backbones_tokens(corpus_root):
    backbone = load_backbone()
    pairs = recorded_pairs(backbone, corpus_root, "evaluation", ["0011", "0012"], ["Angry", "Sad"],
                           lambda s, t: VoiceName(s), n_texts=2)
    assert len(pairs) == 2 * 2 * 2 and sorted(set(pairs.emotions)) == ["Angry", "Sad"]
    clips = {u.utt_id: u for u in open_esd(corpus_root, speakers=["0011", "0012"])}
    for e, emo, neu, tokens in zip(pairs.emotions, pairs.emotional, pairs.neutral, pairs.emotional_tokens):
        a, b = clips[emo.utt_id], clips[neu.utt_id]
        assert (a.emotion, b.emotion, a.speaker, a.text, a.split) == (e, "Neutral", b.speaker, b.text, "evaluation")
        assert emo.emotion_key == "Neutral"
    wave, rate = read_wave(clips[pairs.emotional[0].utt_id].path)
    assert torch.equal(pairs.emotional_tokens[0], backbone.encode_speech(np.asarray(wave, dtype=np.float32), rate))
