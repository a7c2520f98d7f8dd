"""A store of rows with a known sparse structure, for demos and tests.

Each row is a positive combination of ``k_active`` atoms of a random
unit-norm dictionary plus small Gaussian noise; the dictionary is saved as
``true_dictionary.npy`` beside the manifest, so an SAE trained on the store
can be scored by how many atoms it recovers.  Utterances get well-formed fake
labels (speakers, the five ESD emotions, pair keys) so splits and selection
code run unchanged; the labels carry no signal.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from emoctl.emotions import ESD_EMOTIONS as EMOTIONS
from emoctl.errors import ConfigError, StoreError
from emoctl.io.fsio import ExclusiveLock
from emoctl.store.manifest import MANIFEST_NAME, mark_finished, read_manifest
from emoctl.store.spec import StoreSpec, UtteranceMeta
from emoctl.store.writer import ActivationWriter

DICTIONARY_NAME = "true_dictionary.npy"


def write_sparse_dictionary_store(
    path: str | Path,
    *,
    d_model: int = 64,
    n_atoms: int = 256,
    k_active: int = 4,
    n_utterances: int = 400,
    rows_per_utterance: tuple[int, int] = (20, 60),
    noise_std: float = 0.01,
    dtype: str = "float32",
    seed: int = 0,
    shard_rows: int = 1 << 16,
    n_speakers: int = 10,
    progress: bool = True,
) -> np.ndarray:
    """Write a synthetic store at ``path`` and return its true dictionary, (n_atoms, d_model) float32.

    Deterministic for a seed.  Magnitudes are uniform in [0.5, 2]; row lengths of
    utterances are uniform in the inclusive range ``rows_per_utterance``.
    """
    lo, hi = rows_per_utterance
    if not 0 < k_active <= n_atoms or not 1 <= lo <= hi or n_utterances <= 0 or noise_std < 0 or n_speakers <= 0:
        raise ConfigError(
            f"synthetic store settings are inconsistent: need 0 < k_active ({k_active}) <= n_atoms ({n_atoms}), "
            f"1 <= rows_per_utterance[0] <= [1] (got {rows_per_utterance}), n_utterances > 0 ({n_utterances}), "
            f"noise_std >= 0 ({noise_std}) and n_speakers > 0 ({n_speakers})."
        )
    root = Path(path)
    lock = ExclusiveLock.beside(root)
    if not lock.acquire():
        raise StoreError(f"another process is writing the synthetic store at {root} ({lock.owner()}); two builds "
                         f"of one store would delete each other's rows. Wait for it to finish and use its store, or "
                         f"give this build another directory.")
    try:
        return _write_locked(root, d_model, n_atoms, k_active, n_utterances, lo, hi, noise_std, dtype, seed,
                             shard_rows, n_speakers, progress)
    finally:
        lock.release()


def _write_locked(root: Path, d_model: int, n_atoms: int, k_active: int, n_utterances: int, lo: int, hi: int,
                  noise_std: float, dtype: str, seed: int, shard_rows: int, n_speakers: int,
                  progress: bool) -> np.ndarray:
    """The build itself, by the process that holds the store's lock (so an unfinished store here is dead)."""
    if (root / MANIFEST_NAME).exists():
        existing = read_manifest(root)
        if (existing.get("producer") or {}).get("name") != "synthetic" or existing["producer"].get("finished"):
            raise StoreError(f"{root} already holds a store; give the synthetic store a new directory or delete it.")
        # A synthetic build killed part-way: its rows are a function of the seed, so it starts again.
        warnings.warn(f"{root} holds an unfinished synthetic store (a killed build); rebuilding it from the seed.",
                      stacklevel=3)
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((n_atoms, d_model))
    dictionary = (dictionary / np.linalg.norm(dictionary, axis=1, keepdims=True)).astype(np.float32)
    lengths = rng.integers(lo, hi + 1, size=n_utterances)
    settings = dict(n_atoms=n_atoms, k_active=k_active, rows_per_utterance=[lo, hi], noise_std=noise_std, seed=seed)
    spec = StoreSpec(d_model=d_model, dtype=dtype, hookpoint="synthetic", layer=None,
                     backbone="synthetic-sparse-dictionary", extra={"synthetic": settings})
    starts = np.concatenate([[0], np.cumsum(lengths)])  # (n_utterances + 1,) first row of each utterance
    with ActivationWriter(root, spec, shard_rows=shard_rows, producer="synthetic") as writer, \
            tqdm(total=n_utterances, disable=not progress, desc="synthetic store", unit="utt") as bar:
        first = 0
        while first < n_utterances:  # draw the rows of whole utterances ~64k rows at a time
            last = max(first + 1, int(np.searchsorted(starts, starts[first] + (1 << 16), side="right")) - 1)
            block = _sparse_rows(rng, dictionary, int(starts[last] - starts[first]), k_active, noise_std)
            offsets = starts[first:last + 1] - starts[first]
            for u, a, b in zip(range(first, last), offsets[:-1], offsets[1:]):
                writer.append(_fake_labels(u, n_speakers), block[a:b])
            bar.update(last - first)
            first = last
    np.save(root / DICTIONARY_NAME, dictionary)
    mark_finished(root)  # last: a store without the mark is a killed build
    return dictionary


def _sparse_rows(rng: np.random.Generator, dictionary: np.ndarray, n: int, k: int, noise_std: float) -> np.ndarray:
    """(n, d) float32 rows, each a [0.5, 2]-weighted sum of k distinct atoms plus Gaussian noise."""
    n_atoms, d = dictionary.shape
    atoms = _distinct_indices(rng, n, n_atoms, k)                          # (n, k)
    magnitudes = rng.uniform(0.5, 2.0, size=(n, k)).astype(np.float32)    # (n, k)
    rows = np.einsum("nk,nkd->nd", magnitudes, dictionary[atoms])          # (n, d)
    rows += (noise_std * rng.standard_normal((n, d))).astype(np.float32)
    return rows


def _distinct_indices(rng: np.random.Generator, n: int, high: int, k: int) -> np.ndarray:
    """(n, k) indices in [0, high), distinct within each row, uniformly over k-subsets."""
    if 4 * k > high:  # collisions common: rank random keys instead
        return rng.random((n, high)).argpartition(k - 1, axis=1)[:, :k]
    idx = rng.integers(0, high, size=(n, k))
    while True:  # redraw the few rows with a repeated index (about k²/2high of them)
        ordered = np.sort(idx, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not repeated.any():
            return idx
        idx[repeated] = rng.integers(0, high, size=(int(repeated.sum()), k))


def _fake_labels(u: int, n_speakers: int) -> UtteranceMeta:
    """Utterance u: five emotions per (speaker, text) pair, pairs cycling over speakers."""
    emotion = EMOTIONS[u % len(EMOTIONS)]
    pair = u // len(EMOTIONS)
    speaker = f"spk{pair % n_speakers:02d}"
    text_id = f"text{pair // n_speakers:05d}"
    return UtteranceMeta(utt_id=f"{speaker}_{text_id}_{emotion}", text_id=text_id, speaker=speaker,
                         emotion=emotion, condition="synthetic", pair_key=f"{speaker}|{text_id}")
