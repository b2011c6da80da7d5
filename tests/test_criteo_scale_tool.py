"""The Criteo-scale study tool's own logic (tools/criteo_scale): its plans load as lowprec plans, its budget
rule and window bookkeeping give the numbers the report claims, the runner records a real CLI stage and
skips it when rerun, and the renderer's deltas and target lines follow from the records.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.criteo_scale.plans import Rule  # noqa: E402
from tools.criteo_scale.render import render  # noqa: E402
from tools.criteo_scale.runner import Runner  # noqa: E402
from tools.criteo_scale.study import meets, window_metrics  # noqa: E402


def test_rule_plan_shares_only_large_tables_and_loads_as_a_plan():
    from lowprec.plan import Plan

    plan = Plan.from_json(Rule("int4", 16).plan({"big": 60_000, "small": 50_000}))
    assert plan.table("big").sharing == {"kind": "hot", "ratio": 16}
    assert plan.table("big").precision.value == "int4"
    assert plan.table("small").sharing is None and plan.table("small").precision.value == "int4"
    assert Rule("int2", None, "l2").name == "int2-l2"


def test_meets_is_relative_ne_and_absolute_auc():
    ref = {"ne": 0.8, "auc": 0.75}
    assert meets({"ne": 0.8 * 1.0009, "auc": 0.7491}, ref, "tight")
    assert not meets({"ne": 0.8 * 1.0011, "auc": 0.75}, ref, "tight")
    assert not meets({"ne": 0.8, "auc": 0.7489}, ref, "tight")
    assert meets({"ne": 0.8 * 1.009, "auc": 0.741}, ref, "loose")


def test_window_metrics_map_roles_to_windows():
    rec = {"ok": True, "windows_of": {"search_eval": "9", "test": "10"},
           "result": {"auc": 0.5, "windows": [{"window": 9, "auc": 0.6, "ne": 0.9}, {"window": 10, "auc": 0.7, "ne": 0.8}]}}
    assert window_metrics(rec) == {"search_eval": {"window": 9, "auc": 0.6, "ne": 0.9},
                                   "test": {"window": 10, "auc": 0.7, "ne": 0.8}}
    assert window_metrics({"ok": False}) == {}


def test_runner_records_a_real_stage_and_skips_it_when_rerun(tmp_path):
    data = tmp_path / "data"
    args = ["data", "synth", "--out", str(data), "--windows", "1", "--rows-per-window", "50", "--json"]
    r = Runner(tmp_path / "state.json", tmp_path / "logs", 4.0, {"t": 1})
    res = r.run("data/synth", args, output=data / "dataset.json")
    rec = json.loads((tmp_path / "state.json").read_text())["stages"]["data/synth"]
    assert rec["ok"] and rec["rc"] == 0 and res["rows"] == 50 and rec["peak_rss_mb"] > 0
    again = Runner(tmp_path / "state.json", tmp_path / "logs", 4.0, {"t": 2, "u": 3})
    assert again.state["meta"] == {"t": 1, "u": 3}  # a resumption keeps the study's own meta
    assert again.run("data/synth", ["no-such-command"], output=data / "dataset.json") == res  # skipped
    bad = again.run("broken", ["no-such-command"])
    assert bad is None and not again.state["stages"]["broken"]["ok"]


def _stage(result: dict, **extra) -> dict:
    return {"ok": True, "rc": 0, "seconds": 1.0, "peak_rss_mb": 100.0, "commit": "x", "result": result, **extra}


def _eval(auc: float, ne: float, bayes: float | None = None) -> dict:
    res = {"auc": auc, "ne": ne, "windows": [{"window": 10, "auc": auc, "ne": ne}]}
    if bayes is not None:
        res["bayes_auc"] = bayes
    return _stage(res, windows_of={"test": "10"})


def test_render_reports_deltas_gap_and_byte_ratios():
    state = {"meta": {"config": {"seeds": "(0,)", "test": "10"}}, "derived": {
        "table_bytes/float/s0": 1000e6, "smallest_uniform_meeting_tight_on_test": "uniform/int4-minmax"},
        "stages": {"float/s0/eval": _eval(0.80, 0.80), "dense_only/s0/eval": _eval(0.60, 0.95, bayes=0.85),
                   "uniform/int4-minmax/s0/eval": _eval(0.7995, 0.8004),
                   "uniform/int4-minmax/s0/convert": _stage({"embedding_bytes": 150e6}),
                   "search/tight/s0/search": _stage({
                       "table_bytes": 25e6, "compression": 40.0, "validated": None, "validated_fits": None,
                       "tested": {"plan_auc": 0.7992, "plan_ne": 0.8007, "ne_increase": 0.000875,
                                  "ne_increase_ci": [0.0005, 0.0012], "auc_drop": 0.0008, "auc_drop_ci": [0.0004, 0.0012]},
                       "tested_fits": {"point": True, "interval": False}, "evaluations": 10, "rounds": [1],
                       "seconds": 5.0})}}
    md = render(state)
    assert "= **80.0%** (target >= 75%: met)" in md  # (0.80 - 0.60) / (0.85 - 0.60)
    assert "0.167 of its bytes (target <= 0.2: met)" in md  # 25 / 150
    assert "| int4 (min/max ranges) | 150.0 | 6.7x | 0.7995 | 0.8004 | -0.0005 | +0.050% | yes | yes |" in md
    assert "`search/loose/s0/search`: not run" in md
    assert "| searched plan, tight budget | 25.0 | 40.0x | 0.7992 | 0.8007 | -0.0008 | +0.087% | yes | yes |" in md


def test_render_drift_shows_recalibration_and_the_later_windows():
    win = lambda w, ref_auc, cand_auc, alarm: {  # noqa: E731
        "window": w, "ref_auc": ref_auc, "cand_auc": cand_auc, "auc_diff": cand_auc - ref_auc, "ref_ne": 0.9,
        "cand_ne": 0.91, "ne_gap": 0.01, "ne_gap_lo": 0.005, "ne_gap_hi": 0.015, "alarm": alarm, "reason": "r"}
    drift = _stage({"alarms": [12, 13], "first_alarm": 12,
                    "windows": [win(11, 0.73, 0.729, False), win(12, 0.63, 0.627, True), win(13, 0.64, 0.636, True)],
                    "recalibrations": [{"alarm_window": 12, "source": "alarmed", "ne_gap": -0.0001, "ne_gap_lo": -0.0003,
                                        "ne_gap_hi": 0.0001, "auc_diff": -0.0002, "alarm": 0, "reason": "closes"}]})
    drift["rc"] = 1
    state = {"meta": {"config": {"seeds": "(0,)", "drift_start": "12"}}, "derived": {},
             "stages": {"drift/tight-s0/drift": drift,
                        "drift/tight-s0/recal-eval": _stage({"windows": [{"window": 13, "auc": 0.6391, "ne": 0.905}]})}}
    md = render(state)
    assert "Recalibration on window 12 (alarmed rows" in md and "no alarm: closes" in md
    assert "| 13 | 0.6400 | 0.6360 | 0.6391 | 0.9000 | 0.9100 | 0.9050 |" in md
    assert "`drift/tight-s0/recal-eval`: not run" not in md
