"""Smoke test of tools/bench_tier_split.py: a commit's split kernel against this tree's, outputs equal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


@pytest.mark.parametrize("against,extra", [("HEAD", []), ("18e7704", ["--lookup", "--with-small"])])
def test_bench_tier_split_tiny(tmp_path, against, extra):
    """Against HEAD, and against a commit whose rank directories hold 16 ids a word (its kernel is
    handed directories re-made in its own format), with the split + lookup variants and the untiered
    tables beside the tiered ones (the split copies their ids)."""
    from lowprec.serve import tier_native

    if tier_native.kernel() is None:
        pytest.skip("no C compiler")
    import bench_tier_split

    threads = torch.get_num_threads()
    try:
        bench_tier_split.main(["--against", against, *extra, "--scale", "0.002", "--min-rows", "2000", "--batch", "32",
                               "--batches", "1", "--repeats", "1", "--block-seconds", "0.001",
                               "--out", str(tmp_path / "s.json")])
    finally:
        torch.set_num_threads(threads)
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["command"].startswith("python tools/bench_tier_split.py --against ")
    assert r["outputs_equal"] == {"ranked ids": True, "raw ids, rank map": True, "raw ids, id-order directories": True}
    lookups = {f"{m} + lookup" for m in r["outputs_equal"]} if extra else set()
    assert set(r["speedup"]) == set(r["outputs_equal"]) | lookups and len(r["ms"]) == 6 * (1 + bool(extra))
    assert any(n < 2000 for n in r["rows"]) == ("--with-small" in extra)  # untiered tables split beside
