"""Smoke test of tools/bench_range_search.py at a tiny size: both modes run and say what they compared.

Its numbers are timings (facts of the machine, never asserted) and comparisons, which are: the
current native kernel against this very commit's `fused_rows` extracted with `git archive` (the
`--against` path) must give the same bytes and the same error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "bench_range_search.py"


def _run(*args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, str(TOOL), "--rows", "4096", "--repeats", "1", *args],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_against_this_commit_gives_the_same_rows_as_the_native_kernel():
    out = _run("--backends", "eager,native", "--bits", "4", "--against", "HEAD")
    assert "Command: `python tools/bench_range_search.py" in out
    assert re.search(r"Fused rows byte for byte those of at HEAD: 4-bit D=64: eager (yes|no), native yes", out), out
    rows = [line for line in out.splitlines() if line.startswith("| 4 | 4,096 x 64 |")]
    assert [r.split(" | ")[2] for r in rows] == ["cpu", "wall"]
    cells = rows[0].strip("| ").split(" | ")
    mse_vs_minmax, mse_eager, mse_native = (float(c) for c in cells[8:11])
    assert mse_vs_minmax < 1  # the L2 search beats min/max ranges
    assert mse_native == 1.0 and abs(mse_eager - 1) < 1e-4


def test_parts_profiles_every_part_of_the_native_path():
    out = _run("--bits", "2", "--parts")
    parts = [line.split(" | ")[2] for line in out.splitlines() if line.startswith("| 2 | 4,096 x 64 |")]
    assert len(parts) == 5 and parts[-1] == "fused_rows(x, bits, 'l2'), all of it"
