"""The search refuses a CALIB.json measured on another model before it measures anything."""

from __future__ import annotations

from helpers import make_tiny_dataset, random_float_model, run_cli
from lowprec.data.dataset import Dataset


def test_calibration_of_another_model_is_refused_up_front(tmp_path):
    ds = Dataset(make_tiny_dataset(tmp_path / "data", windows=3, rows=600))
    mine = random_float_model(ds, tmp_path / "mine", seed=0)
    other = random_float_model(ds, tmp_path / "other", seed=1)
    r = run_cli("calibrate", "--model", other, "--data", tmp_path / "data", "--windows", "0",
                "--out", tmp_path / "calib.json")
    assert r.exit_code == 0, r.output
    plan = tmp_path / "plan.json"
    r = run_cli("search", "--model", mine, "--data", tmp_path / "data", "--calib-windows", "0",
                "--eval-windows", "1", "--calibration", tmp_path / "calib.json", "--out", plan)
    assert r.exit_code == 2, r.output
    assert "was measured on model sha256" in r.output and str(mine) in r.output, r.output
    assert "--allow-calibration-mismatch" not in r.output  # search has no such flag
    assert "sensitivity" not in r.output.lower()  # refused before the search measured anything
    assert not plan.exists() and not plan.with_name("plan.cache.json").exists()
    # the same calibration is accepted for the model it was measured on
    r = run_cli("search", "--model", other, "--data", tmp_path / "data", "--calib-windows", "0",
                "--eval-windows", "1", "--calibration", tmp_path / "calib.json", "--out", plan,
                "--precisions", "fp32,int8", "--layer-precisions", "fp32")
    assert r.exit_code == 0, r.output
    assert plan.exists()
