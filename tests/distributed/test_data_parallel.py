"""2-rank gloo runs of `eval`, `calibrate`, `drift`, `search` and `compare` give the one-process numbers,
bit for bit: every per-batch number is the same because rank slices are cut on the one-process batch
boundaries, float sums are summed in one order whatever the ranks (per-batch folds, and the paired
evaluation's blocked order, lowprec.evaluation.merge), histograms hold integers; the search measures
each option once, on one rank, on the whole cached rows.
"""

from __future__ import annotations

import json
import math
import shutil

from lowprec.calibrate import CalibConfig, calibrate
from lowprec.checkpoint.convert import convert
from lowprec.checkpoint.float_model import load_float_model
from lowprec.data.dataset import Dataset
from lowprec.drift.store import DriftStore
from lowprec.plan import LayerChoice, Plan, TableChoice
from lowprec.precision import Precision
from tests.distributed.conftest import in_process, last_json, lowprec

BATCH = "700"  # 6000 rows -> 9 batches a window (the last short): 4 + 5 across two ranks


def test_eval_two_ranks_equals_one_process(work):
    """The int8 artifact with dynamic int8 layers: exact only if the batches are the same."""
    args = ("eval", "--model", work["art"], "--data", work["data"], "--windows", "1-3",
            "--batch-size", BATCH, "--json")
    one = in_process(*args)
    assert one.exit_code == 0, one.output
    two = lowprec(*args, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert last_json(two.stdout) == last_json(one.stdout)
    assert len(two.stdout.strip().splitlines()) == 1  # only rank 0 prints


PER_RUN = ("run_id", "recorded", "filled_run_id", "filled")  # when and in which run: not a measurement


def _same(a, b) -> bool:
    """Equal, floats to 1e-12 relative: the merges sum in one fixed order and usually agree bit for
    bit, but a fresh-clone CI run once gave a bootstrap SE 2.6e-14 relative apart (cause not found)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def tiered_int8_artifact(work, out):
    """work's int8 artifact (dynamic int8 layers) with table t0 tiered (10% fp16, 20% int4, int8 cold)."""
    ds = Dataset(work["data"])
    counts = calibrate(load_float_model(work["model"])[0], ds, CalibConfig((0,)))["row_counts"]
    spec = {"kind": "tiered", "tiers": [[0.1, "fp16"], [0.2, "int4"]]}
    plan = Plan({"t0": TableChoice(Precision.INT8, spec), "*": TableChoice(Precision.INT8)},
                {"*": LayerChoice(Precision.INT8)})
    convert(work["model"], plan, out, {"row_counts": counts})  # no layer ranges: dynamic int8 layers
    return out


def test_drift_two_ranks_equals_one_process(work, tmp_path):
    """Labelled windows 1-2 and window 3 with its labels pending: the labelled records, the label-free
    records and the attribution (per-batch sums folded in batch order, rank subsample gathered: bit
    for bit, they were all-reduced and differed at ~1e-16), and the tiered table's tier shares
    (counted per rank in the paired pass, all-reduced) and per-row error equal one process's."""
    data = tmp_path / "data"
    shutil.copytree(work["data"], data)
    (data / "day_3_labels.npy").unlink()
    art = tiered_int8_artifact(work, tmp_path / "art")

    def drift(tag: str, nproc: int):
        args = ("drift", "--reference", work["model"], "--candidate", art, "--data", data,
                "--windows", "1-3", "--db", tmp_path / f"{tag}.sqlite", "--report", tmp_path / f"{tag}-report",
                "--batch-size", BATCH, "--json")
        if nproc == 1:
            r = in_process(*args)
            return r.exit_code, last_json(r.stdout)
        r = lowprec(*args, nproc=nproc)
        assert r.returncode in (0, 1), r.stderr[-3000:]
        return r.returncode, last_json(r.stdout)

    code1, one = drift("one", 1)
    code2, two = drift("two", 2)
    assert code1 == code2
    assert one["alarms"] == two["alarms"] and one["processed"] == two["processed"]
    assert one["labels_pending"] == two["labels_pending"] == [3]
    assert [w["window"] for w in one["windows"]] == [1, 2]
    assert one["estimates"] == two["estimates"]  # label-free: exactly
    for w1, w2 in zip(one["windows"], two["windows"], strict=True):
        assert w1["rows"] == w2["rows"] == 6000
        for key in w1:
            assert _same(w1[key], w2[key]), (w1["window"], key, w1[key], w2[key])
    with DriftStore(tmp_path / "one.sqlite") as a, DriftStore(tmp_path / "two.sqlite") as b:
        assert [x["window"] for x in a.labelfree()] == [1, 2, 3]
        for x, y in zip(a.labelfree(), b.labelfree(), strict=True):
            for k in x.keys() - set(PER_RUN):
                assert x[k] == y[k], (x["window"], k, x[k], y[k])
        assert a.attributions() == b.attributions() and all(x["rows"] > 0 for x in a.attributions())
        shares = a.tier_shares()
        assert shares == b.tier_shares() and [(r["window"], r["tier"]) for r in shares] == \
            [(w, j) for w in (1, 2, 3) for j in range(3)] and all(r["lookups"] > 0 for r in shares)
        errors = a.table_errors()
        assert errors == b.table_errors() and all(e["sqnr_db"] is not None for e in errors)
    assert (tmp_path / "two-report" / "report.md").is_file()


def test_calibrate_two_ranks_writes_the_one_process_file(work, tmp_path):
    def calibrate(out, nproc):
        args = ("calibrate", "--model", work["model"], "--data", work["data"], "--windows", "1-2",
                "--method", "mse", "--max-rows", "10000", "--out", out)
        r = in_process(*args) if nproc == 1 else lowprec(*args, nproc=2)
        assert (r.exit_code if nproc == 1 else r.returncode) == 0, getattr(r, "stderr", r.output)[-3000:]

    calibrate(tmp_path / "one.json", 1)
    calibrate(tmp_path / "two.json", 2)
    one, two = (json.loads((tmp_path / n).read_text()) for n in ("one.json", "two.json"))
    assert one["rows"] == two["rows"] == 4096 + 1904 + 4096  # whole batches until 10,000 rows are seen
    assert one["layers"] == two["layers"]  # ranges and clip rates bit for bit
    counts = {n: list(tmp_path.glob(f"{n}.counts-*.safetensors")) for n in ("one", "two")}
    assert len(counts["one"]) == len(counts["two"]) == 1  # the pair commits as one (content-hashed name)
    assert counts["one"][0].read_bytes() == counts["two"][0].read_bytes()


def test_search_two_ranks_writes_the_one_process_plan(work, tmp_path):
    """Inline calibration, sensitivity dealt over ranks, data-parallel validation (pooled windows
    2-3 and test window 1 with the dynamic int8 layers): the same PLAN.json, byte for byte."""
    def search(tag: str, nproc: int):
        args = ("search", "--model", work["model"], "--data", work["data"], "--calib-windows", "0",
                "--eval-windows", "2-3", "--test-windows", "1", "--precisions", "fp16,int8,int4",
                "--layer-precisions", "fp32,int8", "--max-rows", "3000", "--out", tmp_path / f"{tag}.json", "--json")
        r = in_process(*args) if nproc == 1 else lowprec(*args, nproc=nproc)
        assert (r.exit_code if nproc == 1 else r.returncode) == 0, getattr(r, "stderr", r.output)[-3000:]
        return last_json(r.stdout)

    one, two = search("one", 1), search("two", 2)
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    assert (tmp_path / "one.cache.json").read_bytes() == (tmp_path / "two.cache.json").read_bytes()
    one.pop("seconds"), two.pop("seconds")
    assert _same(one, two)
    assert one["validated"] is not None and one["tested"] is not None  # validation ran, on both splits


def test_compare_two_ranks_equals_one_process(work):
    args = ("compare", "--reference", work["model"], "--candidate", work["art"], "--data", work["data"],
            "--windows", "1-2", "--max-rows", "8000", "--json")
    one = in_process(*args)
    assert one.exit_code == 0, one.output
    two = lowprec(*args, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _same(last_json(two.stdout), last_json(one.stdout))
    assert last_json(one.stdout)["rows"] == 4096 + 1904 + 4096  # whole batches until 8000 rows are seen
