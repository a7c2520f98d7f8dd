"""A store with a known answer: Angry utterances carry 10·u on their first rows, and a hand-built SAE whose
latent ``PLANTED`` reads u and nothing else, so selection must find exactly that latent."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from emoctl.sae import SAEConfig, TopKSAE
from emoctl.store import ActivationWriter, StoreSpec, UtteranceMeta

D, D_SAE, K = 16, 32, 4
PLANTED = 5  # the latent that fires on the anger direction only
EMOTIONS = ("Neutral", "Angry", "Happy")


def planted_sae(seed: int = 0) -> tuple[TopKSAE, torch.Tensor]:
    """Latent PLANTED reads the unit direction u with bias -2: it fires iff x carries u (x·u = 10), and then
    its pre-activation 8 beats every other latent; the others read directions orthogonal to u."""
    g = torch.Generator().manual_seed(seed)
    sae = TopKSAE(SAEConfig(d_in=D, d_sae=D_SAE, k=K, hook_name="resid_pre.1", aux_coef=0.0))
    u = torch.zeros(D)
    u[0] = 1.0
    with torch.no_grad():
        enc = torch.randn(D_SAE, D, generator=g)
        enc[:, 0] = 0.0  # everyone else is blind to u
        enc = enc / enc.norm(dim=1, keepdim=True)
        enc[PLANTED] = u
        sae.W_enc.copy_(enc)
        sae.W_dec.copy_(enc)
        sae.b_enc.zero_()
        sae.b_enc[PLANTED] = -2.0
        sae.b_dec.zero_()
    return sae, u


def write_store(path: Path, n_texts: int, speakers: int = 2, seed: int = 0) -> Path:
    """Every (text, speaker) in all three emotions; rows are Gaussian with no u component, and Angry
    utterances carry 10·u on their first two rows."""
    rng = np.random.default_rng(seed)
    spec = StoreSpec(d_model=D, dtype="float32", hookpoint="resid_pre.1", layer=1, backbone="test")
    with ActivationWriter(path, spec, shard_rows=64) as writer:  # small shards: utterances cross chunks/shards
        for t in range(n_texts):
            for s in range(speakers):
                for emotion in EMOTIONS:
                    rows = rng.normal(size=(int(rng.integers(3, 8)), D)).astype(np.float32)
                    rows[:, 0] = 0.0
                    if emotion == "Angry":
                        rows[:2, 0] = 10.0
                    spk = f"{11 + s:04d}"
                    writer.append(UtteranceMeta(f"{spk}_{emotion}_{t:03d}", f"t{t:03d}", spk, emotion,
                                                condition=f"prompt={emotion}"), rows)
    return path
