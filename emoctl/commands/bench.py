"""``emoctl bench``: benchmarks that print a Markdown table with ratios against a baseline measured in the same
run.  Each benchmark's typed entry point is its library function in :mod:`emoctl.bench` (``bench gpu`` runs
several of them in one process), named here for the command line."""
from __future__ import annotations

from emoctl.bench.cosyvoice import bench_cosyvoice
from emoctl.bench.ddp import bench_ddp
from emoctl.bench.fit import bench_fit
from emoctl.bench.gpu import bench_gpu
from emoctl.bench.harvest import bench_harvest
from emoctl.bench.loader import bench_loader
from emoctl.bench.probes import bench_probes
from emoctl.bench.sae import bench_sae
from emoctl.bench.ser import bench_ser
from emoctl.bench.topk import bench_topk

__all__ = ["bench_cosyvoice", "bench_ddp", "bench_fit", "bench_gpu", "bench_harvest", "bench_loader", "bench_probes",
           "bench_sae", "bench_ser", "bench_topk"]
