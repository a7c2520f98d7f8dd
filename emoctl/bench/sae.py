"""``emoctl bench sae``: one Top-k SAE training step against the bare encoder matmul and sparsify.

Every row is timed in the same run (round-robin) on the same random batch, with the same
initial weights, the same dead latents and the same optimizer (Adam, fused
where PyTorch has it), so only the SAE implementation differs:

1. the bare encoder matmul ``(B, d_in) @ (d_in, d_sae)``, the floor any step pays, and the
   dense products any exact AuxK step adds to it: the encoder matmul plus AuxK's four
   (B, n_dead) x (n_dead, d_in)-sized products (decode, and the gradients of the dead codes,
   atoms and encoder rows), with nothing else;
2. emoctl's step: forward (sparse autograd, AuxK on), backward, parallel-gradient
   removal, Adam, decoder renormalization, in two forms: AuxK on the gathered
   dead columns (``gathered_aux_forward``: small dense products, but a host sync
   sizes them), the **eager step** every row is also compared with; and the
   training forward, AuxK as a masked top-k_aux over all latents (fixed shapes,
   no host sync; dense codes at the default k_aux), eager, with no dead latents (the same work: shapes do not
   depend on the dead set), and compiled (``torch.compile``; CUDA graphs on a
   GPU) unless ``compile=False``;
3. the same step with ``reference_forward`` (dense PyTorch autograd);
4. EleutherAI sparsify's ``SparseCoder`` step with the same dead mask, when
   ``eai-sparsify`` is installed;
5. on a GPU, or a CPU with bf16 matrix units (AMX, AVX512-BF16), or with
   ``bf16=True``: the bf16 matmul alone and the steps with bf16 encoder products
   (``matmul_dtype="bfloat16"``), eager and compiled.  The floor ratios are to the
   *fp32* floor, so the bf16 rows say what bf16 buys on this machine.

Compiling is done before timing and not timed; a compile that fails leaves its rows out with the reason.

The dead-latent counters are set once (``dead_fraction`` of latents dead) and
not advanced during timing, so every step sees the same AuxK work.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import io
import os
import statistics
import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from emoctl.bench.rounds import resolve_device, sync
from emoctl.errors import ConfigError
from emoctl.sae.config import SAEConfig
from emoctl.sae.topk_sae import MatmulDtype, SAEOutput, TopKSAE, gathered_aux_forward, reference_forward, \
    training_forward

Step = Callable[[], None]

EAGER = "emoctl TopKSAE step, gathered AuxK (host sync), eager, fp32"
"""The row every step is compared with (``speed_vs_eager``)."""


def bench_sae(batch_size: int = 4096, d_in: int = 1280, d_sae: int = 4096, k: int = 32, dead_fraction: float = 0.1,
              steps: int = 5, warmup: int = 2, device: str = "auto", seed: int = 0, profile: bool = False,
              compile: bool = True, bf16: bool | None = None) -> list[dict]:
    """Time one SAE training step; print a Markdown table and return its rows.

    Args:
        batch_size: Tokens per step.
        d_in: Activation width.
        d_sae: Number of latents.
        k: Latents kept per token.
        dead_fraction: Share of latents marked dead through the counters, so AuxK runs.
        steps: Timed steps per row; the table reports their median.
        warmup: Untimed steps before timing each row.
        device: "cpu", "cuda", or "auto" (CUDA when available).
        seed: Seed of the batch, the weights and the dead set.
        profile: Also print torch.profiler's table of the emoctl steps' most costly kernels (where the time
            goes, for the next optimization).
        compile: Also time the compiled steps (torch.compile; CUDA graphs on a GPU). Compiling takes tens of
            seconds, not timed.
        bf16: Time the bf16 rows; None times them where the chip has bf16 matrix units (a GPU, AMX, AVX512-BF16).
    """
    if not 0.0 <= dead_fraction <= 1.0:
        raise ConfigError(f"dead_fraction={dead_fraction} must be in [0, 1].")
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ConfigError(f"bench sae: need steps >= 1, warmup >= 0 and batch_size >= 1; got steps={steps}, "
                          f"warmup={warmup}, batch_size={batch_size}.")
    dev = resolve_device(device, "bench sae")
    generator = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, k=k, hook_name="bench")
    torch.manual_seed(seed)
    template = TopKSAE(cfg, device=dev)
    x = torch.randn(batch_size, d_in, generator=generator).to(dev)
    template.init_b_pre(x, "mean")
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=generator)[: round(dead_fraction * d_sae)]] = True
    dead = dead.to(dev)
    template.tokens_since_fired.masked_fill_(dead, cfg.dead_tokens)

    all_alive = copy.deepcopy(template)
    all_alive.tokens_since_fired.zero_()

    def fixed(autocast: MatmulDtype, compiled: bool) -> Callable[[], Step]:
        return lambda: _emoctl_step(template, x, _training(autocast, compiled), None, probe=compiled)

    cases: list[tuple[str, Callable[[], Step]]] = [
        ("bare encoder matmul, fp32", lambda: _matmul_step(x, template.W_enc.detach(), None)),
        ("encoder matmul + AuxK's 4 dense products, fp32", lambda: _dense_work_step(x, template, dead)),
        (EAGER, lambda: _emoctl_step(template, x, gathered_aux_forward, None)),
        ("emoctl TopKSAE step, fixed-shape AuxK, eager, fp32", fixed("float32", False)),
        ("emoctl TopKSAE step, fixed-shape AuxK, eager, fp32, no dead latents",
         lambda: _emoctl_step(all_alive, x, _training("float32", False), None)),
    ]
    if compile:
        cases.append(("emoctl TopKSAE step, fixed-shape AuxK, compiled, fp32", fixed("float32", True)))
    cases.append(("dense reference step, fp32", lambda: _emoctl_step(template, x, reference_forward, None)))
    sparsify_label = "sparsify SparseCoder step" + (", bf16 autocast (built in)" if dev.type == "cuda" else ", fp32")
    if _import_sparsify() is not None:
        cases.append((sparsify_label, lambda: _sparsify_step(template, x, dead)))
    if bf16 if bf16 is not None else _has_fast_bf16(dev):
        cases += [
            ("bare encoder matmul, bf16", lambda: _matmul_step(x, template.W_enc.detach(), torch.bfloat16)),
            ("emoctl TopKSAE step, fixed-shape AuxK, eager, bf16 matmul", fixed("bfloat16", False)),
        ]
        if compile:
            cases.append(("emoctl TopKSAE step, fixed-shape AuxK, compiled, bf16 matmul", fixed("bfloat16", True)))
        cases.append(("dense reference step, bf16 autocast",
                      lambda: _emoctl_step(template, x, reference_forward, torch.bfloat16)))

    step_fns: dict[str, Step] = {}
    for name, make_step in tqdm(cases, desc="bench sae: building (and compiling) the steps", leave=False):
        try:
            step_fns[name] = make_step()
        except Exception as err:  # a compiler missing or failing on this machine: report it, time the rest
            print(f"({name!r} left out: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    timings = _interleaved_median_seconds(step_fns, steps, warmup, dev)
    gc.collect()

    floor = timings["bare encoder matmul, fp32"]
    bf16_floor = timings.get("bare encoder matmul, bf16")
    theirs = timings.get(sparsify_label)
    eager = timings[EAGER]
    rows = [
        {
            "row": name,
            "ms_per_step": 1e3 * seconds,
            "tokens_per_s": batch_size / seconds,
            "x_matmul_floor": seconds / floor,
            "x_same_precision_floor": seconds / (bf16_floor if "bf16" in name and bf16_floor else floor),
            "speed_vs_eager": eager / seconds,
            "speed_vs_sparsify": theirs / seconds if theirs is not None else None,
        }
        for name, seconds in timings.items()
    ]
    print(_markdown(rows, f"Top-k SAE training step on {_device_name(dev)} ({torch.get_num_threads()} threads): "
                          f"batch {batch_size}, {d_in} -> {d_sae} -> {d_in}, k {k}, "
                          f"{dead.sum().item()} dead latents (AuxK on, k_aux {cfg.resolved_k_aux}), "
                          f"median of {steps} steps after {warmup}; speed vs eager step: tokens/s over those of "
                          f"'{EAGER}'."))
    if profile:
        for matmul in ["float32"] + (["bfloat16"] if _has_fast_bf16(dev) else []):
            label = "bf16 matmul" if matmul == "bfloat16" else "fp32"
            _print_profile(_emoctl_step(template, x, _training(matmul, False), None), dev,
                           f"emoctl TopKSAE step, fixed-shape AuxK, eager, {label}", steps)
    return rows


def _print_profile(step: Step, device: torch.device, label: str, steps: int) -> None:
    """torch.profiler's table of one step's ops, most costly first (device time on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _ in range(2):
        step()  # warm
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nProfile of {label}, {steps} steps, by {sort}:\n")
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))


# ------------------------------------------------------------------ the steps
def _training(matmul_dtype: MatmulDtype, compiled: bool) -> Callable[[TopKSAE, torch.Tensor], SAEOutput]:
    """The training forward with these options, built once per SAE copy (a compiled one compiles once)."""
    built: dict[int, Callable[[torch.Tensor], SAEOutput]] = {}

    def forward(sae: TopKSAE, x: torch.Tensor) -> SAEOutput:
        if id(sae) not in built:
            built[id(sae)] = training_forward(sae, matmul_dtype, compiled)
        if compiled and x.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()
        return built[id(sae)](x)

    return forward


def _adam(params) -> torch.optim.Optimizer:
    """The same optimizer for every row: fused Adam where available."""
    try:
        return torch.optim.Adam(params, lr=1e-4, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=1e-4)


def _matmul_step(x: torch.Tensor, W_enc: torch.Tensor, dtype: torch.dtype | None) -> Step:
    a, b = (x, W_enc) if dtype is None else (x.to(dtype), W_enc.to(dtype))

    def step() -> None:
        a @ b.t()

    return step


def _dense_work_step(x: torch.Tensor, template: TopKSAE, dead: torch.Tensor) -> Step:
    """The encoder matmul and AuxK's four dense products, on stand-in codes and gradients of the right shapes."""
    W_enc = template.W_enc.detach()
    W_dead = template.W_dec.detach()[dead]  # (n_dead, d_in)
    acts = torch.randn(x.shape[0], W_dead.shape[0], device=x.device).relu_()  # (B, n_dead) dead codes
    grad = torch.randn_like(x)  # (B, d_in) gradient of the AuxK reconstruction

    def step() -> None:
        x @ W_enc.t()      # pre-activations
        acts @ W_dead      # AuxK decode
        grad @ W_dead.t()  # gradient of the dead codes
        acts.t() @ grad    # gradient of the dead atoms
        acts.t() @ x       # gradient of the dead encoder rows (the codes' gradient stands in for acts)

    return step


def _emoctl_step(template: TopKSAE, x: torch.Tensor, forward: Callable[[TopKSAE, torch.Tensor], SAEOutput],
                 autocast: torch.dtype | None, probe: bool = False) -> Step:
    """One training step on a copy of ``template``; ``probe`` runs it once now (where a compile happens)."""
    sae = copy.deepcopy(template)
    optimizer = _adam(sae.parameters())
    start = copy.deepcopy(sae.state_dict())

    def step() -> None:
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            out = forward(sae, x)
        out.loss.backward()
        sae.remove_parallel_grad()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder()

    if probe:  # compile (and, on a GPU, record the CUDA graphs) outside the timing, then restore the weights
        for _ in range(3):
            step()
        sync(x.device)
        with torch.no_grad():
            sae.load_state_dict(start)
        optimizer = _adam(sae.parameters())
    return step


def _import_sparsify():
    """sparsify's SparseCoder classes, or None when eai-sparsify is not installed."""
    if not torch.cuda.is_available():
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # its Triton decoder needs a GPU
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints which decoder it picked
            from sparsify import SparseCoder, SparseCoderConfig
    except Exception as err:  # not installed, or installed against other versions than this machine's
        if not isinstance(err, ImportError) or "sparsify" not in str(err):
            print(f"(sparsify's row left out: importing it failed with {type(err).__name__}: {err})")
        return None
    return SparseCoder, SparseCoderConfig


def _sparsify_step(template: TopKSAE, x: torch.Tensor, dead: torch.Tensor) -> Step:
    SparseCoder, SparseCoderConfig = _import_sparsify()
    cfg = template.cfg
    coder = SparseCoder(cfg.d_in, SparseCoderConfig(num_latents=cfg.d_sae, k=cfg.k), device=x.device)
    with torch.no_grad():  # same starting point as ours
        coder.encoder.weight.copy_(template.W_enc)
        coder.encoder.bias.copy_(template.b_enc)
        coder.W_dec.copy_(template.W_dec)
        coder.b_dec.copy_(template.b_dec)
    optimizer = _adam(coder.parameters())

    def step() -> None:
        out = coder(x, dead_mask=dead)
        (out.fvu + cfg.aux_coef * out.auxk_loss).backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        coder.set_decoder_norm_to_unit_norm()

    return step


# ----------------------------------------------------------------- reporting
def _interleaved_median_seconds(step_fns: dict[str, Step], steps: int, warmup: int,
                                device: torch.device) -> dict[str, float]:
    """Median seconds per step of each row, timing the rows round-robin.

    On a shared machine the load changes over a run; interleaving exposes every
    row to the same conditions, so the ratios stay meaningful even when absolute
    times drift.
    """
    seconds: dict[str, list[float]] = {name: [] for name in step_fns}
    with tqdm(total=len(step_fns) * (steps + warmup), desc="bench sae", unit="step", leave=False) as bar:
        for repeat in range(warmup + steps):
            for name, step in step_fns.items():
                sync(device)
                start = time.perf_counter()
                step()
                sync(device)
                if repeat >= warmup:
                    seconds[name].append(time.perf_counter() - start)
                bar.update()
    return {name: statistics.median(values) for name, values in seconds.items()}


def _has_fast_bf16(device: torch.device) -> bool:
    """bf16 rows are worth timing on a GPU and on CPUs with bf16 matrix units (AMX or AVX512-BF16)."""
    if device.type == "cuda":
        return True
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


def _markdown(rows: list[dict], title: str) -> str:
    lines = [title, "", "| row | ms/step | tokens/s | x fp32 matmul floor | x same-precision floor "
                        "| speed vs eager step | speed vs sparsify |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        versus = f"{r['speed_vs_sparsify']:.2f}x" if r["speed_vs_sparsify"] is not None else "-"
        lines.append(f"| {r['row']} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['x_matmul_floor']:.2f} | {r['x_same_precision_floor']:.2f} | "
                     f"{r['speed_vs_eager']:.2f}x | {versus} |")
    return "\n".join(lines)
