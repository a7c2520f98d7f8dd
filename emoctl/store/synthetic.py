"""A store of rows with a known sparse structure, for demos and tests.

Each row is a positive combination of ``k_active`` atoms of a random
unit-norm dictionary plus small Gaussian noise; the dictionary is saved as
``true_dictionary.npy`` beside the manifest, so an SAE trained on the store
can be scored by how many atoms it recovers.  Utterances get well-formed fake
labels (speakers, the five ESD emotions, pair keys) so splits and selection
code run unchanged; the labels carry no signal.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from emoctl.errors import ConfigError, StoreError
from emoctl.store.manifest import MANIFEST_NAME
from emoctl.store.spec import StoreSpec, UtteranceMeta
from emoctl.store.writer import ActivationWriter

EMOTIONS = ("Neutral", "Angry", "Happy", "Sad", "Surprise")
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
    if (root / MANIFEST_NAME).exists():
        raise StoreError(f"{root} already holds a store; give the synthetic store a new directory or delete it.")
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((n_atoms, d_model))
    dictionary = (dictionary / np.linalg.norm(dictionary, axis=1, keepdims=True)).astype(np.float32)
    lengths = rng.integers(lo, hi + 1, size=n_utterances)
    settings = dict(n_atoms=n_atoms, k_active=k_active, rows_per_utterance=[lo, hi], noise_std=noise_std, seed=seed)
    spec = StoreSpec(d_model=d_model, dtype=dtype, hookpoint="synthetic", layer=None,
                     backbone="synthetic-sparse-dictionary", extra={"synthetic": settings})
    with ActivationWriter(root, spec, shard_rows=shard_rows) as writer:
        for u in tqdm(range(n_utterances), disable=not progress, desc="synthetic store", unit="utt"):
            t = int(lengths[u])
            atoms = rng.random((t, n_atoms)).argpartition(k_active - 1, axis=1)[:, :k_active]  # (T, k) distinct
            magnitudes = rng.uniform(0.5, 2.0, size=(t, k_active)).astype(np.float32)            # (T, k)
            rows = np.einsum("tk,tkd->td", magnitudes, dictionary[atoms])                        # (T, d)
            rows += (noise_std * rng.standard_normal((t, d_model))).astype(np.float32)
            writer.append(_fake_labels(u, n_speakers), rows)
    np.save(root / DICTIONARY_NAME, dictionary)
    return dictionary


def _fake_labels(u: int, n_speakers: int) -> UtteranceMeta:
    """Utterance u: five emotions per (speaker, text) pair, pairs cycling over speakers."""
    emotion = EMOTIONS[u % len(EMOTIONS)]
    pair = u // len(EMOTIONS)
    speaker = f"spk{pair % n_speakers:02d}"
    text_id = f"text{pair // n_speakers:05d}"
    return UtteranceMeta(utt_id=f"{speaker}_{text_id}_{emotion}", text_id=text_id, speaker=speaker,
                         emotion=emotion, condition="synthetic", pair_key=f"{speaker}|{text_id}")
