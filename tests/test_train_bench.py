"""Smoke test of tools/bench_train.py at a tiny size (step section): both steps run, the JSON
carries machine, spread and exact optimizer-state bytes, and the Markdown report names its command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))


def test_bench_train_tiny(tmp_path):
    import bench_train

    threads = torch.get_num_threads()
    try:
        bench_train.main(["--tiny", "--sections", "step", "--out", str(tmp_path / "t.json"),
                          "--report", str(tmp_path / "t.md")])
    finally:
        torch.set_num_threads(threads)
    res = json.loads((tmp_path / "t.json").read_text())
    assert res["tool"] == "bench_train.py" and res["machine"]["torch_threads"] == 1
    (step,) = res["step"]
    rows = res["rows"]
    # SparseAdam keeps two dense moments per table; row-wise Adagrad one float per row
    assert step["state_bytes"]["sparse-adam"] == 2 * rows * 16 * 4
    assert step["state_bytes"]["rowwise-adagrad"] == rows * 4
    assert step["speedup"]["n"] == 1 and step["speedup"]["median"] > 0
    report = (tmp_path / "t.md").read_text()
    assert "python tools/bench_train.py --tiny" in report and "## Headline" in report
