"""``emoctl bench gpu`` (``make bench-gpu``): the GPU checks in one run and one Markdown file.

Meant for anyone with a GPU machine and a fresh clone: ``make bench-gpu`` installs what it needs and runs

1. the SAE training step at the paper's shape (1280 -> 4096, k = 32, batch 4096): the eager step with AuxK on
   gathered dead columns (a host sync), the sync-free step eager and compiled (CUDA graphs), the same with bf16
   encoder products, and the bf16 encoder matmul alone, each against the eager step and against sparsify's
   step, which uses its Triton kernels on a GPU (``emoctl bench sae``);
2. the activation-store loader, pinned batches copied to the GPU, against a plain copy of the same bytes
   (``emoctl bench loader``);
3. SAE training end to end, real ``emoctl fit`` processes at the paper's shape, and 2-GPU DDP when two
   GPUs are visible (``emoctl bench fit``);
4. the CosyVoice adapter's decoding against upstream's loop, and one EmoShift step against a frozen forward,
   on the released LLM shape (``emoctl bench cosyvoice``);
5. the IndexTTS2 adapter's batched generation against upstream's ``inference_speech`` on the released GPT
   shape (``emoctl bench harvest --backbone indextts2``).

Each section's own table is kept as it prints it, with the section's wall time; a section that fails is
reported with its error (traceback in the log) and the others still run, and the report is rewritten after
every section.  ``--device cpu --quick true`` runs reduced shapes, to check the script itself on a machine
without a GPU.
"""
from __future__ import annotations

import contextlib
import io
import platform
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

from emoctl.bench.cosyvoice import bench_cosyvoice
from emoctl.bench.fit import bench_fit
from emoctl.bench.harvest_indextts2 import bench_harvest_indextts2
from emoctl.bench.loader import bench_loader
from emoctl.bench.rounds import resolve_device
from emoctl.bench.sae import bench_sae
from emoctl.errors import ConfigError, first_line
from emoctl.io.fsio import atomic_write_bytes, check_output_dir

SECTIONS = ("sae", "loader", "fit", "cosyvoice", "indextts2")


def _sections(device: str, quick: bool) -> dict[str, tuple[str, Callable[[], object]]]:
    if quick:
        return {
            "sae": ("SAE step (reduced: 256 -> 512, k 8, batch 256)",
                    lambda: bench_sae(batch_size=256, d_in=256, d_sae=512, k=8, steps=2, warmup=1, device=device,
                                      compile=device.startswith("cuda"))),  # a CPU check skips compiling
            "loader": ("Store loader (reduced: 16,384 rows x 256)",
                       lambda: bench_loader(rows=16_384, d_model=256, batch_size=1024, workers=[], threads=[2],
                                            device=device)),
            "fit": ("emoctl fit end to end (reduced: 64 -> 256, k 8, batch 256)",
                    lambda: bench_fit(steps=60, batch_size=256, d_in=64, d_sae=256, k=8, rows=20_000,
                                      dtype="float32", accelerator="gpu" if device.startswith("cuda") else "cpu")),
            "cosyvoice": ("CosyVoice decoding and EmoShift step (test shape)",
                          lambda: bench_cosyvoice(batch_size=2, max_new_tokens=4, train_tokens=16, full_size=False,
                                                  device=device)),
            "indextts2": ("IndexTTS2 generation (test shape)",
                          lambda: bench_harvest_indextts2(batch_size=2, max_new_tokens=4, full_size=False,
                                                          device=device)),
        }
    return {
        "sae": ("SAE training step at the paper's shape (1280 -> 4096, k 32, batch 4096)",
                lambda: bench_sae(device=device, steps=20, warmup=5)),
        "loader": ("Activation-store loader to the GPU (524,288 rows x 1280, fp32 and bf16; 0-2 prefetch threads, "
                   "1-2 worker processes; pinned batches copied to the device)",
                   lambda: bench_loader(rows=524_288, device=device)),
        "fit": ("SAE training end to end: emoctl fit at the paper's shape, bf16-mixed, from a synthetic bf16 store "
                "of 1 M rows (2-GPU DDP too when two GPUs are visible)",
                lambda: bench_fit(steps=1000, rows=1_000_000)),
        "cosyvoice": ("CosyVoice-300M LLM: decoding vs upstream, EmoShift step vs frozen forward",
                      lambda: bench_cosyvoice(device=device)),
        "indextts2": ("IndexTTS2 GPT: batched generation vs upstream inference_speech",
                      lambda: bench_harvest_indextts2(device=device)),
    }


def bench_gpu(out: str = "reports/bench_gpu.md", device: str = "cuda", quick: bool = False,
              sections: list[str] | None = None) -> Path:
    """Run the GPU checks and write one Markdown report to ``out`` (written whole, at the end).

    Args:
        out: The Markdown file to write.
        device: "cuda" (the point of it) or "cpu" (with ``quick``, to check the script).
        quick: Reduced shapes (minutes on a CPU) instead of the papers' and the released models'.
        sections: Which of sae, loader, cosyvoice, indextts2 to run (default: all).
    """
    import torch

    chosen = list(SECTIONS if sections is None else sections)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise ConfigError(f"sections {unknown or chosen} are not among {', '.join(SECTIONS)}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("bench gpu: CUDA is not available on this machine. Run it on a GPU machine, or check the "
                          "script itself here with --device cpu --quick true.")
    resolve_device(device, "bench gpu", auto=False)  # an unknown name, or a GPU index this machine lacks
    if device == "cpu" and not quick:
        raise ConfigError("bench gpu on the CPU runs only the reduced shapes: add --quick true (the full shapes "
                          "are `emoctl bench sae`, `bench cosyvoice` ... one at a time).")
    out_path = Path(out)
    check_output_dir(out_path.parent, "out's folder")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name = torch.cuda.get_device_name(0) if gpus else platform.processor() or platform.machine()
    header = ["# emoctl GPU checks", "",
             f"Device `{device}` ({name}; {gpus} GPU(s) visible), torch {torch.__version__}, "
             f"{'reduced shapes (--quick)' if quick else 'full shapes'}. Each section is the table its "
             "benchmark prints, ratios against a baseline measured in the same run.", ""]
    summary = ["| section | wall s | result |", "|---|---:|---|"]
    ddp_row = ("| ddp | – | in the fit section (two GPUs visible) |" if gpus >= 2 else
               f"| ddp | – | not measured: {gpus} GPU(s) visible; the fit section runs 2-GPU DDP when two are |")
    sections_text: list[str] = []
    selected = [(k, v) for k, v in _sections(device, quick).items() if k in chosen]

    def write(done: int) -> None:
        # Rewritten whole after every section: a run cut short (a lease ending, a kill) keeps what it measured.
        state = [] if done == len(selected) else [
            f"**Partial: {done} of {len(selected)} sections done; the run is still going or was cut short.**", ""]
        text = "\n".join(header + state + summary + [ddp_row, ""] + sections_text) + "\n"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out_path, text.encode())

    for done, (key, (title, run)) in enumerate(selected, start=1):
        buffer = io.StringIO()
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(buffer):
                run()
            result = "ok"
        except Exception as err:  # one failing section must not cost the others
            result = f"failed: {type(err).__name__}: {first_line(err)}"
            traceback.print_exc()  # the report keeps one line; the log keeps where it failed
        wall = time.perf_counter() - start
        summary.append(f"| {key} | {wall:.0f} | {result} |")
        tables = _paragraphs(line for line in buffer.getvalue().splitlines()
                             if line.startswith("|") or (line and not line.startswith(("\r", " "))))
        sections_text += [f"## {title}", "", tables or "(no table)", "", f"Wall time {wall:.0f} s; {result}.", ""]
        write(done)
        print(f"bench gpu: {key} {result} in {wall:.0f} s\n{tables}", flush=True)
    print(f"bench gpu: wrote {out_path}")
    return out_path


def _paragraphs(lines: Iterable[str]) -> str:
    """The kept lines with a blank line wherever a table starts or ends (Markdown renders a table only then)."""
    out: list[str] = []
    for line in lines:
        if out and out[-1] and out[-1].startswith("|") != line.startswith("|"):
            out.append("")
        out.append(line)
    return "\n".join(out)
