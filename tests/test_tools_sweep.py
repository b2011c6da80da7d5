"""The report tools' own logic: the hash-sharing sweep (tools/sharing_sweep) and the table-precision
error sweep of tools/bench_quantize.py (tools/_table_precisions.py).

- The sweep's speed test splits the aligned runtime's time into "id transforms" and "TBE call" by
  assembling the TBE's inputs itself from the runtime's `id_maps`; that split must give the
  runtime's own output exactly, for every transform kind (weights, several groups, pads).
- `--report-only` on the committed JSON renders the committed report: the tool and
  reports/hash_sharing.md cannot drift apart unnoticed.
- The precision sweep's numbers behave as each format says, and its report block is replaced in
  place, not appended twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))


def _mixed_runtime():
    """Three logical tables, D = 8: hashing trick, QR (two groups), signed ROBE (two chunks of 4)."""
    from lowprec.precision import Precision
    from lowprec.serve.forms import Feature
    from lowprec.serve.runtime import PhysicalTable, QuantizedEmbeddings, TableServing

    tables = [PhysicalTable("h", 20, 8, Precision.FP32), PhysicalTable("q", 15, 8, Precision.FP32),
              PhysicalTable("r", 7, 8, Precision.FP32), PhysicalTable("m", 30, 4, Precision.FP32)]
    features = [Feature("h", {"kind": "hash", "rows": 20, "table": 0}),
                Feature("q", {"kind": "qr_q", "c": 7}), Feature("r", {"kind": "qr_r", "c": 7}),
                Feature("m", {"kind": "robe", "rows": 30, "table": 2, "chunk": 0, "sign": True}),
                Feature("m", {"kind": "robe", "rows": 30, "table": 2, "chunk": 1, "sign": True})]
    serving = [TableServing("t0", 2, ((0,),)), TableServing("t1", 3, ((1,), (2,))),
               TableServing("t2", 1, ((3, 4),))]
    emb = QuantizedEmbeddings(8, tables, features, serving)
    g = torch.Generator().manual_seed(0)
    for w in emb.table_weights():
        w.view(torch.float32).normal_(generator=g)
    return emb


def test_speed_split_into_id_maps_and_tbe_gives_the_runtime_output():
    from sharing_sweep.timing import pooled_from_tbe, tbe_inputs

    emb = _mixed_runtime()
    assert not emb.simple  # the general path, through every id transform
    g = torch.Generator().manual_seed(1)
    sparse = torch.randint(0, 100, (16, 6), generator=g)
    sparse[torch.rand(sparse.shape, generator=g) < 0.3] = -1
    parts = list(torch.split(sparse, emb.hotness, dim=1))
    indices, offsets, weights = tbe_inputs(emb, parts)
    assert weights is not None and set(weights.unique().tolist()) <= {-1.0, 1.0}  # ROBE signs
    valid = (sparse != -1).sum(0)  # features: hash 1, QR 2, ROBE 2 lookups per valid id
    assert offsets[-1] == indices.numel() == valid[:2].sum() + 2 * valid[2:].sum()
    torch.testing.assert_close(pooled_from_tbe(emb, emb.tbe(indices, offsets, weights)), emb(sparse),
                               rtol=0, atol=0)


def test_report_only_renders_the_committed_report(tmp_path):
    from sharing_sweep.report import write_report

    res = json.loads((REPO / "reports" / "hash_sharing.json").read_text())
    res.setdefault("reproducibility", {})  # as --report-only does
    write_report(res, tmp_path)
    assert (tmp_path / "hash_sharing.md").read_text() == (REPO / "reports" / "hash_sharing.md").read_text()
    assert {p.name for p in tmp_path.glob("*.png")} == {"hash_sharing_movielens.png", "hash_sharing_synth.png",
                                                          "hash_sharing_robe_speed.png"}


def test_precision_errors_follow_each_format():
    from _table_precisions import SCALES, precision_errors

    base = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    errs = {e["scale"]: e["relative_mse"] for e in precision_errors(base)}
    assert sorted(errs) == sorted(SCALES)
    for s, e in errs.items():
        assert e["fp32"] == 0.0
        assert e["fp16"] < 1e-7  # 11-bit mantissa, range wide enough for every scale here
        assert abs(e["int4"] / errs[1.0]["int4"] - 1) < 0.01  # a row-wise scale: magnitude-free
    # fp8 (1-4-3, bias 7): 3 mantissa bits while normal (relative error <= 2^-4 a value) ...
    assert errs[1.0]["fp8"] < 2.0**-8
    # ... and no scale: below half the smallest subnormal (2^-10) every value becomes 0
    assert base.abs().max() * min(SCALES) < 2.0**-10 and errs[min(SCALES)]["fp8"] == 1.0
    assert errs[1e-3]["fp8"] > 100 * errs[1e-3]["int8"]


def test_precision_block_is_replaced_in_place(tmp_path):
    from _table_precisions import PRECISIONS_BEGIN, PRECISIONS_END, replace_block

    path = tmp_path / "report.md"
    path.write_text("# head\n\nbody\n")
    replace_block(str(path), [PRECISIONS_BEGIN, "first", PRECISIONS_END, ""])
    path.write_text(path.read_text() + "\n## after\n")
    replace_block(str(path), [PRECISIONS_BEGIN, "second", PRECISIONS_END, ""])
    text = path.read_text()
    assert text.count(PRECISIONS_BEGIN) == 1 and "first" not in text and "second" in text
    assert text.startswith("# head\n\nbody\n\n" + PRECISIONS_BEGIN) and text.endswith("## after\n")
