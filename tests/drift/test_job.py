"""`lowprec drift` end to end on a tiny float pair: DB vs `lowprec.evaluation.scoring`, reruns, SIGKILL,
concurrency, refusals, the report, bounded memory."""

import json
import os
import sqlite3
import subprocess
import tracemalloc
from pathlib import Path


import numpy as np
import pytest
import torch

from helpers import make_tiny_dataset
from lowprec.checkpoint.load import load_model
from lowprec.data.dataset import Dataset, DatasetWriter, SparseFeature
from lowprec.evaluation.paired import PairedConfig, evaluate_window
from lowprec.drift.store import DriftStore
from lowprec.evaluation.scoring import evaluate, predict
from lowprec.fileio import atomic_dir
from lowprec.evaluation.metrics import score_bins

from evaluation.test_stats import brute_delong

from .conftest import cli, drift_cmd, kill_after_first_window, last_json


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift_pair")
    data = make_tiny_dataset(root / "data", windows=6, rows=3000)
    for name, seed in (("ref", 0), ("cand", 1)):
        r = cli("train", "--data", data, "--windows", "0-1", "--out", root / name, "--seed", seed, "--epochs", 1)
        assert r.exit_code == 0, r.output
    return root


def drift(root, db, *extra, windows="2-5", data=None):
    return cli("drift", "--reference", root / "ref", "--candidate", root / "cand", "--data", data or root / "data",
               "--windows", windows, "--db", db, "--report", db.with_suffix(".report"), "--json",
               "--allow-unrelated-candidate", *extra)  # cand: another training of the float model


def test_db_matches_evaluate_and_delong_matches_brute_force(pair, tmp_path):
    db = tmp_path / "h.sqlite"
    r = drift(pair, db)
    assert r.exit_code in (0, 1), r.output
    out = last_json(r)
    assert [w["window"] for w in out["windows"]] == [2, 3, 4, 5] and out["processed"] == [2, 3, 4, 5]
    assert all(isinstance(w["alarm"], bool) for w in out["windows"])
    assert out["exit_code"] == r.exit_code
    ds = Dataset(pair / "data")
    rows = {row["window"]: row for row in stored_rows(db)}
    for side in ("ref", "cand"):
        model, _, _ = load_model(pair / side)
        ev = evaluate(model, ds, [2, 3, 4, 5]).per_window
        for w in (2, 3, 4, 5):
            for k in ("ne", "logloss", "auc", "calibration"):
                assert rows[w][f"{side}_{k}"] == pytest.approx(ev[w][k], abs=1e-9, rel=0)
    # DeLong on the binned scores, brute force O(n^2)
    ref, _, _ = load_model(pair / "ref")
    cand, _, _ = load_model(pair / "cand")
    dense, sparse, labels = (torch.from_numpy(np.array(a)) for a in ds.arrays(3))
    y = labels.numpy().astype(int)
    a1, a2, var = brute_delong(score_bins(predict(ref, dense.float(), sparse.long())),
                               score_bins(predict(cand, dense.float(), sparse.long())), y)
    assert rows[3]["auc_diff"] == pytest.approx(a2 - a1, abs=1e-12)
    assert rows[3]["auc_se"] == pytest.approx(np.sqrt(var), rel=1e-7)
    assert rows[3]["ne_gap"] == pytest.approx(rows[3]["cand_ne"] / rows[3]["ref_ne"] - 1, rel=1e-9)
    assert rows[3]["ne_gap_lo"] < rows[3]["ne_gap"] < rows[3]["ne_gap_hi"]
    assert rows[3]["ne_gap_se"] == pytest.approx(rows[3]["ne_gap_se_delta"], rel=0.25)


def test_a_window_the_reference_learned_from_carries_a_warning(pair, tmp_path):
    """`--windows all` on a dataset that grows (data append) takes in the reference's training
    windows: their metrics are not held-out, and the first of them became the staleness baseline,
    so later windows read "staleness: retrain" with nothing said. The window's record says so."""
    r = drift(pair, tmp_path / "h.sqlite", windows="1-3")
    assert r.exit_code in (0, 1), r.output
    said = {w["window"]: [x for x in w["warnings"] if x.startswith("--reference learned from this window")]
            for w in last_json(r)["windows"]}
    assert said == {1: [said[1][0]], 2: [], 3: []} and "(training data)" in said[1][0]
    assert said[1][0] in stored_rows(tmp_path / "h.sqlite")[0]["warnings"]
    # QA 9a item 8: said on stderr and in the run's --json warnings too, as eval says it
    line = "window(s) 1: --reference learned from them (training or validation data)"
    assert f"warning: {line}" in r.stderr and any(w.startswith(line) for w in last_json(r)["warnings"])


def stored_rows(db):
    with DriftStore(db) as s:
        return s.windows()


def test_rerun_processes_nothing_new(pair, tmp_path):
    db = tmp_path / "h.sqlite"
    first = drift(pair, db, windows="2-3")
    again = drift(pair, db, windows="2-4")
    assert last_json(again)["processed"] == [4]
    third = drift(pair, db, windows="2-4")
    assert last_json(third)["processed"] == [] and third.exit_code == again.exit_code
    with DriftStore(db) as s:
        assert [r["status"] for r in s.runs()] == ["done"] * 3
        assert [r["run_id"] for r in s.windows()] == [1, 1, 2]
    assert first.exit_code in (0, 1)
    report = db.with_suffix(".report")
    html = (report / "index.html").read_text()
    for png in ("metrics.png", "gap.png", "staleness.png"):
        assert f'src="{png}"' in html and (report / png).stat().st_size > 1000
    md = (report / "report.md").read_text()
    for w in (2, 3, 4):
        assert f"| {w} | w{w} | 3000 |" in md  # both models' metrics per window


def test_concurrent_run_is_refused(pair, tmp_path):
    db = tmp_path / "h.sqlite"
    with DriftStore(db):
        r = drift(pair, db)
    assert r.exit_code == 2 and "in use by another `lowprec drift` run" in r.output
    assert drift(pair, db, windows="2").exit_code in (0, 1)


def test_other_pair_bad_config_and_bad_report_dir_exit_2(pair, tmp_path):
    db = tmp_path / "h.sqlite"
    assert drift(pair, db, windows="2").exit_code in (0, 1)
    swapped = cli("drift", "--reference", pair / "cand", "--candidate", pair / "ref", "--data", pair / "data",
                  "--windows", "3", "--db", db, "--report", tmp_path / "r2", "--allow-unrelated-candidate")
    assert swapped.exit_code == 2 and "another pair" in swapped.output
    cfg = tmp_path / "t.toml"
    cfg.write_text("[alarm]\ncusum_hh = 3\n")
    r = drift(pair, tmp_path / "x.sqlite", "--config", cfg)
    assert r.exit_code == 2 and "alarm.'cusum_hh'" in r.output and not (tmp_path / "x.sqlite").exists()
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    r = cli("drift", "--reference", pair / "ref", "--candidate", pair / "cand", "--data", pair / "data",
            "--windows", "2", "--db", tmp_path / "y.sqlite", "--report", keep, "--allow-unrelated-candidate")
    assert r.exit_code == 2 and "not a lowprec drift report" in r.output
    assert (keep / "notes.txt").read_text() == "mine"


def test_a_missing_window_file_is_refused_before_the_history_is_created(pair, tmp_path):
    """`window 3: missing .../day_3_sparse.npy` (exit 2) still created a new --db holding a `failed` run
    (and its lock file): the files were first opened while scoring. Now the windows to score are
    checked before the history is created, and on an existing history before its run is recorded."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(pair / "data", data)
    (data / "day_3_sparse.npy").rename(tmp_path / "away.npy")
    db = tmp_path / "h.sqlite"
    r = drift(pair, db, windows="2-3", data=data)
    assert r.exit_code == 2 and f"window 3: missing {data / 'day_3_sparse.npy'}" in r.output, r.output
    assert not db.exists() and not db.with_name("h.sqlite.lock").exists() and not db.with_suffix(".report").exists()
    assert drift(pair, db, windows="2", data=data).exit_code in (0, 1)
    r = drift(pair, db, windows="2-3", data=data)
    assert r.exit_code == 2 and "window 3: missing" in r.output, r.output
    with DriftStore(db) as s:
        assert [row["status"] for row in s.runs()] == ["done"] and [w["window"] for w in s.windows()] == [2]


def test_a_recalibration_setting_out_of_range_is_refused_before_any_window(pair, tmp_path):
    """[recalibrate] percentile = 10 loaded without complaint; the job scored and recorded its windows,
    then exited 2 with "percentile must be in (50, 100]" naming neither file nor key, on every rerun.
    Now refused at load naming FILE: recalibrate.percentile, nothing recorded; likewise a CALIB.json
    whose percentile a recalibration would repeat."""
    cfg = tmp_path / "t.toml"
    cfg.write_text("[recalibrate]\npercentile = 10\nmethod = \"percentile\"\n")
    db = tmp_path / "h.sqlite"
    r = drift(pair, db, "--config", cfg, windows="2")
    assert r.exit_code == 2 and f"{cfg}: recalibrate.percentile: percentile must be in (50, 100], got 10" \
        in r.output, r.output
    assert not db.exists() and not db.with_suffix(".report").exists()
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps({"format": "lowprec-calibration", "version": 1, "layers": {},
                                 "method": "percentile", "percentile": 10}))
    r = drift(pair, db, "--calibration", calib, windows="2")
    assert r.exit_code == 2 and f"{calib}: percentile must be in (50, 100], got 10" in r.output, r.output
    assert not db.exists()


def test_thresholds_from_toml_decide_and_are_recorded(pair, tmp_path):
    cfg = tmp_path / "t.toml"
    # candidate and reference are different trainings: a near-zero limit must alarm
    cfg.write_text("[alarm]\nne_gap_limit = 1e-9\nne_gap_allowance = 0\ncusum_h = 0.001\n"
                   "[bootstrap]\nreplicates = 50\n")
    r = drift(pair, tmp_path / "h.sqlite", "--config", cfg, windows="2-3")
    assert r.exit_code == 1 and last_json(r)["first_alarm"] == 2
    with DriftStore(tmp_path / "h.sqlite") as s:
        recorded = json.loads(s.runs()[0]["config"])
    assert recorded["alarm"]["cusum_h"] == 0.001 and recorded["bootstrap"]["replicates"] == 50


def test_sigkill_mid_run_then_rerun_leaves_one_record_per_window(pair, tmp_path):
    data = make_tiny_dataset(tmp_path / "big", windows=8, rows=40_000)
    db = tmp_path / "h.sqlite"
    cmd = drift_cmd(pair, data, db, tmp_path / "rep")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    assert kill_after_first_window(cmd, db) >= 1
    with sqlite3.connect(db) as con:
        before = dict(con.execute('SELECT "window", recorded FROM windows').fetchall())
    assert 1 <= len(before) < 8, "the run finished before it could be killed"
    r = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1), r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(out["processed"]) == sorted(set(range(8)) - set(before))
    with DriftStore(db) as s:
        rows = s.windows()
        assert [row["window"] for row in rows] == list(range(8))  # exactly one record per window
        assert {row["window"]: row["recorded"] for row in rows if row["window"] in before} == before
        assert [run["status"] for run in s.runs()] == ["interrupted", "done"]
        assert len({(c["window"], c["layer"]) for c in s.clipping()}) == len(s.clipping())
    assert not list(tmp_path.glob(".h.sqlite.spill-*"))


def test_ctrl_c_mid_run_is_recorded_as_interrupted(pair, tmp_path, monkeypatch):
    """A run stopped with Ctrl-C (KeyboardInterrupt; exit 130) was recorded `failed`, like bad input or a
    bug; monitoring on `runs` could not ignore operator stops. It is `interrupted`, as a killed run, with
    the windows before the stop kept; the rerun resumes and is `done`."""
    import lowprec.drift.job as job

    real, seen = job.process_window, []

    def stop_at_the_second(*args, **kw):
        seen.append(args[4])
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(job, "process_window", stop_at_the_second)
    db = tmp_path / "h.sqlite"
    r = drift(pair, db, windows="2-4")
    assert r.exit_code == 130 and seen == [2, 3], r.output
    with DriftStore(db) as s:
        assert [row["status"] for row in s.runs()] == ["interrupted"]
        assert [row["window"] for row in s.windows()] == [2]
    monkeypatch.setattr(job, "process_window", real)
    r = drift(pair, db, windows="2-4")
    assert r.exit_code in (0, 1) and last_json(r)["processed"] == [3, 4], r.output
    with DriftStore(db) as s:
        assert [row["status"] for row in s.runs()] == ["interrupted", "done"]


def test_a_one_row_window_does_not_alarm_on_a_zero_width_interval(pair, tmp_path):
    """QA: a 1-row trailing window exited 1, "calibration ratio gap -2.40% [CI -2.40%, -2.40%]": the
    bootstrap of one row has width 0. Now its intervals are undefined (null), the reason says "too
    few rows", and neither the labelled nor the label-free rule judges it, even at limits of ~0; the
    label-free estimate has no interval either."""
    _dataset(tmp_path / "d", [3000, 1])
    cfg = tmp_path / "t.toml"
    cfg.write_text("[alarm]\nne_gap_limit = 1e-9\nne_gap_allowance = 0\ncalibration_gap_limit = 1e-9\n"
                   "[estimate]\ngap_limit = 0\ngap_allowance = 0\n")
    r = drift(pair, tmp_path / "h.sqlite", "--config", cfg, windows="1", data=tmp_path / "d")
    out = last_json(r)
    assert r.exit_code == 0 and out["alarms"] == [], r.output
    (w,) = out["windows"]
    assert w["rows"] == 1 and w["ne_gap_lo"] is None and w["ne_gap_hi"] is None and w["triggers"] == []
    assert w["reason"].startswith("too few rows: 1 (minimum 100) for the bootstrap intervals"), w["reason"]
    est = out["estimates"][0]
    assert est["est_reason"].startswith("estimate: too few rows: 1") and "CI" not in est["est_reason"], est
    assert est["est_lo"] is None and est["est_hi"] is None, est  # (QA 5: it printed a +-0.059% "CI")



def test_a_tiny_first_window_is_not_the_estimate_baseline(pair, tmp_path):
    """The first window given a label-free record was the estimate baseline even with 1 row, which
    switched the growth test off for the life of the history ("no shift test: the baseline window
    has too few rows"); now the baseline is the first window of at least 100 rows."""
    _dataset(tmp_path / "d", [3000, 1, 3000, 3000])
    db = tmp_path / "h.sqlite"
    r = drift(pair, db, windows="1-3", data=tmp_path / "d")
    assert r.exit_code in (0, 1), r.output
    est = {e["window"]: e for e in last_json(r)["estimates"]}
    assert "too few rows" not in est[3]["est_reason"] and est[3]["est_shift"] is not None, est[3]
    with DriftStore(db) as s:
        assert s.meta("estimate_baseline_window") == "2"
        assert {row["window"]: row["baseline_window"] for row in s.labelfree()}[3] == 2

def _dataset(root: Path, sizes: list[int]) -> Dataset:
    rng = np.random.default_rng(0)
    feats = [SparseFeature(f"t{i}", n) for i, n in enumerate((50, 20, 8))]
    with atomic_dir(root) as tmp:
        writer = DatasetWriter(tmp, [f"d{i}" for i in range(4)], feats)
        for rows in sizes:
            ww = writer.window(label=f"{rows}")
            for start in range(0, rows, 50_000):
                n = min(50_000, rows - start)
                ids = np.stack([rng.integers(0, f.num_embeddings, n) for f in feats], 1)
                ww.append(rng.normal(0, 1, (n, 4)).astype(np.float32), ids, rng.integers(0, 2, n))
            writer.add_window(ww)
        writer.finish()
    return Dataset(root)


def test_memory_does_not_grow_with_the_window(pair, tmp_path):
    ds = _dataset(tmp_path / "d", [70_000, 420_000])
    ref, _, _ = load_model(pair / "ref")
    cand, _, _ = load_model(pair / "cand")
    peaks = []
    for w in (0, 1):
        tracemalloc.start()
        m = evaluate_window(ref, cand, ds, w, PairedConfig(batch_size=4096, replicates=50), tmp_path / "sp-")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert m.rows == (70_000, 420_000)[w]
    # 350k more rows would take >= 8 MB if scores, labels or weights were kept per row
    print("tracemalloc peaks", peaks)
    assert peaks[1] - peaks[0] < 2_000_000, peaks
    assert not list(tmp_path.glob("sp-*"))
