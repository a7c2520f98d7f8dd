"""The exact top-k alternatives choose torch.topk's latents: on SAE-shaped random matrices, widths that do not
divide into blocks, k close to the width, and rows that defeat the sampled threshold."""
from __future__ import annotations

import pytest
import torch

from emoctl.errors import ConfigError
from emoctl.sae.topk_select import SELECTORS, topk_block_max, topk_sampled_threshold, topk_torch


def _same_as_torch(pre: torch.Tensor, k: int, values: torch.Tensor, indices: torch.Tensor) -> None:
    ref_values, ref_indices = topk_torch(pre, k)
    torch.testing.assert_close(indices.sort(dim=1).values, ref_indices.sort(dim=1).values, rtol=0, atol=0)
    torch.testing.assert_close(values.sort(dim=1).values, ref_values.sort(dim=1).values, rtol=0, atol=0)
    torch.testing.assert_close(pre.gather(1, indices), values, rtol=0, atol=0)  # each value is its latent's


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize("shape,k", [((257, 4096), 32), ((64, 1000), 32), ((32, 100), 90), ((16, 48), 1)])
def test_every_selector_chooses_torch_topk_latents(name, shape, k):
    pre = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[1] + k)) * 3 + 0.5
    _same_as_torch(pre, k, *SELECTORS[name](pre, k))


@pytest.mark.parametrize("block", [1, 3, 16, 64, 5000])
def test_block_maxima_is_exact_for_any_block_width(block):
    pre = torch.randn(40, 777, generator=torch.Generator().manual_seed(block))
    _same_as_torch(pre, 24, *topk_block_max(pre, 24, block))


def test_rows_the_sampled_threshold_cannot_cover_fall_back_to_exact_topk():
    pre = torch.randn(8, 4096, generator=torch.Generator().manual_seed(0))
    pre[3, ::8] += 100.0  # row 3: only the sampled columns are large, so only ~12 entries pass its threshold
    pre[5, 1::8] += 100.0  # row 5: the top entries hide between the samples (many pass: still exact)
    _same_as_torch(pre, 32, *topk_sampled_threshold(pre, 32, stride=8))


def test_bad_arguments_are_refused_with_the_value():
    pre = torch.randn(4, 10)
    with pytest.raises(ConfigError, match="k=11"):
        topk_block_max(pre, 11)
    with pytest.raises(ConfigError, match="block=0"):
        topk_block_max(pre, 2, 0)
    with pytest.raises(ConfigError, match="stride=0"):
        topk_sampled_threshold(pre, 2, stride=0)
