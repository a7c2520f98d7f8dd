"""What a store holds: its attributes (``StoreSpec``), one utterance's labels
(``UtteranceMeta``) and the three row dtypes with their numpy/torch views.

bfloat16 has no numpy dtype, so its rows live on disk as raw 16-bit words
(``<u2``) and are viewed as ``torch.bfloat16`` on the way out; the manifest
names the real dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from emoctl.errors import ConfigError

# store dtype name -> (numpy dtype of the bytes on disk, torch dtype of the rows)
STORE_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "float16": (np.dtype("<f2"), torch.float16),
    "bfloat16": (np.dtype("<u2"), torch.bfloat16),
    "float32": (np.dtype("<f4"), torch.float32),
}


@dataclass(frozen=True)
class StoreSpec:
    """Attributes shared by every row of a store; fixed when the store is created."""

    d_model: int
    """Width of each row (1280 for IndexTTS2's GPT)."""
    dtype: str = "bfloat16"
    """Row dtype on disk: float16, bfloat16 or float32."""
    hookpoint: str = ""
    """Where the rows were read, e.g. ``resid_pre.16`` (blocks counted from 0)."""
    layer: int | None = None
    """Block index of the hookpoint, or None when it has none."""
    backbone: str = ""
    """Identifier of the model the rows came from."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping with the rows (harvest settings, git commit, ...); JSON-serialisable."""

    def __post_init__(self) -> None:
        if not isinstance(self.d_model, (int, np.integer)) or self.d_model <= 0:
            raise ConfigError(f"StoreSpec.d_model must be a positive integer, got {self.d_model!r}.")
        if self.dtype not in STORE_DTYPES:
            raise ConfigError(
                f"StoreSpec.dtype={self.dtype!r} is not a store dtype; use one of {', '.join(STORE_DTYPES)}."
            )

    @property
    def numpy_dtype(self) -> np.dtype:
        return STORE_DTYPES[self.dtype][0]

    @property
    def torch_dtype(self) -> torch.dtype:
        return STORE_DTYPES[self.dtype][1]

    @property
    def row_bytes(self) -> int:
        return self.d_model * self.numpy_dtype.itemsize

    def attributes(self) -> dict[str, Any]:
        """The fields that must agree between a store and a writer that reopens it."""
        return {"d_model": int(self.d_model), "dtype": self.dtype, "hookpoint": self.hookpoint,
                "layer": self.layer, "backbone": self.backbone}


UTTERANCE_LABELS: tuple[str, ...] = ("utt_id", "text_id", "speaker", "emotion", "condition", "pair_key")
SPEECH_COLUMNS: tuple[str, ...] = ("text", "voice_clip", "speech_tokens")
"""What a backbone needs to speak a stored utterance again: its text, the reference clip that voiced it (empty
for a voice known by name) and the speech tokens it generated. Harvests write them; a store without them still
reads, and :meth:`ActivationStore.speech` names the command that writes a store with them."""


@dataclass(frozen=True)
class UtteranceMeta:
    """Labels of one utterance; its rows are a contiguous segment of one shard."""

    utt_id: str
    """Unique in the store; a resumed producer skips the ids already committed."""
    text_id: str
    speaker: str
    emotion: str
    condition: str = ""
    """How it was produced (e.g. ``prompt=Angry`` or ``steer=sae:+40``)."""
    pair_key: str = ""
    """Same text and speaker across emotions; empty means ``speaker|text_id``."""
    text: str = ""
    """The words spoken (empty where the producer has none, as in a synthetic store)."""
    voice_clip: str = ""
    """The reference clip that voiced it, for a backbone that clones voices; empty for a voice known by name."""
    speech_tokens: tuple[int, ...] | None = None
    """The speech tokens generated for it (stop removed), so its audio can be made again; None: not recorded."""

    def __post_init__(self) -> None:
        for name in UTTERANCE_LABELS + ("text", "voice_clip"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ConfigError(f"UtteranceMeta.{name} must be a string, got {value!r}.")
        if not self.utt_id:
            raise ConfigError("UtteranceMeta.utt_id is empty; give every utterance a unique id.")
        if not self.pair_key:
            object.__setattr__(self, "pair_key", f"{self.speaker}|{self.text_id}")
        if self.speech_tokens is not None:
            object.__setattr__(self, "speech_tokens", tuple(int(t) for t in self.speech_tokens))


def rows_to_torch(bits: np.ndarray, dtype: str) -> torch.Tensor:
    """View rows as stored on disk (bf16 as uint16 words) as a torch tensor of the store dtype, no copy."""
    if dtype == "bfloat16":
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(bits)


def torch_to_bits(rows: torch.Tensor) -> np.ndarray:
    """The numpy view of a CPU tensor in a store dtype, as it is written to disk (no copy)."""
    if rows.dtype == torch.bfloat16:
        return rows.view(torch.int16).numpy().view(np.dtype("<u2"))
    return rows.numpy()
