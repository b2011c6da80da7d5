"""Smoke test of tools/bench_tiered.py at a tiny size: every variant timed, outputs checked, shares."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


def test_bench_tiered_tiny(tmp_path):
    import bench_tiered

    threads = torch.get_num_threads()
    try:
        bench_tiered.main(["--scale", "0.002", "--batch", "32", "--batches", "1", "--repeats", "1",
                           "--calib-batches", "20", "--min-rows", "2000", "--shift", "0.05", "--block-seconds", "0.001",
                           "--out", str(tmp_path / "t.json")])
    finally:
        torch.set_num_threads(threads)
    r = json.loads((tmp_path / "t.json").read_text())
    assert r["command"].startswith("python tools/bench_tiered.py --scale 0.002 ")  # the tool's own argv
    names = {"fp32", "fp16", "int8", "int4", "hot sharing", "tiered", "tiered rank order", "tiered, torch ops",
             "tiered rank order, ranked ids", "int4 rank order, ranked ids", "int4, small tables at --small",
             "int4 rank order, small tables at --small, ranked ids"}
    checks = r["checks"]
    if checks["native split available"]:  # the native split's halves (no compiler: torch ops only)
        names |= {"split alone: id order", "split alone: rank order, id -> rank", "split alone: rank order, ranked ids",
                  "layout alone (id order): TBE + pooling, ids split before",
                  "layout alone (rank order): TBE + pooling, ids split before"}
    assert set(r["ms"]) == names
    assert checks["tiered: native split == torch ops"] and checks["tiered rank order: native split == torch ops"]
    assert checks["ranked ids == raw ids (native, torch ops)"] == [True, True]
    assert checks["int4 rank order, ranked ids == int4 on raw ids"]  # the same rows, stored by rank
    assert checks["int4 rank order, small tables at --small, ranked ids == int4, small tables at --small on raw ids"]
    assert r["bytes"]["tiered rank order, ranked ids"] < r["bytes"]["tiered rank order"]  # the rank map
    assert checks["tiered vs fp32, max |diff|"] <= checks["int4 vs fp32, max |diff|"] + 1e-6  # hot rows finer
    assert r["bytes"]["tiered"] > r["bytes"]["int4"]
    # the id-order tiers' rank directories count (one int64 per 32 ids; they are not module buffers):
    # the same rows as rank order on ranked ids, plus the directories, less small per-feature bounds
    tiered = [n for n in r["rows"] if n >= 2000]
    extra = r["bytes"]["tiered"] - r["bytes"]["tiered rank order, ranked ids"]
    assert abs(extra - sum(8 * -(-n // 32) for n in tiered)) <= 64 * len(tiered)
    h = r["hot_share"]
    assert h["after shift, old ranking"] < h["calibrated traffic"] and h["after shift, re-ranked"] > h["after shift, old ranking"]
    assert "| tiered |" in "\n".join(bench_tiered.render(r))


def test_huge_pages_keep_the_contents():
    """--huge-pages collapses a table's whole 2 MB pages in place: same bytes after, and where the
    kernel takes MADV_COLLAPSE (THP not "never", Linux >= 6.1) the tensor's mapping holds at least
    that many bytes on huge pages. A tensor without a whole huge page inside is left alone."""
    import _huge_pages as hp

    t = torch.arange(3 * (2 << 20) // 4, dtype=torch.int32)  # 6 MB: at least two whole 2 MB pages inside
    want = t.clone()
    done = hp.collapse([t, t])  # the same pages twice: collapsed once
    assert torch.equal(t, want)
    assert done in (0, 2 << 20, 4 << 20, 6 << 20)
    if done:
        assert hp.huge_bytes_around(t.data_ptr() + (2 << 20)) >= done
    assert hp.collapse([torch.zeros(1000)]) == 0
    assert "2 MB pages" in hp.describe({"collapsed_mib": 4.0}) and "4 KB" in hp.describe(None)


def test_bench_tier_layouts_tiny(tmp_path):
    """tools/bench_tier_layouts.py at a tiny size: every layout timed against int4 at both stages,
    bytes counted, outputs within the hot tiers' precision of int4's (the cold rows are int4's)."""
    import bench_tier_layouts

    threads = torch.get_num_threads()
    try:
        for stage in ("whole", "layout"):
            bench_tier_layouts.main(["--scale", "0.002", "--batch", "32", "--batches", "1", "--repeats", "1",
                                     "--calib-batches", "20", "--min-rows", "2000", "--block-seconds", "0.001",
                                     "--layouts", "0.02:fp16;0.02:fp16,0.1:int8", "--stage", stage,
                                     "--out", str(tmp_path / f"{stage}.json")]
                                    + (["--parts"] if stage == "whole" else ["--uniform", "fp32", "--huge-pages", "both"]))
    finally:
        torch.set_num_threads(threads)
    layouts = {"int4", "0.02:fp16", "0.02:fp16,0.1:int8"}
    r = json.loads((tmp_path / "whole.json").read_text())
    assert r["command"].startswith("python tools/bench_tier_layouts.py --scale 0.002 ")  # was tools/tools/, pytest's argv
    if r["lookups_per_call"]:  # --parts (the native split built): every lookup in exactly one group
        total = 32 * 20 * len(r["rows"])
        for name, k in (("0.02:fp16", 2), ("0.02:fp16,0.1:int8", 3)):
            groups = r["lookups_per_call"][name]
            assert set(groups) == {"untiered tables", "no ids"} | {f"tier {j}" for j in range(k)}
            assert groups["no ids"] == 0 and sum(groups.values()) == total
            assert {f"{name}: split", f"{name}: pooling", f"{name}: TBE, tier 0"} <= set(r["ms"])
    r = json.loads((tmp_path / "layout.json").read_text())  # with fp32, each module beside its 2 MB-page copy
    names = layouts | {"fp32"}
    assert set(r["ms"]) == names | {n + ", 2 MB pages" for n in names} and set(r["huge_page_gain"]) == names
    assert r["max_abs_diff_vs_int4"]["int4, 2 MB pages"] == 0.0  # the copy looks up the same rows
    for stage in ("whole", "layout"):
        r = json.loads((tmp_path / f"{stage}.json").read_text())
        assert layouts <= set(r["ms"])
        assert r["bytes_over_int4"]["int4"] == 1.0
        assert 1.0 < r["bytes_over_int4"]["0.02:fp16"] < r["bytes_over_int4"]["0.02:fp16,0.1:int8"]
        assert r["max_abs_diff_vs_int4"]["int4"] == 0.0
        assert 0.0 < r["max_abs_diff_vs_int4"]["0.02:fp16"] < 1.0
