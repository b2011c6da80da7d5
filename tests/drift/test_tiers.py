"""Tiered tables under drift: each window's tier shares against counts taken straight from the data,
the drift job recording them, and recalibration re-ranking the tiers from the new window's counts."""

import sqlite3

import numpy as np
import torch

from helpers import random_float_model
from lowprec.calibrate import CalibConfig, calibrate
from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.checkpoint.float_model import load_float_model
from lowprec.data.dataset import Dataset, DatasetWriter, SparseFeature
from lowprec.drift.tiers import hot_share, tier_shares
from lowprec.fileio import atomic_dir
from lowprec.plan import Plan, TableChoice
from lowprec.precision import Precision

from .conftest import cli, last_json

N = 200  # rows of the tiered table t0; windows 0-2 draw Zipf ids hot at 0.., windows 3-4 hot at N-1..


def shifting_dataset(out, rows=800, seed=0):
    rng = np.random.default_rng(seed)
    feats = [SparseFeature("t0", N, 2), SparseFeature("t1", 30, 1)]
    with atomic_dir(out) as tmp:
        writer = DatasetWriter(tmp, ["d0", "d1"], feats, {"source": "tests"})
        for w in range(5):
            ww = writer.window(label=f"w{w}", start=f"2020-01-{w + 1:02d}", end=f"2020-01-{w + 2:02d}")
            dense = rng.normal(0, 1, (rows, 2)).astype(np.float32)
            ranks = (rng.zipf(2.0, (rows, 2)) - 1) % N
            ids0 = ranks if w < 3 else N - 1 - ranks
            ids0[rng.random(rows) < 0.3, 1] = -1
            ids = np.concatenate([ids0, rng.integers(0, 30, (rows, 1))], 1)
            labels = (rng.random(rows) < 1 / (1 + np.exp(-dense[:, 0]))).astype(np.int32)
            ww.append(dense, ids, labels)
            writer.add_window(ww)
        writer.finish()
    return out


def test_shares_match_the_data_and_fall_after_a_popularity_shift(tmp_path):
    ds = Dataset(shifting_dataset(tmp_path / "data"))
    model = random_float_model(ds, tmp_path / "model", embeddings=("dense", "dense"))
    float_model, _ = load_float_model(model)
    calib = calibrate(float_model, ds, CalibConfig((0,)))
    spec = {"kind": "tiered", "tiers": [[0.05, "fp16"], [0.2, "int8"]]}
    convert(model, Plan({"t0": TableChoice(Precision.INT4, spec), "*": TableChoice(Precision.INT8)}),
            tmp_path / "art", calib)
    runtime, _ = load_artifact(tmp_path / "art")
    counts = torch.as_tensor(calib["row_counts"]["t0"]).double()
    order = sorted(range(N), key=lambda i: (-float(counts[i]), i))
    tier = {i: 0 if r < 10 else 1 if r < 50 else 2 for r, i in enumerate(order)}  # 5% and 20% of 200 rows
    shares = {}
    for w in (0, 4):
        rows = tier_shares(runtime, ds, w, batch_size=512)
        ids = np.load(tmp_path / "data" / f"day_{w}_sparse.npy")[:, :2].reshape(-1)
        ids = ids[ids >= 0]
        want = [float(np.mean([tier[int(i)] == j for i in ids])) for j in range(3)]
        assert [r["table_name"] for r in rows] == ["t0"] * 3
        assert np.allclose([r["share"] for r in rows], want) and sum(r["lookups"] for r in rows) == len(ids)
        shares[w] = hot_share(rows)
    assert shares[0] > 0.5 and shares[4] < 0.1  # popularity moved to ids ranked cold
    # recalibrating on the shifted window re-ranks the tiers: the hot share comes back
    recal = calibrate(float_model, ds, CalibConfig((3,)))
    convert(model, Plan({"t0": TableChoice(Precision.INT4, spec), "*": TableChoice(Precision.INT8)}),
            tmp_path / "recal", recal)
    again, _ = load_artifact(tmp_path / "recal")
    assert hot_share(tier_shares(again, ds, 4, batch_size=512)) > 0.5


def test_drift_job_records_tier_shares(tmp_path):
    data = shifting_dataset(tmp_path / "data")
    ds = Dataset(data)
    model = random_float_model(ds, tmp_path / "model", embeddings=("dense", "dense"))
    calib = calibrate(load_float_model(model)[0], ds, CalibConfig((0,)))
    spec = {"kind": "tiered", "tiers": [[0.05, "fp16"]]}
    convert(model, Plan({"t0": TableChoice(Precision.INT4, spec), "*": TableChoice(Precision.INT8)}),
            tmp_path / "art", calib)
    db = tmp_path / "h.sqlite"
    r = cli("drift", "--reference", model, "--candidate", tmp_path / "art", "--data", data, "--windows", "1-4",
            "--db", db, "--report", tmp_path / "report", "--json")
    assert r.exit_code in (0, 1), r.output
    windows = last_json(r)["windows"]
    share = {w["window"]: w["hot_tier_share"] for w in windows}
    assert share[1] > 0.5 and share[4] < 0.1
    with sqlite3.connect(db) as conn:
        stored = conn.execute('SELECT "window", tier, share FROM tier_share ORDER BY "window", tier').fetchall()
    assert [(w, t) for w, t, _ in stored] == [(w, t) for w in range(1, 5) for t in (0, 1)]
    assert {w: s for w, t, s in stored if t == 0} == share
