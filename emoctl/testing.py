"""The backbone contract suite: what every :class:`~emoctl.backbones.Backbone` must do, as reusable tests.

An adapter package runs it with ``from emoctl.testing import BackboneContract``: subclass it in a ``test_*.py``
module and provide the fixtures named in the class docstring (pytest, from emoctl's ``dev`` extra, collects
it). The mini TTS does so in ``emoctl_tests/backbones/test_contract_mini.py``, and the IndexTTS2 and CosyVoice
adapters run it unchanged.  Every check compares values that would differ if the
contract were broken: bit-identity at α = 0, recorded states against a
teacher-forced pass of the returned tokens, beams' per-prompt α, and so on.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch

from emoctl.backbones import Backbone, Phase, Prompt
from emoctl.backbones.sampling import Sampling
from emoctl.emotions import ESD_EMOTIONS
from emoctl.errors import ConfigError
from emoctl.harvest.pooled import pooled_states
from emoctl.harvest.recorder import ActivationRecorder
from emoctl.steering import steer
from emoctl.steering.directions import DirectionSteering


def _fed_rows(tokens: torch.Tensor, finished: bool) -> int:
    """Decode steps an utterance ran: its tokens, less the last one when the budget cut it (never fed)."""
    return tokens.numel() if finished else max(tokens.numel() - 1, 0)


class BackboneContract:
    """Subclass and provide these fixtures (class scope is fine):

    * ``backbone``: the backbone, frozen, in eval mode;
    * ``prompts``: three prompts it accepts, with texts of different lengths;
    * ``sampling``: a stochastic :class:`Sampling` (temperature > 0) with a small ``max_new_tokens``;
    * ``beam_sampling``: a :class:`Sampling` with ``num_beams > 1``, or None where the backbone has no beams
      (then the suite checks that beams are refused);
    * ``refused_prompts``: prompts whose condition kinds it must refuse;
    * ``refused_sampling``: Sampling overrides it must refuse (a dict), or an empty dict;
    * ``steer_hookpoint``: a ``resid_pre.L`` hookpoint the steering checks write;
    * ``finish_block``: ``finish_block(L, r)`` is block L's output (``resid_pre.{L+1}``) from ``r``, the residual
      just after its attention's add (``resid_pre.L + attn_out.L``), written with the block's own modules:
      the check that ``attn_out.L`` is what the attention adds, before the add.

    and override, as class attributes where the defaults do not hold:

    * ``decode_matches_teacher_forced``: whether its cached decode states equal a teacher-forced pass of the
      same tokens (False where upstream places cached positions differently, as IndexTTS2 does);
    * ``tf_atol``: the tolerance of that comparison.
    """

    decode_matches_teacher_forced: bool = True
    tf_atol: float = 1e-4

    # ------------------------------------------------------------ identity
    def test_hookpoints_cover_every_block_and_the_head(self, backbone: Backbone) -> None:
        expected = ([f"resid_pre.{i}" for i in range(backbone.num_layers)]
                    + [f"attn_out.{i}" for i in range(backbone.num_layers)] + ["lm_out"])
        assert backbone.hookpoints == expected
        assert backbone.hidden_size > 0 and backbone.sample_rate > 0 and backbone.vocab_size > 1

    def test_backbone_id_is_cheap_and_stable(self, backbone: Backbone) -> None:
        import time

        first = backbone.backbone_id
        start = time.perf_counter()
        again = [backbone.backbone_id for _ in range(20)]
        assert all(a == first for a in again) and "@" in first
        assert time.perf_counter() - start < 0.05, "backbone_id must not rehash the weights on every read"

    # -------------------------------------------------------------- phases
    def test_phases_are_declared_with_the_right_shapes(self, backbone: Backbone, prompts: list[Prompt],
                                                       sampling: Sampling, steer_hookpoint: str) -> None:
        seen: dict[tuple[str, Phase | None], list[tuple[int, ...]]] = {}

        def note(name: str):
            return lambda x, ctx: seen.setdefault((name, ctx.phase), []).append(tuple(x.shape))

        attention = steer_hookpoint.replace("resid_pre", "attn_out")
        handles = [backbone.hooks.add_reader(h, note(h), phases=None)
                   for h in (steer_hookpoint, attention, "lm_out")]
        try:
            out = backbone.generate(prompts, sampling)
            targets = [t if t.numel() else torch.zeros(1, dtype=torch.long) for t in out.tokens]
            backbone.teacher_forced(prompts, targets)
        finally:
            for h in handles:
                h.remove()
        B, d = len(prompts), backbone.hidden_size
        assert None not in {phase for _, phase in seen}, "a forward ran without a declared phase"
        prefill = seen[(steer_hookpoint, Phase.PREFILL)]
        assert len(prefill) == 1 and prefill[0][0] == B and prefill[0][-1] == d and prefill[0][1] >= 1
        decode = seen[(steer_hookpoint, Phase.DECODE)]
        assert len(decode) == max(_fed_rows(t, f) for t, f in zip(out.tokens, out.finished))
        assert all(s in ((B, 1, d), (B, d)) for s in decode), set(decode)
        (tf,) = seen[(steer_hookpoint, Phase.TEACHER_FORCED)]
        assert tf[0] == B and tf[-1] == d and tf[1] >= max(t.numel() for t in targets)
        assert all(s[0] == B and s[-1] == d for s in seen[("lm_out", Phase.DECODE)])
        for phase in (Phase.PREFILL, Phase.DECODE, Phase.TEACHER_FORCED):  # the attention output: same positions
            assert seen[(attention, phase)] == seen[(steer_hookpoint, phase)], phase

    def test_attn_out_is_what_the_attention_adds_before_the_residual(self, backbone: Backbone,
                                                                     prompts: list[Prompt], sampling: Sampling,
                                                                     finish_block: Any) -> None:
        """In a teacher-forced pass, block 0's output is ``finish_block(0, resid_pre.0 + attn_out.0)``; writing
        0 at ``attn_out.0`` leaves generation bit-identical and a push there changes it."""
        assert backbone.num_layers >= 2
        grabbed: dict[str, torch.Tensor] = {}

        def keep(name: str):
            return lambda x, ctx: grabbed.__setitem__(name, x.detach().clone())

        names = ("resid_pre.0", "attn_out.0", "resid_pre.1")
        handles = [backbone.hooks.add_reader(h, keep(h), phases=(Phase.TEACHER_FORCED,)) for h in names]
        try:
            out = backbone.generate(prompts[:2], sampling, seed=1)
            backbone.teacher_forced(prompts[:2], [t if t.numel() else torch.zeros(1, dtype=torch.long)
                                                  for t in out.tokens])
        finally:
            for h in handles:
                h.remove()
        h, a, after = (grabbed[n] for n in names)
        assert h.shape == a.shape == after.shape and a.abs().max() > 0
        with torch.no_grad():
            expected = finish_block(0, h + a)
        assert torch.allclose(after, expected, atol=1e-4, rtol=1e-4), float((after - expected).abs().max())
        base = backbone.generate(prompts, sampling, seed=3)
        with steer(backbone, self._direction(backbone, "attn_out.0", 0.0)):
            zero = backbone.generate(prompts, sampling, seed=3)
        with steer(backbone, self._direction(backbone, "attn_out.0", 30.0)):
            strong = backbone.generate(prompts, sampling, seed=3)
        assert all(torch.equal(x, y) for x, y in zip(base.tokens, zero.tokens))
        assert any(not torch.equal(x, y) for x, y in zip(base.tokens, strong.tokens)), "α = 30 changed nothing"

    # ---------------------------------------------------------- determinism
    def test_seeded_generation_is_deterministic_and_seed_dependent(self, backbone: Backbone, prompts: list[Prompt],
                                                                   sampling: Sampling) -> None:
        assert sampling.temperature > 0
        torch.manual_seed(123)
        a = backbone.generate(prompts, sampling, seed=7)
        torch.manual_seed(456)  # the global RNG must not matter
        b = backbone.generate(prompts, sampling, seed=7)
        c = backbone.generate(prompts, sampling, seed=8)
        assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))
        assert any(not torch.equal(x, y) for x, y in zip(a.tokens, c.tokens))

    # ------------------------------------------------------------ steering
    def _direction(self, backbone: Backbone, hookpoint: str, alpha: Any) -> DirectionSteering:
        g = torch.Generator().manual_seed(0)
        v = torch.randn(backbone.hidden_size, generator=g)
        return DirectionSteering(v / v.norm(), alpha, hookpoint)

    def test_alpha_zero_is_bit_identical_to_unhooked_generation(self, backbone: Backbone, prompts: list[Prompt],
                                                                 sampling: Sampling, steer_hookpoint: str) -> None:
        base = backbone.generate(prompts, sampling, seed=3)
        with steer(backbone, self._direction(backbone, steer_hookpoint, 0.0)):
            zero = backbone.generate(prompts, sampling, seed=3)
        with steer(backbone, self._direction(backbone, steer_hookpoint, 30.0)):
            strong = backbone.generate(prompts, sampling, seed=3)
        assert all(torch.equal(x, y) for x, y in zip(base.tokens, zero.tokens))
        assert any(not torch.equal(x, y) for x, y in zip(base.tokens, strong.tokens)), "α = 30 changed nothing"

    def _per_prompt_alpha(self, backbone: Backbone, prompts: list[Prompt], sampling: Sampling,
                          hookpoint: str) -> None:
        alpha = [0.0, 30.0, 0.0][:len(prompts)]
        base = backbone.generate(prompts, sampling, seed=5)
        with steer(backbone, self._direction(backbone, hookpoint, alpha)):
            steered = backbone.generate(prompts, sampling, seed=5)
        assert torch.equal(steered.tokens[0], base.tokens[0]) and torch.equal(steered.tokens[2], base.tokens[2])
        assert not torch.equal(steered.tokens[1], base.tokens[1])

    def test_per_prompt_alpha_steers_only_its_prompt(self, backbone: Backbone, prompts: list[Prompt],
                                                     sampling: Sampling, steer_hookpoint: str) -> None:
        self._per_prompt_alpha(backbone, prompts, sampling, steer_hookpoint)

    def test_per_prompt_alpha_reaches_every_beam_of_its_prompt(self, backbone: Backbone, prompts: list[Prompt],
                                                               beam_sampling: Sampling | None,
                                                               steer_hookpoint: str) -> None:
        if beam_sampling is None:
            with pytest.raises(ConfigError, match="num_beams"):
                backbone.generate(prompts, num_beams=2, max_new_tokens=4)
            return
        self._per_prompt_alpha(backbone, prompts, beam_sampling, steer_hookpoint)

    def test_hooks_leave_the_state_dict_untouched(self, backbone: Backbone, prompts: list[Prompt],
                                                  sampling: Sampling, steer_hookpoint: str) -> None:
        before = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
        recorder = ActivationRecorder(backbone, steer_hookpoint)
        with recorder, steer(backbone, self._direction(backbone, steer_hookpoint, 10.0)):
            recorder.start()
            backbone.generate(prompts, sampling, seed=1)
        after = backbone.state_dict()
        assert list(after) == list(before)
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert not backbone.hooks.has_hooks()

    # ----------------------------------------------------------- recording
    def _recorded(self, backbone: Backbone, prompts: list[Prompt], sampling: Sampling, hookpoint: str
                  ) -> tuple[Any, list[torch.Tensor]]:
        with ActivationRecorder(backbone, hookpoint) as recorder:
            recorder.start()
            out = backbone.generate(prompts, sampling)
            return out, recorder.rows(out)

    def _check_rows(self, backbone: Backbone, prompts: list[Prompt], out: Any, rows: list[torch.Tensor],
                    hookpoint: str, matches_tf: bool, atol: float) -> None:
        assert len(rows) == len(prompts) == len(out.tokens)
        for b, (tokens, done, r) in enumerate(zip(out.tokens, out.finished, rows)):
            assert r.shape == (_fed_rows(tokens, done), backbone.hidden_size), (b, r.shape, tokens.numel(), done)
            assert torch.isfinite(r).all()
        if not matches_tf:
            return
        # The stored rows are the states of the returned hypothesis: a teacher-forced pass over the returned
        # tokens reproduces them (positions after the prompt), whatever beams or batching happened.
        grabbed: list[torch.Tensor] = []
        handle = backbone.hooks.add_reader(hookpoint, lambda x, ctx: grabbed.append(x.detach().clone()),
                                           phases=[Phase.TEACHER_FORCED])
        try:
            for b, prompt in enumerate(prompts):
                if rows[b].shape[0] == 0:
                    continue
                grabbed.clear()
                backbone.teacher_forced([prompt], [out.tokens[b]])
                (x,) = grabbed
                n = rows[b].shape[0]
                start = out.prefill_lengths[b]
                torch.testing.assert_close(rows[b], x[0, start:start + n].to(rows[b].dtype), atol=atol, rtol=0)
        finally:
            handle.remove()

    def test_recorded_decode_rows_are_the_returned_tokens_states(self, backbone: Backbone, prompts: list[Prompt],
                                                                 sampling: Sampling, steer_hookpoint: str
                                                                 ) -> None:
        out, rows = self._recorded(backbone, prompts, Sampling(**{**vars(sampling), "seed": 11}), steer_hookpoint)
        assert any(out.finished), "pick a budget where at least one utterance reaches its stop token"
        self._check_rows(backbone, prompts, out, rows, steer_hookpoint, self.decode_matches_teacher_forced,
                         self.tf_atol)

    def test_a_pooled_last_state_is_the_last_decode_state(self, backbone: Backbone, prompts: list[Prompt],
                                                          sampling: Sampling, steer_hookpoint: str) -> None:
        """CoCoEmo's pooled representation (:mod:`emoctl.harvest.pooled`): teacher-forced over an utterance's own
        tokens, its last position holds the state that decoded its last token, at every hookpoint read at once."""
        if not self.decode_matches_teacher_forced:
            return
        points = [steer_hookpoint, "attn_out.0"]
        recorded = {h: self._recorded(backbone, prompts, Sampling(**{**vars(sampling), "seed": 11}), h)
                    for h in points}
        out = recorded[steer_hookpoint][0]
        done = [b for b, (t, f) in enumerate(zip(out.tokens, out.finished)) if f and t.numel() > 0]
        assert done, "pick a budget where at least one utterance reaches its stop token"
        pooled = pooled_states(backbone, [prompts[b] for b in done], [out.tokens[b] for b in done], points)
        for h in points:
            last = torch.stack([recorded[h][1][b][-1] for b in done])
            torch.testing.assert_close(pooled[h], last.to(pooled[h].dtype), atol=self.tf_atol, rtol=0)

    def test_recorded_decode_rows_follow_the_returned_beam(self, backbone: Backbone, prompts: list[Prompt],
                                                           beam_sampling: Sampling | None, steer_hookpoint: str
                                                           ) -> None:
        if beam_sampling is None:
            return  # refusal of beams is checked above
        out, rows = self._recorded(backbone, prompts, beam_sampling, steer_hookpoint)
        assert out.beams == beam_sampling.num_beams
        self._check_rows(backbone, prompts, out, rows, steer_hookpoint, self.decode_matches_teacher_forced,
                         self.tf_atol)

    # ------------------------------------------------------------ refusals
    def test_every_corpus_emotion_maps_to_a_condition_it_accepts(self, backbone: Backbone, prompts: list[Prompt]
                                                                 ) -> None:
        """Reports ask ``condition_for`` for ESD's five emotions; each answer must pass the backbone's own checks,
        and different emotions must not collapse onto one condition."""
        conditions = [backbone.condition_for(e) for e in ESD_EMOTIONS]
        backbone.check_prompts([prompts[0].with_emotion(c) for c in conditions])
        assert len({c.key for c in conditions}) == len(ESD_EMOTIONS)
        with pytest.raises(ConfigError, match="'Bored'"):
            backbone.condition_for("Bored")

    def test_refused_conditions_raise_a_clear_error(self, backbone: Backbone, refused_prompts: list[Prompt]) -> None:
        assert refused_prompts, "give at least one condition kind the backbone refuses"
        for prompt in refused_prompts:
            with pytest.raises(ConfigError, match=rf"{re.escape(backbone.kind)} does not accept a "
                                                  rf"{type(prompt.emotion).__name__}|does not accept a "
                                                  rf"{type(prompt.voice).__name__}"):
                backbone.generate([prompt], max_new_tokens=2)

    def test_unsupported_sampling_is_refused_by_name(self, backbone: Backbone, prompts: list[Prompt],
                                                     refused_sampling: dict) -> None:
        for name, value in refused_sampling.items():
            with pytest.raises(ConfigError, match=rf"does not implement the sampling setting\(s\) {name}="):
                backbone.generate(prompts, **{name: value, "max_new_tokens": 2})
        with pytest.raises(ConfigError, match="sampling settings are"):
            backbone.generate(prompts, temprature=0.5)

    # -------------------------------------------------------------- audio
    def test_vocode_gives_finite_audio_and_tokenize_round_trips(self, backbone: Backbone, prompts: list[Prompt],
                                                                sampling: Sampling) -> None:
        out = backbone.generate(prompts[:1], sampling, seed=2)
        tokens = out.tokens[0]
        assert tokens.numel() > 0
        wave, rate = backbone.vocode(tokens, prompts[0])
        assert rate == backbone.sample_rate and wave.dtype == np.float32 and wave.ndim == 1
        assert np.isfinite(wave).all() and np.abs(wave).max() > 0
        again = backbone.encode_speech(wave, rate)
        assert again.dtype == torch.long and again.ndim == 1
        assert abs(again.numel() - tokens.numel()) <= max(2, tokens.numel() // 20), (again.numel(), tokens.numel())
        assert isinstance(backbone.tokenizer_digest, str) and backbone.tokenizer_digest

    def test_token_rate_is_speech_tokens_per_second_of_vocoded_audio(self, backbone: Backbone,
                                                                     prompts: list[Prompt], sampling: Sampling) -> None:
        """A schedule in seconds lands on the decode step ``seconds * token_rate``: the vocoder must make
        ``1 / token_rate`` s of audio per token (within 3% and one token), and the cap never exceeds the budget."""
        assert isinstance(backbone.token_rate, float) and 0 < backbone.token_rate < 1000, backbone.token_rate
        out = backbone.generate(prompts[1:2], sampling, seed=5)
        tokens = out.tokens[0]
        assert tokens.numel() >= 20, "need a clip long enough to measure its rate"
        wave, rate = backbone.vocode(tokens, prompts[1])
        per_token = wave.size / rate / tokens.numel()
        assert abs(per_token * backbone.token_rate - 1) <= 0.03 + 1 / tokens.numel(), (per_token, backbone.token_rate)
        assert backbone.speech_token_cap(sampling.max_new_tokens) <= sampling.max_new_tokens
        assert max(t.numel() for t in out.tokens) <= backbone.speech_token_cap(sampling.max_new_tokens)
