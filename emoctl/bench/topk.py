"""``emoctl bench topk``: the exact row-wise top-k of an SAE step's pre-activations, ``torch.topk`` against the
two exact alternatives of :mod:`emoctl.sae.topk_select`, timed round-robin in one run.

The matrix is a real SAE's: ``(x - b_pre) @ W_enc.T + b_enc`` of a freshly initialised Top-k SAE on Gaussian
rows, at the training shape (batch 4096, 1280 -> 4096, k 32). Every row of the table also says whether the
method chose exactly ``torch.topk``'s latents on that matrix.
"""
from __future__ import annotations

import statistics
import time

import torch
from tqdm.auto import tqdm

from emoctl.errors import ConfigError
from emoctl.sae.config import SAEConfig
from emoctl.sae.topk_sae import TopKSAE
from emoctl.sae.topk_select import topk_block_max, topk_sampled_threshold, topk_torch


def bench_topk(batch_size: int = 4096, d_in: int = 1280, d_sae: int = 4096, k: int = 32,
               blocks: list[int] | None = None, strides: list[int] | None = None, repeats: int = 9,
               warmup: int = 2, seed: int = 0) -> list[dict]:
    """Print a Markdown table of ms per top-k and the ratio to ``torch.topk``; return its rows.

    Args:
        batch_size: Rows (tokens) of the pre-activation matrix.
        d_in: Activation width of the SAE that makes the matrix.
        d_sae: Latents (columns).
        k: Latents kept per row.
        blocks: Block widths of the block-maxima method; default [8, 16, 32].
        strides: Column strides of the sampled-threshold method; default [8].
        repeats: Timed repeats per row (the table shows the median).
        warmup: Untimed repeats per row first.
        seed: Seed of the SAE and the rows.
    """
    blocks, strides = list(blocks or [8, 16, 32]), list(strides or [8])
    if min(batch_size, d_in, d_sae, k, repeats) < 1 or warmup < 0 or k > d_sae:
        raise ConfigError(f"bench topk: need batch_size, d_in, d_sae, k, repeats >= 1, k <= d_sae and warmup >= 0; "
                          f"got batch_size={batch_size}, d_in={d_in}, d_sae={d_sae}, k={k}, repeats={repeats}, "
                          f"warmup={warmup}.")
    if min(blocks + strides) < 1:
        raise ConfigError(f"bench topk: blocks {blocks} and strides {strides} must be >= 1.")
    torch.manual_seed(seed)
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=k, hook_name="bench"))
    x = torch.randn(batch_size, d_in, generator=torch.Generator().manual_seed(seed))
    sae.init_b_pre(x, "mean")
    with torch.no_grad():
        pre = torch.addmm(sae.b_enc, x - sae.b_pre, sae.W_enc.t())
    cases = {"torch.topk (sorted=False)": lambda: topk_torch(pre, k)}
    cases.update({f"block maxima, block {b}": (lambda b=b: topk_block_max(pre, k, b)) for b in blocks})
    cases.update({f"sampled threshold, stride {s}": (lambda s=s: topk_sampled_threshold(pre, k, s)) for s in strides})
    reference = topk_torch(pre, k)[1].sort(dim=1).values
    same = {name: torch.equal(fn()[1].sort(dim=1).values, reference) for name, fn in cases.items()}
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    with tqdm(total=len(cases) * (warmup + repeats), desc="bench topk", unit="call", leave=False) as bar:
        for repeat in range(warmup + repeats):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                if repeat >= warmup:
                    seconds[name].append(time.perf_counter() - start)
                bar.update()
    base = statistics.median(seconds["torch.topk (sorted=False)"])
    rows = [{"row": name, "ms": 1e3 * statistics.median(s), "x_torch_topk": statistics.median(s) / base,
             "same_latents": same[name]} for name, s in seconds.items()]
    lines = [f"Exact row-wise top-{k} of a ({batch_size} x {d_sae}) SAE pre-activation matrix on "
             f"{torch.get_num_threads()} threads, median of {repeats} after {warmup}, rows timed round-robin.", "",
             "| method | ms | x torch.topk | same latents as torch.topk |", "|---|---:|---:|---|"]
    lines += [f"| {r['row']} | {r['ms']:.1f} | {r['x_torch_topk']:.2f} | {'yes' if r['same_latents'] else 'NO'} |"
              for r in rows]
    print("\n".join(lines))
    return rows
