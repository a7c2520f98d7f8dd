"""What the atlas keeps from its one pass over the store, beside the selection's indicators.

:class:`AtlasScan` is a visitor of :func:`emoctl.selection.indicators.collect_indicators`: it sees each chunk's
Top-k code and keeps, per latent, the ``top_n`` utterances of largest peak activation (a running top-N, merged
chunk by chunk, so memory is (d_sae, top_n) whatever the store's size) and the per-speaker firing counts and
activation sums.  An utterance can straddle two chunks; its partial peak is carried to the next chunk, so it is
ranked once, with its true peak.
"""
from __future__ import annotations

import numpy as np
import torch


class AtlasScan:
    """Per latent: the top-N utterances by peak activation, and activation by speaker."""

    def __init__(self, d_sae: int, top_n: int, first_row: np.ndarray, num_rows: np.ndarray,
                 speaker_of_utterance: np.ndarray, n_speakers: int) -> None:
        self.d_sae, self.top_n = d_sae, top_n
        self.end_row = (first_row + num_rows).astype(np.int64)  # (n_utts,) one past each utterance's last row
        self.speaker_of_utterance = torch.from_numpy(speaker_of_utterance.astype(np.int64))
        self.n_speakers = n_speakers
        self.top_value = torch.zeros(d_sae, top_n)                            # 0: an empty slot
        self.top_utterance = torch.full((d_sae, top_n), -1, dtype=torch.int64)
        self.speaker_rows = torch.zeros(n_speakers, dtype=torch.int64)
        self.speaker_fired = torch.zeros(n_speakers * d_sae, dtype=torch.int64)
        self.speaker_sum = torch.zeros(n_speakers * d_sae, dtype=torch.float64)
        self._rows_seen = 0
        self._carry: tuple[int, torch.Tensor] | None = None  # (utterance, its partial (d_sae,) peaks)

    def __call__(self, utterance_of_row: np.ndarray, values: torch.Tensor, indices: torch.Tensor) -> None:
        values, indices = values.detach().float().cpu(), indices.cpu()
        n = values.shape[0]
        lo, hi = int(utterance_of_row[0]), int(utterance_of_row[-1])
        local = torch.from_numpy(utterance_of_row - lo)
        fired = values > 0
        peaks = torch.zeros((hi - lo + 1) * self.d_sae)
        cells = (local[:, None] * self.d_sae + indices)[fired]
        peaks.scatter_reduce_(0, cells, values[fired], reduce="amax")
        peaks = peaks.view(hi - lo + 1, self.d_sae)
        if self._carry is not None and self._carry[0] == lo:
            peaks[0] = torch.maximum(peaks[0], self._carry[1])
        self._carry = None
        self._rows_seen += n
        utterances = torch.arange(lo, hi + 1)
        if self._rows_seen < self.end_row[hi]:  # the last utterance goes on in the next chunk
            self._carry = (hi, peaks[-1].clone())
            peaks, utterances = peaks[:-1], utterances[:-1]
        if peaks.shape[0]:
            self._merge(peaks, utterances)
        speaker = self.speaker_of_utterance[torch.from_numpy(utterance_of_row)]
        self.speaker_rows += torch.bincount(speaker, minlength=self.n_speakers)
        flat = (speaker[:, None] * self.d_sae + indices)[fired]
        self.speaker_fired.index_add_(0, flat, torch.ones_like(flat))
        self.speaker_sum.index_add_(0, flat, values[fired].double())

    def _merge(self, peaks: torch.Tensor, utterances: torch.Tensor) -> None:
        """Keep each latent's top_n of (its current top, these utterances' peaks); ties: the earlier utterance."""
        values = torch.cat([self.top_value, peaks.T], dim=1)                    # (d_sae, top_n + m)
        owners = torch.cat([self.top_utterance, utterances.expand(self.d_sae, -1)], dim=1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :self.top_n]
        self.top_value = torch.gather(values, 1, order)
        self.top_utterance = torch.gather(owners, 1, order)

    def top(self, latent: int) -> list[tuple[int, float]]:
        """(utterance index, peak activation) of the latent's top utterances, largest first; only where it fired."""
        return [(int(u), float(v)) for u, v in zip(self.top_utterance[latent], self.top_value[latent]) if v > 0]

    def by_speaker(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_speakers, d_sae) firing rate per decode step and mean activation per decode step, by speaker."""
        rows = self.speaker_rows.clamp(min=1).double()[:, None]
        fired = self.speaker_fired.view(self.n_speakers, self.d_sae).double()
        total = self.speaker_sum.view(self.n_speakers, self.d_sae)
        return (fired / rows).numpy(), (total / rows).numpy()
