"""Non-finite numbers never pass silently: a NaN row in a store, a diverging SAE, NaN weights to save or load."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emoctl_tests.helpers.cli import RECIPES, run_emoctl
from data_modules import SyntheticSparseStore
from emoctl.errors import NonFiniteActivationError, NonFiniteError
from emoctl.sae import SAEConfig, TopKSAE
from emoctl.sae.export import load_pretrained, save_pretrained
from emoctl.store import ActivationStore, ActivationWriter, StoreSpec, UtteranceMeta


@pytest.fixture(scope="module")
def nan_store(tmp_path_factory) -> tuple[Path, str, int]:
    """A synthetic store with one NaN written into a shard by code other than emoctl's writer, which also recorded
    the shard's new checksum (so only the finiteness check can catch it); returns its path, the damaged
    utterance's id and the global row."""
    import dataclasses
    import json

    from emoctl.store.manifest import read_rank_index, write_rank_index
    from emoctl.store.npy_stream import crc32_of_rows

    path = tmp_path_factory.mktemp("nan") / "store"
    SyntheticSparseStore(d_model=16, n_atoms=32, k_active=3, n_utterances=60).build_atomically(path)
    store = ActivationStore(path)
    table = store.utterances
    u = table.num_rows // 2
    utt_id, first = table["utt_id"][u].as_py(), int(table["first_row"][u].as_py())
    row = first + 1
    shard = int(np.searchsorted(store.shard_starts, row, side="right") - 1)
    rows = np.load(path / store.shards[shard].path, mmap_mode="r+")
    rows[row - int(store.shard_starts[shard]), 5] = np.nan
    rows.flush()
    del rows
    records = [dataclasses.replace(r, crc32=crc32_of_rows(path / r.path)) for r in read_rank_index(path, 0)]
    write_rank_index(path, 0, records)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["shards"] = [r.to_json() for r in records]
    (path / "manifest.json").write_text(json.dumps(manifest))
    ActivationStore(path).verify(progress=False)  # the checksums agree: a consistent store with a NaN in it
    return path, utt_id, row


def test_every_reader_refuses_the_nan_row_naming_shard_and_utterance(nan_store):
    from emoctl.steering.directions import mean_difference_directions
    from emoctl.store.dataset import ActivationDataset

    path, utt_id, row = nan_store
    store = ActivationStore(path)
    needle = f"utterance {utt_id!r} (step 1)"
    assert torch.isfinite(store.rows([0, 1, row - 2])).all()  # the rest of the store still reads
    for read in (lambda: store.rows([0, row, 3]), lambda: store.segment(utt_id), lambda: list(store.iter_chunks(7)),
                 lambda: ActivationDataset(store)[np.array([row, 0])], lambda: store.mean_var()):
        with pytest.raises(NonFiniteActivationError) as caught:
            read()
        assert needle in str(caught.value) and "shard " in str(caught.value), str(caught.value)
    with pytest.raises(NonFiniteActivationError, match=utt_id):
        mean_difference_directions(store, "Neutral", ["Angry"])


def test_sae_fit_on_a_nan_store_stops_in_one_paragraph_and_exports_nothing(nan_store, tmp_path):
    path, utt_id, _ = nan_store
    result = run_emoctl("fit", "--config", str(RECIPES / "sae_demo.yaml"), f"--trainer.default_root_dir={tmp_path}",
                        f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.version=v0",
                        f"--data.init_args.path={path}", "--data.init_args.build=null",
                        "--data.init_args.num_workers=1", "--model.init_args.sae.d_in=16",
                        "--model.init_args.sae.d_sae=32", "--model.init_args.sae.k=3",
                        "--data.init_args.batch_size=64", "--trainer.max_steps=200")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and utt_id in result.stderr, result.stderr[-2000:]
    assert not list(tmp_path.rglob("cfg.json")) and not list(tmp_path.rglob("sae_weights.safetensors"))
    # The run folder keeps its logs under a note saying it failed, or is gone when it held nothing else.
    run = tmp_path / "sae_demo" / "v0"
    assert not run.exists() or "NonFiniteActivationError" in (run / "FAILED.md").read_text(), \
        sorted(p.name for p in run.rglob("*"))


def test_a_fit_that_fails_before_logging_leaves_no_run_folder(tmp_path):
    """Refused at setup (batch larger than the store): the run folder held only an empty event file, so it goes,
    and no empty `sae_demo/v0` suggests a run happened."""
    result = run_emoctl("fit", "--config", str(RECIPES / "sae_demo.yaml"), f"--trainer.default_root_dir={tmp_path}",
                        f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.version=v0",
                        f"--data.init_args.path={tmp_path / 'store'}", "--data.init_args.build.init_args.n_utterances=20",
                        "--data.init_args.batch_size=100000")
    assert result.returncode != 0 and "fewer than data.batch_size=100000" in " ".join(result.stderr.split())
    assert (tmp_path / "store" / "manifest.json").is_file()  # the store it built is kept (it is complete)
    assert not (tmp_path / "sae_demo").exists(), sorted(str(p) for p in tmp_path.rglob("*") if "store" not in str(p))


def test_selection_on_a_nan_store_is_refused(nan_store, tmp_path):
    from emoctl.commands.select import select_features

    path, utt_id, _ = nan_store
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=32, k=3, hook_name="synthetic"))
    save_pretrained(sae, tmp_path / "sae")
    with pytest.raises(NonFiniteActivationError, match=utt_id):
        select_features(str(path), str(tmp_path / "sae"), str(tmp_path / "select"), progress=False)


def test_a_diverging_sae_stops_with_a_clear_error_and_exports_nothing(tmp_path):
    """Finite rows of magnitude 1e30 square to Inf in float32: the loss check stops the run within 16 steps."""
    import lightning.pytorch as pl

    from data_modules import ActivationStoreDataModule
    from emoctl.callbacks import SAEExport
    from emoctl.sae.module import SAEModule

    path = tmp_path / "huge"
    with ActivationWriter(path, StoreSpec(d_model=8, dtype="float32")) as writer:
        for i in range(40):
            writer.append(UtteranceMeta(f"u{i}", f"t{i}", "s0", "Neutral"), torch.randn(10, 8) * 1e30)
    data = ActivationStoreDataModule(str(path), batch_size=16, num_workers=0, val_fraction=0.1)
    module = SAEModule(SAEConfig(d_in=8, d_sae=16, k=2), warmup_steps=0, b_pre_init="zeros")
    trainer = pl.Trainer(max_steps=100, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
                         callbacks=[SAEExport(dirpath=str(tmp_path / "sae"))])
    with pytest.raises(NonFiniteError, match="training loss became NaN or Inf") as caught:
        trainer.fit(module, data)
    assert "model.lr" in str(caught.value)
    assert trainer.global_step <= 16 and not (tmp_path / "sae").exists()


def test_nan_weights_are_neither_saved_over_a_good_export_nor_loaded(tmp_path):
    from safetensors.torch import save_file

    good = TopKSAE(SAEConfig(d_in=8, d_sae=16, k=2))
    save_pretrained(good, tmp_path / "sae")
    bad = TopKSAE(SAEConfig(d_in=8, d_sae=16, k=2))
    with torch.no_grad():
        bad.W_dec[3, 1] = float("inf")
        bad.b_enc[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"W_dec \(1 of 128\), b_enc \(1 of 16\)|b_enc \(1 of 16\), W_dec"):
        save_pretrained(bad, tmp_path / "sae")
    assert torch.equal(load_pretrained(tmp_path / "sae").W_dec, good.W_dec)  # the earlier export is untouched
    weights = {"W_enc": bad.W_enc.detach().t().contiguous(), "b_enc": bad.b_enc.detach(),
               "W_dec": bad.W_dec.detach(), "b_dec": bad.b_dec.detach()}
    (tmp_path / "sae" / "sae_weights.safetensors").unlink()
    save_file(weights, str(tmp_path / "sae" / "sae_weights.safetensors"))
    cfg = tmp_path / "sae" / "cfg.json"
    import json

    record = json.loads(cfg.read_text())
    record.get("emoctl", {}).pop("weights_sha256", None)  # a foreign SAELens folder carries no digest
    cfg.write_text(json.dumps(record))
    with pytest.raises(NonFiniteError, match="the SAE in .* has NaN or Inf weights"):
        load_pretrained(tmp_path / "sae")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_all_finite_finds_every_kind_of_non_finite_value_and_survives_an_overflowing_sum(dtype):
    from emoctl.numerics import all_finite

    x = torch.randn(64, 32).to(dtype)
    assert all_finite(x)
    for value in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[5, 7] = value
        assert not all_finite(y), value
    big = torch.full((64, 32), 6e4 if dtype == torch.float16 else torch.finfo(dtype).max / 8, dtype=dtype)
    assert torch.isinf(big.sum()) or dtype == torch.float16  # the fast sum overflows ...
    assert all_finite(big)  # ... and the exact pass still says finite
    # the largest finite values and subnormals are finite; a NaN in the last chunk of a long tensor is found
    edge = torch.tensor([torch.finfo(dtype).max, -torch.finfo(dtype).max, torch.finfo(dtype).tiny / 4, 0.0],
                        dtype=dtype)
    assert all_finite(edge)
    long = torch.randn(3 * (1 << 18) + 5).to(dtype)
    assert all_finite(long)
    long[-1] = float("nan")
    assert not all_finite(long)
    assert not all_finite(long.view(-1, 1)[::2].t())  # non-contiguous views are checked too
    assert all_finite(long[:-1].view(-1, 2)[:, 0])


# ------------------------------------------------------------------ damaged stores: checksums nothing called

@pytest.fixture()
def store_copy(tmp_path) -> Path:
    path = tmp_path / "store"
    SyntheticSparseStore(d_model=16, n_atoms=32, k_active=3, n_utterances=60).build_atomically(path)
    return path


def _flip_a_mantissa_bit(store_path: Path) -> Path:
    """Damage one float32 value's lowest bit: still finite, so only the checksum can tell."""
    shard = store_path / ActivationStore(store_path).shards[0].path
    data = bytearray(shard.read_bytes())
    data[-4 * 16 * 3] ^= 0x01  # a value three rows from the end (little-endian low byte)
    shard.write_bytes(bytes(data))
    return shard


def test_a_shard_with_flipped_bytes_is_refused_by_training_selection_and_store_verify(store_copy, tmp_path):
    from data_modules import ActivationStoreDataModule
    from emoctl.errors import StoreError

    shard = _flip_a_mantissa_bit(store_copy)
    ActivationStoreDataModule(str(store_copy), batch_size=8, verify=False).setup("fit")  # the switch: not checked
    with pytest.raises(StoreError, match=f"shard {shard} fails its checksum"):
        ActivationStoreDataModule(str(store_copy), batch_size=8).setup("fit")
    result = run_emoctl("store", "verify", "--path", str(store_copy), "--progress", "false")
    message = " ".join(result.stderr.split())
    assert result.returncode == 1 and f"{shard} fails its checksum" in message and "Traceback" not in message


def test_store_info_and_verify_on_an_intact_store(store_copy):
    import json

    result = run_emoctl("store", "verify", "--path", str(store_copy), "--progress", "false")
    assert result.returncode == 0 and "intact" in result.stdout, result.stderr[-2000:]
    result = run_emoctl("store", "info", "--path", str(store_copy), "--as_json", "true")
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)
    store = ActivationStore(store_copy)
    assert (info["rows"], info["utterances"], info["d_model"]) == (store.num_rows, 60, 16)
    assert info["emotions"] == {"Angry": 12, "Happy": 12, "Neutral": 12, "Sad": 12, "Surprise": 12}


def test_a_lost_rank_index_is_named_not_read_as_an_empty_store(store_copy):
    from emoctl.errors import StoreError

    (store_copy / "index-r0000.json").unlink()
    with pytest.raises(StoreError, match=r"lost committed shards: .*index-r0000.json"):
        ActivationStore(store_copy)


def test_a_truncated_consolidated_table_falls_back_to_the_checksummed_shard_tables(store_copy):
    expected = ActivationStore(store_copy).utterances
    table = store_copy / "utterances.parquet"
    table.write_bytes(table.read_bytes()[:100])
    assert ActivationStore(store_copy).utterances.equals(expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_all_finite_agrees_with_isfinite_on_every_16_bit_pattern(dtype):
    """The CPU check reads 16-bit floats' exponent bits: all 65,536 patterns, one at a time and all at once."""
    from emoctl.numerics import all_finite

    patterns = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    finite = torch.isfinite(patterns.float())
    assert [all_finite(patterns[i:i + 1]) for i in range(patterns.numel())] == finite.tolist()
    assert not all_finite(patterns) and all_finite(patterns[finite])
