"""Smoke test of tools/bench_plan_lookup.py: artifacts timed on a window's real multi-hot batches."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


def test_bench_plan_lookup_tiny(tmp_path):
    import bench_plan_lookup

    from helpers import make_tiny_dataset, random_float_model
    from lowprec.checkpoint.convert import convert
    from lowprec.data.dataset import Dataset
    from lowprec.plan import Plan, TableChoice
    from lowprec.precision import Precision

    ds = Dataset(make_tiny_dataset(tmp_path / "data", windows=1, rows=300, hotness=(1, 4, 1)))
    model = random_float_model(ds, tmp_path / "model")
    counts = {"t1": torch.arange(ds.meta.num_embeddings[1], dtype=torch.float32) ** 2}
    tiered = {"kind": "tiered", "tiers": [[0.1, "fp16"]], "order": "rank"}
    convert(model, Plan({"*": TableChoice(Precision.INT4)}), tmp_path / "int4", {"row_counts": counts})
    convert(model, Plan({"t1": TableChoice(Precision.INT4, tiered), "*": TableChoice(Precision.INT4)}),
            tmp_path / "tiered", {"row_counts": counts})
    threads = torch.get_num_threads()
    try:
        for stage in ("embeddings", "model"):  # the lookups alone, the whole model call
            bench_plan_lookup.main(["--data", str(tmp_path / "data"), "--window", "0", "--artifact",
                                    f"int4={tmp_path / 'int4'}", "--artifact", f"tiered={tmp_path / 'tiered'}",
                                    "--batch", "64", "--batches", "2", "--repeats", "2", "--block-seconds", "0.001",
                                    "--stage", stage, "--anon", "--out", str(tmp_path / f"{stage}.json")])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "model.json").read_text())["settings"]["stage"] == "model"
    r = json.loads((tmp_path / "embeddings.json").read_text())
    assert list(r["variants"]) == ["int4", "tiered", "tiered, ranked ids", "int4, tables in anonymous memory",
                                   "tiered, tables in anonymous memory",
                                   "tiered, tables in anonymous memory, ranked ids"] and r["baseline"] == "int4"
    assert r["variants"]["tiered"]["ranked_equals_raw"] is True
    assert r["variants"]["int4"]["vs_baseline"]["median"] == 1.0
    assert r["bytes"]["tiered"] > r["bytes"]["int4"]  # the fp16 hot tier and the rank map
    assert r["variants"]["tiered"]["tables"]["t1"] == "int4 tiered"


def test_bench_option_timing_tiny(tmp_path):
    """tools/bench_option_timing.py: every option of a table under every protocol, on a tiny model."""
    import bench_option_timing

    from helpers import make_tiny_dataset, random_float_model
    from lowprec.calibrate import CalibConfig, calibrate, save_calibration
    from lowprec.checkpoint.convert import convert
    from lowprec.checkpoint.float_model import load_float_model, weights_sha256
    from lowprec.data.dataset import Dataset
    from lowprec.plan import Plan
    from lowprec.precision import Precision

    ds = Dataset(make_tiny_dataset(tmp_path / "data", windows=1, rows=2100, tables=(3000, 20, 8), hotness=(4, 1, 1)))
    model_dir = random_float_model(ds, tmp_path / "model")
    calib = calibrate(load_float_model(model_dir)[0], ds, CalibConfig((0,)))
    save_calibration(calib, tmp_path / "calib.json", weights_sha256(model_dir))
    convert(model_dir, Plan.uniform(Precision.FP32, Precision.FP32), tmp_path / "fp32", calib)
    threads = torch.get_num_threads()
    try:
        out = bench_option_timing.main(["--model", str(model_dir), "--data", str(tmp_path / "data"), "--window", "0",
                                        "--calibration", str(tmp_path / "calib.json"), "--context",
                                        str(tmp_path / "fp32"), "--tables", "t0", "--precisions", "fp32,int4",
                                        "--tier-layouts", "0.1:fp16/int4/rank", "--out", str(tmp_path / "o.json")])
    finally:
        torch.set_num_threads(threads)
    got = json.loads((tmp_path / "o.json").read_text())["tables"]["t0"]
    assert got == out["tables"]["t0"]
    assert set(got) == {"fp32", "int4", "int4|kind=tiered,tiers=((0.1, 'fp16'),),order=rank"}
    protocols = {"built, 1+7", "built, 20+21", "cycled", "cycled, flushed", "in the model"}
    assert all(set(v) == protocols and all(isinstance(x, float) for x in v.values()) for v in got.values())


def test_traffic_dataset_copies_the_layout_and_draws_bench_tiereds_ids(tmp_path):
    import numpy as np

    import traffic_dataset
    from bench_tiered import Traffic
    from helpers import make_tiny_dataset
    from lowprec.data.dataset import Dataset

    like = Dataset(make_tiny_dataset(tmp_path / "like", windows=1, rows=50, tables=(300, 20, 8), hotness=(3, 1, 2)))
    traffic_dataset.main(["--like", str(like.root), "--out", str(tmp_path / "t"), "--windows", "2",
                          "--rows-per-window", "70", "--chunk", "30"])
    ds = Dataset(tmp_path / "t")
    assert ds.meta.hotness == [3, 1, 2] and list(ds.meta.num_embeddings) == list(like.meta.num_embeddings)
    sparse = np.asarray(ds.arrays(1)[1])
    assert sparse.shape == (70, 6) and sparse.min() >= 0
    # window 1's first chunk, table 0: bench_tiered's draw for that seed, bag by bag
    want = Traffic(list(like.meta.num_embeddings), 0).ids(0, 30 * 3, 70 * 3).reshape(30, 3)
    assert np.array_equal(sparse[:30, :3], want)
