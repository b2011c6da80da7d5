"""tools/bench_hot_search.py at a tiny size: it times every sharing option on both paths it lists
and finds the subset path's pooled outputs identical to the whole-table build's."""

import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "tools"))


def test_bench_hot_search_tiny(tmp_path):
    import bench_hot_search

    res = bench_hot_search.main(["--rows", "20000", "--calib-rows", "5000", "--cache-rows", "2000",
                                 "--ratios", "4,64", "--repeats", "2", "--before", "0,3",
                                 "--out", str(tmp_path / "b.json")])
    assert res["tool"] == "bench_hot_search.py" and (tmp_path / "b.json").exists()
    assert len(res["options"]) == 5 and set(res["after"]) == set(res["options"])  # 2 ratios x 2 + 1 tiering
    assert len(res["before"]) == 2 and all(b["identical_pooled"] for b in res["before"].values())
    assert 0 < res["looked_up_ids"] < 20000
