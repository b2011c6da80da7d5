"""tools/search_acceptance.py's comparison logic: the heuristic is chosen on the search-validation window
(never the test window), the uniform comparator is the smallest meeting the budget on the test window, and
the rendered headline's ratios follow from the records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools._search_acceptance_report import headline, render, rows  # noqa: E402


def _eval(val, test):
    return {"ok": True, "result": {"windows": [{"window": 5, **val}, {"window": 6, **test}]}}


def _conv(nbytes):
    return {"ok": True, "result": {"embedding_bytes": nbytes}}


def _search(nbytes, val_ne, test_ne):
    v = {"ne_increase": val_ne, "ne_increase_ci": [val_ne - 4e-4, val_ne + 4e-4], "auc_drop": 0.0,
         "auc_drop_ci": [-1e-4, 1e-4]}
    t = {**v, "ne_increase": test_ne, "ne_increase_ci": [test_ne - 4e-4, test_ne + 4e-4]}
    rnd = {"round": 1, "bytes": nbytes, "fits": True, "verdict": {"reason": "accepted by the interval rule: x"}}
    return {"ok": True, "seconds": 10.0, "peak_rss_mb": 1.0,
            "result": {"table_bytes": nbytes, "fp32_table_bytes": 400_000_000, "validated": v, "tested": t,
                       "rounds": [rnd], "seconds": 10.0}}


def state():
    ref = {"ne": 1.0, "auc": 0.7}
    ok, bad = {"ne": 1.0005, "auc": 0.7}, {"ne": 1.002, "auc": 0.7}
    st = {"float/eval": _eval(ref, ref),
          "uniform/int4-l2/convert": _conv(80_000_000), "uniform/int4-l2/eval": _eval(ok, ok),
          "uniform/int2-l2/convert": _conv(50_000_000), "uniform/int2-l2/eval": _eval(bad, ok),  # meets on test only
          "uniform/int2-minmax/convert": _conv(50_000_000), "uniform/int2-minmax/eval": _eval(ok, bad),
          # the smaller rule meets on the test window only: it must not be chosen (chosen on window 5)
          "rule/small/convert": _conv(2_000_000), "rule/small/eval": _eval(bad, ok),
          "rule/big/convert": _conv(6_000_000), "rule/big/eval": _eval(ok, bad),
          "search/interval/search": _search(1_000_000, 0.0005, 0.0008),
          "search/point/search": _search(900_000, 0.0009, 0.0013)}
    for rec in st.values():
        rec.setdefault("seconds", 1.0)
        rec.setdefault("peak_rss_mb", 1.0)
    return {"stages": st, "meta": {}}


def test_heuristic_chosen_on_validation_and_uniform_on_test():
    h = headline(rows(state()))
    assert h["heuristic"]["name"] == "rule/big"  # the smallest meeting the budget on window 5
    assert h["uniform"]["name"] == "uniform/int2-l2"  # the smallest meeting it on window 6
    assert h["plan"]["bytes"] == 1_000_000 and h["point"]["bytes"] == 900_000
    assert h["heuristic_on_test"]["name"] == "rule/small"  # reported beside it, never chosen


def test_render_headline_ratios(tmp_path):
    d = tmp_path / "search_acceptance"
    d.mkdir()
    (d / "s0.json").write_text(json.dumps(state()))
    text = render(d)
    line = next(x for x in text.splitlines() if x.startswith("| 0 |"))
    assert "uniform/int2-l2 50.00 MB | 0.020 |" in line and "rule/big 6.00 MB" in line and "| 0.17 |" in line and "rule/small 2.00 MB | 0.50 |" in line
    assert "+0.080%" in line and "| **no** |" in line  # the point-rule plan misses on test (+0.13%)
    assert "round 1: 1.00 MB (tables + layers), accepted by the interval rule" in text
