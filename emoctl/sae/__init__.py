"""Top-k sparse autoencoders on residual-stream activations.

``TopKSAE`` (the math and the dead-latent counters), ``SAEConfig`` (its
settings), ``sparse_ops`` (the sparse autograd that makes it fast) and
``export`` (SAELens-format save/load).  The Lightning wrapper is
``emoctl.sae.module.SAEModule``; it is not imported here so that using an SAE
does not pull in Lightning.
"""
from __future__ import annotations

from emoctl.sae.config import SAEConfig
from emoctl.sae.export import load_pretrained, save_pretrained
from emoctl.sae.topk_sae import SAEOutput, TopKSAE, geometric_median, reference_forward

__all__ = ["SAEConfig", "SAEOutput", "TopKSAE", "geometric_median", "load_pretrained", "reference_forward",
           "save_pretrained"]
