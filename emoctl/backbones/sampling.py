"""How speech tokens are drawn, as one typed object every backbone reads the same way.

The settings are the union of what the supported systems use: the mini TTS
(temperature, top-k, top-p, beams), IndexTTS2's Hugging Face ``generate``
(beam sampling with 3 beams, top-p 0.8, top-k 30, temperature 0.8,
repetition penalty 10) and CosyVoice's own loop (top-k/top-p nucleus
sampling with a repetition-aware window).  A backbone lists the settings it
implements in ``Backbone.sampling_settings``; :meth:`Sampling.check` refuses
any other setting that is not at its neutral default, naming it, so no
setting is ever ignored silently.

The seed feeds a ``torch.Generator`` owned by the call, so a batch's tokens do
not depend on the global RNG or on what ran before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterable

from emoctl.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """Decoding settings for one ``Backbone.generate`` call."""

    temperature: float = 1.0
    """Softmax temperature; 0 is greedy (with beams: plain beam search instead of beam sampling)."""
    top_k: int | None = None
    """Keep only the k most likely tokens (None: all)."""
    top_p: float | None = None
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches p (None: all)."""
    num_beams: int = 1
    """Beam width; hooks then see B x num_beams rows, prompt-major (row = b * num_beams + beam)."""
    length_penalty: float = 1.0
    """Beam scores are summed log-probabilities divided by length ** length_penalty (Hugging Face's rule)."""
    repetition_penalty: float = 1.0
    """Divide positive (multiply negative) logits of already generated tokens by this (1: off)."""
    ras_window: int | None = None
    """CosyVoice's repetition-aware sampling: look back this many tokens (None: off)."""
    ras_tau: float = 0.1
    """...and resample from the full distribution when the drawn token fills more than this share of it."""
    max_new_tokens: int = 1000
    """Hard cap on speech tokens per utterance (a backbone may cap lower)."""
    seed: int | None = None
    """Seed of the call's own generator; None draws from the global RNG."""

    def __post_init__(self) -> None:
        bad = []
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            bad.append(f"temperature={self.temperature} (>= 0; 0 is greedy)")
        if self.top_k is not None and self.top_k < 1:
            bad.append(f"top_k={self.top_k} (>= 1 or None)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            bad.append(f"top_p={self.top_p} (in (0, 1] or None)")
        if self.num_beams < 1:
            bad.append(f"num_beams={self.num_beams} (>= 1)")
        if not math.isfinite(self.length_penalty):
            bad.append(f"length_penalty={self.length_penalty} (finite)")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            bad.append(f"repetition_penalty={self.repetition_penalty} (> 0; 1 is off)")
        if self.ras_window is not None and self.ras_window < 1:
            bad.append(f"ras_window={self.ras_window} (>= 1 or None)")
        if self.max_new_tokens < 1:
            bad.append(f"max_new_tokens={self.max_new_tokens} (>= 1)")
        if bad:
            raise ConfigError("invalid sampling settings: " + "; ".join(bad) + ".")

    def changed(self) -> list[str]:
        """Names of the settings that differ from their neutral default (those that change decoding)."""
        defaults = Sampling()
        return [f.name for f in fields(Sampling) if getattr(self, f.name) != getattr(defaults, f.name)]

    def check(self, supported: Iterable[str], backbone: str) -> None:
        """Refuse settings this backbone does not implement, by name, rather than ignore them."""
        supported = set(supported) | {"max_new_tokens", "seed"}
        unsupported = [name for name in self.changed() if name not in supported]
        if unsupported:
            raise ConfigError(f"{backbone} does not implement the sampling setting(s) "
                              f"{', '.join(f'{n}={getattr(self, n)!r}' for n in unsupported)}; it implements "
                              f"{', '.join(sorted(supported))}. Leave the others at their defaults.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
