"""One streaming pass of an activation store through an SAE: which latents fired in each utterance.

The Δ-score needs only a yes/no per (utterance, latent): did latent i fire (be
in the SAE's top-k with a value > 0) at any row of utterance u.  So the pass
keeps an (n_utts, d_sae) bit matrix, packed 8 latents to a byte (56k utterances
x 4096 latents is 29 MB), and never holds more than one chunk of activations.
Alongside it accumulates, per emotion label, how many rows each latent fired at
and the sum of its values there, for the "mean activation when firing"
statistics of the feature-set files.

The per-step scores (``rate``: the share of an utterance's decode steps on which
a latent fires; ``mass``: its summed activation per step) need per-utterance
counts and sums, (n_utts, d_sae) int32 and float32 (17,500 utterances x 4096
latents: 0.57 GB together), so they are collected only when asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from emoctl.errors import ConfigError, StoreError
from emoctl.sae.topk_sae import TopKSAE
from emoctl.store import ActivationStore


@dataclass
class FiringIndicators:
    """Which latents fired in which utterance, and per-emotion firing statistics over rows."""

    packed: np.ndarray
    """(n_utts, ceil(d_sae / 8)) uint8: ``np.packbits`` of the (n_utts, d_sae) bool indicator matrix."""
    d_sae: int
    utt_id: np.ndarray
    """(n_utts,) object: utterance ids, in store row order (the indicator rows)."""
    emotion: np.ndarray
    """(n_utts,) object: emotion label of each utterance."""
    pair_key: np.ndarray
    """(n_utts,) object: text-and-speaker key shared by an utterance and its twins."""
    condition: np.ndarray
    """(n_utts,) object: how each utterance was produced."""
    emotions: list[str]
    """Sorted distinct emotion labels; the row order of the statistics below."""
    rows_fired: np.ndarray
    """(n_emotions, d_sae) int64: rows (tokens) at which each latent fired, per emotion label."""
    value_sum: np.ndarray
    """(n_emotions, d_sae) float64: sum of each latent's value over those rows."""
    rows_total: np.ndarray
    """(n_emotions,) int64: rows per emotion label."""
    text_id: np.ndarray | None = None
    """(n_utts,) object: text id of each utterance (pairs are split by text for held-out Δ)."""
    num_rows: np.ndarray | None = None
    """(n_utts,) int64: rows (decode steps) of each utterance."""
    step_counts: np.ndarray | None = None
    """(n_utts, d_sae) int32: rows at which each latent fired in each utterance (``per_step=True`` only)."""
    act_sums: np.ndarray | None = None
    """(n_utts, d_sae) float32: each latent's summed activation over each utterance's rows (``per_step=True``)."""

    @property
    def num_utterances(self) -> int:
        return self.packed.shape[0]

    def dense(self, utterances: np.ndarray) -> np.ndarray:
        """(len(utterances), d_sae) bool indicators of the given utterance indices."""
        return np.unpackbits(self.packed[np.asarray(utterances, dtype=np.int64)], axis=1,
                             count=self.d_sae).astype(bool)

    def per_step(self, utterances: np.ndarray, score: str) -> np.ndarray:
        """(len(utterances), d_sae) float32 per-utterance values of the ``rate`` or ``mass`` score: the share of
        decode steps on which each latent fired, or its summed activation per step."""
        source = self.step_counts if score == "rate" else self.act_sums if score == "mass" else None
        if source is None or self.num_rows is None:
            raise ConfigError(f"score {score!r} needs per-utterance counts: collect_indicators(..., per_step=True).")
        index = np.asarray(utterances, dtype=np.int64)
        return (source[index] / np.maximum(self.num_rows[index], 1)[:, None]).astype(np.float32)

    def emotion_row(self, emotion: str) -> int:
        if emotion not in self.emotions:
            raise ConfigError(f"no utterances with emotion {emotion!r}; the store has {', '.join(self.emotions)}.")
        return self.emotions.index(emotion)

    def mean_value_when_firing(self, emotion: str) -> np.ndarray:
        """(d_sae,) mean latent value over the rows where it fired (NaN where it never fired)."""
        e = self.emotion_row(emotion)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.rows_fired[e] > 0, self.value_sum[e] / self.rows_fired[e], np.nan)

    def row_firing_rate(self, emotion: str) -> np.ndarray:
        """(d_sae,) share of this emotion's rows at which each latent fired."""
        e = self.emotion_row(emotion)
        return self.rows_fired[e] / max(int(self.rows_total[e]), 1)


def check_sae_matches_store(sae: TopKSAE, store: ActivationStore, sae_path: str = "the SAE") -> None:
    """Width must agree; the hookpoint too, when both name one."""
    if sae.cfg.d_in != store.d_model:
        raise ConfigError(
            f"{sae_path} reads d_in={sae.cfg.d_in} but the store at {store.path} holds rows of d_model="
            f"{store.d_model}. Use the SAE trained on this store's hookpoint ({store.spec.hookpoint or 'unnamed'})."
        )
    hook = store.spec.hookpoint
    if hook and sae.cfg.hook_name and hook != sae.cfg.hook_name:
        raise ConfigError(
            f"{sae_path} was trained on hookpoint {sae.cfg.hook_name!r} but the store at {store.path} was "
            f"harvested at {hook!r}. Use an SAE and a store from the same hookpoint."
        )


@torch.no_grad()
def collect_indicators(store: ActivationStore, sae: TopKSAE, chunk_rows: int = 4096,
                       device: str | torch.device = "cpu", progress: bool = True, per_step: bool = False,
                       visit: Callable[[np.ndarray, torch.Tensor, torch.Tensor], None] | None = None
                       ) -> FiringIndicators:
    """Stream every row of ``store`` through ``sae`` in chunks of ``chunk_rows`` rows.

    ``visit(utterance_of_row, values, indices)``, when given, sees each chunk's Top-k code ((n,) utterance
    indices, (n, k) values and latent ids), so other statistics ride on the same single pass.

    Memory: the packed indicator matrix, one chunk of rows and its (chunk_rows, d_sae)
    pre-activations inside ``sae.encode``; with ``per_step`` also the per-utterance counts and sums.
    """
    check_sae_matches_store(sae, store)
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows={chunk_rows} must be >= 1.")
    table = store.utterances
    first = table["first_row"].to_numpy().astype(np.int64)
    count = table["num_rows"].to_numpy().astype(np.int64)
    if first.size == 0:
        raise StoreError(f"the store at {store.path} holds no utterances; harvest some before selecting features.")
    if np.any(np.diff(first) < 0) or int(count.sum()) != store.num_rows or int(first[0]) != 0 \
            or np.any(first[1:] != first[:-1] + count[:-1]):
        raise StoreError(f"the utterance table of {store.path} does not tile its {store.num_rows} rows in order; "
                         "run ActivationStore.verify() and consolidate_store() on it.")
    labels = {name: np.asarray(table[name].to_pylist(), dtype=object)
              for name in ("utt_id", "emotion", "pair_key", "condition", "text_id") if name in table.column_names}
    emotions, emotion_of_utt = np.unique(labels["emotion"].astype(str), return_inverse=True)
    d_sae, k = sae.cfg.d_sae, sae.cfg.k
    n_emotions = len(emotions)
    packed = np.zeros((first.size, (d_sae + 7) // 8), dtype=np.uint8)
    device = torch.device(device)
    sae = sae.to(device)
    dtype = sae.W_dec.dtype
    rows_fired = torch.zeros(n_emotions * d_sae, dtype=torch.int64, device=device)
    value_sum = torch.zeros(n_emotions * d_sae, dtype=torch.float64, device=device)
    rows_total = np.zeros(n_emotions, dtype=np.int64)
    emotion_of_utt_t = torch.from_numpy(emotion_of_utt.astype(np.int64)).to(device)
    step_counts = np.zeros((first.size, d_sae), dtype=np.int32) if per_step else None
    act_sums = np.zeros((first.size, d_sae), dtype=np.float32) if per_step else None

    offset = 0
    for chunk in store.iter_chunks(chunk_rows, progress=progress):
        n = chunk.shape[0]
        utt = np.searchsorted(first, np.arange(offset, offset + n), side="right") - 1  # (n,) utterance of each row
        lo, hi = int(utt[0]), int(utt[-1])
        vals, idx = sae.encode(chunk.to(device=device, dtype=dtype))  # (n, k) each
        fired = vals > 0  # (n, k): in the top-k with a positive value
        if visit is not None:
            visit(utt, vals, idx)
        local = torch.from_numpy(utt - lo).to(device)  # (n,)
        scratch = torch.zeros(hi - lo + 1, d_sae, dtype=torch.bool, device=device)  # utterances of this chunk
        scratch[local[:, None].expand(n, k)[fired], idx[fired]] = True
        packed[lo:hi + 1] |= np.packbits(scratch.cpu().numpy(), axis=1)  # OR: an utterance may span chunks
        if per_step:  # add: an utterance may span chunks
            cells = (local[:, None].expand(n, k)[fired] * d_sae + idx[fired])  # flat (utterance, latent)
            counts = torch.zeros((hi - lo + 1) * d_sae, dtype=torch.int32, device=device)
            sums = torch.zeros((hi - lo + 1) * d_sae, dtype=torch.float32, device=device)
            counts.index_add_(0, cells, torch.ones_like(cells, dtype=torch.int32))
            sums.index_add_(0, cells, vals[fired].float())
            step_counts[lo:hi + 1] += counts.view(hi - lo + 1, d_sae).cpu().numpy()
            act_sums[lo:hi + 1] += sums.view(hi - lo + 1, d_sae).cpu().numpy()

        emo = emotion_of_utt_t[torch.from_numpy(utt).to(device)]  # (n,)
        flat = (emo[:, None] * d_sae + idx)[fired]  # (n_fired,) index into (n_emotions, d_sae)
        rows_fired.index_add_(0, flat, torch.ones_like(flat))
        value_sum.index_add_(0, flat, vals[fired].double())
        rows_total += np.bincount(emotion_of_utt[utt], minlength=n_emotions)
        offset += n

    return FiringIndicators(
        packed=packed, d_sae=d_sae, utt_id=labels["utt_id"], emotion=labels["emotion"],
        pair_key=labels["pair_key"], condition=labels["condition"], emotions=[str(e) for e in emotions],
        rows_fired=rows_fired.view(n_emotions, d_sae).cpu().numpy(),
        value_sum=value_sum.view(n_emotions, d_sae).cpu().numpy(), rows_total=rows_total,
        text_id=labels.get("text_id"), num_rows=count, step_counts=step_counts, act_sums=act_sums)
