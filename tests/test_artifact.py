"""Quantized artifacts: exact bytes, TBE lookups vs dequantized tables, bad input, atomicity."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest

from lowprec.errors import InputWarning
import torch

from helpers import REPO, make_tiny_dataset, run_cli as run, trained_tiny
from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.checkpoint.float_model import load_float_model, save_float_model
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.model.dlrm import DLRM
from lowprec.plan import Plan
from lowprec.precision import Precision
from lowprec.quant.rowwise import fused_to_float
from lowprec.serve.tables import table_codec
from lowprec.train import TrainConfig, model_config_for

PRECISIONS = [p for p in Precision]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("art")
    ds, _ = trained_tiny(root, TrainConfig(windows=(0, 1), epochs=2), windows=3, rows=1500, hotness=(1, 3, 1))
    return root, ds


def pooled_reference(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Sum of rows over the valid ids of each bag: the slow, obvious reference."""
    out = torch.zeros(ids.shape[0], weight.shape[1])
    for b in range(ids.shape[0]):
        for i in ids[b].tolist():
            if i >= 0:
                out[b] += weight[i]
    return out


@pytest.mark.parametrize("precision", PRECISIONS, ids=[p.value for p in PRECISIONS])
def test_tbe_lookups_equal_dequantized_tables(trained, tmp_path, precision):
    root, ds = trained
    convert(root / "model", Plan.uniform(precision), tmp_path / "a")
    runtime, manifest = load_artifact(tmp_path / "a")
    float_model, _ = load_float_model(root / "model")
    batch = next(iter(iter_batches(ds, [2], batch_size=64)))
    pooled = runtime.pooled(batch.sparse)
    offsets = [0, 1, 4, 5]
    for t, stored in enumerate(runtime.embeddings.table_weights()):
        source = float_model.embeddings[t].weight.detach()
        # the bytes in the TBE are exactly what the row-wise quantizer writes for this table
        codec = table_codec(precision)
        expected = codec.encode(source, "minmax")
        assert torch.equal(stored[:, : expected.shape[1]], expected)
        deq = codec.decode(stored, source.shape[1])
        ref = pooled_reference(deq, batch.sparse[:, offsets[t]:offsets[t + 1]])
        torch.testing.assert_close(pooled[:, t], ref, rtol=1e-5, atol=1e-6)
    assert manifest["tables"][0]["precision"] == precision.value


def test_fp32_artifact_scores_like_the_float_model(trained, tmp_path):
    root, ds = trained
    convert(root / "model", Plan.uniform(Precision.FP32), tmp_path / "a")
    runtime, _ = load_artifact(tmp_path / "a")
    model, _ = load_float_model(root / "model")
    for batch in iter_batches(ds, [2], batch_size=500):
        torch.testing.assert_close(runtime(batch.dense, batch.sparse), model(batch.dense, batch.sparse),
                                   rtol=1e-5, atol=1e-5)


def test_int8_layers_and_tables_stay_close(trained, tmp_path):
    root, ds = trained
    convert(root / "model", Plan.uniform(Precision.INT8, Precision.INT8), tmp_path / "a")
    runtime, manifest = load_artifact(tmp_path / "a")
    model, _ = load_float_model(root / "model")
    batch = next(iter(iter_batches(ds, [2], batch_size=1500)))
    diff = (torch.sigmoid(runtime(batch.dense, batch.sparse)) - torch.sigmoid(model(batch.dense, batch.sparse)))
    assert diff.abs().max() < 0.02
    assert all(v["precision"] == "int8" for v in manifest["layers"].values())


def test_inspect_reports_bytes_and_compression(trained, tmp_path):
    root, _ = trained
    assert run("convert", "--model", root / "model", "--precision", "int4", "--out", tmp_path / "a").exit_code == 0
    r = run("inspect", tmp_path / "a", "--json")
    out = json.loads(r.output.strip().splitlines()[-1])
    rows = [50, 20, 8]
    assert [t["rows"] for t in out["tables"]] == rows and all(t["dim"] == 16 for t in out["tables"])
    assert out["embedding_bytes"] == sum(r * (8 + 4) for r in rows)
    assert out["fp32_embedding_bytes"] == sum(r * 64 for r in rows)
    assert out["compression"] == pytest.approx(64 / 12)


def test_flipped_byte_truncation_and_version_exit_2(trained, tmp_path):
    root, _ = trained
    art = tmp_path / "a"
    assert run("convert", "--model", root / "model", "--precision", "int8", "--out", art).exit_code == 0
    r = run("convert", "--model", art, "--precision", "int4", "--out", tmp_path / "b")  # an artifact as --model
    assert r.exit_code == 2 and "a quantized artifact (manifest.json), not a float model" in r.output
    w = art / "weights.safetensors"
    good = w.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x01
    w.write_bytes(bytes(data))
    r = run("eval", "--model", art, "--data", root / "data", "--windows", "2")
    assert r.exit_code == 2 and "sha256 does not match" in r.output and "weights.safetensors" in r.output
    w.write_bytes(good[: len(good) // 2])
    assert run("eval", "--model", art, "--data", root / "data", "--windows", "2").exit_code == 2
    w.write_bytes(good)
    m = json.loads((art / "manifest.json").read_text())
    m["version"] = 99
    (art / "manifest.json").write_text(json.dumps(m))
    r = run("inspect", art)
    assert r.exit_code == 2 and "version 99" in r.output


def test_plan_naming_missing_table_and_nan_table_exit_2(trained, tmp_path):
    root, _ = trained
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "lowprec-plan", "version": 1,
                                "tables": {"nosuch": {"precision": "int4"}}}))
    r = run("convert", "--model", root / "model", "--plan", plan, "--out", tmp_path / "a")
    assert r.exit_code == 2 and "nosuch" in r.output and not (tmp_path / "a").exists()
    plan.write_text(json.dumps({"format": "lowprec-plan", "version": 1,
                                "layers": {"*": {"precision": "int4"}}}))
    r = run("convert", "--model", root / "model", "--plan", plan, "--out", tmp_path / "a")
    assert r.exit_code == 2 and "layers take" in r.output
    r = run("convert", "--model", root / "model", "--precision", "int8", "--layer-precision", "int4", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "--layer-precision int4: layers take" in r.output
    # hot sharing without row counts: refused before any table is converted, naming the plan
    plan.write_text(json.dumps({"format": "lowprec-plan", "version": 1,
                                "tables": {"*": {"precision": "int8"}, "t1": {"precision": "int4", "sharing": {"kind": "hot", "ratio": 2}}}}))
    r = run("convert", "--model", root / "model", "--plan", plan, "--out", tmp_path / "a")
    assert r.exit_code == 2 and f"{plan}: tables ['t1'] have hot sharing" in r.output and not (tmp_path / "a").exists()
    plan.write_text(json.dumps({"format": "lowprec-plan", "version": 1, "tables": {"t1": {"sharing": "hash:0.5"}}}))
    r = run("convert", "--model", root / "model", "--plan", plan, "--out", tmp_path / "a")
    assert r.exit_code == 2 and "sharing must be null or an object such as" in r.output and "'hash:0.5'" in r.output
    model, info = load_float_model(root / "model", writable=True)
    with torch.no_grad():
        model.embeddings[1].weight[7, 3] = float("inf")
    save_float_model(model, tmp_path / "bad", info)
    r = run("convert", "--model", tmp_path / "bad", "--precision", "int8", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "table 't1'" in r.output and "row 7" in r.output


def test_dim_not_multiple_of_4_is_padded(tmp_path):
    ds = Dataset(make_tiny_dataset(tmp_path / "d", windows=1, rows=300))
    cfg = TrainConfig(windows=(0,), embedding_dim=6, bottom_mlp=(8, 6))
    model = DLRM(model_config_for(ds.meta, cfg))
    save_float_model(model, tmp_path / "m")
    with pytest.warns(InputWarning, match="padded") as said:  # one line (was one a table, as a raw UserWarning)
        manifest = convert(tmp_path / "m", Plan.uniform(Precision.INT4), tmp_path / "a")
    assert [str(w.message) for w in said if "padded" in str(w.message)] == [
        "embedding dim 6 is not a multiple of 4: every table's rows are padded with 2 zero columns for FBGEMM "
        "(recorded in the manifest)"]
    assert manifest["physical_tables"][0]["dim"] == 8 and manifest["physical_tables"][0]["padded_from"] == 6
    runtime, _ = load_artifact(tmp_path / "a")
    batch = next(iter(iter_batches(ds, [0], batch_size=32)))
    for t, stored in enumerate(runtime.embeddings.table_weights()):
        deq = fused_to_float(stored, 4, 8)[:, :6]
        ids = batch.sparse[:, t:t + 1]
        torch.testing.assert_close(runtime.pooled(batch.sparse)[:, t], pooled_reference(deq, ids))


def test_compare_finds_first_broken_tap(trained, tmp_path):
    root, _ = trained
    run("convert", "--model", root / "model", "--precision", "int2", "--out", tmp_path / "a")
    r = run("compare", "--reference", root / "model", "--candidate", tmp_path / "a",
            "--data", root / "data", "--windows", "2", "--threshold-db", "30", "--json")
    out = json.loads(r.output.strip().splitlines()[-1])
    names = [t["name"] for t in out["taps"]]
    assert names[:2] == ["layer:bottom.0", "layer:bottom.1"] and names[-1] == "output"
    assert out["first_below"].startswith("table:")  # int2 tables break first; fp32 layers do not
    bottom = [t for t in out["taps"] if t["name"].startswith("layer:bottom")]
    assert all(t["exact"] and t["sqnr_db"] is None for t in bottom)  # fp32 layers on fp32 inputs: equal
    assert not any(t["exact"] or t["non_finite"] for t in out["taps"] if t["name"].startswith("table:"))


def _model_over_the_threading_threshold(path):
    from lowprec.model.config import DLRMConfig, TableConfig

    cfg = DLRMConfig(4, (TableConfig("big", 200_000), TableConfig("small", 10)), 16, (16,), (8,))
    torch.manual_seed(0)
    save_float_model(DLRM(cfg), path)


def test_sigkill_during_convert_keeps_existing_artifact(tmp_path):
    _model_over_the_threading_threshold(tmp_path / "m")
    out = tmp_path / "a"
    assert run("convert", "--model", tmp_path / "m", "--precision", "int8", "--out", out).exit_code == 0
    before = (out / "weights.safetensors").read_bytes()
    # The child stops where the new artifact is fully written but not yet swapped in, so the kill
    # lands mid-convert however fast the machine converts (a timed sleep raced the L2 kernel).
    ready = tmp_path / "ready"
    child = ("import sys, time\n"
             "import lowprec.fileio as fileio\n"
             "ready = sys.argv[1]\n"
             "def stall(tmp):\n"
             "    open(ready, 'w').close()\n"
             "    time.sleep(600)\n"
             "fileio.fsync_tree = stall\n"
             "from lowprec.cli import main\n"
             "sys.argv = ['lowprec', *sys.argv[2:]]\n"
             "main()\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", child, str(ready), "convert", "--model", str(tmp_path / "m"),
                             "--precision", "int4", "--range-method", "l2", "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "err").open("w"))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not ready.exists():
            time.sleep(0.05)
        assert ready.exists(), f"convert never reached its swap: {proc.poll()} {(tmp_path / 'err').read_text()[-2000:]}"
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # killed mid-convert, not finished
    assert (out / "weights.safetensors").read_bytes() == before
    runtime, manifest = load_artifact(out)
    assert manifest["tables"][0]["precision"] == "int8"
    assert any(p.name.startswith(".a.tmp-") for p in tmp_path.iterdir())  # the killed writer's leftovers
    # the next convert cleans up and succeeds
    assert run("convert", "--model", tmp_path / "m", "--precision", "int4", "--out", out).exit_code == 0
    assert load_artifact(out)[1]["tables"][0]["precision"] == "int4"
    assert not any(p.name.startswith(".a.") for p in tmp_path.iterdir())


@pytest.mark.parametrize("precision", PRECISIONS, ids=[p.value for p in PRECISIONS])
def test_fast_path_with_pads_equals_reference(tmp_path, precision):
    """The fast path hands -1 pads straight to the TBE, which skips them (its pruned-row marker)."""
    ds = Dataset(make_tiny_dataset(tmp_path / "d", windows=1, rows=50, hotness=(4, 4, 4)))
    save_float_model(DLRM(model_config_for(ds.meta, TrainConfig(windows=(0,)))), tmp_path / "m")
    convert(tmp_path / "m", Plan.uniform(precision), tmp_path / "a")
    emb = load_artifact(tmp_path / "a")[0].embeddings
    sparse = torch.randint(0, 8, (64, 12))
    sparse[torch.rand(64, 12) < 0.4] = -1
    sparse[5] = -1  # a sample whose bags are all empty
    # FP8's kernel does not skip pads: the runtime masks them itself (the general path)
    assert emb.simple == table_codec(precision).skips_pads
    fast = emb(sparse)
    emb.simple = False
    torch.testing.assert_close(fast, emb(sparse), rtol=1e-6, atol=1e-6)
    for t in range(3):
        deq = table_codec(precision).decode(emb.table_weights()[t], 16)
        torch.testing.assert_close(fast[:, t], pooled_reference(deq, sparse[:, 4 * t:4 * t + 4]))
    assert (fast[5] == 0).all()


def test_multi_hot_fast_path_equals_general_path(tmp_path):
    ds = Dataset(make_tiny_dataset(tmp_path / "d", windows=1, rows=200, hotness=(4, 4, 4)))
    model = DLRM(model_config_for(ds.meta, TrainConfig(windows=(0,))))
    save_float_model(model, tmp_path / "m")
    convert(tmp_path / "m", Plan.uniform(Precision.INT4), tmp_path / "a")
    runtime, _ = load_artifact(tmp_path / "a")
    emb = runtime.embeddings
    assert emb.simple
    sparse = torch.randint(0, 8, (64, 12))  # no pads: the fast path applies
    fast = emb(sparse)
    emb.simple = False
    torch.testing.assert_close(fast, emb(sparse), rtol=0, atol=0)
    for t in range(3):
        deq = fused_to_float(emb.table_weights()[t], 4, 16)
        torch.testing.assert_close(fast[:, t], pooled_reference(deq, sparse[:, 4 * t:4 * t + 4]))


def test_calibrate_creates_the_output_directory(trained, tmp_path):
    root, _ = trained
    out = tmp_path / "new" / "dir" / "calib.json"
    r = run("calibrate", "--model", root / "model", "--data", root / "data", "--windows", "2", "--out", out)
    assert r.exit_code == 0, r.output
    side = json.loads(out.read_text())["row_counts"]["file"]
    assert out.is_file() and (out.parent / side).is_file() and side.startswith("calib.counts-")


def test_calibrate_deletes_only_the_row_counts_of_the_calibration_it_replaces(trained, tmp_path):
    """Every `<stem>.counts*.safetensors` beside --out was deleted, the user's own files included."""
    root, _ = trained
    mine = [tmp_path / "calib.counts-myexperiment.safetensors", tmp_path / "calib.counts.safetensors"]
    for f in mine:
        f.write_text("precious")
    out = tmp_path / "calib.json"
    sides = []
    for windows in ("2", "1"):  # the second run replaces the first (other rows: other counts)
        r = run("calibrate", "--model", root / "model", "--data", root / "data", "--windows", windows, "--out", out)
        assert r.exit_code == 0, r.output
        sides.append(json.loads(out.read_text())["row_counts"]["file"])
    assert sides[0] != sides[1] and not (tmp_path / sides[0]).exists() and (tmp_path / sides[1]).is_file()
    assert all(f.read_text() == "precious" for f in mine)


def test_calibration_progress_counts_the_rows_both_passes_read(trained):
    """The progress bars of calibrate, search (inline calibration) and the demo count to this; the
    search's bar had no total. Both passes stop at max_rows, as the batches do."""
    from lowprec.calibrate import CalibConfig, _batches

    ds = Dataset(trained[0] / "data")
    for cfg in (CalibConfig((1, 2)), CalibConfig((1, 2), max_rows=700), CalibConfig((2,), max_rows=10**9)):
        assert cfg.rows_read(ds) == 2 * sum(len(b) for b in _batches(ds, cfg))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
def test_tables_served_in_place_start_on_cache_lines(tmp_path, precision):
    """Every physical table the TBE reads in place from the mapped artifact starts at a multiple of
    64 bytes (odd row counts, mixed row widths and a tiered table before it included): fp16 rows at
    8 mod 64 had straddled cache lines, 1.33x slower at full scale (reports/tiered.md)."""
    from helpers import random_float_model
    from lowprec.plan import TableChoice

    ds = Dataset(make_tiny_dataset(tmp_path / "data", windows=1, rows=200, tables=(301, 37, 9), hotness=(2, 1, 1)))
    model = random_float_model(ds, tmp_path / "model")
    counts = {"t0": torch.arange(301, dtype=torch.float32)}
    tiered = {"kind": "tiered", "tiers": [[0.1, "fp16"]], "order": "rank"}
    plan = Plan({"t0": TableChoice(Precision.INT4, tiered), "t1": TableChoice(Precision.INT8),
                 "*": TableChoice(Precision(precision))})
    convert(model, plan, tmp_path / "a", {"row_counts": counts})
    tbe = load_artifact(tmp_path / "a")[0].embeddings.tbe
    starts = [tbe.weights_host.data_ptr() + o for o in tbe.weights_physical_offsets]
    assert len(starts) == 4 and all(s % 64 == 0 for s in starts), [s % 64 for s in starts]


@pytest.mark.parametrize("dtype", [torch.float16, torch.int32])
def test_a_float_model_with_a_tensor_not_float32_is_refused_naming_it(trained, tmp_path, dtype):
    """An fp16 table failed deep in a forward (exit 4, 'HalfTensor does not equal FloatTensor'); an int32
    one converted silently. Both are refused where the model is read, naming the tensor."""
    from safetensors.torch import load_file, save_file

    from lowprec.fileio import sha256_file

    root, _ = trained
    model = tmp_path / "m"
    model.mkdir()
    weights = load_file(str(root / "model" / "model.safetensors"))
    weights["embeddings.1.bag.weight"] = weights["embeddings.1.bag.weight"].to(dtype)
    save_file(weights, str(model / "model.safetensors"))
    cfg = json.loads((root / "model" / "config.json").read_text())
    cfg["sha256"] = {"model.safetensors": sha256_file(model / "model.safetensors")}
    (model / "config.json").write_text(json.dumps(cfg))
    want = "tensor 'embeddings.1.bag.weight' is " + {torch.float16: "F16", torch.int32: "I32"}[dtype]
    for args in (["convert", "--model", model, "--precision", "int8", "--out", tmp_path / "a"],
                 ["eval", "--model", model, "--data", root / "data", "--windows", "2"]):
        r = run(*args)
        assert r.exit_code == 2 and want in r.output, r.output
    assert not (tmp_path / "a").exists()


def test_ranges_far_from_what_calibration_observed_are_warned_about(trained, tmp_path):
    """A range of [0, 1e38] or [5, 5] (observed [-1, 1]) converted silently; the int8 layer then keeps
    almost no resolution. Percentile-style ranges inside the observed ones are not warned about."""
    from lowprec.calibrate import load_calibration

    root, _ = trained
    calib = tmp_path / "c.json"
    assert run("calibrate", "--model", root / "model", "--data", root / "data", "--windows", "2",
               "--out", calib).exit_code == 0
    c = load_calibration(calib)
    plan = Plan.uniform(Precision.INT8, Precision.INT8)
    first, second = list(c["layers"])[:2]
    lo, hi = c["layers"][first]["observed_min"], c["layers"][first]["observed_max"]
    c["layers"][first] |= {"min": lo + 0.1 * (hi - lo), "max": hi - 0.1 * (hi - lo)}  # clipped tails: fine
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        convert(root / "model", plan, tmp_path / "a", c)
    c["layers"][second] |= {"min": 0.0, "max": 1e38}
    with pytest.warns(InputWarning, match=rf"layers \['{second}'\] have calibrated input ranges far from the inputs"):
        convert(root / "model", plan, tmp_path / "a", c)


def test_a_percentile_given_to_another_method_is_said_unused(trained, tmp_path):
    """QA 6d item 7: `calibrate --method minmax --percentile 90` ignored the percentile silently."""
    from helpers import run_cli

    root, _ = trained
    r = run_cli("calibrate", "--model", root / "model", "--data", root / "data", "--windows", "2",
                "--out", tmp_path / "c.json", "--percentile", "90", "--json")
    assert r.exit_code == 0 and "warning: --percentile 90 is not used" in r.output, r.output
    r = run_cli("calibrate", "--model", root / "model", "--data", root / "data", "--windows", "2",
                "--out", tmp_path / "c.json", "--method", "percentile", "--percentile", "90")
    assert r.exit_code == 0 and "not used" not in r.output, r.output


def test_inspect_shows_trained_sharing_exactness_and_shared_arrays(tmp_path):
    """QA 6c item 5: inspect showed hash/QR/ROBE tables as sharing '-', never said a table is served
    inexactly (unaligned ROBE), and every ROBE table's bytes were the whole shared array, so the
    column summed to N times the total, unexplained."""
    import json

    from helpers import run_cli

    trained_tiny(tmp_path, TrainConfig(windows=(0,), epochs=1, embedding="robe:ratio=4,z=8",
                                       table_embedding={"t2": "hash:ratio=2"}), windows=2, rows=300)
    r = run_cli("convert", "--model", tmp_path / "model", "--precision", "fp32", "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert r.output.count("unaligned ROBE") == 1 and "2 table(s) (t0, t1) were trained as unaligned ROBE" in r.output
    j = json.loads(run_cli("inspect", tmp_path / "a", "--json").stdout.strip().splitlines()[-1])
    t = {x["name"]: x for x in j["tables"]}
    assert t["t0"]["embedding"] == "robe:ratio=4,z=8" and t["t0"]["exact"] is False and t["t0"]["shared_with"] == 1
    assert t["t2"]["embedding"] == "hash:ratio=2" and t["t2"]["exact"] is True and "shared_with" not in t["t2"]
    text = run_cli("inspect", tmp_path / "a").stdout
    assert "robe*" in text and "(+1)" in text and "hash" in text and "served as an approximation" in text
