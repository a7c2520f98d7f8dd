"""Kill campaign: SIGKILL each producer at many seeded random points, resume it, compare with an uninterrupted run.

    python -m emoctl_tests.harness.kill_campaign --producer {harvest,store,sae_fit,emoshift_fit,all} --kills 20 --seed 0 \
        --out DIR

Producers (tiny real workloads, no mocks):

* ``harvest``: ``emoctl harvest`` of a tiny random MiniTTS (72 utterances in batches of 4, shards of 64 rows,
  a commit after every batch) into an activation store;
* ``store``: a producer appending 150 deterministic utterances through :class:`~emoctl.store.ActivationWriter`
  (shards of 64 rows), resumed by skipping ``committed_utt_ids``, then marked finished;
* ``sae_fit``: ``emoctl fit`` of a top-k SAE on a synthetic store (40 steps, 14 an epoch);
* ``emoshift_fit``: ``emoctl fit`` of an EmoSteer layer on a random MiniTTS and a tiny ESD tree (24 steps,
  4 an epoch).

Per producer: one uninterrupted reference run, traced; one more in a fresh ``python`` process (it must equal the
reference, which checks that the forked runs below behave as fresh ones); then, per kill, a run in its own folder
that is SIGKILLed at a point drawn from a seeded RNG, resumed as a user would (the same command; for fits
``--ckpt_path .../last.ckpt`` when the killed run left one, else the same command into the same, leftover, run
folder), sometimes killed again, and finally run to the end. Kill points alternate between

* **time**: uniform over the reference run's wall time (the parent SIGKILLs the child), and
* **event**: uniform over the reference run's traced events -- each step of the store's commit protocol (rows
  streamed, shard header + fsync, utterance table, renames, the rank index that commits, consolidation, the
  finished mark), each generated batch, optimizer step, checkpoint save, validation and export; the child SIGKILLs
  itself just before the drawn event, so kills land inside commits too.

The killed-and-resumed result must equal the reference: every store file byte for byte (``manifest.json`` without
its two timestamps); every exported weight (``torch.equal`` and the safetensors bytes) and the final
``last.ckpt``'s weights, optimizer and scheduler state. Runs are forked from this process after its imports (a
fresh interpreter costs ~20 s of imports on 2 shared cores); children use one thread, like the fresh reference.

Writes ``DIR/kill_campaign.md`` (a table) and ``DIR/kill_campaign.json``; exits 1 unless every producer resumed
and matched.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # before numpy/torch load
    os.environ[_var] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script as well as with python -m from the checkout
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

torch.set_num_threads(1)

PRODUCERS = ("harvest", "store", "sae_fit", "emoshift_fit")
WORK = "work"  # a run's folder: the child's cwd; the store or the fit's log folder lives in it


# =============================================================================================== child side
class Tracer:
    """Records named events of a child run to an append-only file (each line survives a SIGKILL) and, when
    asked, SIGKILLs the process just before its ``kill_before``-th event."""

    def __init__(self, path: Path, kill_before: int | str | None) -> None:
        """``kill_before``: an event number, or ``"NAME#K"``: the K-th event called NAME."""
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.kill_before = kill_before
        self.n = 0
        self.t0 = time.monotonic()
        self.counts: Counter[str] = Counter()

    def __call__(self, name: str) -> None:
        self.n += 1
        self.counts[name] += 1
        line = f"{self.n}\t{time.monotonic() - self.t0:.4f}\t{name}\t{self.counts[name]}"
        if self.n == self.kill_before or f"{name}#{self.counts[name]}" == self.kill_before:
            os.write(self.fd, f"{line}\tKILL\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)
        os.write(self.fd, f"{line}\n".encode())


def _wrap(owner: Any, attr: str, event: str | Callable[..., str], tracer: Tracer) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)  # keeps the signature: LightningCLI reads Trainer.fit's to build its parser
    def traced(*args, **kwargs):
        tracer(event(*args, **kwargs) if callable(event) else event)
        return original(*args, **kwargs)

    setattr(owner, attr, traced)


class _OsWithTracedReplace:
    """A stand-in for a module's ``os`` whose ``replace`` is traced (the renames of the commit protocol)."""

    def __init__(self, tracer: Tracer, label: str) -> None:
        self._tracer, self._label = tracer, label

    def replace(self, src, dst):
        self._tracer(f"{self._label} rename -> {_kind_of(Path(dst).name)}")
        return os.replace(src, dst)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def _kind_of(name: str) -> str:
    if name.endswith(".utts.parquet"):
        return "shard utterance table"
    if name.endswith(".npy"):
        return "shard rows"
    if name.startswith("index-r"):
        return "rank index (the commit point)"
    return name


def install_tracing(tracer: Tracer) -> None:
    """Trace the store's commit protocol, generation, and the fit loop's steps, checkpoints and export."""
    import emoctl.store.consolidate as consolidate
    import emoctl.io.fsio as fsio
    import emoctl.store.manifest as manifest
    import emoctl.store.writer as writer
    from emoctl.store.npy_stream import StreamingNpyWriter

    _wrap(StreamingNpyWriter, "write", "store: stream rows into the open shard", tracer)
    _wrap(StreamingNpyWriter, "finish", "store: shard header + fsync", tracer)
    _wrap(writer, "write_durably", "store: write shard utterance table (temp)", tracer)
    _wrap(writer, "fsync_dir", "store: fsync shards/", tracer)
    _wrap(writer, "write_rank_index", "store: replace rank index", tracer)
    writer.os = _OsWithTracedReplace(tracer, "store: commit")
    fsio.os = _OsWithTracedReplace(tracer, "store: atomic")
    _wrap(consolidate, "store_table", "store: consolidate (utterances.parquet, manifest)", tracer)
    _wrap(manifest, "mark_finished", lambda root, finished=True: f"store: mark {'finished' if finished else 'unfinished'}",
          tracer)
    import emoctl.callbacks.activation_harvester as harvester
    for module in (harvester, writer):  # they call the names they imported
        _wrap(module, "mark_finished", lambda root, finished=True: f"store: mark {'finished' if finished else 'unfinished'}",
              tracer)

    from emoctl.harvest.module import HarvestModule
    _wrap(HarvestModule, "predict_step", "harvest: generate a batch", tracer)

    import lightning.pytorch as pl
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop
    from lightning.pytorch.loops.fit_loop import _FitLoop
    from emoctl.callbacks.export import ModelExport

    _wrap(pl.Trainer, "fit", "fit: start", tracer)
    _wrap(_FitLoop, "on_advance_start", "fit: epoch start", tracer)
    _wrap(LightningOptimizer, "step", "fit: optimizer step", tracer)
    _wrap(pl.Trainer, "save_checkpoint",
          lambda self, filepath, *a, **k: f"fit: save {'last.ckpt' if Path(filepath).name == 'last.ckpt' else 'step checkpoint'}",
          tracer)
    _wrap(_EvaluationLoop, "run", "fit: validation", tracer)
    _wrap(ModelExport, "write", "fit: export", tracer)


def run_invocation(inv: dict[str, Any]) -> int:
    """Run one producer invocation in this process (a forked child, or ``--child`` in a fresh interpreter)."""
    os.chdir(inv["cwd"])
    tempfile.tempdir = inv["tmpdir"]  # Lightning's checkpoint temp files: a kill leaves them here, not in /tmp
    torch.set_num_threads(1)
    if inv.get("trace"):
        install_tracing(Tracer(Path(inv["trace"]), inv.get("kill_before")))
    if inv["kind"] == "emoctl":
        from emoctl.cli import main
        sys.argv = ["emoctl", *inv["args"]]  # as the console script sees it
        return int(main() or 0)
    if inv["kind"] == "store":
        produce_store(Path(inv["cwd"]) / "store", **inv["args"])
        return 0
    raise ValueError(inv["kind"])


def _child_main(inv: dict[str, Any], log: Path) -> None:
    """Entry of a forked child: never returns into the parent's code."""
    code = 1
    try:
        try:  # die with the campaign (a test's timeout, a Ctrl-C) instead of running on as an orphan
            import ctypes
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        code = run_invocation(inv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported through the log and the exit status
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# ------------------------------------------------------------------------------ the store producer
STORE_UTTS = 150
STORE_SHARD_ROWS = 64


def produce_store(path: Path, n_utts: int = STORE_UTTS, shard_rows: int = STORE_SHARD_ROWS,
                  sleep_s: float = 0.004) -> None:
    """Append deterministic utterances (store_worker's rows) to rank 0, skipping committed ones; mark finished."""
    from emoctl.store import ActivationWriter
    from emoctl.store.manifest import mark_finished
    from emoctl_tests.helpers import store_worker

    with ActivationWriter(path, store_worker.SPEC, rank=0, shard_rows=shard_rows, producer="kill-campaign") as w:
        done = w.committed_utt_ids
        print(f"skipped {len(done)}", flush=True)
        for i in range(n_utts):
            if store_worker.utt_id(0, i) in done:
                continue
            w.append(store_worker.meta(0, i), store_worker.utterance_rows(0, i))
            time.sleep(sleep_s)  # stands in for the generation that produces an utterance
    mark_finished(path)


# ================================================================================================ producers
@dataclass
class Comparison:
    identical: bool
    max_abs_diff: float | None = None
    detail: str = ""


class Producer:
    """One producer: its shared inputs, the command a user runs (and resumes with), and what must be equal."""

    name = ""
    result = ""  # path inside WORK compared with the reference

    def __init__(self, inputs: Path) -> None:
        self.inputs = inputs

    def prepare(self) -> None:
        """Build the shared, read-only inputs under ``self.inputs``."""

    def prepare_run(self, work: Path) -> None:
        """Per-run inputs inside the run's folder."""

    def command(self, work: Path) -> dict[str, Any]:
        raise NotImplementedError

    def resume_command(self, work: Path) -> dict[str, Any]:
        return self.command(work)

    def progress(self, work: Path) -> str:
        return ""

    def extra_points(self, events: list[tuple[int, float, str, int, bool]]) -> list[str]:
        """Event kills every campaign adds to the drawn ones (``"NAME#K"``), from the reference's trace."""
        return []

    def compare(self, ref: Path, got: Path) -> Comparison:
        raise NotImplementedError

    def corrupt(self, work: Path) -> None:
        """Change one value of a finished run's result (the negative control: compare must then fail)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------- stores
def _manifest_without_times(path: Path) -> dict[str, Any]:
    manifest = json.loads(path.read_text())
    (manifest.get("created") or {}).pop("time", None)
    finished = (manifest.get("producer") or {}).get("finished")
    if isinstance(finished, dict):
        finished.pop("time", None)
    return manifest


def compare_stores(ref: Path, got: Path) -> Comparison:
    """Every file of the two stores equal byte for byte (manifest.json: without its timestamps), the set of
    files equal (no leftover temp file), and the resumed store finished and intact (``verify``)."""
    from emoctl.store import ActivationStore

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    if not got.is_dir():
        return Comparison(False, None, f"{got} does not exist")
    want, have = files(ref), files(got)
    problems, max_diff = [], 0.0
    if want != have:
        problems.append(f"files differ: missing {sorted(want - have)[:5]}, extra {sorted(have - want)[:5]}")
    for rel in sorted(want & have):
        a, b = ref / rel, got / rel
        if rel == "manifest.json":
            if _manifest_without_times(a) != _manifest_without_times(b):
                problems.append("manifest.json differs (beyond its timestamps)")
            continue
        if a.read_bytes() == b.read_bytes():
            continue
        problems.append(f"{rel} differs")
        if rel.endswith(".npy"):
            x, y = np.load(a), np.load(b)
            max_diff = max(max_diff, float(np.abs(x - y).max()) if x.shape == y.shape else float("inf"))
    try:
        store = ActivationStore(got)
        if not store.finished:
            problems.append("the resumed store is not marked finished")
        store.verify(progress=False)
    except Exception as err:  # noqa: BLE001 - any failure to read it is a finding
        problems.append(f"reading the resumed store failed: {type(err).__name__}: {err}")
    return Comparison(not problems, max_diff if problems else 0.0, "; ".join(problems)[:500])


def _committed_utts(store: Path) -> int:
    index = store / "index-r0000.json"
    try:
        return sum(s["num_utterances"] for s in json.loads(index.read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def _corrupt_store(store: Path) -> None:
    """Flip the last byte of the first shard's rows (a float32 mantissa bit: a tiny value change)."""
    shard = sorted((store / "shards").glob("*.npy"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))


class StoreResultProducer(Producer):
    """A producer whose result is the store under ``work/store``: progress, comparison and the negative control."""

    def progress(self, work: Path) -> str:
        return f"{_committed_utts(work / 'store')} utts committed"

    def compare(self, ref: Path, got: Path) -> Comparison:
        return compare_stores(ref / "store", got / "store")

    def corrupt(self, work: Path) -> None:
        _corrupt_store(work / "store")


class HarvestProducer(StoreResultProducer):
    name = "harvest"
    result = "store"
    TEXTS = ["hello there", "good day to you", "no way", "what a nice cat", "we sat by the sea", "it is late",
             "come here now", "a red bus", "the sun is up", "see you soon", "so it goes", "i like tea"]

    def prepare(self) -> None:
        from emoctl_tests.helpers.tiny_tts import random_tts

        if not (self.inputs / "tiny_tts").exists():
            random_tts(seed=0).save(self.inputs / "tiny_tts")

    def command(self, work: Path) -> dict[str, Any]:
        args = ["harvest", "--config", str(REPO / "recipes" / "harvest_mini.yaml"),
                f"--model.init_args.backbone.path={self.inputs / 'tiny_tts'}", "--model.init_args.max_new_tokens=60",
                "--trainer.callbacks.init_args.path=store", "--trainer.callbacks.init_args.hookpoint=resid_pre.1",
                "--trainer.callbacks.init_args.shard_rows=64",
                "--trainer.callbacks.init_args.commit_every_s=0",  # a commit after every batch: many commits
                "--trainer.enable_progress_bar=false", "--data.init_args.corpus=null",
                f"--data.init_args.texts=[{', '.join(self.TEXTS)}]", "--data.init_args.batch_size=4"]
        return {"kind": "emoctl", "args": args}



class StoreProducer(StoreResultProducer):
    name = "store"
    result = "store"

    def command(self, work: Path) -> dict[str, Any]:
        return {"kind": "store", "args": {"n_utts": STORE_UTTS, "shard_rows": STORE_SHARD_ROWS}}



# --------------------------------------------------------------------------------------- fits
FIT_DIR = Path("fit") / "v0"  # the logger's name and version: a rerun goes into the same folder
LAST = FIT_DIR / "checkpoints" / "last.ckpt"


def _fit_recipe(trainer: dict[str, Any], callbacks: list[dict[str, Any]], model: dict, data: dict) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "deterministic": True, "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0, "check_val_every_n_epoch": None,
            "default_root_dir": ".",
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": ".", "name": FIT_DIR.parent.name, "version": FIT_DIR.name}},
            # A checkpoint after every step, so that a resume loses nothing and can be compared bit for bit.
            "callbacks": [*callbacks, {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": {"save_last": True, "every_n_train_steps": 1}}],
            **trainer,
        },
        "model": model,
        "data": data,
    }


def _load_ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _max_diff(a: Any, b: Any) -> tuple[bool, float]:
    """(equal, max |a - b|) over nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False, float("inf")
        if torch.equal(a, b):
            return True, 0.0
        diff = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else float("inf")
        return False, diff
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return False, float("inf")
        results = [_max_diff(a[k], b[k]) for k in a]
        return all(r[0] for r in results), max((r[1] for r in results), default=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return False, float("inf")
        results = [_max_diff(x, y) for x, y in zip(a, b)]
        return all(r[0] for r in results), max((r[1] for r in results), default=0.0)
    return a == b, 0.0 if a == b else float("inf")


class FitProducer(Producer):
    export = ""            # the export folder's name, beside checkpoints/
    weights = ""           # the safetensors file in it
    max_steps = 0

    def recipe(self, work: Path) -> dict[str, Any]:
        raise NotImplementedError

    def command(self, work: Path) -> dict[str, Any]:
        recipe = work.parent / "recipe.yaml"
        if not recipe.exists():
            recipe.write_text(yaml.safe_dump(self.recipe(work)))
        return {"kind": "emoctl", "args": ["fit", "--config", str(recipe)]}

    def resume_command(self, work: Path) -> dict[str, Any]:
        inv = self.command(work)
        if (work / LAST).is_file():  # else no checkpoint was written: the same command, into the leftover folder
            inv["args"] += ["--ckpt_path", str(LAST)]
        return inv

    def extra_points(self, events: list[tuple[int, float, str, int, bool]]) -> list[str]:
        """A kill just after the checkpoint of an epoch's last step (before the next step's checkpoint), so the
        resume starts exactly at an epoch's end: the first epoch boundary of the reference."""
        steps = 0
        for _, _, name, count, _ in events:
            if name == "fit: optimizer step":
                steps = count
            elif name == "fit: epoch start" and count == 2:
                return [f"fit: save step checkpoint#{steps + 1}"]
        return []

    def progress(self, work: Path) -> str:
        if not (work / LAST).is_file():
            return "no checkpoint"
        try:
            return f"ckpt step {_load_ckpt(work / LAST)['global_step']}/{self.max_steps}"
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint is a finding
            return f"last.ckpt unreadable ({type(err).__name__})"

    def compare(self, ref: Path, got: Path) -> Comparison:
        from safetensors.torch import load_file

        problems, max_diff = [], 0.0
        a_dir, b_dir = ref / FIT_DIR / self.export, got / FIT_DIR / self.export
        if not (b_dir / self.weights).is_file():
            return Comparison(False, None, f"no export at {b_dir}")
        same, diff = _max_diff(load_file(a_dir / self.weights), load_file(b_dir / self.weights))
        max_diff = max(max_diff, diff)
        if not same:
            problems.append(f"exported {self.weights} differs")
        elif (a_dir / self.weights).read_bytes() != (b_dir / self.weights).read_bytes():
            problems.append(f"{self.weights}: equal tensors, different file bytes")
        a, b = _load_ckpt(ref / LAST), _load_ckpt(got / LAST)
        for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch"):
            same, diff = _max_diff(a.get(key), b.get(key))
            max_diff = max(max_diff, diff)
            if not same:
                problems.append(f"last.ckpt {key} differs")
        leftovers = [p.name for p in (got / FIT_DIR.parent).rglob("*") if p.name.endswith((".partial", ".tmp"))]
        if leftovers:
            problems.append(f"leftover partial files {leftovers[:3]}")
        return Comparison(not problems, max_diff, "; ".join(problems)[:500])

    def corrupt(self, work: Path) -> None:
        from safetensors.torch import load_file, save_file

        path = work / FIT_DIR / self.export / self.weights
        tensors = load_file(path)
        name = sorted(tensors)[0]
        flat = tensors[name].view(-1)
        flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf"), dtype=flat.dtype))  # one ulp
        save_file(tensors, path)


class SAEFitProducer(FitProducer):
    name = "sae_fit"
    export = "sae"
    weights = "sae_weights.safetensors"
    max_steps = 40

    def prepare(self) -> None:
        from emoctl.store.synthetic import write_sparse_dictionary_store

        if not (self.inputs / "synthetic_store" / "true_dictionary.npy").exists():
            shutil.rmtree(self.inputs / "synthetic_store", ignore_errors=True)
            write_sparse_dictionary_store(self.inputs / "synthetic_store", d_model=64, n_atoms=256, k_active=4,
                                          n_utterances=100, seed=0, progress=False)

    def recipe(self, work: Path) -> dict[str, Any]:
        return _fit_recipe(
            {"max_steps": self.max_steps, "val_check_interval": 10, "log_every_n_steps": 5},
            [{"class_path": "emoctl.callbacks.SAEExport"}],
            {"class_path": "emoctl.sae.module.SAEModule",
             "init_args": {"sae": {"d_in": 64, "d_sae": 512, "k": 8, "dead_tokens": 2000, "hook_name": "synthetic"},
                           "lr": 0.002, "warmup_steps": 5, "decay_fraction": 0.3}},
            {"class_path": "data_modules.ActivationStoreDataModule",
             "init_args": {"path": str(self.inputs / "synthetic_store"), "batch_size": 256, "val_fraction": 0.05,
                           "num_workers": 0}},
        )


class EmoShiftFitProducer(FitProducer):
    name = "emoshift_fit"
    export = "emosteer"
    weights = "emosteer.safetensors"
    max_steps = 24

    def prepare(self) -> None:
        from emoctl_tests.helpers.esd import write_esd
        from emoctl_tests.helpers.tiny_tts import random_codec, random_tts

        if not (self.inputs / "tiny_tts").exists():
            random_tts(seed=0).save(self.inputs / "tiny_tts")
        if not (self.inputs / "codec").exists():
            random_codec().save(self.inputs / "codec")
        if not (self.inputs / "esd").exists():
            write_esd(self.inputs / "esd.partial", flat=True, per_emotion=5, emotions=("Neutral", "Angry", "Sad"),
                      ascii_only=True)
            (self.inputs / "esd.partial").rename(self.inputs / "esd")

    def prepare_run(self, work: Path) -> None:
        # Each run tokenizes its own copy, so kills also land in the token cache's write (it sits beside the data).
        shutil.copytree(self.inputs / "esd", work / "esd", copy_function=shutil.copy2)

    def recipe(self, work: Path) -> dict[str, Any]:
        backbone = {"kind": "mini_tts", "path": str(self.inputs / "tiny_tts")}
        return _fit_recipe(
            {"max_steps": self.max_steps, "val_check_interval": 4, "limit_val_batches": 1, "log_every_n_steps": 2},
            [],
            {"class_path": "emoctl.emosteer.module.EmoShiftModule",
             "init_args": {"backbone": backbone, "condition": "neutral",
                           "layer": {"hidden_size": 32, "emotions": ["Neutral", "Angry", "Sad"]},  # the tiny TTS's width and emotions
                           "optimizer": {"lr": 1.0, "warmup_steps": 2}}},
            {"class_path": "data_modules.tts_corpus.TTSCorpusDataModule",
             "init_args": {"corpus_root": "esd", "codec_dir": str(self.inputs / "codec"), "batch_size": 4,
                           "flat_split": [1, 1], "speakers": ["0011", "0012"], "bucket_batches": 1,
                           "tokenize_workers": 0}},
        )


PRODUCER_CLASSES: dict[str, type[Producer]] = {
    "harvest": HarvestProducer, "store": StoreProducer, "sae_fit": SAEFitProducer,
    "emoshift_fit": EmoShiftFitProducer,
}


# =============================================================================================== parent side
@dataclass
class Attempt:
    kill: str | None          # "time 1.234 s" / "event 17" / None (run to the end)
    landed: bool = False      # the process died of SIGKILL
    exit_code: int | None = None
    phase: str = ""           # what it was doing when killed
    state: str = ""           # what was on disk after
    seconds: float = 0.0


@dataclass
class Trial:
    index: int
    attempts: list[Attempt] = field(default_factory=list)
    resumed_ok: bool = False
    comparison: Comparison | None = None
    leftovers: list[str] = field(default_factory=list)  # temp files the kills left that the resume did not remove
    seconds: float = 0.0


def _spawn(inv: dict[str, Any], log: Path, kill_after_s: float | None = None, timeout_s: float = 900) -> tuple[int, bool, float]:
    """Fork a child running ``inv``; SIGKILL it after ``kill_after_s`` when given. Returns (status, killed, s)."""
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child_main(inv, log)
    deadline = t0 + (kill_after_s if kill_after_s is not None else timeout_s)
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
            break
        now = time.monotonic()
        if now >= deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(min(0.002, max(deadline - now, 0.0)))
    seconds = time.monotonic() - t0
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status), os.WTERMSIG(status) == signal.SIGKILL, seconds
    return os.WEXITSTATUS(status), False, seconds


def _read_trace(path: Path) -> list[tuple[int, float, str, int, bool]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 4:
            rows.append((int(parts[0]), float(parts[1]), parts[2], int(parts[3]), len(parts) > 4))
    return rows


def _phase(trace: list[tuple[int, float, str, int, bool]]) -> str:
    if not trace:
        return "start-up (no event yet)"
    n, _, name, count, killed_here = trace[-1]
    return f"before {name} #{count}" if killed_here else f"after {name} #{count}"


class Campaign:
    def __init__(self, out: Path, kills: int, seed: int, keep: bool = False, fresh_reference: bool = True,
                 log: Callable[[str], None] = print) -> None:
        self.out, self.kills, self.seed, self.keep = out, kills, seed, keep
        self.fresh_reference = fresh_reference
        self.log = log
        self.inputs = out / "inputs"
        self.tmp = out / "tmp"

    def _invocation(self, producer: Producer, work: Path, resume: bool, trace: Path,
                    kill_before: int | None = None) -> dict[str, Any]:
        inv = producer.resume_command(work) if resume else producer.command(work)
        return {**inv, "cwd": str(work), "tmpdir": str(self.tmp), "trace": str(trace), "kill_before": kill_before}

    def _new_run(self, producer: Producer, folder: Path) -> Path:
        shutil.rmtree(folder, ignore_errors=True)
        work = folder / WORK
        work.mkdir(parents=True)
        producer.prepare_run(work)
        return work

    def run_producer(self, name: str) -> dict[str, Any]:
        t_start = time.monotonic()
        producer = PRODUCER_CLASSES[name](self.inputs)
        producer.prepare()
        base = self.out / name
        rng = np.random.default_rng([self.seed, PRODUCERS.index(name)])

        # The uninterrupted reference, traced (its events and wall time are what kill points are drawn from).
        ref = self._new_run(producer, base / "reference")
        code, _, ref_seconds = _spawn(self._invocation(producer, ref, False, ref.parent / "trace-0.tsv"),
                                      ref.parent / "log-0.txt")
        if code != 0:
            raise RuntimeError(f"{name}: the reference run failed ({code}); see {ref.parent / 'log-0.txt'}:\n"
                               + (ref.parent / "log-0.txt").read_text()[-3000:])
        events = _read_trace(ref.parent / "trace-0.tsv")
        self.log(f"[{name}] reference: {ref_seconds:.1f} s, {len(events)} events")

        checks: dict[str, Any] = {}
        if self.fresh_reference:  # the same command in a fresh interpreter must give the same result
            fresh = self._new_run(producer, base / "fresh")
            inv = self._invocation(producer, fresh, False, fresh.parent / "trace-0.tsv")
            proc = subprocess.run([sys.executable, "-m", "emoctl_tests.harness.kill_campaign", "--child", json.dumps(inv)],
                                  cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                                  text=True, timeout=900)
            fresh_cmp = producer.compare(ref, fresh) if proc.returncode == 0 else Comparison(
                False, None, f"fresh run failed: {proc.stderr[-1500:]}")
            checks["fresh_process_equals_reference"] = asdict(fresh_cmp)
            self.log(f"[{name}] fresh-process run equals the forked reference: {fresh_cmp.identical} "
                     f"{fresh_cmp.detail}")
            if not self.keep:
                shutil.rmtree(fresh.parent, ignore_errors=True)

        trials = []
        plans = [self.draw_plan(i, rng, ref_seconds, events) for i in range(self.kills)]
        plans += [[("event", point)] for point in producer.extra_points(events)]
        for i, plan in enumerate(plans):
            trials.append(self._trial(producer, base / f"kill-{i:02d}", i, plan, ref, len(events)))
            t = trials[-1]
            self.log(f"[{name}] kill {i}: " + " | ".join(
                f"{a.kill} -> {'killed' if a.landed else f'exit {a.exit_code}'} {a.phase} [{a.state}]"
                for a in t.attempts) + f" => resumed {t.resumed_ok}, identical {t.comparison.identical}"
                     + (f" ({t.comparison.detail})" if not t.comparison.identical else ""))

        # Negative control: the comparison sees one changed value.
        control = self._new_run(producer, base / "control")
        shutil.rmtree(control)
        shutil.copytree(ref, control, symlinks=True)
        producer.corrupt(control)
        negative = producer.compare(ref, control)
        checks["one_changed_value_is_detected"] = not negative.identical
        shutil.rmtree(control.parent, ignore_errors=True)
        if not self.keep:
            shutil.rmtree(ref.parent, ignore_errors=True)
        return {"producer": name, "reference_seconds": ref_seconds, "reference_events": len(events),
                "checks": checks, "trials": [asdict(t) for t in trials], "seconds": time.monotonic() - t_start}

    def draw_plan(self, i: int, rng: np.random.Generator, ref_seconds: float, events: list) -> list[tuple[str, Any]]:
        """Kill points of trial ``i``: even trials by time, odd ones by event; every fourth kills the resumed run
        again (by time). Time kills are uniform over the reference's wall time (i % 4 == 0) or over its active
        part, from its first event on (i % 4 == 2), where start-up would otherwise take most of them."""
        first = events[0][1] if events else 0.0
        if i % 2 == 0:
            start = 0.0 if i % 4 == 0 else first
            plan: list[tuple[str, Any]] = [("time", float(rng.uniform(start, 0.9 * ref_seconds)))]
        else:
            plan = [("event", int(rng.integers(1, len(events) + 1)))]
        if i % 4 == 3:
            plan.append(("time", float(rng.uniform(0.0, 0.6 * ref_seconds))))
        return plan

    def _trial(self, producer: Producer, folder: Path, i: int, plan: list[tuple[str, Any]], ref: Path,
               n_events: int) -> Trial:
        """``plan``: kill points, ("time", seconds), ("event", number) or ("event", "NAME#K"), one per run."""
        t0 = time.monotonic()
        work = self._new_run(producer, folder)
        trial = Trial(i)
        for k, (kind, value) in enumerate(plan + [("none", 0.0)]):
            trace, log = folder / f"trace-{k}.tsv", folder / f"log-{k}.txt"
            inv = self._invocation(producer, work, k > 0, trace, kill_before=value if kind == "event" else None)
            code, killed, seconds = _spawn(inv, log, kill_after_s=value if kind == "time" else None)
            for _ in range(3):  # a first time kill that came after the run ended (faster than the reference's):
                if not (k == 0 and kind == "time" and code == 0):  # again, from scratch, at half the time
                    break
                work = self._new_run(producer, folder)  # (removes the recipe, traces and logs too)
                inv = self._invocation(producer, work, False, trace)
                value /= 2
                code, killed, seconds = _spawn(inv, log, kill_after_s=value)
            attempt = Attempt(kill=None if kind == "none" else (f"time {value:.2f} s" if kind == "time" else
                                                                 f"event {value}/{n_events}" if isinstance(value, int)
                                                                 else f"event {value}"),
                              landed=killed, exit_code=code, seconds=seconds)
            attempt.phase = _phase(_read_trace(trace)) if killed else ""
            if not killed and code != 0:  # a run that failed on its own is a finding: keep what it said
                attempt.phase = "FAILED: " + " ".join(log.read_text()[-800:].split())
            attempt.state = producer.progress(work)
            trial.attempts.append(attempt)
            if kind == "none":
                trial.resumed_ok = code == 0
                if code != 0:
                    trial.comparison = Comparison(False, None, f"the final resume exited {code}: "
                                                  + " ".join(log.read_text()[-600:].split()))
        if trial.comparison is None:
            trial.comparison = producer.compare(ref, work)
        trial.leftovers = sorted(str(p.relative_to(work)) for p in work.rglob("*")
                                 if p.name.endswith((".tmp", ".partial")))
        staged = [p for p in self.tmp.iterdir() if p.is_file()]  # Lightning's checkpoint staging (fsspec)
        trial.leftovers += [f"$TMPDIR/{p.name}" for p in staged]
        for p in staged:  # (folders are torch's caches, not a kill's leftovers)
            p.unlink()
        trial.seconds = time.monotonic() - t0
        if trial.comparison.identical and not self.keep:
            shutil.rmtree(folder, ignore_errors=True)
        return trial


# ================================================================================================ report
def _family(phase: str) -> str:
    """A phase without its counter, and 'before'/'after' merged into where the kill fell."""
    if not phase:
        return "(finished before the kill)"
    return phase.rsplit(" #", 1)[0]


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "/")


def markdown(results: list[dict[str, Any]], kills: int, seed: int, seconds: float) -> str:
    which = "all" if len(results) == len(PRODUCERS) else ",".join(r["producer"] for r in results)
    lines = [
        "# Kill campaign",
        "",
        f"`python -m emoctl_tests.harness.kill_campaign --producer {which} --kills {kills} --seed {seed}` "
        f"({seconds / 60:.1f} min on this machine). Each kill: a fresh run SIGKILLed at a seeded random point "
        "(even kills: uniform over the reference run's wall time; odd: uniform over its traced events, the child "
        "killing itself just before the event; every fourth kill also kills the resumed run), resumed as a user "
        "would, run to the end, and compared with an uninterrupted run: stores file by file, byte for byte "
        "(manifest.json without its timestamps); fits by the exported safetensors (`torch.equal` and bytes) and "
        "the final last.ckpt's weights, optimizer and scheduler state. A fit killed before its first checkpoint "
        "is rerun with the same command into the same (leftover) run folder.",
        "",
        "| producer | kills (landed) | kill points (phase: count) | resumed OK | identical | max abs diff | "
        "fresh process = fork | negative control | temp files left | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        trials = r["trials"]
        attempts = [a for t in trials for a in t["attempts"] if a["kill"]]
        landed = sum(a["landed"] for a in attempts)
        phases = Counter(_family(a["phase"]) for a in attempts)
        phase_text = "<br>".join(f"{p}: {n}" for p, n in sorted(phases.items(), key=lambda x: (-x[1], x[0])))
        resumed = sum(t["resumed_ok"] for t in trials)
        identical = sum(t["comparison"]["identical"] for t in trials)
        diffs = [t["comparison"]["max_abs_diff"] for t in trials if not t["comparison"]["identical"]]
        max_diff = "—" if not diffs else ("n/a" if any(d is None for d in diffs) else f"{max(diffs):.3g}")
        fresh = r["checks"].get("fresh_process_equals_reference")
        fresh_text = "not run" if fresh is None else ("yes" if fresh["identical"] else f"NO: {_cell(fresh['detail'])[:300]}")
        control = "detected" if r["checks"].get("one_changed_value_is_detected") else "MISSED"
        n_left = sum(len(t["leftovers"]) for t in trials)
        left_text = f"{n_left} in {sum(bool(t['leftovers']) for t in trials)} trials" if n_left else "none"
        lines.append(f"| {r['producer']} | {len(trials)} ({landed} of {len(attempts)} kills landed) | {phase_text} | "
                     f"{resumed}/{len(trials)} | {identical}/{len(trials)} | {max_diff} | {fresh_text} | {control} | {left_text} | "
                     f"{r['seconds']:.0f} s (reference {r['reference_seconds']:.1f} s, "
                     f"{r['reference_events']} events) |")
    for r in results:
        lines += ["", f"## {r['producer']}", "",
                  "| kill | kill point | phase | on disk after | resumed OK | identical | temp files left |",
                  "|---|---|---|---|---|---|---|"]
        for t in r["trials"]:
            kills = [a for a in t["attempts"] if a["kill"]]
            point = "<br>".join(a["kill"] for a in kills)
            phase = "<br>".join(a["phase"] if a["landed"] else f"(not killed: exit {a['exit_code']})" for a in kills)
            state = "<br>".join(a["state"] for a in kills)
            cmp = t["comparison"]
            lines.append(f"| {t['index']} | {point} | {phase} | {state} | {'yes' if t['resumed_ok'] else 'NO'} | "
                         + ("yes" if cmp["identical"] else f"NO: {_cell(cmp['detail'])}")
                         + f" | {_cell(', '.join(t['leftovers'])) or '—'} |")
    return "\n".join(lines) + "\n" + NOTES


NOTES = """
## Notes

* **Setup.** Tiny real workloads: `emoctl harvest` of a random MiniTTS (72 prompts, batches of 4, shards of 64 rows,
  `commit_every_s: 0`, so a commit after every batch: with the default time-based commit the shard layout depends on
  timing and the files could not be compared byte for byte, though the rows could); an `ActivationWriter` producer
  (150 utterances of `store_worker`'s rows, shards of 64 rows); `emoctl fit` of a top-k SAE (64 -> 512, k = 8,
  40 steps of 256 rows, 14 steps an epoch) on a synthetic store; `emoctl fit` of an EmoSteer layer (full matrices)
  on a random MiniTTS and a 3-speaker ESD tree (24 steps, 4 an epoch). Fits run with `trainer.deterministic: true`
  and a checkpoint after every step, one CPU thread: everything is exact, so "identical" means bit-identical.
* **Kill points.** Events are traced by wrapping the store's commit steps, generation, `LightningOptimizer.step`,
  `Trainer.save_checkpoint`, the validation loop, the fit loop's epoch start and `ModelExport.write`; an event kill
  is the child's own SIGKILL just before the drawn event. Fits also get one fixed kill right after the checkpoint
  of the first epoch's last step (the extra kill in their count). Runs are forked from the campaign process after
  its imports; "fresh process = fork" checks that the same command in a fresh interpreter gives the reference's
  result.
* **Defects this campaign found (fixed).** (1) `ActivationStoreDataModule` resumed from a checkpoint written after
  an epoch's last step skipped that many batches of the *next* epoch (the SAE then trained on other rows, and one
  epoch more); (2) `TTSCorpusDataModule` restarted a resumed epoch at its first batch, so an EmoShift fit resumed
  mid-epoch repeated batches. Both in `data_modules/` (`data_modules/resume.py`, `LengthBucketSampler`).
* **Leftovers.** A fit killed before its first checkpoint is rerun with the same command into its leftover run
  folder (`settle_failed_run` never runs on SIGKILL); that works and gives the reference's result. With the
  recipes' default logger version the rerun goes to a new `version_N` instead and the killed one stays, holding
  only the recipe echo and logs (no export, no FAILED.md). Lightning stages each checkpoint in `$TMPDIR` (fsspec)
  and moves it into place, so a kill mid-save leaves a temp file there ("temp files left"); across file systems
  the move is a copy, and a kill during it could leave a truncated `last.ckpt`, which `--ckpt_path` refuses with
  a one-paragraph error (not exercised here: the runs and `$TMPDIR` share one file system).
"""


def campaign_passed(results: list[dict[str, Any]]) -> bool:
    return all(t["resumed_ok"] and t["comparison"]["identical"] for r in results for t in r["trials"]) and all(
        r["checks"].get("one_changed_value_is_detected") and r["checks"].get(
            "fresh_process_equals_reference", {"identical": True})["identical"] for r in results)


def run_campaign(producers: list[str], kills: int, seed: int, out: Path, keep: bool = False,
                 fresh_reference: bool = True) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    campaign = Campaign(out, kills, seed, keep=keep, fresh_reference=fresh_reference)
    campaign.inputs.mkdir(exist_ok=True)
    campaign.tmp.mkdir(exist_ok=True)
    results = [campaign.run_producer(name) for name in producers]
    seconds = time.monotonic() - t0
    (out / "kill_campaign.json").write_text(json.dumps(results, indent=1))
    (out / "kill_campaign.md").write_text(markdown(results, kills, seed, seconds))
    leaked = list(campaign.tmp.iterdir())
    if leaked:
        print(f"{len(leaked)} temp files left by killed runs in {campaign.tmp} (Lightning's checkpoint staging)")
    if not keep:
        shutil.rmtree(campaign.tmp, ignore_errors=True)
        shutil.rmtree(campaign.inputs, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--producer", choices=[*PRODUCERS, "all"], default="all")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/kill_campaign"))
    parser.add_argument("--keep", action="store_true", help="keep every run folder (else only failed ones)")
    parser.add_argument("--no-fresh-reference", action="store_true",
                        help="skip the run in a fresh interpreter (saves ~20 s of imports per producer)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one invocation, as JSON, in this fresh process
    args = parser.parse_args(argv)
    if args.child:
        return run_invocation(json.loads(args.child))
    # Import what the children run before forking them (each fork then starts in milliseconds).
    import emoctl.cli  # noqa: F401
    import emoctl.lightning_cli  # noqa: F401
    import emoctl.emosteer.module  # noqa: F401
    import data_modules.tts_corpus  # noqa: F401
    producers = list(PRODUCERS) if args.producer == "all" else [args.producer]
    results = run_campaign(producers, args.kills, args.seed, args.out.resolve(), keep=args.keep,
                           fresh_reference=not args.no_fresh_reference)
    print((args.out / "kill_campaign.md").read_text())
    return 0 if campaign_passed(results) else 1


if __name__ == "__main__":
    sys.exit(main())
