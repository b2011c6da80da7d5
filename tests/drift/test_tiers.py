"""Tiered tables under drift: each window's tier shares against counts taken straight from the data,
the drift job recording them (counted inside its paired pass: the same numbers as a second pass over
the window), the report's panel for them, recalibration re-ranking the tiers from the new window's
counts, and the per-row table error of a tiered table against a slow reference."""

import json

import numpy as np
import pytest
import torch

from helpers import random_float_model
from lowprec.calibrate import CalibConfig, calibrate
from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.checkpoint.float_model import load_float_model
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset, DatasetWriter, SparseFeature
from lowprec.drift.dbfile import history_tag
from lowprec.drift.store import DriftStore
from lowprec.drift.tiers import hot_share, tier_shares, tiered_features
from lowprec.evaluation import stats
from lowprec.evaluation.paired import TableError
from lowprec.fileio import atomic_dir
from lowprec.plan import Plan, TableChoice
from lowprec.precision import Precision

from quant.test_rowwise import ref_minmax

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


def second_pass_shares(candidate, ds, window, batch_size=8192):
    """The tier shares as the drift job counted them before the observer: a second pass over the window."""
    tiered = tiered_features(candidate)
    hotness = candidate.embeddings.hotness
    starts = [sum(hotness[:t]) for t in range(len(hotness))]
    hits = {(t, j): 0 for t, maps in tiered.items() for j, _ in maps}
    total = dict.fromkeys(tiered, 0)
    with torch.no_grad():
        for batch in iter_batches(ds, [window], batch_size):
            for t, maps in tiered.items():
                ids = batch.sparse[:, starts[t]:starts[t] + hotness[t]].reshape(-1).long()
                total[t] += int((ids >= 0).sum())
                for j, id_map in maps:
                    hits[(t, j)] += int((id_map(ids)[0] >= 0).sum())
    names = candidate.embeddings.names
    return [{"window": window, "table_name": names[t], "tier": j, "lookups": hits[(t, j)],
             "share": hits[(t, j)] / total[t] if total[t] else None} for (t, j) in sorted(hits)]


SPEC = {"kind": "tiered", "tiers": [[0.05, "fp16"], [0.2, "int8"]]}


def tiered_pair(tmp_path, calib_window=0):
    """(data dir, dataset, float model dir, artifact dir): t0 tiered 5% fp16 / 20% int8 / int4 cold,
    ranked by window `calib_window`'s counts."""
    data = shifting_dataset(tmp_path / "data")
    ds = Dataset(data)
    model = random_float_model(ds, tmp_path / "model", embeddings=("dense", "dense"))
    calib = calibrate(load_float_model(model)[0], ds, CalibConfig((calib_window,)))
    convert(model, Plan({"t0": TableChoice(Precision.INT4, SPEC), "*": TableChoice(Precision.INT8)}),
            tmp_path / "art", calib)
    return data, ds, model, tmp_path / "art"


def test_drift_job_records_tier_shares_and_reports_them(tmp_path):
    data, ds, model, art = tiered_pair(tmp_path)
    db, report = tmp_path / "h.sqlite", tmp_path / "report"
    run = ("drift", "--reference", model, "--candidate", art, "--data", data, "--windows", "1-4",
           "--db", db, "--report", report, "--batch-size", 300, "--json")
    labels = data / "day_4_labels.npy"
    labels.rename(tmp_path / "labels4.npy")  # window 4's labels are late: its tier shares need none
    r = cli(*run)
    assert r.exit_code in (0, 1), r.output
    assert last_json(r)["estimates"][-1]["hot_tier_share"] < 0.1 and last_json(r)["labels_pending"] == [4]
    with DriftStore(db) as s:
        pending = [t for t in s.tier_shares() if t["window"] == 4]
    assert len(pending) == 3 and "Tiered tables" in (report / "report.md").read_text()
    (tmp_path / "labels4.npy").rename(labels)  # the labels arrive: the window's record is completed
    r = cli(*run)
    assert r.exit_code in (0, 1), r.output
    windows = last_json(r)["windows"]
    share = {w["window"]: w["hot_tier_share"] for w in windows}
    assert share[1] > 0.5 and share[4] < 0.1
    with DriftStore(db) as s:
        stored, errors = s.tier_shares(), s.table_errors()
        layout = s.meta("tier_layout")
    # counted in the paired pass: exactly the numbers of a second pass over each window
    runtime, _ = load_artifact(art)
    want = [row for w in range(1, 5) for row in second_pass_shares(runtime, ds, w, batch_size=512)]
    assert stored == want and [t for t in stored if t["window"] == 4] == pending
    assert {r["window"]: r["share"] for r in stored if r["tier"] == 0} == share
    assert json.loads(layout) == {"t0": [{"tier": 0, "rows": 10, "precision": "fp16"},
                                         {"tier": 1, "rows": 40, "precision": "int8"},
                                         {"tier": 2, "rows": 150, "precision": "int4"}]}
    # the tiered table gets its per-row error like a dense one (no "not comparable" note)
    t0 = [e for e in errors if e["table_name"] == "t0"]
    assert len(t0) == 4 and all(e["note"] is None and e["sqnr_db"] is not None for e in t0)
    # after the shift the lookups land on int4 rows: the lookup-weighted error grows
    assert t0[-1]["rel"] > 2 * t0[0]["rel"]
    # the report's panel: per window the upper tiers' shares, the figure, and the drop said in words
    html = (report / "index.html").read_text()
    md = (report / "report.md").read_text()
    assert (report / "tiers.png").stat().st_size > 10_000
    assert "Tiered tables: traffic served by the upper tiers" in html and '<img src="tiers.png"' in html
    by = {(r["window"], r["tier"]): r["share"] for r in stored}
    for w in range(1, 5):
        upper = f"{100 * (by[(w, 0)] + by[(w, 1)]):.1f}%"
        row = f"| {w} | w{w} | t0 | {100 * by[(w, 0)]:.1f}% / {100 * by[(w, 1)]:.1f}% | {upper} | " \
              f"{100 * by[(w, 2)]:.1f}% |"
        assert row in md
    assert "table t0: tier 0: 10 rows (5.0%) at fp16, tier 1: 40 rows (20.0%) at int8, cold: 150 rows at int4" in md and "Popularity has moved to rows ranked cold" in md
    assert "A drop means popularity moved to rows ranked cold" in html
    assert (f"went from SQNR {t0[0]['sqnr_db']:.1f} dB to {t0[-1]['sqnr_db']:.1f} dB") in md


def test_recalibration_re_ranks_and_is_marked_in_the_report(tmp_path):
    data, ds, model, art = tiered_pair(tmp_path)
    cfg = tmp_path / "drift.toml"  # a CUSUM that alarms on any NE gap: window 3 (after the shift) alarms
    cfg.write_text("[alarm]\nne_gap_allowance = 0.0\ncusum_h = 0.5\nmin_positives = 0\nmin_negatives = 0\n"
                   "[recalibrate]\nsource = \"alarmed\"\n")
    db, report = tmp_path / "h.sqlite", tmp_path / "report"
    r = cli("drift", "--reference", model, "--candidate", art, "--data", data, "--windows", "3-4",
            "--db", db, "--report", report, "--config", cfg, "--on-alarm", "recalibrate", "--json")
    assert r.exit_code == 1, r.output
    out = last_json(r)
    assert out["first_alarm"] == 3 and out["recalibrations"][0]["source"] == "alarmed"
    with DriftStore(db) as s:
        deployed = [t for t in s.tier_shares() if t["window"] == 3]
        recal = s.recal_tier_shares()
    assert [(t["alarm_window"], t["source"], t["tier"]) for t in recal] == [(3, "alarmed", j) for j in range(3)]
    rerank = recal[0]["share"] + recal[1]["share"]
    before = deployed[0]["share"] + deployed[1]["share"]
    assert before < 0.3 and rerank > 0.7  # re-ranking on the shifted window restores the upper tiers' share
    # the same numbers as the recalibrated artifact's own count on that window
    again, _ = load_artifact(art.with_name(f"art.recal-w3-alarmed.{history_tag(db)}"))
    assert [t["lookups"] for t in recal] == [t["lookups"] for t in tier_shares(again, ds, 3)]
    md = (report / "report.md").read_text()
    assert (f"Recalibrated for alarm window 3 (alarmed windows): re-ranked, its upper tiers serve "
            f"{100 * rerank:.1f}% of window 3's lookups (deployed: {100 * before:.1f}%)") in md


def ref_quantized(row: np.ndarray, precision: Precision) -> np.ndarray:
    """One row stored at `precision` and read back (numpy: fp16 cast, or min/max codes * scale + bias)."""
    if precision == Precision.FP16:
        return row.astype(np.float16).astype(np.float64)
    codes, scale, bias = ref_minmax(row[None].astype(np.float32), precision.bits)
    return (codes[0].astype(np.float32) * np.float32(scale[0]) + np.float32(bias[0])).astype(np.float64)


def test_tiered_table_error_matches_slow_reference(tmp_path):
    data, ds, model, art = tiered_pair(tmp_path)
    float_model, _ = load_float_model(model)
    runtime, _ = load_artifact(art)
    te = TableError.from_models(float_model, runtime)
    assert "t0" not in te.notes and te.rows["t0"] is not None
    # slow reference: rank rows by calibration counts (ties by id), cut 5% / 20% / rest, each row
    # quantized alone at its tier's precision
    counts = calibrate(float_model, ds, CalibConfig((0,)))["row_counts"]["t0"]
    counts = [float(c) for c in counts]
    order = sorted(range(N), key=lambda i: (-counts[i], i))
    precision = {i: (Precision.FP16 if r < 10 else Precision.INT8 if r < 50 else Precision.INT4)
                 for r, i in enumerate(order)}
    w = float_model.embeddings[0].weight.detach().numpy().astype(np.float64)
    err = np.array([((w[i] - ref_quantized(w[i], precision[i])) ** 2).sum() for i in range(N)])
    got_err, got_norm = te.rows["t0"]
    np.testing.assert_allclose(got_err, err, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(got_norm, (w ** 2).sum(1), rtol=1e-12)
    assert len({precision[i] for i in range(N) if err[i] > 0}) == 3  # every tier's precision is exercised
    # each window weights it by its own lookups, as for a dense table
    ids = np.load(data / "day_4_sparse.npy")[:, :2].reshape(-1)
    c = np.bincount(ids[ids >= 0], minlength=N).astype(np.float64)
    got = te.weighted({"t0": c, "t1": np.zeros(30)})["t0"]
    assert got["rel"] == pytest.approx((c * err).sum() / (c * (w ** 2).sum(1)).sum(), rel=1e-5)
    assert got == stats.weighted_row_error(got_err, got_norm, c, 8)
