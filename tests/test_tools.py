"""Smoke tests of the benchmark tools (tools/bench_*.py): each runs at a tiny size and writes its JSON,
and bench_all renders benchmarks.md and its figures from those JSON files.

No wall-clock limit is asserted anywhere: timings on a shared machine are facts, not pass/fail.
The last test guards the runtime fast path the lookup benchmark motivated (pads served by FBGEMM's
-1 skip instead of a mask): it belongs with the runtime's tests and can move there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Run every tool once at --tiny into one directory (in this process, except their own workers)."""
    import bench_convert
    import bench_drift
    import bench_e2e
    import bench_lookup
    import bench_search

    out = tmp_path_factory.mktemp("reports")
    threads = torch.get_num_threads()
    try:
        bench_e2e.main(["--tiny", "--out", str(out / "bench_e2e.json"), "--plan-out", str(out / "bench_e2e_plan.json")])
        bench_lookup.main(["--tiny", "--plan", str(out / "bench_e2e_plan.json"), "--out", str(out / "bench_lookup.json")])
        bench_convert.main(["--tiny", "--out", str(out / "bench_convert.json")])
        bench_search.main(["--tiny", "--out", str(out / "bench_search.json")])
        bench_drift.main(["--tiny", "--out", str(out / "bench_drift.json")])
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", ["lookup", "convert", "e2e", "search", "drift"])
def test_tool_writes_json_with_machine_and_spread(reports, name):
    res = json.loads((reports / f"bench_{name}.json").read_text())
    assert res["tool"] == f"bench_{name}.py"
    m = res["machine"]
    for key in ("cpu", "cores", "simd_flags", "torch", "fbgemm_gpu_cpu", "torch_threads", "date_utc"):
        assert key in m
    assert m["torch_threads"] == 1
    assert res["command"].startswith(f"python tools/bench_{name}.py")


def test_lookup_compares_every_precision_and_the_plan(reports):
    res = json.loads((reports / "bench_lookup.json").read_text())
    assert res["plan"]["source"].startswith("plan searched")
    for cfg in res["configs"]:
        assert set(cfg["lowprec_over_fbgemm"]) == {"fp32", "fp16", "int8", "int4", "int2", "plan"}
        assert all(len(v) == res["settings"]["repeats"] for v in cfg["times"].values())
        # lowprec's runtime and the raw FBGEMM TBE hold the same bytes and give the same sums
        assert all(v == 0 for k, v in cfg["max_abs_diff"].items() if not k.startswith("EmbeddingBag"))
        assert cfg["max_abs_diff"]["EmbeddingBag vs lowprec fp32"] < 1e-4


def test_convert_and_drift_measure_memory_in_child_processes(reports):
    conv = json.loads((reports / "bench_convert.json").read_text())
    assert conv["quantizer_rss"]["lowprec_l2_4"]["hwm_mb"] > 0
    assert conv["models"][0]["hwm_mb"]["median"] > 0
    l2, mm = conv["quantizers"]["lowprec_l2_4"], conv["quantizers"]["lowprec_minmax4"]
    assert l2["mse"] <= mm["mse"] * (1 + 1e-6)  # the range search is never worse than min/max
    drift = json.loads((reports / "bench_drift.json").read_text())
    assert drift["sizes"][0]["rows_per_s"]["median"] > 0


def test_search_counts_evaluations(reports):
    res = json.loads((reports / "bench_search.json").read_text())
    assert res["exhaustive"]["evaluations"] == len(res["precisions"]) ** len(res["tables"])
    assert res["search"]["evaluations"] >= 1


def test_bench_all_renders_report_and_figures(reports):
    import bench_all

    out = bench_all.main(["--render-only", "--reports", str(reports)])
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    assert "python tools/bench_all.py" in text
    for section in ("## a.", "## b.", "## c.", "## d.", "## e.", "## Headline"):
        assert section in text
    for png in ("bench_lookup_ratio.png", "bench_convert_memory.png", "bench_e2e.png", "bench_search.png", "bench_drift.png"):
        assert (reports / png).stat().st_size > 0
        assert png in text


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4", "int2"])
def test_fast_path_with_pads_equals_general_path(precision):
    """Multi-hot ids with pads: the fast path (pads passed to FBGEMM as -1) == the masked general path."""
    from lowprec.serve.forms import Feature
    from lowprec.serve.runtime import PhysicalTable, QuantizedEmbeddings, TableServing
    from lowprec.precision import Precision

    p = Precision(precision)
    emb = QuantizedEmbeddings(8, [PhysicalTable(f"t{i}", 50, 8, p) for i in range(3)],
                              [Feature(f"t{i}") for i in range(3)],
                              [TableServing(f"c{i}", 4, ((i,),)) for i in range(3)])
    g = torch.Generator().manual_seed(0)
    for w in emb.table_weights():
        w.copy_(torch.randint(0, 256, w.shape, generator=g, dtype=torch.uint8))
        if p.is_integer:  # finite fp16 scale and bias
            w[:, :4].view(torch.float16).copy_(torch.tensor([0.01, -0.5]).half().expand(w.shape[0], 2))
        else:
            w.view(torch.float32 if p is Precision.FP32 else torch.float16).normal_(generator=g)
    sparse = torch.randint(0, 50, (32, 12), generator=g)
    sparse[torch.rand(sparse.shape, generator=g) < 0.4] = -1
    sparse[0] = -1  # a sample with every slot empty
    assert emb.simple
    fast = emb(sparse)
    emb.simple = False
    torch.testing.assert_close(fast, emb(sparse), rtol=0, atol=0)
    assert torch.equal(fast[0], torch.zeros_like(fast[0]))


def test_allocator_tool_compares_modes_in_child_processes(tmp_path):
    import bench_allocator

    res = bench_allocator.main(["--tiny", "--out", str(tmp_path / "allocator.md")])
    for modes in res["models"].values():
        assert modes["tuned"]["applied"] is True and modes["default"]["applied"] is False
        assert modes["default"]["ms"]["n"] == modes["tuned"]["ms"]["n"] == 1
    assert "| layers int8 | tuned |" in (tmp_path / "allocator.md").read_text()
    assert json.loads((tmp_path / "allocator.json").read_text())["tool"] == "bench_allocator.py"


# bench_csv_ingest at a tiny size, one mode per test: each starts lowprec in child processes (torch
# imports, torchrun for --nproc), which on a loaded machine took most of one test's time budget.
def test_csv_ingest_tool_times_both_trees_on_the_same_log(tmp_path):
    """Against HEAD: each child imports its own tree's lowprec (an editable install or the working
    directory would otherwise win), and both write the same windows."""
    import bench_csv_ingest

    out = bench_csv_ingest.main(["--rows", "300", "--repeats", "1", "--against", "HEAD",
                                 "--out", str(tmp_path / "csv.json")])
    assert set(out["seconds"]) == {"this tree", "HEAD"} and out["same_windows"] is True
    assert json.loads((tmp_path / "csv.json").read_text())["rows"] == 300 and out["speedup"]["n"] == 1


def test_csv_ingest_tool_times_one_process_against_two():
    """The tool's --nproc mode and its Criteo TSV format in one launch (CSV ingest on two ranks is
    checked byte for byte by tests/distributed/test_ingest.py)."""
    import bench_csv_ingest

    two = bench_csv_ingest.main(["--format", "criteo-tsv", "--rows", "300", "--repeats", "1", "--nproc", "2"])
    assert two["format"] == "criteo-tsv" and two["mb"] > 0
    assert set(two["seconds"]) == {"1 process", "2 processes"} and two["same_windows"] is True
