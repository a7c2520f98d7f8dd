"""CosyVoice's vocoder chain: speech tokens -> flow matching (``MaskedDiffWithXvec``) -> mel -> HiFT -> 22050 Hz.

Upstream's ``CosyVoiceModel.token2wav`` in non-streaming instruct mode: no prompt tokens or prompt mel, the
voice's x-vector as the flow's speaker condition, ten Euler steps, then HiFT on the whole mel.  The flow starts
from Gaussian noise and HiFT's source adds noise, so a seed makes audio repeatable without touching the
caller's RNG.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from emoctl.numerics import private_rng
from emoctl.backbones.cosyvoice_instruct.release import CosyVoiceRelease
from emoctl.errors import ConfigError


def build_flow_and_hift(release: CosyVoiceRelease, device: torch.device) -> tuple[Any, Any]:
    """The release's flow and HiFT, built from its yaml, loaded strictly from flow.pt and hift.pt, frozen on
    ``device``.  Python's, NumPy's and torch's generators are left as they were (CosyVoice2's
    ``CausalConditionalCFM`` reseeds all three when built, to draw its fixed noise)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with private_rng():
            flow, hift = release.config.build("flow"), release.config.build("hift")
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    release.load_weights(flow, "flow.pt", "flow")
    release.load_weights(hift, "hift.pt", "HiFT", rename={"generator.": ""})  # hift.pt as released
    return flow.to(device).eval().requires_grad_(False), hift.to(device).eval().requires_grad_(False)


class FlowHiftVocoder:
    """Upstream's flow and HiFT, built from cosyvoice.yaml and loaded strictly from flow.pt and hift.pt."""

    def __init__(self, release: CosyVoiceRelease, device: torch.device) -> None:
        self.flow, self.hift = build_flow_and_hift(release, device)
        self.device = device

    @torch.inference_mode()
    def synthesize(self, tokens: torch.Tensor, xvector: torch.Tensor, seed: int | None = 0) -> Any:
        """(N,) float32 numpy waveform of one utterance's tokens (T,) under the (1, 192) x-vector."""
        token = tokens.reshape(1, -1).to(self.device)
        empty_tokens = torch.zeros(1, 0, dtype=torch.int32, device=self.device)
        zero = torch.zeros(1, dtype=torch.int32, device=self.device)
        with private_rng(self.device):  # the seed below must not reseed the caller's generators
            if seed is not None:
                torch.manual_seed(seed)
            mel, _ = self.flow.inference(token=token, token_len=torch.tensor([token.shape[1]], dtype=torch.int32,
                                                                             device=self.device),
                                         prompt_token=empty_tokens, prompt_token_len=zero,
                                         prompt_feat=torch.zeros(1, 0, 80, device=self.device), prompt_feat_len=zero,
                                         embedding=xvector.to(self.device),
                                         flow_cache=torch.zeros(1, 80, 0, 2, device=self.device))
            speech, _ = self.hift.inference(speech_feat=mel, cache_source=torch.zeros(1, 1, 0, device=self.device))
        audio = speech.reshape(-1).float().cpu()
        if not bool(torch.isfinite(audio).all()):
            raise ConfigError("the CosyVoice vocoder produced NaN or Inf samples; flow.pt or hift.pt is damaged.")
        return audio.numpy()
