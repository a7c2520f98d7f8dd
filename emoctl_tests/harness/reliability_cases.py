"""The reliability catalogue: bad inputs and faults tried against the real ``emoctl`` command, by class.

One table drives both the test (``emoctl_tests/reliability/test_catalogue.py`` runs every case) and the document
(``docs/reliability.md``, written from the table), so the document cannot claim a case the suite does not try.
Regenerate the document after editing the table::

    python -m emoctl_tests.harness.reliability_cases          # writes docs/reliability.md
    python -m emoctl_tests.harness.reliability_cases --check  # exit 1 if it is out of date

Each case is a command line with ``{placeholders}`` for the small real objects built once per test module
(a synthetic store, an SAE exported for it, a trained checkpoint ...; see :data:`PLACEHOLDERS`) and, where
the fault needs one, a setup function that damages a fresh copy of them. The outcome is either a one-paragraph
error holding every expected fragment, or a correct result (exit status 0, the fragments in the output, and an
optional check of what was written).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from emoctl_tests.harness import (
    reliability_cosyvoice, reliability_evaluation, reliability_indextts2, reliability_inputs, reliability_silent,
)

REPO = Path(__file__).resolve().parents[2]
PROGRESS_BAR = re.compile(r"\d+%\|")  # a tqdm line
ERROR_START = re.compile(r"emoctl [a-z]+( [a-z0-9]+)?: error:(?=\s|$)")  # how emoctl.cli starts an error paragraph
DOC = REPO / "docs" / "reliability.md"
PLAIN_WORD = re.compile(r"[\w@%+=:,./{}\[\]-]+")  # a word the document shows unquoted (placeholders included)

CLASSES: dict[str, str] = {
    "1": "Non-finite data",
    "2": "Damaged or unverified stores",
    "3": "Errors raised while the recipe's classes are built",
    "4": "Paths: files where folders go, unwritable folders, undecodable files",
    "5": "Resume that ignores what the user said",
    "6": "Partial outputs that look whole",
    "7": "Quiet nonsense values",
    "security": "Security: crafted files and escaping paths",
    "concurrency": "Concurrency: two writers of one store or run folder, a store read while it is written",
    "backbone folders": "Real-backbone folders: IndexTTS2 and CosyVoice releases a user brings",
    "evaluation folders": "Evaluation folders and audio: emotion2vec folders, clips, manifests",
}
"""The classes of bad input and fault, in the order the document lists them."""

PLACEHOLDERS: dict[str, str] = {
    "store": "a finished synthetic store (d_model 16, 60 utterances, five emotions, Neutral pairs)",
    "sae": "a Top-k SAE for it (d_in 16, d_sae 32, k 3) exported with save_pretrained",
    "ckpt": "last.ckpt of a 4-step fit of sae_demo.yaml on {store} (d_sae 32, k 3, lr 0.002)",
    "dictionary": "{store}'s true_dictionary.npy",
    "demo": "recipes/sae_demo.yaml",
    "emoshift": "recipes/emoshift_mini.yaml",
    "harvest": "recipes/harvest_mini.yaml",
    "mini_tts": "recipes/mini_tts.yaml",
    "mini_backbone": "emoctl/assets/mini_tts (the embedded trained mini TTS)",
    "sae_mini": "emoctl/assets/sae_mini",
    "select_mini": "emoctl/assets/select_mini",
    "layer": "emoctl/assets/emoshift_mini (the committed EmoShift layer)",
    "tmp": "a fresh empty folder for this case",
}
"""What each ``{name}`` in a command stands for; setups add their own (described in the setup's docstring)."""

PREFIXES: dict[str, tuple[str, ...]] = {
    "FIT_DEMO": ("fit", "--config", "{demo}", "--trainer.default_root_dir={tmp}",
                 "--trainer.logger.init_args.save_dir={tmp}", "--trainer.logger.init_args.version=v0",
                 "--data.init_args.path={tmp}/demo_store"),
    "FIT_STORE": ("fit", "--config", "{demo}", "--trainer.default_root_dir={tmp}",
                  "--trainer.logger.init_args.save_dir={tmp}", "--trainer.logger.init_args.version=v0",
                  "--data.init_args.build=null", "--data.init_args.batch_size=64", "--model.init_args.sae.d_in=16",
                  "--model.init_args.sae.d_sae=32", "--model.init_args.sae.k=3", "--trainer.max_steps=4",
                  "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false"),
    "FIT_EMOSHIFT": ("fit", "--config", "{emoshift}", "--trainer.default_root_dir={tmp}",
                     "--trainer.logger.init_args.save_dir={tmp}", "--data.init_args.corpus_root={tmp}/no_corpus"),
}
"""Shared leading arguments, written ``@NAME`` in a case's command and spelled out once in the document."""


@dataclass(frozen=True)
class Case:
    """One bad input or fault and what the user must see."""

    cls: str  # a key of CLASSES
    what: str  # the input or fault, in a few words
    argv: tuple[str, ...]  # the emoctl command line after `emoctl`, with {placeholders} and @PREFIXES
    expect: tuple[str, ...]  # fragments the error paragraph (or, for a correct result, the output) must hold
    ok: bool = False  # a correct result (exit 0) is expected, not an error
    setup: Callable[[Path, dict[str, str]], dict[str, str]] | None = None  # damages a copy; returns placeholders
    check: Callable[[Path, dict[str, str]], None] | None = None  # asserts on what the command left behind
    skip_if_root: bool = False  # the fault is one root does not see (file permissions)
    xfail: str = ""  # a known defect in a file this change could not touch: why, and where
    needs: tuple[str, ...] = ()  # pytest fixtures the case uses, each given to the command as {name}

    @property
    def id(self) -> str:
        return f"{self.cls}-{self.what}"


@dataclass
class Outcome:
    """What one run of ``emoctl`` gave: status, both streams, and the traceback if an exception escaped."""

    returncode: int
    stdout: str
    stderr: str
    escaped: str = ""  # a traceback: an exception the command did not turn into a message

    @property
    def error_paragraph(self) -> str:
        """The ``emoctl <command>: error: ...`` paragraph: from its first line to a blank line, a progress bar's
        redraw or the end of stderr (a bar that was open when the error came repaints itself once more)."""
        starts = list(ERROR_START.finditer(self.stderr))
        if not starts:
            return ""
        lines = []
        for line in self.stderr[starts[-1].start():].split("\n"):
            if not line.strip() or "\r" in line or PROGRESS_BAR.search(line):
                break
            lines.append(line)
        return "\n".join(lines)


def expand(argv: tuple[str, ...], values: dict[str, str]) -> list[str]:
    """The command line of a case: @PREFIXES spelled out, {placeholders} filled in."""
    out: list[str] = []
    for arg in argv:
        out += [a.format(**values) for a in (PREFIXES[arg[1:]] if arg.startswith("@") else (arg,))]
    return out


def run_in_process(argv: list[str]) -> Outcome:
    """Run ``emoctl``'s entry point in this process, as the console script would, capturing both streams.

    An exception that leaves :func:`emoctl.cli.main` is what a user would see as a traceback; it is caught and
    recorded so the test can show it."""
    from emoctl.cli import main

    out, err = io.StringIO(), io.StringIO()
    escaped = ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:  # noqa: BLE001  (the point: anything that escapes is a defect)
            code, escaped = 99, traceback.format_exc()
    return Outcome(code, out.getvalue(), err.getvalue(), escaped)


# ----------------------------------------------------------------------------------------- shared fixtures

def build_fixtures(root: Path) -> dict[str, str]:
    """The small real objects every case may name, built once: a store, an SAE for it and a checkpoint."""
    from data_modules import SyntheticSparseStore
    from emoctl.sae import SAEConfig, TopKSAE
    from emoctl.sae.export import save_pretrained

    store = root / "store"
    SyntheticSparseStore(d_model=16, n_atoms=32, k_active=3, n_utterances=60).build_atomically(store)
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=32, k=3, hook_name="synthetic"))
    save_pretrained(sae, root / "sae")
    values = {
        "store": str(store), "sae": str(root / "sae"), "dictionary": str(store / "true_dictionary.npy"),
        "demo": str(REPO / "recipes" / "sae_demo.yaml"), "emoshift": str(REPO / "recipes" / "emoshift_mini.yaml"),
        "harvest": str(REPO / "recipes" / "harvest_mini.yaml"), "mini_tts": str(REPO / "recipes" / "mini_tts.yaml"),
        "mini_backbone": str(REPO / "emoctl" / "assets" / "mini_tts"),
        "sae_mini": str(REPO / "emoctl" / "assets" / "sae_mini"),
        "select_mini": str(REPO / "emoctl" / "assets" / "select_mini"),
        "layer": str(REPO / "emoctl" / "assets" / "emoshift_mini"),
    }
    run = root / "ckpt_run"
    outcome = run_in_process(expand(("@FIT_STORE", "--data.init_args.path={store}"), {**values, "tmp": str(run)}))
    if outcome.returncode != 0:
        raise RuntimeError(f"the checkpoint fixture's fit failed:\n{outcome.stderr[-3000:]}{outcome.escaped}")
    values["ckpt"] = str(next(run.rglob("last.ckpt")))
    return values


def copy_store(case_dir: Path, fx: dict[str, str], name: str = "store") -> Path:
    """A private copy of the shared store, to damage."""
    target = case_dir / name
    shutil.copytree(fx["store"], target)
    return target


CASES: list[Case] = []


def case(*args, **kwargs) -> None:
    CASES.append(Case(*args, **kwargs))


# ====================================================================================== the catalogue

# ------------------------------------------------------------------------------------------ setups

def _rewrite_checksums(store: Path) -> None:
    """Record the shards' new CRC-32 in the index and manifest, as code other than emoctl's writer might: only
    the finiteness check can then catch a damaged value."""
    import dataclasses

    from emoctl.store.manifest import read_rank_index, write_rank_index
    from emoctl.store.npy_stream import crc32_of_rows

    records = [dataclasses.replace(r, crc32=crc32_of_rows(store / r.path)) for r in read_rank_index(store, 0)]
    write_rank_index(store, 0, records)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"] = [r.to_json() for r in records]
    (store / "manifest.json").write_text(json.dumps(manifest))


def _poke(store: Path, value: float | int, raw: bool = False) -> dict[str, str]:
    """Write ``value`` into one row of the middle utterance (step 1), fix up the checksums, return its id."""
    import numpy as np

    from emoctl.store import ActivationStore

    reader = ActivationStore(store)
    table = reader.utterances
    u = table.num_rows // 2
    utt, row = table["utt_id"][u].as_py(), int(table["first_row"][u].as_py()) + 1
    shard = int(np.searchsorted(reader.shard_starts, row, side="right") - 1)
    rows = np.load(store / reader.shards[shard].path, mmap_mode="r+")
    rows[row - int(reader.shard_starts[shard]), 5] = value if not raw else np.array(value).astype(rows.dtype)
    rows.flush()
    del rows, reader
    _rewrite_checksums(store)
    return {"utt": utt}


def nan_row(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{store}` copy with one NaN written into a shard (checksums rewritten to match); `{utt}` is its utterance."""
    return {"bad": str(copy_store(case_dir, fx)), **_poke(case_dir / "store", float("nan"))}


def inf_row(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{store}` copy with one +Inf written into a shard (checksums rewritten to match); `{utt}` is its utterance."""
    return {"bad": str(copy_store(case_dir, fx)), **_poke(case_dir / "store", float("inf"))}


def neg_inf_row(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{store}` copy with one -Inf written into a shard (checksums rewritten to match)."""
    return {"bad": str(copy_store(case_dir, fx)), **_poke(case_dir / "store", float("-inf"))}


def _small_store(path: Path, dtype: str) -> Path:
    from data_modules import SyntheticSparseStore

    SyntheticSparseStore(d_model=16, n_atoms=32, k_active=3, n_utterances=20, dtype=dtype).build_atomically(path)
    return path


def bf16_nan_row(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """A bfloat16 store (stored as raw uint16 words) with one NaN word (0x7FC0) in a shard."""
    store = _small_store(case_dir / "store", "bfloat16")
    return {"bad": str(store), **_poke(store, 0x7FC0, raw=True)}


def fp16_inf_row(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """A float16 store with one +Inf (0x7C00 as float16) in a shard."""
    import numpy as np

    store = _small_store(case_dir / "store", "float16")
    return {"bad": str(store), **_poke(store, np.float16(np.inf))}


def huge_rows(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """A store of finite rows of magnitude 1e30 (their squares overflow float32), written by emoctl's writer."""
    import torch

    from emoctl.store import ActivationWriter, StoreSpec, UtteranceMeta

    path = case_dir / "huge"
    emotions = ("Neutral", "Angry", "Happy", "Sad", "Surprise")
    with ActivationWriter(path, StoreSpec(d_model=16, dtype="float32")) as writer:
        for i in range(60):
            writer.append(UtteranceMeta(f"u{i}", f"t{i // 5}", "s0", emotions[i % 5]), torch.randn(12, 16) * 1e30)
    return {"bad": str(path)}


def _nan_sae(case_dir: Path, digest: bool) -> Path:
    """An SAE folder whose weights file holds a NaN: written by other code (no digest) or with a matching one."""
    import hashlib

    import torch
    from safetensors.torch import save_file

    from emoctl.sae import SAEConfig, TopKSAE
    from emoctl.sae.export import save_pretrained

    folder = case_dir / "sae"
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=32, k=3, hook_name="synthetic"))
    save_pretrained(sae, folder)
    with torch.no_grad():
        sae.W_dec[3, 1] = float("nan")
    weights = {"W_enc": sae.W_enc.detach().t().contiguous(), "b_enc": sae.b_enc.detach(),
               "W_dec": sae.W_dec.detach().contiguous(), "b_dec": sae.b_dec.detach()}
    save_file(weights, str(folder / "sae_weights.safetensors"))
    cfg = json.loads((folder / "cfg.json").read_text())
    if digest:
        cfg["emoctl"]["weights_sha256"] = hashlib.sha256((folder / "sae_weights.safetensors").read_bytes()).hexdigest()
    else:
        cfg.get("emoctl", {}).pop("weights_sha256", None)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def nan_sae(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{sae}` with one NaN decoder weight, as a foreign SAELens folder (no emoctl digest)."""
    return {"bad": str(_nan_sae(case_dir, digest=False))}


def nan_sae_digest(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{sae}` with one NaN decoder weight and a cfg.json digest that matches it."""
    return {"bad": str(_nan_sae(case_dir, digest=True))}


def nan_dictionary(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{dictionary}` with one NaN entry."""
    import numpy as np

    atoms = np.load(fx["dictionary"])
    atoms[2, 3] = np.nan
    np.save(case_dir / "dictionary.npy", atoms)
    return {"bad": str(case_dir / "dictionary.npy")}


def nan_layer(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{layer}` copy with one NaN in the Angry matrix."""
    from safetensors.torch import load_file, save_file

    folder = case_dir / "layer"
    shutil.copytree(fx["layer"], folder)
    weights = load_file(str(folder / "emosteer.safetensors"))
    name = next(iter(sorted(weights)))
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(folder / "emosteer.safetensors"))
    return {"bad": str(folder), "tensor": name}


def _damaged(edit: Callable[[Path], dict[str, str] | None]) -> Callable[[Path, dict[str, str]], dict[str, str]]:
    """A setup that copies `{store}` to `{bad}` and applies ``edit`` to the copy (its docstring is the edit's)."""
    def setup(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
        store = copy_store(case_dir, fx)
        return {"bad": str(store), **(edit(store) or {})}

    setup.__doc__ = edit.__doc__
    setup.__name__ = edit.__name__
    return setup


def _first_shard(store: Path) -> Path:
    return sorted((store / "shards").glob("*.npy"))[0]


@_damaged
def flipped_bit(store: Path) -> dict[str, str]:
    """`{store}` copy with the lowest bit of one float32 flipped in shard 0 (still finite: only the CRC-32 tells)."""
    shard = _first_shard(store)
    data = bytearray(shard.read_bytes())
    data[-4 * 16 * 3] ^= 0x01
    shard.write_bytes(bytes(data))
    return {"shard": str(shard)}


@_damaged
def no_index(store: Path) -> None:
    """`{store}` copy without index-r0000.json (the rank index that lists its committed shards)."""
    (store / "index-r0000.json").unlink()


@_damaged
def index_truncated(store: Path) -> None:
    """`{store}` copy whose index-r0000.json is cut to its first 20 bytes."""
    index = store / "index-r0000.json"
    index.write_bytes(index.read_bytes()[:20])


@_damaged
def index_bad_entry(store: Path) -> None:
    """`{store}` copy whose index-r0000.json gives a shard `"rows": "many"`."""
    index = store / "index-r0000.json"
    record = json.loads(index.read_text())
    entries = record["shards"] if isinstance(record, dict) else record
    entries[0]["rows"] = "many"
    index.write_text(json.dumps(record))


@_damaged
def index_escaping_path(store: Path) -> None:
    """`{store}` copy whose index and manifest name shard 0's files `../../outside.npy` (a crafted path)."""
    for name in ("index-r0000.json", "manifest.json"):
        record = json.loads((store / name).read_text())
        entries = record["shards"] if isinstance(record, dict) else record
        entries[0]["path"] = "../../outside.npy"
        entries[0]["utterances"] = "../../outside.utts.parquet"
        (store / name).write_text(json.dumps(record))


@_damaged
def no_manifest(store: Path) -> None:
    """`{store}` copy without manifest.json."""
    (store / "manifest.json").unlink()


@_damaged
def manifest_truncated(store: Path) -> None:
    """`{store}` copy whose manifest.json is cut in half."""
    manifest = store / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])


@_damaged
def manifest_list(store: Path) -> None:
    """`{store}` copy whose manifest.json is a JSON list."""
    (store / "manifest.json").write_text("[1, 2, 3]")


@_damaged
def manifest_future(store: Path) -> None:
    """`{store}` copy whose manifest.json says format_version 99."""
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["format_version"] = 99
    (store / "manifest.json").write_text(json.dumps(manifest))


@_damaged
def manifest_no_width(store: Path) -> None:
    """`{store}` copy whose manifest.json lacks d_model."""
    manifest = json.loads((store / "manifest.json").read_text())
    del manifest["d_model"]
    (store / "manifest.json").write_text(json.dumps(manifest))


@_damaged
def manifest_int8(store: Path) -> None:
    """`{store}` copy whose manifest.json says dtype int8."""
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["dtype"] = "int8"
    (store / "manifest.json").write_text(json.dumps(manifest))


@_damaged
def manifest_latin1(store: Path) -> None:
    """`{store}` copy whose manifest.json holds a Latin-1 byte (not UTF-8)."""
    manifest = store / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"format_version"', b'"format_v\xe9rsion"', 1))


@_damaged
def shard_missing(store: Path) -> dict[str, str]:
    """`{store}` copy with shard 0's .npy deleted."""
    shard = _first_shard(store)
    shard.unlink()
    return {"shard": shard.name}


@_damaged
def shard_truncated(store: Path) -> dict[str, str]:
    """`{store}` copy with shard 0's .npy cut by 64 bytes."""
    shard = _first_shard(store)
    shard.write_bytes(shard.read_bytes()[:-64])
    return {"shard": shard.name}


@_damaged
def shard_reshaped(store: Path) -> dict[str, str]:
    """`{store}` copy with shard 0 rewritten as the same bytes in another shape ((2n, 8) instead of (n, 16))."""
    import numpy as np

    shard = _first_shard(store)
    rows = np.load(shard)
    np.save(shard, rows.reshape(-1, 8))
    return {"shard": shard.name}


@_damaged
def shard_table_missing(store: Path) -> dict[str, str]:
    """`{store}` copy with shard 0's utterance table (.utts.parquet) and the consolidated table deleted."""
    table = sorted((store / "shards").glob("*.utts.parquet"))[0]
    table.unlink()
    (store / "utterances.parquet").unlink()
    return {"table": table.name}


@_damaged
def shard_table_damaged(store: Path) -> dict[str, str]:
    """`{store}` copy with one byte of shard 0's utterance table flipped."""
    table = sorted((store / "shards").glob("*.utts.parquet"))[0]
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))
    return {"table": table.name}


@_damaged
def table_truncated(store: Path) -> None:
    """`{store}` copy whose consolidated utterances.parquet is cut to 100 bytes."""
    table = store / "utterances.parquet"
    table.write_bytes(table.read_bytes()[:100])


@_damaged
def table_missing(store: Path) -> None:
    """`{store}` copy without the consolidated utterances.parquet."""
    (store / "utterances.parquet").unlink()


@_damaged
def unfinished(store: Path) -> None:
    """`{store}` copy whose producer (the synthetic build) never marked it finished, as a killed build leaves it."""
    from emoctl.store.manifest import mark_finished

    mark_finished(store, finished=False)


@_damaged
def leftover_tmp_shard(store: Path) -> None:
    """`{store}` copy with a half-written `.r0000-s000009.npy.tmp` left by a killed writer."""
    (store / "shards" / ".r0000-s000009.npy.tmp").write_bytes(b"\x93NUMPY half a shard")


def store_is_file(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{bad}` is a plain file."""
    (case_dir / "store").write_text("not a store")
    return {"bad": str(case_dir / "store")}


def empty_dir(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{bad}` is an empty folder."""
    (case_dir / "store").mkdir()
    return {"bad": str(case_dir / "store")}


# ---------------------------------------------------------------------------- class 1: non-finite data

NAMES_ROW = ("{utt}", "(step 1)", "shard ")

case("1", "NaN row: store verify", ("store", "verify", "--path", "{bad}", "--progress", "false"), NAMES_ROW,
     setup=nan_row)
case("1", "+Inf row: store verify", ("store", "verify", "--path", "{bad}", "--progress", "false"), NAMES_ROW,
     setup=inf_row)
case("1", "-Inf row: store verify", ("store", "verify", "--path", "{bad}", "--progress", "false"), NAMES_ROW,
     setup=neg_inf_row)
case("1", "NaN word in a bfloat16 store: store verify", ("store", "verify", "--path", "{bad}", "--progress", "false"),
     NAMES_ROW, setup=bf16_nan_row)
case("1", "Inf in a float16 store: store verify", ("store", "verify", "--path", "{bad}", "--progress", "false"),
     NAMES_ROW, setup=fp16_inf_row)
EPOCHS = ("--trainer.max_steps=40", "--data.init_args.batch_size=128")  # every row is read at least once
case("1", "+Inf row: SAE fit", ("@FIT_STORE", "--data.init_args.path={bad}", *EPOCHS), ("{utt}", "NaN or Inf"),
     setup=inf_row, check=lambda d, v: assert_absent(d / "sae_demo" / "v0" / "sae"))
case("1", "NaN row in a bfloat16 store: SAE fit", ("@FIT_STORE", "--data.init_args.path={bad}", *EPOCHS),
     ("{utt}",), setup=bf16_nan_row)
case("1", "+Inf row: select", ("select", "--store", "{bad}", "--sae", "{sae}", "--out_dir", "{tmp}/sel",
                               "--progress", "false"), ("{utt}", "NaN or Inf"), setup=inf_row)
case("1", "-Inf row: select", ("select", "--store", "{bad}", "--sae", "{sae}", "--out_dir", "{tmp}/sel",
                               "--progress", "false"), ("{utt}",), setup=neg_inf_row)
case("1", "rows whose squares overflow: SAE fit diverges",
     ("@FIT_STORE", "--data.init_args.path={bad}", "--trainer.max_steps=40", "--data.init_args.batch_size=16",
      "--model.init_args.warmup_steps=0", "--model.init_args.b_pre_init=zeros"),
     ("training loss became NaN or Inf", "model.lr"), setup=huge_rows)
case("1", "NaN SAE weight (foreign folder): inspect recovery",
     ("inspect", "recovery", "--sae", "{bad}", "--dictionary", "{dictionary}"), ("{bad}", "NaN or Inf weights"),
     setup=nan_sae)
case("1", "NaN SAE weight with a matching digest: inspect recovery",
     ("inspect", "recovery", "--sae", "{bad}", "--dictionary", "{dictionary}"), ("{bad}", "NaN or Inf weights"),
     setup=nan_sae_digest)
case("1", "NaN SAE weight: select", ("select", "--store", "{store}", "--sae", "{bad}", "--out_dir", "{tmp}/sel",
                                     "--progress", "false"), ("{bad}", "NaN or Inf weights"), setup=nan_sae)
case("1", "NaN SAE weight: attribute", ("attribute", "--sae", "{bad}", "--selection", "{select_mini}",
                                        "--out_dir", "{tmp}/attr"), ("{bad}", "NaN or Inf weights"), setup=nan_sae)
case("1", "NaN in the true dictionary: inspect recovery",
     ("inspect", "recovery", "--sae", "{sae}", "--dictionary", "{bad}"), ("{bad}", "NaN"), setup=nan_dictionary)
case("1", "NaN in an EmoShift layer: steer emoshift",
     ("steer", "emoshift", "--layer", "{bad}", "--out_dir", "{tmp}/sweep", "--corpus_root", "{tmp}/no_corpus"),
     ("{bad}", "NaN"), setup=nan_layer)


# ------------------------------------------------------------------ class 2: damaged or unverified stores

INFO = ("store", "info", "--path", "{bad}")
VERIFY = ("store", "verify", "--path", "{bad}", "--progress", "false")
SELECT_BAD = ("select", "--store", "{bad}", "--sae", "{sae}", "--out_dir", "{tmp}/sel", "--progress", "false")
FIT_BAD = ("@FIT_STORE", "--data.init_args.path={bad}")

case("2", "flipped bit in a shard: SAE fit", FIT_BAD, ("{shard}", "fails its checksum"), setup=flipped_bit)
case("2", "flipped bit in a shard: select", SELECT_BAD, ("{shard}", "fails its checksum"), setup=flipped_bit)
case("2", "rank index deleted: store info", INFO, ("lost committed shards", "index-r0000.json"), setup=no_index)
case("2", "rank index deleted: store verify", VERIFY, ("lost committed shards",), setup=no_index)
case("2", "rank index deleted: SAE fit", FIT_BAD, ("lost committed shards",), setup=no_index)
case("2", "rank index deleted: select", SELECT_BAD, ("lost committed shards",), setup=no_index)
case("2", "rank index truncated: store info", INFO, ("index-r0000.json", "unreadable"), setup=index_truncated)
case("2", "rank index truncated: SAE fit", FIT_BAD, ("index-r0000.json", "unreadable"), setup=index_truncated)
case("2", "rank index entry with rows=\"many\": store info", INFO, ("index-r0000.json", "malformed shard entry"),
     setup=index_bad_entry)
case("2", "manifest.json deleted: store info", INFO, ("no activation store at {bad}", "manifest.json"),
     setup=no_manifest)
case("2", "manifest.json deleted: select", SELECT_BAD, ("no activation store at {bad}",), setup=no_manifest)
case("2", "manifest.json cut in half: store info", INFO, ("manifest.json", "not valid JSON"),
     setup=manifest_truncated)
case("2", "manifest.json cut in half: SAE fit", FIT_BAD, ("manifest.json", "not valid JSON"),
     setup=manifest_truncated)
case("2", "manifest.json is a JSON list: store info", INFO, ("manifest.json", "not a JSON object"),
     setup=manifest_list)
case("2", "manifest.json from a newer emoctl: store info", INFO, ("format_version=99", "Upgrade emoctl"),
     setup=manifest_future)
case("2", "manifest.json without d_model: store info", INFO, ("manifest.json", "'d_model'"),
     setup=manifest_no_width)
case("2", "manifest.json says dtype int8: store info", INFO, ("manifest.json", "int8"), setup=manifest_int8)
case("2", "manifest.json not UTF-8: store info", INFO, ("manifest.json",), setup=manifest_latin1)
case("2", "shard deleted: store info", INFO, ("{shard}", "missing"), setup=shard_missing)
case("2", "shard deleted: SAE fit", FIT_BAD, ("{shard}", "missing"), setup=shard_missing)
case("2", "shard truncated: store verify", VERIFY, ("{shard}", "truncated"), setup=shard_truncated)
case("2", "shard truncated: select", SELECT_BAD, ("{shard}", "truncated"), setup=shard_truncated)
case("2", "shard rewritten in another shape: store verify", VERIFY, ("{shard}",), setup=shard_reshaped)
case("2", "shard's utterance table and consolidated table deleted: store info", INFO, ("{table}",),
     setup=shard_table_missing)
case("2", "shard's utterance table damaged: store verify", VERIFY, ("{table}", "fails its checksum"),
     setup=shard_table_damaged)
case("2", "consolidated table truncated: store info reads the shard tables", INFO, ("utterances", "60"), ok=True,
     setup=table_truncated)
case("2", "consolidated table deleted: store verify", VERIFY, ("intact", "60 utterances"), ok=True,
     setup=table_missing)
case("2", "store path is a file: store info", INFO, ("{bad}",), setup=store_is_file)
case("2", "store path is an empty folder: store verify", VERIFY, ("no activation store at {bad}",),
     setup=empty_dir)
case("2", "intact store: store verify", ("store", "verify", "--path", "{store}", "--progress", "false"),
     ("intact", "every CRC-32 matches"), ok=True)
case("2", "a store without speech tokens (synthetic, or harvested before harvests kept them): atlas",
     ("atlas", "--sae", "{sae}", "--store", "{store}", "--out_dir", "{tmp}/atlas", "--progress", "false"),
     ("{store}", "carry no speech tokens", "make store-mini"), check=lambda d, v: assert_absent(d / "atlas"))


# --------------------------------------------------------- class 3: errors raised while classes are built

def no_run_folder(case_dir: Path, values: dict[str, str]) -> None:
    """A fit refused while its classes are built leaves neither a run folder nor a store behind."""
    left = sorted(p.name for p in case_dir.iterdir())
    assert left == [], f"left behind: {left}"


for override, needles in [
    ("--model.init_args.sae.d_sae=0", ("SAEConfig.d_sae=0", "model.sae.d_sae")),
    ("--model.init_args.sae.d_in=-4", ("SAEConfig.d_in=-4", "model.sae.d_in")),
    ("--model.init_args.sae.dead_tokens=-1", ("dead_tokens=-1", "model.sae.dead_tokens")),
    ("--model.init_args.sae.k_aux=0", ("k_aux=0", "model.sae.k_aux")),
    ("--model.init_args.sae.aux_coef=-1", ("aux_coef=-1.0", "model.sae.aux_coef")),
    ("--model.init_args.lr=0", ("model.lr", "got 0.0")),
    ("--model.init_args.warmup_steps=-1", ("model.warmup_steps", "got -1")),
    ("--data.init_args.batch_size=-5", ("data.batch_size", "got -5")),
    ("--data.init_args.num_workers=-1", ("data.num_workers", "got -1")),
    ("--data.init_args.build.init_args.k_active=0", ("k_active (0)",)),
    ("--data.init_args.build.init_args.n_utterances=0", ("n_utterances > 0 (0)",)),
    ("--data.init_args.build.init_args.noise_std=-1", ("noise_std >= 0 (-1.0)",)),
    ("--data.init_args.build.init_args.rows_per_utterance=[5,2]", ("(got (5, 2))",)),
    ("--data.init_args.build.init_args.dtype=int8", ("dtype='int8'", "float32")),
]:
    case("3", f"SAE recipe: {override.split('init_args.')[-1]}", ("@FIT_DEMO", override), needles,
         check=no_run_folder)

for override, needles in [
    ("--model.init_args.lr=nan", ('Parser key "lr"', "nan")),
    ("--model.init_args.b_pre_init=bogus", ('"b_pre_init"', "bogus", "geometric_median")),
    ("--data.init_args.split_by=speaker", ('"split_by"', "speaker", "pair_key")),
    ("--model.class_path=emoctl.sae.module.NoSuchModule", ("NoSuchModule",)),
    ("--data.class_path=no_such_package.Data", ("no_such_package",)),
    ("--trainer.precision=bogus", ('"trainer.precision"', "bogus")),
]:
    case("3", f"SAE recipe: {override.split('init_args.')[-1].lstrip('-')}", ("@FIT_DEMO", override), needles)

for override, needles in [
    ("--trainer.accelerator=cuda", ("CUDAAccelerator", "not available", "'cpu'")),
    ("--trainer.devices=0", ("devices='0'", "not a valid input")),
    ("--trainer.max_steps=-5", ("max_steps", "-5")),
]:
    case("3", f"SAE recipe: Trainer refuses {override.lstrip('-')}", ("@FIT_DEMO", override), needles,
         check=no_run_folder)

for override, needles in [
    ("--model.init_args.layer.rank=0", ("EmoSteerConfig.rank", "[1, 192], got 0")),
    ("--model.init_args.layer.epsilon=-1", ("EmoSteerConfig.epsilon must be > 0, got -1.0",)),
    ("--model.init_args.optimizer.lr=-1", ("model.optimizer needs lr > 0", "lr=-1.0")),
    ("--model.init_args.hookpoint=resid_pre.99", ("model.hookpoint='resid_pre.99'", "lm_out")),
    ("--model.init_args.backbone.path={tmp}/no_backbone", ("no MiniTTS checkpoint folder at {tmp}/no_backbone",)),
    ("--model.init_args.optimizer.min_lr_fraction=2", ("model.optimizer", "min_lr_fraction=2.0")),
    ("--data.init_args.batch_size=0", ("data.batch_size", "got 0 and 1000")),
    ("--data.init_args.emotions=[Angy]", ("'Angy' in data.emotions", "Angry")),
    ("--data.init_args.max_speech_tokens=0", ("data.max_speech_tokens", "got 16 and 0")),
]:
    case("3", f"EmoShift recipe: {override.split('init_args.')[-1]}", ("@FIT_EMOSHIFT", override), needles)

case("3", "EmoShift recipe: no corpus at data.corpus_root", ("@FIT_EMOSHIFT",),
     ("{tmp}/no_corpus does not exist", "data.corpus_root"))

# tools: the argument parser
case("3", "unknown tool", ("store", "bogus"), ("unknown store 'bogus'", "info, verify"))
case("3", "unknown argument of a tool", ("select", "--bogus", "1"), ("--bogus", "emoctl select --help"))
case("3", "missing required argument", ("store", "info"), ("required", "path"))
case("3", "wrong type", ("select", "--store", "{store}", "--sae", "{sae}", "--out_dir", "{tmp}/o", "--m", "many"),
     ('"m"', "many"))
case("3", "value outside a Literal", ("select", "--store", "{store}", "--sae", "{sae}", "--out_dir", "{tmp}/o",
                                      "--score", "bogus"), ('"score"', "bogus", "any_step"))


# ------------------------------------------------------------------------------------- class 4: paths

def blocker(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{taken}` is a plain file where the command needs a folder."""
    (case_dir / "taken").write_text("a file, not a folder")
    return {"taken": str(case_dir / "taken")}


def read_only(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{ro}` is a folder without write permission (chmod 555)."""
    (case_dir / "ro").mkdir()
    os.chmod(case_dir / "ro", 0o555)
    return {"ro": str(case_dir / "ro")}


def latin1_recipe(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{bad}` is recipes/sae_demo.yaml with a Latin-1 é in a comment (not UTF-8)."""
    text = Path(fx["demo"]).read_bytes()
    (case_dir / "recipe.yaml").write_bytes(b"# r\xe9glages\n" + text)
    return {"bad": str(case_dir / "recipe.yaml")}


def broken_yaml(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{bad}` is a recipe with a YAML syntax error (an unclosed bracket)."""
    (case_dir / "recipe.yaml").write_text("trainer:\n  max_steps: [10\nmodel: {}\n")
    return {"bad": str(case_dir / "recipe.yaml")}


def list_yaml(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{bad}` is a recipe whose top level is a list."""
    (case_dir / "recipe.yaml").write_text("- trainer\n- model\n")
    return {"bad": str(case_dir / "recipe.yaml")}


def _sae_copy(case_dir: Path, fx: dict[str, str]) -> Path:
    shutil.copytree(fx["sae"], case_dir / "sae")
    return case_dir / "sae"


def sae_cfg_latin1(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{sae}` copy whose cfg.json holds a Latin-1 byte."""
    sae = _sae_copy(case_dir, fx)
    cfg = sae / "cfg.json"
    cfg.write_bytes(cfg.read_bytes().replace(b'"synthetic"', b'"synth\xe9tic"'))
    return {"bad": str(sae)}


def sae_cfg_not_json(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{sae}` copy whose cfg.json is cut in half."""
    sae = _sae_copy(case_dir, fx)
    cfg = sae / "cfg.json"
    cfg.write_bytes(cfg.read_bytes()[: cfg.stat().st_size // 2])
    return {"bad": str(sae)}


def sae_is_file(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{bad}` is a plain file given as the SAE folder."""
    (case_dir / "sae").write_text("not an SAE")
    return {"bad": str(case_dir / "sae")}


def _selection_copy(case_dir: Path, fx: dict[str, str]) -> Path:
    shutil.copytree(fx["select_mini"], case_dir / "sel")
    return case_dir / "sel"


def features_latin1(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{select_mini}` copy whose features_Angry.json holds a Latin-1 byte."""
    sel = _selection_copy(case_dir, fx)
    path = sel / "features_Angry.json"
    path.write_bytes(path.read_bytes().replace(b'"Angry"', b'"Angr\xff"', 1))
    return {"bad": str(sel)}


def features_list(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{select_mini}` copy whose features_Angry.json is a JSON list."""
    sel = _selection_copy(case_dir, fx)
    (sel / "features_Angry.json").write_text("[579, 383]")
    return {"bad": str(sel)}


def deep_store(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{deep}` is a path of over 100 characters (no spaces) holding a copy of `{store}` without its manifest."""
    deep = case_dir / ("a_rather_long_folder_name_for_a_project_" * 3) / "store"
    shutil.copytree(fx["store"], deep)
    (deep / "manifest.json").unlink()
    return {"deep": str(deep)}


def odd_name_store(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{odd}` is a copy of `{store}` in a folder named `my störe (v2)` (spaces, non-ASCII, brackets)."""
    odd = case_dir / "my störe (v2)"
    shutil.copytree(fx["store"], odd)
    return {"odd": str(odd)}


for command in [
    ("inspect", "codec", "--out_dir", "{taken}/out"),
    ("steer", "compound", "--layer", "{layer}", "--out_dir", "{taken}/out"),
    ("report", "emoshift", "--layer", "{layer}", "--out_dir", "{taken}/out"),
    ("bench", "gpu", "--out", "{taken}/out/bench.md", "--device", "cpu", "--quick", "true"),
    ("corpus", "build", "--root", "{taken}", "--n_sentences", "5", "--speakers", "1"),
    ("@FIT_STORE", "--data.init_args.path={store}", "--trainer.logger.init_args.save_dir={taken}/logs"),
]:
    name = " ".join(command[:2]) if not command[0].startswith("@") else "fit (logger save_dir)"
    case("4", f"a file where the output folder goes: {name}", command, ("{taken}",), setup=blocker)

for command in [
    ("select", "--store", "{store}", "--sae", "{sae}", "--out_dir", "{ro}/sel"),
    ("attribute", "--sae", "{sae_mini}", "--selection", "{select_mini}", "--out_dir", "{ro}/attr"),
    ("corpus", "build", "--root", "{ro}/corpus", "--n_sentences", "5", "--speakers", "1"),
    ("steer", "emoshift", "--layer", "{layer}", "--out_dir", "{ro}/sweep"),
]:
    case("4", f"read-only output folder: {' '.join(command[:2]).rstrip(' -')}", command, ("{ro}", "may not write"),
         setup=read_only, skip_if_root=True)

case("4", "recipe not UTF-8", ("fit", "--config", "{bad}", "--print_config"), ("{bad}",), setup=latin1_recipe)
case("4", "recipe is a folder", ("fit", "--config", "{tmp}"), ("{tmp}",))
case("4", "recipe with a YAML syntax error", ("fit", "--config", "{bad}"), ("{bad}",), setup=broken_yaml)
case("4", "recipe whose top level is a list", ("fit", "--config", "{bad}"), ("{bad}",), setup=list_yaml)
case("4", "SAE cfg.json not UTF-8: inspect recovery",
     ("inspect", "recovery", "--sae", "{bad}", "--dictionary", "{dictionary}"), ("{bad}/cfg.json",),
     setup=sae_cfg_latin1)
case("4", "SAE cfg.json cut in half: select", ("select", "--store", "{store}", "--sae", "{bad}", "--out_dir",
                                               "{tmp}/sel"), ("{bad}/cfg.json",), setup=sae_cfg_not_json)
case("4", "SAE folder is a file: inspect recovery",
     ("inspect", "recovery", "--sae", "{bad}", "--dictionary", "{dictionary}"), ("{bad}",), setup=sae_is_file)
case("4", "SAE folder missing: select", ("select", "--store", "{store}", "--sae", "{tmp}/no_sae", "--out_dir",
                                         "{tmp}/sel"), ("{tmp}/no_sae",))
case("4", "dictionary missing: inspect recovery",
     ("inspect", "recovery", "--sae", "{sae}", "--dictionary", "{tmp}/none.npy"), ("{tmp}/none.npy",))
case("4", "feature set not UTF-8: attribute",
     ("attribute", "--sae", "{sae_mini}", "--selection", "{bad}", "--out_dir", "{tmp}/attr"),
     ("{bad}/features_Angry.json",), setup=features_latin1)
case("4", "feature set is a JSON list: attribute",
     ("attribute", "--sae", "{sae_mini}", "--selection", "{bad}", "--out_dir", "{tmp}/attr"),
     ("{bad}/features_Angry.json", "JSON list"), setup=features_list)
case("4", "selection folder missing: attribute",
     ("attribute", "--sae", "{sae_mini}", "--selection", "{tmp}/no_sel", "--out_dir", "{tmp}/attr"),
     ("no selection folder at {tmp}/no_sel",))
case("4", "report diff of a missing file", ("report", "diff", "{tmp}/a.md", "{tmp}/b.md"), ("{tmp}/a.md",))
case("4", "a path over 100 characters stays whole in the message", ("store", "info", "--path", "{deep}"),
     ("{deep}",), setup=deep_store)
case("4", "spaces and non-ASCII in a store path: store info", ("store", "info", "--path", "{odd}"),
     ("my störe (v2)", "60"), ok=True, setup=odd_name_store)


# -------------------------------------------------------------- class 5: resume that ignores the user

RESUME = ("@FIT_STORE", "--data.init_args.path={store}", "--trainer.max_steps=6")


def ckpt_variants(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{empty}` an empty .ckpt, `{half}` the first half of `{ckpt}`, `{sae_file}` the SAE's safetensors file."""
    (case_dir / "empty.ckpt").write_bytes(b"")
    data = Path(fx["ckpt"]).read_bytes()
    (case_dir / "half.ckpt").write_bytes(data[: len(data) // 2])
    return {"empty": str(case_dir / "empty.ckpt"), "half": str(case_dir / "half.ckpt"),
            "sae_file": str(Path(fx["sae"]) / "sae_weights.safetensors")}


case("5", "--ckpt_path is a folder", (*RESUME, "--ckpt_path", "{tmp}"), ("--ckpt_path {tmp} does not exist",))
case("5", "--ckpt_path is an empty file", (*RESUME, "--ckpt_path", "{empty}"),
     ("{empty} is not a readable Lightning checkpoint", "the file ends early"), setup=ckpt_variants)
case("5", "--ckpt_path is a truncated checkpoint", (*RESUME, "--ckpt_path", "{half}"),
     ("{half} is not a readable Lightning checkpoint",), setup=ckpt_variants)
case("5", "--ckpt_path is an SAE export, not a checkpoint", (*RESUME, "--ckpt_path", "{sae_file}"),
     ("sae_weights.safetensors is not a Lightning checkpoint", "no state_dict"), setup=ckpt_variants)
case("5", "resume with another d_sae", (*RESUME, "--ckpt_path", "{ckpt}", "--model.init_args.sae.d_sae=64"),
     ("other model arguments", "'d_sae': 32", "'d_sae': 64"))
case("5", "resume with another warmup_steps", (*RESUME, "--ckpt_path", "{ckpt}", "--model.init_args.warmup_steps=7"),
     ("model.warmup_steps: checkpoint 50, recipe 7",))
case("5", "resume with another decay_fraction",
     (*RESUME, "--ckpt_path", "{ckpt}", "--model.init_args.decay_fraction=0.5"),
     ("model.decay_fraction: checkpoint 0.3, recipe 0.5",))
case("5", "resume with another b_pre_init", (*RESUME, "--ckpt_path", "{ckpt}", "--model.init_args.b_pre_init=zeros"),
     ("model.b_pre_init: checkpoint 'geometric_median', recipe 'zeros'",))
case("5", "validate with a missing --ckpt_path",
     ("validate", "--config", "{demo}", "--data.init_args.path={store}", "--data.init_args.build=null",
      "--trainer.logger=false", "--model.init_args.sae.d_in=16", "--ckpt_path", "{tmp}/gone.ckpt"),
     ("--ckpt_path {tmp}/gone.ckpt does not exist",))


def resumed_to_step_6(case_dir: Path, values: dict[str, str]) -> None:
    """The resumed run continued the checkpoint's counters: its new last.ckpt is at step 6, not 4 + 6."""
    import torch

    last = next(case_dir.rglob("last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6


case("5", "resume with the same recipe and a larger max_steps", (*RESUME, "--ckpt_path", "{ckpt}"),
     (), ok=True, check=resumed_to_step_6)


# ------------------------------------------------------------------- class 6: partial outputs that look whole

case("6", "unfinished store: SAE fit", FIT_BAD, ("{bad} is unfinished", "synthetic"), setup=unfinished,
     check=lambda d, v: assert_absent(d / "sae_demo"))
case("6", "unfinished store: select", SELECT_BAD, ("{bad} is unfinished",), setup=unfinished)
case("6", "unfinished store: store info says so", INFO, ("finished", "False"), ok=True, setup=unfinished)
case("6", "half-written shard (.tmp) left by a killed writer: store verify", VERIFY, ("intact", "60 utterances"),
     ok=True, setup=leftover_tmp_shard)


def sae_without_weights(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{sae}` copy without sae_weights.safetensors (an export killed part-way)."""
    sae = _sae_copy(case_dir, fx)
    (sae / "sae_weights.safetensors").unlink()
    return {"bad": str(sae)}


def sae_weights_swapped(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{sae}` copy whose weights file comes from another SAE of the same shape (cfg.json's digest disagrees)."""
    from emoctl.sae import SAEConfig, TopKSAE
    from emoctl.sae.export import save_pretrained

    sae = _sae_copy(case_dir, fx)
    import torch

    torch.manual_seed(1)
    save_pretrained(TopKSAE(SAEConfig(d_in=16, d_sae=32, k=3, hook_name="synthetic")), case_dir / "other")
    shutil.copy(case_dir / "other" / "sae_weights.safetensors", sae / "sae_weights.safetensors")
    return {"bad": str(sae)}


def layer_without_weights(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{layer}` copy without emosteer.safetensors."""
    shutil.copytree(fx["layer"], case_dir / "layer")
    (case_dir / "layer" / "emosteer.safetensors").unlink()
    return {"bad": str(case_dir / "layer")}


def selection_without_sets(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{select_mini}` copy with every features_<emotion>.json removed (a selection killed before writing them)."""
    sel = _selection_copy(case_dir, fx)
    for path in sel.glob("features_*.json"):
        path.unlink()
    return {"bad": str(sel)}


case("6", "SAE export without its weights: inspect recovery",
     ("inspect", "recovery", "--sae", "{bad}", "--dictionary", "{dictionary}"),
     ("{bad}/sae_weights.safetensors is missing",), setup=sae_without_weights)
case("6", "SAE weights from another export: select",
     ("select", "--store", "{store}", "--sae", "{bad}", "--out_dir", "{tmp}/sel", "--progress", "false"),
     ("{bad}",), setup=sae_weights_swapped)
case("6", "EmoShift layer without its weights: steer emoshift",
     ("steer", "emoshift", "--layer", "{bad}", "--out_dir", "{tmp}/sweep"),
     ("no EmoSteer layer at {bad}", "emosteer.safetensors is missing"), setup=layer_without_weights)
case("6", "selection folder without feature sets: attribute",
     ("attribute", "--sae", "{sae_mini}", "--selection", "{bad}", "--out_dir", "{tmp}/attr"),
     ("{bad} holds no features_<emotion>.json",), setup=selection_without_sets)
case("6", "a fit refused at setup leaves no run folder",
     ("@FIT_STORE", "--data.init_args.path={store}", "--data.init_args.batch_size=100000"),
     ("fewer than data.batch_size=100000",), check=lambda d, v: assert_absent(d / "sae_demo"))


def assert_absent(path: Path) -> None:
    assert not path.exists(), f"{path} was left behind: {sorted(p.name for p in path.rglob('*'))}"


# ---------------------------------------------------------------------------- class 7: quiet nonsense values

def manifests(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{manifest}` is a clip manifest of one row; `{empty}` one with its header and no rows."""
    (case_dir / "m.csv").write_text("clip,text,speaker,target_emotion\na.wav,hello there,0011,Angry\n")
    (case_dir / "empty.csv").write_text("clip,text,speaker,target_emotion\n")
    return {"manifest": str(case_dir / "m.csv"), "empty": str(case_dir / "empty.csv")}


SELECT = ("select", "--store", "{store}", "--sae", "{sae}", "--out_dir", "{tmp}/sel", "--progress", "false")
for args, needles in [
    (("--m", "-1"), ("m=-1",)),
    (("--m", "0"), ("m=0",)),
    (("--alpha", "2"), ("alpha=2",)),
    (("--alpha", "0"), ("alpha=0",)),
    (("--n_bootstrap", "0"), ("n_bootstrap=0",)),
    (("--n_stability", "-1"), ("n_stability=-1",)),
    (("--confidence", "1.5"), ("confidence",)),
    (("--chunk_rows", "0"), ("chunk_rows",)),
    (("--emotions", "[Angy]"), ("Angy",)),
    (("--emotions", "[]"), ("emotions",)),
    (("--neutral", "Calm"), ("Calm",)),
    (("--device", "cuda"), ("cuda",)),
]:
    case("7", f"select {' '.join(args)}", (*SELECT, *args), needles)

ATTRIBUTE = ("attribute", "--sae", "{sae_mini}", "--selection", "{select_mini}", "--out_dir", "{tmp}/attr")
for args, needles in [
    (("--batch_size", "0"), ("batch_size=0",)),
    (("--max_new_tokens", "0"), ("max_new_tokens=0",)),
    (("--temperature", "-1"), ("temperature=-1.0",)),
    (("--m", "0"), ("m=0",)),
    (("--emotions", "[Angy]"), ("Angy",)),
    (("--speakers", "[\"9999\"]"), ("unknown speaker '9999'", "0011")),
    (("--prompt_emotion", "Calm"), ("Calm",)),
    (("--texts", "[\"\"]"), ("empty text ''",)),
]:
    case("7", f"attribute {' '.join(args)}", (*ATTRIBUTE, *args), needles)

for args, needles in [
    (("sae", "--d_in", "0"), ("d_in",)),
    (("sae", "--k", "64", "--d_sae", "32"), ("k",)),
    (("sae", "--steps", "0"), ("steps",)),
    (("sae", "--dead_fraction", "2"), ("dead_fraction",)),
    (("sae", "--device", "cuda"), ("cuda",)),
    (("probes", "--n_utterances", "0"), ("n_utterances",)),
    (("probes", "--seconds", "-1"), ("seconds",)),
    (("loader", "--rows", "0"), ("rows",)),
    (("loader", "--batch_size", "0"), ("batch_size",)),
    (("loader", "--dtypes", "[int8]"), ("int8",)),
    (("loader", "--workers", "[-1]"), ("workers",)),
    (("ddp", "--processes", "[0]"), ("processes",)),
    (("ddp", "--steps", "0"), ("steps",)),
    (("fit", "--steps", "10"), ("steps >= 60",)),
    (("fit", "--rows", "100"), ("rows=100",)),
    (("fit", "--accelerator", "tpu"), ("'tpu'",)),
    (("loader", "--device", "cuda"), ("cuda",)),
    (("harvest", "--batch_size", "0"), ("batch_size",)),
    (("harvest", "--repeats", "0"), ("repeats", "got 0")),
    (("harvest", "--max_new_tokens", "0"), ("max_new_tokens", "got 5, 8, 0")),
    (("ser", "--n_clips", "0"), ("n_clips",)),
    (("cosyvoice", "--batch_size", "0"), ("batch_size",)),
    (("gpu", "--quick", "true", "--device", "cpu", "--sections", "[bogus]", "--out", "{tmp}/b.md"), ("bogus",)),
]:
    case("7", f"bench {' '.join(args)}", ("bench", *args), needles)

for args, needles in [
    (("inspect", "recovery", "--sae", "{sae}", "--dictionary", "{dictionary}", "--threshold", "1.5"),
     ("threshold", "1.5")),
    (("inspect", "recovery", "--sae", "{sae}", "--dictionary", "{dictionary}", "--threshold", "-0.1"),
     ("threshold", "-0.1")),
    (("inspect", "recovery", "--sae", "{sae_mini}", "--dictionary", "{dictionary}"), ("width",)),
    (("inspect", "codec", "--out_dir", "{tmp}/codec", "--clips_per_cell", "0"), ("clips_per_cell",)),
    (("inspect", "codec", "--out_dir", "{tmp}/codec", "--split", "bogus"), ("bogus",)),
    (("corpus", "ceiling", "--corpus_root", "{tmp}/no_corpus"), ("{tmp}/no_corpus",)),
    (("steer", "emoshift", "--layer", "{layer}", "--out_dir", "{tmp}/s", "--alphas", "[-1]"), ("alphas",)),
    (("steer", "emoshift", "--layer", "{layer}", "--out_dir", "{tmp}/s", "--alphas", "[]"), ("non-empty", "[]")),
    (("steer", "emoshift", "--layer", "{layer}", "--out_dir", "{tmp}/s", "--emotions", "[Angy]"), ("Angy",)),
    (("steer", "compound", "--layer", "{layer}", "--out_dir", "{tmp}/s", "--mixtures", "[]"), ("mixtures=[]",)),
    (("steer", "compound", "--layer", "{layer}", "--out_dir", "{tmp}/s", "--mixtures",
      "[{{Angry: -1}}]"), ("finite weights >= 0", "-1")),
    (("steer", "compound", "--layer", "{layer}", "--out_dir", "{tmp}/s", "--alpha", "-2"), ("alpha=-2.0",)),
    (("inspect", "emotionality", "--out_dir", "{tmp}/e", "--protocol.n_texts", "0"), ("n_texts",)),
    (("inspect", "emotionality", "--out_dir", "{tmp}/e", "--protocol.reference_clips", "0"), ("reference_clips",)),
    (("inspect", "emotionality", "--out_dir", "{tmp}/e", "--protocol.sampling.temperature", "-1"),
     ("temperature",)),
    (("inspect", "emotionality", "--out_dir", "{tmp}/e", "--protocol.sampling.top_p", "1.5"), ("top_p",)),
    (("inspect", "emotionality", "--out_dir", "{tmp}/e", "--protocol.sampling.batch_size", "0"), ("batch_size",)),
    (("report", "table1", "--sae", "{sae_mini}", "--store", "{store}", "--selection", "{select_mini}",
      "--out_dir", "{tmp}/t", "--sweep_texts", "0"), ("sweep_texts",)),
    (("evaluate", "--audio", "{tmp}", "--manifest", "{manifest}", "--out", "{tmp}/ev", "--threads", "0"),
     ("--threads 0",)),
    (("evaluate", "--audio", "{tmp}", "--manifest", "{empty}", "--out", "{tmp}/ev"), ("{empty} has no rows",)),
]:
    case("7", " ".join(a for a in args if not a.startswith("{")).replace("{{", "{").replace("}}", "}"), args, needles,
         setup=manifests if args[0] == "evaluate" else None)

for what, args, needles in [
    ("a switch past the token cap", ("steer", "emoshift", "--layer", "{layer}", "--out_dir", "{tmp}/s",
                                     "--schedule", '{{"switch": {{"at_s": 30}}}}'), ("at_s=30", "past the token cap")),
    ("a time in an unknown unit", ("steer", "emoshift", "--layer", "{layer}", "--out_dir", "{tmp}/s",
                                   "--schedule", '{{"switch": {{"at_ms": 5}}}}'), ("unknown unit in at_ms=5",)),
    ("a NaN switch time", ("steer", "emoshift", "--layer", "{layer}", "--out_dir", "{tmp}/s",
                           "--schedule", "switch: {{at_s: .nan}}"), ("at_s=nan must be a finite number",)),
    ("segments where one target emotion is scored", ("steer", "compound", "--layer", "{layer}", "--out_dir",
                                                     "{tmp}/s", "--schedule",
                                                     '{{"segments": [{{"emotion": "Sad", "alpha": 2}}]}}'),
     ("give a switch or a ramp",)),
    ("a ramp that ends before it starts", ("attribute", "--sae", "{sae_mini}", "--selection", "{select_mini}",
                                           "--out_dir", "{tmp}/s", "--schedule",
                                           '{{"ramp": {{"start_s": 1, "end_s": 0.5}}}}'),
     ("end_s=0.5", "must come after start_s=1")),
]:
    case("7", f"{args[0]} {args[1] if args[0] == 'steer' else ''} --schedule: {what}".replace("  ", " "), args,
         needles)

def calibrations(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{calibration}` is a calibration of the committed mini TTS whose EmoShift curves reach P(target) 0.1 to
    0.8; `{calibration_other}` the same measured on another backbone."""
    from emoctl.backbones.loading import load_backbone
    from emoctl.evaluation.calibration import Calibration, Curve, CurvePoint

    def curve(method: str, emotion: str) -> Curve:
        return Curve(method, emotion, tuple(CurvePoint(a, 8, f, f, f, f, f, f, f, 1.0, 0.8, 1.0)
                                            for a, f in ((0.0, 0.1), (2.0, 0.8))))

    curves = tuple(curve(m, e) for m in ("emoshift", "sae_emotion") for e in ("Angry", "Happy", "Sad", "Surprise"))
    Calibration(load_backbone("mini_tts").backbone_id, "mini-ser", curves, {}).save(case_dir / "cal.json")
    Calibration("indextts2@0123456789ab", "mini-ser", curves, {}).save(case_dir / "other.json")
    return {"calibration": str(case_dir / "cal.json"), "calibration_other": str(case_dir / "other.json")}


SCHEDULES_RECIPE = "recipes/evaluation/report_schedules_mini.yaml"
for what, args, needles in [
    ("an intensity the calibration did not reach", ("steer", "emoshift", "--layer", "{layer}", "--out_dir",
                                                    "{tmp}/s", "--intensities", "[0.95]", "--calibration",
                                                    "{calibration}"),
     ("intensity 0.95 for Angry by emoshift is outside what the calibration reached", "[0.100, 0.800]")),
    ("an intensity that is not a probability", ("steer", "emoshift", "--layer", "{layer}", "--out_dir", "{tmp}/s",
                                                "--intensities", "[1.5]", "--calibration", "{calibration}"),
     ("intensity=1.5 must be a probability strictly between 0 and 1",)),
    ("a calibration of another backbone", ("report", "schedules", "--config", SCHEDULES_RECIPE, "--out_dir",
                                           "{tmp}/s", "--alphas", "null", "--intensity", "0.5", "--calibration",
                                           "{calibration_other}"),
     ("calibrates backbone indextts2@0123456789ab, but steering runs on mini-tts@",)),
    ("α and an intensity together", ("report", "schedules", "--config", SCHEDULES_RECIPE, "--out_dir", "{tmp}/s",
                                     "--intensity", "0.5", "--calibration", "{calibration}"),
     ("give α or an intensity, not both",)),
    ("a NaN α in the calibration grid", ("calibrate", "--out_dir", "{tmp}/c", "--alphas", "{{global: [.nan]}}"),
     ("alphas.global=[nan]", "distinct finite α > 0")),
    ("overlapping segments", ("steer", "speak", "--out_dir", "{tmp}/s", "--schedule",
                              '{{"segments": [{{"emotion": "Angry", "alpha": 2, "end_s": 1.0}}, '
                              '{{"emotion": "Sad", "alpha": 2, "start_s": 0.5}}]}}'),
     ("segments[1]: starts at step 25", "before segments[0] ends at step 50")),
    ("an emotion beside segments that name their own", ("steer", "speak", "--out_dir", "{tmp}/s", "--emotion",
                                                        "Angry", "--schedule",
                                                        '{{"segments": [{{"emotion": "Sad", "alpha": 2}}]}}'),
     ("name their own emotion and alpha", "would be ignored")),
    ("an intensity the calibration did not reach", ("steer", "speak", "--out_dir", "{tmp}/s", "--emotion", "Sad",
                                                    "--schedule", '{{"switch": {{"at_s": 0.5}}}}', "--intensity",
                                                    "0.9", "--calibration", "{calibration}"),
     ("intensity 0.9 for Sad by emoshift is outside what the calibration reached",)),
]:
    case("7", f"{' '.join(args[:2]) if args[0] != 'calibrate' else 'calibrate'}: {what}", args, needles,
         setup=calibrations)

def directions_files(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{directions}`: steering vectors of the committed mini TTS; `{directions_other}`: the same said to come
    from another backbone; `{layers_other}`: a discriminability file of another backbone."""
    import torch

    from emoctl.backbones.loading import load_backbone
    from emoctl.selection.layers import Discriminability, LayerScore
    from emoctl.steering.vectors import SteeringVectors

    backbone = load_backbone("mini_tts")
    by_emotion = {e: {"attn_out.1": torch.ones(backbone.hidden_size)} for e in ("Angry", "Happy", "Sad", "Surprise")}
    SteeringVectors(by_emotion, {"backbone": backbone.backbone_id}).save(case_dir / "directions")
    SteeringVectors(by_emotion, {"backbone": "indextts2@0123456789ab"}).save(case_dir / "directions_other")
    Discriminability([LayerScore("attn_out.1", 0.9, 1.0, 4, 4)], "linear", "last", "indextts2@0123456789ab",
                     "generations").save(case_dir / "layers_other.json")
    return {"directions": str(case_dir / "directions"), "directions_other": str(case_dir / "directions_other"),
            "layers_other": str(case_dir / "layers_other.json")}


TABLE1_MINI = ("report", "table1", "--sae", "{sae_mini}", "--store", "{store}", "--selection", "{select_mini}",
               "--corpus_root", "{corpus_root}", "--out_dir", "{tmp}/t")  # refused before the store is read
for what, args, needles in [
    ("layers named twice", ("extract", "--hookpoints", '["attn_out.1"]', "--out_dir", "{tmp}/d"),
     ("name the layers one way", "set the other to null")),
    ("a discriminability file of another backbone", ("extract", "--discriminability", "{layers_other}",
                                                     "--out_dir", "{tmp}/d"),
     ("scores the backbone indextts2@0123456789ab, not this one", "run `emoctl inspect layers` on it")),
    ("more layers than the file scores", ("extract", "--discriminability", "{layers_other}", "--top", "0",
                                          "--out_dir", "{tmp}/d"),
     ("top=0: take at least one layer",)),
    ("a probe emoctl does not have", ("inspect", "layers", "--classifier", "svm", "--out_dir", "{tmp}/l"),
     ("classifier='svm': choose one of linear, centroid",)),
    ("a hookpoint the backbone lacks", ("inspect", "layers", "--hookpoints", '["attn_out.99"]', "--n_train_texts",
                                        "1", "--out_dir", "{tmp}/l"),
     ("hookpoints ['attn_out.99'] are not this backbone's",)),
    ("directions extracted from another backbone", (*TABLE1_MINI, "--directions", "{directions_other}"),
     ("extracted from backbone indextts2@0123456789ab, not this one", "run `emoctl extract` on it")),
]:
    case("7", f"{' '.join(args[:2]) if args[0] != 'extract' else 'extract'}: {what}", args, needles,
         setup=directions_files, needs=("corpus_root",) if args[0] == "report" else ())


case("7", "atlas with a zero α and one steering prompt (checked before any file is read)",
     ("atlas", "--sae", "{sae}", "--store", "{store}", "--out_dir", "{tmp}/atlas", "--n_prompts", "1",
      "--steer_alphas", "[0, 40]"), ("n_prompts=1", "steer_alphas=[0.0, 40.0]", "non-zero"))
case("7", "report table1 --max_wer_increase -1 (checked before the corpus is read)",
     ("report", "table1", "--sae", "{sae_mini}", "--store", "{store}", "--selection", "{select_mini}",
      "--out_dir", "{tmp}/t", "--corpus_root", "{tmp}/no_corpus", "--max_wer_increase", "-1"),
     ("max_wer_increase",))


# ------------------------------------------------------------------- security: crafted files, escaping paths

class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the smallest code execution a pickle can smuggle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_ckpt(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{evil}` is a torch.save archive whose pickle would create `{tmp}/pwned` if unpickled."""
    import torch

    torch.save({"state_dict": {}, "hook": _Payload(case_dir / "pwned")}, case_dir / "evil.ckpt")
    return {"evil": str(case_dir / "evil.ckpt")}


def crafted_sae_weights(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{sae}` copy whose sae_weights.safetensors is a pickle that would create `{tmp}/pwned`."""
    import pickle

    sae = _sae_copy(case_dir, fx)
    (sae / "sae_weights.safetensors").write_bytes(pickle.dumps(_Payload(case_dir / "pwned")))
    return {"bad": str(sae)}


def crafted_layer(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{layer}` copy whose emosteer.safetensors is a torch pickle that would create `{tmp}/pwned`."""
    import torch

    shutil.copytree(fx["layer"], case_dir / "layer")
    torch.save({"W": _Payload(case_dir / "pwned")}, case_dir / "layer" / "emosteer.safetensors")
    return {"bad": str(case_dir / "layer")}


def crafted_dictionary(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{bad}` is an .npy object array whose pickle would create `{tmp}/pwned`."""
    import numpy as np

    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(case_dir / "pwned")
    np.save(case_dir / "dictionary.npy", evil, allow_pickle=True)
    return {"bad": str(case_dir / "dictionary.npy")}


def crafted_backbone(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{mini_backbone}` copy whose model.safetensors is a torch pickle that would create `{tmp}/pwned`."""
    import torch

    shutil.copytree(fx["mini_backbone"], case_dir / "backbone")
    torch.save({"w": _Payload(case_dir / "pwned")}, case_dir / "backbone" / "model.safetensors")
    return {"bad": str(case_dir / "backbone")}


def not_run(case_dir: Path, values: dict[str, str]) -> None:
    """The crafted file's code never ran."""
    assert not (case_dir / "pwned").exists(), "the crafted pickle was executed"


case("security", "crafted pickle as --ckpt_path", (*RESUME, "--ckpt_path", "{evil}"),
     ("{evil} is not a readable Lightning checkpoint",), setup=crafted_ckpt, check=not_run)
case("security", "pickle in place of SAE weights: inspect recovery",
     ("inspect", "recovery", "--sae", "{bad}", "--dictionary", "{dictionary}"), ("{bad}/sae_weights.safetensors",),
     setup=crafted_sae_weights, check=not_run)
case("security", "torch pickle in place of an EmoShift layer: steer emoshift",
     ("steer", "emoshift", "--layer", "{bad}", "--out_dir", "{tmp}/sweep"), ("{bad}/emosteer.safetensors",),
     setup=crafted_layer, check=not_run)
case("security", "pickled object array as the true dictionary: inspect recovery",
     ("inspect", "recovery", "--sae", "{sae}", "--dictionary", "{bad}"), ("{bad}", "not a plain .npy"),
     setup=crafted_dictionary, check=not_run)
case("security", "torch pickle in place of the backbone's weights: attribute",
     ("attribute", "--sae", "{sae_mini}", "--selection", "{select_mini}", "--out_dir", "{tmp}/attr",
      "--backbone.path", "{bad}"), ("{bad}",), setup=crafted_backbone, check=not_run)
def crafted_directions(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{bad}`: a steering-vector folder whose vectors.safetensors is a torch pickle that would create `{tmp}/pwned`."""
    import torch

    values = directions_files(case_dir, fx)
    torch.save({"v": _Payload(case_dir / "pwned")}, Path(values["directions"]) / "vectors.safetensors")
    return {"bad": values["directions"]}


case("security", "torch pickle in place of steering vectors: report table1 --directions",
     (*TABLE1_MINI, "--directions", "{bad}"), ("{bad}/vectors.safetensors is not a readable safetensors file",),
     setup=crafted_directions, check=not_run, needs=("corpus_root",))
case("security", "`../../outside.npy` as a shard path in the index: store verify reads only its own shards",
     VERIFY, ("intact", "60 utterances"), ok=True, setup=index_escaping_path)
case("security", "`../` in an emotion name: select writes nothing outside out_dir",
     (*SELECT, "--emotions", "[../../escaped]"), ("../../escaped",),
     check=lambda d, v: assert_absent(d / "escaped.json") or assert_absent(d.parent / "features_escaped.json"))
case("security", "`../` in an emotion name: attribute reads nothing outside the selection",
     (*ATTRIBUTE, "--emotions", "[../select_mini/features_Angry]"),
     ("no feature-set file at {select_mini}/features_.._select_mini_features_Angry.json",))


# ---------------------------------------------------------- concurrency: a store being written while it is read

_OPEN_WRITERS: list = []


def writer_holding(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{bad}` is a harvest-like store whose writer is still open (rank 0 locked): 10 utterances committed, 5 more
    appended but not committed."""
    import torch

    from emoctl.store import ActivationWriter, StoreSpec, UtteranceMeta

    writer = ActivationWriter(case_dir / "store", StoreSpec(d_model=16, dtype="float32"), shard_rows=50,
                              producer="harvest")
    emotions = ("Neutral", "Angry", "Happy", "Sad", "Surprise")
    for i in range(10):
        writer.append(UtteranceMeta(f"u{i}", f"t{i // 5}", "s0", emotions[i % 5]), torch.randn(10, 16))
    writer.flush()
    for i in range(10, 15):
        writer.append(UtteranceMeta(f"u{i}", f"t{i // 5}", "s0", emotions[i % 5]), torch.randn(3, 16))
    _OPEN_WRITERS.append(writer)
    return {"bad": str(case_dir / "store")}


def release_writers() -> None:
    """Close the writers a setup left open (the test calls this whether the case passed or not)."""
    while _OPEN_WRITERS:
        _OPEN_WRITERS.pop().close()


case("concurrency", "store info while a writer appends: only committed utterances, not finished", INFO,
     ("utterances      10", "finished        False"), ok=True, setup=writer_holding)
case("concurrency", "SAE fit while a writer appends", FIT_BAD, ("{bad} is unfinished", "harvest"),
     setup=writer_holding)
case("concurrency", "select while a writer appends", SELECT_BAD, ("{bad} is unfinished",), setup=writer_holding)


def reopened_by_producer(case_dir: Path, fx: dict[str, str]) -> dict[str, str]:
    """`{bad}` is a finished store that its producer has reopened to append more (its writer still open)."""
    from emoctl.store import ActivationStore, ActivationWriter

    store = copy_store(case_dir, fx)
    _OPEN_WRITERS.append(ActivationWriter(store, ActivationStore(store).spec, producer="synthetic"))
    return {"bad": str(store)}


case("concurrency", "SAE fit while the store's producer has reopened it to append",
     ("@FIT_STORE", "--data.init_args.path={bad}"), ("{bad} is unfinished",), setup=reopened_by_producer)


# ---------------------------------------------------------------------- cases kept in files of their own

_SURFACE_MODULES = (reliability_indextts2, reliability_cosyvoice, reliability_evaluation, reliability_silent,
                    reliability_inputs)
"""Modules that hold the cases of one surface each. Each defines ``register(case)``, which adds its cases through
:func:`case`, and may define ``PLACEHOLDERS`` and ``ALSO_TESTED`` (merged into this module's). A case that needs a
session fixture (a random release folder, say) names it in ``needs``; the test supplies it as
``{fixture_name}``."""
for _module in _SURFACE_MODULES:
    _module.register(case)
    PLACEHOLDERS.update(getattr(_module, "PLACEHOLDERS", {}))


# ------------------------------------------------------------------------------ tested elsewhere in the suite

ALSO_TESTED: dict[str, list[tuple[str, str]]] = {
    "1": [("reliability/test_non_finite.py", "test_every_reader_refuses_the_nan_row_naming_shard_and_utterance"),
          ("reliability/test_non_finite.py", "test_sae_fit_on_a_nan_store_stops_in_one_paragraph_and_exports_nothing"),
          ("reliability/test_non_finite.py", "test_selection_on_a_nan_store_is_refused"),
          ("reliability/test_non_finite.py", "test_a_diverging_sae_stops_with_a_clear_error_and_exports_nothing"),
          ("reliability/test_non_finite.py", "test_nan_weights_are_neither_saved_over_a_good_export_nor_loaded"),
          ("store/test_store.py", "test_non_finite_rows_are_refused_and_nothing_of_them_is_written"),
          ("store/test_store.py", "test_float16_overflow_counts_as_non_finite")],
    "2": [("reliability/test_non_finite.py", "test_a_shard_with_flipped_bytes_is_refused_by_training_selection_and_store_verify"),
          ("reliability/test_non_finite.py", "test_a_lost_rank_index_is_named_not_read_as_an_empty_store"),
          ("reliability/test_non_finite.py", "test_a_truncated_consolidated_table_falls_back_to_the_checksummed_shard_tables"),
          ("store/test_store.py", "test_reader_errors_name_the_file_and_the_fix")],
    "3": [("commands/test_cli.py", "test_errors_raised_while_building_the_recipes_classes_are_one_paragraph"),
          ("commands/test_cli.py", "test_unknown_key_names_the_key"), ("commands/test_cli.py", "test_wrong_type_names_the_key"),
          ("commands/test_cli.py", "test_missing_config_file_names_the_path")],
    "4": [("commands/test_cli.py", "test_an_output_folder_blocked_by_a_file_fails_before_any_work"),
          ("commands/test_cli.py", "test_file_system_errors_are_one_paragraph_naming_the_file")],
    "5": [("sae/test_sae_fit.py",
           "test_resume_refuses_a_missing_or_unreadable_checkpoint_and_a_recipe_that_disagrees_with_it"),
          ("sae/test_sae_fit.py", "test_a_run_resumed_mid_epoch_sees_the_rows_an_uninterrupted_one_would"),
          ("sae/test_sae_fit.py", "test_a_run_resumed_at_an_epoch_end_sees_the_rows_an_uninterrupted_one_would"),
          ("sae/test_sae_fit.py", "test_resume_continues_dead_latent_counters_and_b_pre"),
          ("reliability/test_kill_campaign.py", "test_three_kills_per_producer_resume_to_the_uninterrupted_result"),
          ("reliability/test_kill_campaign.py", "test_twenty_kills_per_producer_resume_to_the_uninterrupted_result"),
          ("harvest/test_harvest.py", "test_harvest_killed_and_restarted_equals_an_uninterrupted_one"),
          ("corpus/test_corpus.py", "test_resume_after_sigkill_is_bit_identical")],
    "6": [("store/test_store.py", "test_a_killed_synthetic_build_is_rebuilt_and_readers_refuse_an_unfinished_store"),
          ("store/test_store.py", "test_sigkill_mid_shard_loses_no_committed_utterance_and_resume_skips_them"),
          ("store/test_store.py", "test_shard_renamed_but_not_indexed_is_discarded_on_reopen"),
          ("reliability/test_non_finite.py", "test_a_fit_that_fails_before_logging_leaves_no_run_folder"),
          ("sae/test_sae_fit.py", "test_failed_build_leaves_no_half_store"),
          ("harvest/test_harvest.py", "test_a_harvest_commits_by_time_so_a_kill_loses_a_bounded_amount")],
    "7": [("steering/test_steering.py", "test_attribute_refuses_nonsense_values_before_loading_anything"),
          ("steering/test_steering.py", "test_bench_sae_refuses_an_empty_batch"),
          ("corpus/test_corpus.py", "test_bad_build_arguments_are_config_errors")],
    "security": [("backbones/test_crafted_files.py", "test_crafted_lightning_checkpoint_is_refused_without_running_it"),
                 ("backbones/test_crafted_files.py",
                  "test_crafted_files_in_an_indextts2_release_are_refused_without_running_them"),
                 ("backbones/test_crafted_files.py", "test_a_token_cache_with_pickled_objects_is_ignored_not_run"),
                 ("backbones/test_crafted_files.py", "test_the_payload_really_runs_when_pickle_is_allowed")],
    "concurrency": [("store/test_store.py", "test_two_ranks_write_concurrently_and_the_reader_sees_the_union"),
                    ("store/test_store.py", "test_the_same_utterance_from_two_ranks_is_reported_by_the_reader"),
                    ("store/test_store.py", "test_writer_input_errors_are_clear")],
}
"""Tests elsewhere in emoctl_tests that cover a class with code of their own (kills, threads, crafted pickles)."""

for _module in _SURFACE_MODULES:
    for _key, _listed in getattr(_module, "ALSO_TESTED", {}).items():
        ALSO_TESTED.setdefault(_key, []).extend(_listed)


# ------------------------------------------------------------------------------------------ the document

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _command(argv: tuple[str, ...]) -> str:
    """The command as a user would type it: literal braces single, arguments with spaces quoted for a shell."""
    words = [arg.replace("{{", "{").replace("}}", "}") for arg in argv]
    return "`emoctl " + _cell(" ".join(w if PLAIN_WORD.fullmatch(w) else shlex.quote(w) for w in words)) + "`"


def _outcome(c: Case) -> str:
    fragments = ", ".join(f"`{_cell(f)}`" for f in c.expect)
    shows = f", output shows {fragments}" if fragments else ""
    text = f"correct result (exit 0){shows}" if c.ok else f"one-paragraph error naming {fragments}"
    if c.check is not None and c.check.__doc__:
        text += f"; checked: {_cell(c.check.__doc__.strip().rstrip('.'))}"
    elif c.check is not None:
        text += "; checked: nothing left behind"
    if c.xfail:
        text += f" — **known defect, xfail**: {_cell(c.xfail)}"
    if c.skip_if_root:
        text += " (skipped when run as root, who may write anywhere)"
    return text


def render() -> str:
    """docs/reliability.md, from the table."""
    errors, results = sum(not c.ok for c in CASES), sum(c.ok for c in CASES)
    lines = [
        "# Reliability catalogue",
        "",
        "<!-- Generated from emoctl_tests/harness/reliability_cases.py by `python -m emoctl_tests.harness.reliability_cases`; "
        "do not edit by hand. -->",
        "",
        "The bad inputs and faults the test suite tries against the real `emoctl` command, by class, with the "
        "outcome each must have. `emoctl_tests/reliability/test_catalogue.py` runs every row "
        "through `emoctl.cli.main` (the console script's entry point) on small real objects (a synthetic store, "
        "an SAE exported for it, a checkpoint of a 4-step fit, the embedded mini TTS and its committed SAE, "
        "selection and EmoShift layer, random-weight IndexTTS2 and CosyVoice releases and emotion2vec folders in "
        "upstream's own formats) and checks: an error exits non-zero, prints no traceback, ends stderr with "
        "one `emoctl <command>: error: ...` paragraph, and that paragraph holds every fragment listed (the key, "
        "file or value at fault); a correct result exits 0 and its output holds the fragments listed.",
        "",
        f"**{len(CASES)} cases**: {errors} one-paragraph errors and {results} correct results; "
        + ", ".join(f"{CLASSES[k].split(':')[0]} {sum(c.cls == k for c in CASES)}" for k in CLASSES) + ".",
        "",
        "## Placeholders and shared arguments",
        "",
        "| name | stands for |",
        "|---|---|",
        *[f"| `{{{name}}}` | {_cell(text)} |" for name, text in PLACEHOLDERS.items()],
        *[f"| `@{name}` | `{_cell(' '.join(args))}` |" for name, args in PREFIXES.items()],
        "",
        "Other placeholders (`{bad}`, `{utt}`, `{shard}` ...) are made by the case's setup, described under it.",
    ]
    number = 0
    for key, title in CLASSES.items():
        mine = [c for c in CASES if c.cls == key]
        heading = f"{key}. {title}" if key.isdigit() else title
        lines += ["", f"## {heading} ({len(mine)} cases)", "",
                  "| # | bad input or fault | command and setup | outcome |", "|---:|---|---|---|"]
        for c in mine:
            number += 1
            setup = f"<br>setup: {_cell(' '.join(c.setup.__doc__.split()))}" if c.setup and c.setup.__doc__ else ""
            lines.append(f"| {number} | {_cell(c.what)} | {_command(c.argv)}{setup} | {_outcome(c)} |")
        also = ALSO_TESTED.get(key, [])
        if also:
            lines += ["", "Also tested in: " + "; ".join(f"`{f}::{t}`" for f, t in also) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/reliability.md from the table, or (``--check``) say whether it is up to date."""
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in args:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date; run `python -m emoctl_tests.harness.reliability_cases`.", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC} ({len(CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
