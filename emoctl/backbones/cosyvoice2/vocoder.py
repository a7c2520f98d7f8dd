"""CosyVoice2's vocoder chain: speech tokens (25 Hz) -> causal flow matching (``CausalMaskedDiffWithXvec``)
-> mel (50 frames a second) -> HiFT -> 24 kHz.

Upstream's ``CosyVoice2Model.token2wav`` without streaming: no prompt tokens or prompt mel (instruct2 mode), the
voice's x-vector as the flow's speaker condition, ten Euler steps from upstream's fixed noise, then HiFT on the
whole mel.  Building ``CausalConditionalCFM`` reseeds Python's, NumPy's and torch's global generators (upstream
draws its fixed noise that way), so the build puts all three back afterwards; HiFT's source adds
noise, so a seed makes audio repeatable without touching the caller's generators.
"""
from __future__ import annotations

from typing import Any

import torch

from emoctl.backbones.cosyvoice2.release import CosyVoice2Release
from emoctl.backbones.cosyvoice_instruct.vocoder import build_flow_and_hift
from emoctl.errors import ConfigError
from emoctl.numerics import private_rng


class CausalFlowHiftVocoder:
    """Upstream's causal flow and HiFT, built from cosyvoice2.yaml and loaded strictly from flow.pt and hift.pt."""

    def __init__(self, release: CosyVoice2Release, device: torch.device) -> None:
        self.flow, self.hift = build_flow_and_hift(release, device)
        self.device = device

    @torch.inference_mode()
    def synthesize(self, tokens: torch.Tensor, xvector: torch.Tensor, seed: int | None = 0) -> Any:
        """(N,) float32 numpy waveform of one utterance's tokens (T,) under the (1, 192) x-vector."""
        token = tokens.reshape(1, -1).to(self.device)
        zero = torch.zeros(1, dtype=torch.int32, device=self.device)
        with private_rng(self.device):  # the seed below must not reseed the caller's generators
            if seed is not None:
                torch.manual_seed(seed)
            mel, _ = self.flow.inference(
                token=token, token_len=torch.tensor([token.shape[1]], dtype=torch.int32, device=self.device),
                prompt_token=torch.zeros(1, 0, dtype=torch.int32, device=self.device), prompt_token_len=zero,
                prompt_feat=torch.zeros(1, 0, 80, device=self.device), prompt_feat_len=zero,
                embedding=xvector.to(self.device), streaming=False, finalize=True)
            speech, _ = self.hift.inference(speech_feat=mel, cache_source=torch.zeros(1, 1, 0, device=self.device))
        audio = speech.reshape(-1).float().cpu()
        if not bool(torch.isfinite(audio).all()):
            raise ConfigError("the CosyVoice2 vocoder produced NaN or Inf samples; flow.pt or hift.pt is damaged.")
        return audio.numpy()
