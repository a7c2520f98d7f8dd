"""What scoring asks of a speech-quality model: a name and one score per clip (DNSMOS is the one emoctl ships)."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from emoctl.metrics.dnsmos import DNSMOSScore


@runtime_checkable
class SpeechQualityModel(Protocol):
    """Scores clips without a reference: SIG, BAK, OVRL and P.808 per clip (:class:`~emoctl.metrics.dnsmos.DNSMOS`)."""

    name: str

    def __call__(self, waves: Sequence[np.ndarray | torch.Tensor], sample_rate: int | Sequence[int], *,
                 names: Sequence[str] | None = None) -> list[DNSMOSScore]:
        """One score per validated mono clip; ``names`` label the clips in errors."""
        ...
