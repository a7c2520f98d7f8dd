"""The EmoSteer layer of EmoShift: one learnable linear map per emotion at the LM's output embedding.

For emotion e and the hidden state h entering the speech-token head::

    v_e = h · W_e                       # (…, d) @ (d, d)
    h'  = h + α · ε · v_e               # α = 1 in training, the intensity knob at inference

``W_e`` is a full d×d matrix (as in the paper) or a rank-r product
``A_e · B_e``.  Both start at the identity map of the layer (h' = h): the full
matrices are zero, and for low rank ``A`` is small random while ``B`` is zero,
so the product is zero yet ``B`` receives gradients from the first step.

Each batch row selects its own emotion, or a weighted mix for compound
emotions (h' = h + ε·α·Σ_e w_e·h·W_e, linear in the weights).  Neutral is
either the identity (no layer; its rows pass through untouched) or gets its
own layer, a config choice.

The layer knows nothing of backbones or hooks: :mod:`emoctl.emosteer.steer`
attaches it to a hookpoint.  A saved layer is a folder ``emosteer.json`` +
``emosteer.safetensors``, written atomically.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

import torch
from torch import nn

from emoctl.emotions import ESD_EMOTIONS, NEUTRAL
from emoctl.errors import ConfigError
from emoctl.io.fsio import atomic_folder
from emoctl.io.formats import read_versioned_json
from emoctl.numerics import refuse_non_finite_weights

FORMAT_NAME = "emoctl.emosteer"
FORMAT_VERSION = 1
CONFIG_FILE = "emosteer.json"
WEIGHTS_FILE = "emosteer.safetensors"

EmotionMix = Union[str, Mapping[str, float]]
"""One row's emotion: a name (``"Angry"``) or weights of a compound (``{"Happy": 0.6, "Surprise": 0.4}``)."""


@dataclass
class EmoSteerConfig:
    """Shape and semantics of an EmoSteer layer (saved as ``emosteer.json``)."""

    hidden_size: int
    """Width d of the hidden state at the hookpoint."""
    emotions: list[str] = field(default_factory=lambda: list(ESD_EMOTIONS))
    """Every emotion name a row may ask for, Neutral included."""
    neutral: Literal["identity", "layer"] = "identity"
    """``identity``: the neutral emotion has no layer and passes h through; ``layer``: it gets its own W."""
    neutral_name: str = NEUTRAL
    """Which entry of ``emotions`` is the neutral one."""
    rank: int | None = None
    """None: full d×d matrices; r: W_e = A_e·B_e with A (d, r), B (r, d)."""
    epsilon: float = 1e-3
    """ε, the fixed scale of the shift (the paper's 0.001)."""
    init_std: float = 0.02
    """Standard deviation of A at initialisation (low rank only)."""

    def __post_init__(self) -> None:
        if self.hidden_size < 1:
            raise ConfigError(f"EmoSteerConfig.hidden_size must be >= 1, got {self.hidden_size}.")
        if len(set(self.emotions)) != len(self.emotions) or not self.emotions:
            raise ConfigError(f"EmoSteerConfig.emotions must be distinct names, got {self.emotions}.")
        if self.neutral not in ("identity", "layer"):
            raise ConfigError(f"EmoSteerConfig.neutral must be 'identity' or 'layer', got {self.neutral!r}.")
        if self.neutral == "identity" and self.neutral_name not in self.emotions:
            raise ConfigError(f"neutral_name {self.neutral_name!r} is not among emotions {self.emotions}; "
                              "add it or set neutral: layer.")
        if self.rank is not None and not 1 <= self.rank <= self.hidden_size:
            raise ConfigError(f"EmoSteerConfig.rank must be None (full) or in [1, {self.hidden_size}], got {self.rank}.")
        if not self.epsilon > 0:
            raise ConfigError(f"EmoSteerConfig.epsilon must be > 0, got {self.epsilon}.")

    @property
    def layer_emotions(self) -> list[str]:
        """Emotions that own a matrix, in the order of the stacked parameters."""
        if self.neutral == "identity":
            return [e for e in self.emotions if e != self.neutral_name]
        return list(self.emotions)


class EmoSteer(nn.Module):
    """Per-emotion linear shifts of a hidden state, stacked over emotions so a batch can mix them."""

    def __init__(self, config: EmoSteerConfig) -> None:
        super().__init__()
        self.config = config
        n, d, r = len(config.layer_emotions), config.hidden_size, config.rank
        self._index = {e: i for i, e in enumerate(config.layer_emotions)}
        self.metadata: dict[str, Any] = {}  # provenance read back by load (backbone id, training run)
        if r is None:
            self.weight = nn.Parameter(torch.zeros(n, d, d))  # (E, d, d): W_e, zero = identity start
        else:
            self.A = nn.Parameter(torch.randn(n, d, r) * config.init_std)  # (E, d, r)
            self.B = nn.Parameter(torch.zeros(n, r, d))  # (E, r, d): zero, so A·B = 0 but B gets gradients

    @property
    def emotions(self) -> list[str]:
        return list(self.config.emotions)

    @property
    def layer_emotions(self) -> list[str]:
        return self.config.layer_emotions

    def matrices(self) -> torch.Tensor:
        """The effective W_e, (E, d, d) (materialises the products for low rank)."""
        return self.weight if self.config.rank is None else self.A @ self.B

    # ---------------------------------------------------------- selection
    def coefficients(self, emotions: Sequence[EmotionMix], alpha: float | Sequence[float] | torch.Tensor = 1.0
                     ) -> torch.Tensor:
        """(B, E) float32 coefficients α_b·w_be of each row's layers; Neutral rows (identity) are all zero.

        ``emotions[b]`` is a name or a mapping name -> weight; ``alpha`` one value or one per row.
        """
        rows = torch.zeros(len(emotions), len(self._index))
        for b, mix in enumerate(emotions):
            weights = {mix: 1.0} if isinstance(mix, str) else dict(mix)
            for name, w in weights.items():
                if name not in self.config.emotions:
                    raise ConfigError(f"unknown emotion {name!r} for this EmoSteer layer; it knows "
                                      f"{', '.join(self.config.emotions)}.")
                if name in self._index:
                    rows[b, self._index[name]] += float(w)
        alphas = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1).cpu()
        if alphas.numel() not in (1, len(emotions)):
            raise ConfigError(f"alpha must be one value or one per row ({len(emotions)}), got {alphas.numel()}.")
        return rows * alphas[:, None]

    # ------------------------------------------------------------ the math
    def shift(self, h: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """Σ_e c_be · h W_e, (B, T, d), for h (B, T, d) (or (B, d)) and coefficients (B, E)."""
        if h.ndim == 2:  # one position per row (CosyVoice's llm_decoder(y_pred[:, -1]))
            return self.shift(h[:, None], coefficients)[:, 0]
        c = coefficients.to(device=h.device, dtype=h.dtype if h.is_floating_point() else torch.float32)
        if self.config.rank is None:
            w = self.weight.to(h.dtype)
            per_row = torch.einsum("be,eij->bij", c, w)  # (B, d, d): the rows' combined matrix
            return torch.bmm(h, per_row)  # (B, T, d)
        hA = torch.einsum("btd,edr->bter", h, self.A.to(h.dtype))  # (B, T, E, r)
        return torch.einsum("bter,be,erd->btd", hA, c, self.B.to(h.dtype))  # (B, T, d)

    def forward(self, h: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """h + ε · Σ_e c_be · h W_e, same shape and dtype as h (B, T, d)."""
        return h + self.config.epsilon * self.shift(h, coefficients)

    # ------------------------------------------------------- bookkeeping
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": asdict(self.config)}

    def save(self, directory: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write ``emosteer.json`` + ``emosteer.safetensors`` atomically (``emoctl.io.fsio.atomic_folder``)."""
        from safetensors.torch import save_file

        target = Path(directory)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        refuse_non_finite_weights(tensors, f"the EmoSteer layer to be saved in {target}")  # before any file
        record = {**self.config_dict(), "metadata": dict(metadata or {})}
        with atomic_folder(target) as staging:
            save_file(tensors, str(staging / WEIGHTS_FILE))
            (staging / CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> EmoSteer:
        """Read a folder written by :meth:`save`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(directory)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ConfigError(f"no EmoSteer layer at {folder}: {path.name} is missing (a layer folder holds "
                                  f"{CONFIG_FILE} and {WEIGHTS_FILE}, written by EmoSteer.save or EmoShiftModule).")
        record = read_versioned_json(config_path, FORMAT_NAME, FORMAT_VERSION, "re-export the layer")
        try:
            layer = cls(EmoSteerConfig(**record["config"]))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"{config_path} is malformed ({err}); re-export the layer.") from None
        try:
            state = load_file(str(weights_path))
            layer.load_state_dict(state, strict=True)
            refuse_non_finite_weights(state, f"the EmoSteer layer in {folder}")  # a NaN layer makes NaN speech
        except (SafetensorError, OSError, RuntimeError) as err:
            summary = " ".join(str(err).split())[:300]
            raise ConfigError(f"the weights in {weights_path} do not fit {config_path}: {summary}") from None
        layer.metadata = record.get("metadata", {})
        return layer.to(device)


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` block of a saved layer (backbone id, training run)."""
    return json.loads((Path(directory) / CONFIG_FILE).read_text()).get("metadata", {})
