"""The search's acceptance rule (lowprec.search.accept) on real validations of a small trained model.

The all-int2 plan is converted and validated for real on window 3; the NE budget is then put between
its point estimate and the upper end of its 95% interval. The point rule must accept that plan, the
interval rule reject it (saying why), and the whole search under the interval rule must still return a
compressed plan whose interval fits, while the point rule returns the all-int2 plan.
"""

import json

import pytest
from click.testing import CliRunner

from helpers import trained_search_setup
from lowprec.cli import main
from lowprec.errors import InputError
from lowprec.plan import Validation
from lowprec.precision import Precision
from lowprec.search import run as search_run
from lowprec.search.accept import judge
from lowprec.search.solver import Budget
from lowprec.search.space import SearchSpace, options_for, plan_from_options
from lowprec.search.validate import validate

SPACE = SearchSpace(table_precisions=(Precision.FP32, Precision.INT4, Precision.INT2),
                    layer_precisions=(Precision.FP32,))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root, ds, model, calib = trained_search_setup(tmp_path_factory.mktemp("accept"), 3000, (300, 40, 8), 3)
    items = options_for(model.config, SPACE, sharing=False)
    all_int2 = {k: opts[-1] if k.startswith("table:") else opts[0] for k, opts in items.items()}
    assert all(o.precision is Precision.INT2 for k, o in all_int2.items() if k.startswith("table:"))
    val = validate(root / "model", model, plan_from_options(all_int2, "l2"), ds, [3], calib)
    # the case under test: a real loss, measured with a real (non-degenerate) interval
    assert 0 < val.ne_increase_ci[0] < val.ne_increase < val.ne_increase_ci[1]
    budget = Budget((val.ne_increase + val.ne_increase_ci[1]) / 2, val.auc_drop_ci[1] + 0.01)
    return root, ds, model, calib, all_int2, val, budget


def test_point_fits_interval_does_not_rejects_under_the_interval_rule(setup):
    *_, val, budget = setup
    point, interval = judge(val, budget, "point"), judge(val, budget, "interval")
    assert point.accepted and point.point and not point.interval
    assert not interval.accepted and interval.point and not interval.interval
    assert interval.reason.startswith("rejected by the interval rule: NE increase 95% upper bound")
    assert f"{100 * val.ne_increase_ci[1]:+.3f}% > {100 * budget.max_ne_increase:+.3f}%" in interval.reason
    assert "the point estimates fit" in interval.reason
    assert "accepted on the point estimate alone" in point.reason
    # the AUC bound decides too: NE well inside, AUC upper bound over
    tight_auc = Budget(1.0, (val.auc_drop + val.auc_drop_ci[1]) / 2)
    assert judge(val, tight_auc, "point").accepted and not judge(val, tight_auc, "interval").accepted
    with pytest.raises(InputError, match="one of interval, point"):
        judge(val, budget, "median")


def _search(setup, rule):
    root, ds, model, calib, *_, budget = setup
    cfg = search_run.SearchConfig((2,), (3,), budget, SPACE, accept=rule, max_rounds=6)
    return search_run.search(root / "model", model, ds, cfg, calib)


def test_search_under_the_interval_rule_still_finds_a_plan_it_can_trust(setup):
    *_, all_int2, val, budget = setup
    res = _search(setup, "interval")
    int2_key = sorted(o.key for o in all_int2.values())
    int2_rounds = [r for r in res.rounds if sorted(f"{k}|{v}" for k, v in r["choices"].items()) == int2_key]
    assert int2_rounds, "the search never validated the all-int2 plan: the case under test did not arise"
    for r in int2_rounds:  # the same plan, validated the same way: rejected, and the log says why
        assert r["validated"]["ne_increase"] == pytest.approx(val.ne_increase)
        assert not r["fits"] and r["verdict"]["point"] and not r["verdict"]["interval"]
        assert r["verdict"]["rule"] == "interval" and "rejected by the interval rule" in r["verdict"]["reason"]
    for r in res.rounds:
        v = r["validated"]
        assert r["fits"] == (v["ne_increase_ci"][1] <= budget.max_ne_increase
                             and v["auc_drop_ci"][1] <= budget.max_auc_drop)
    assert res.message is None and res.validation is not None
    assert judge(res.validation, budget, "interval").accepted
    fp32 = sum(opts[0].bytes for opts in res.items.values())
    int2 = sum(o.bytes for o in all_int2.values())
    assert int2 < res.plan.info.total_bytes < fp32  # compresses, but not as far as the rejected plan
    accepted = [r["bytes"] for r in res.rounds if r["fits"]]
    assert res.plan.info.total_bytes == min(accepted) and res.plan.info.accept == "interval"


def test_point_rule_accepts_what_the_interval_rule_rejects(setup):
    *_, all_int2, val, budget = setup
    res = _search(setup, "point")
    assert {k: o.key for k, o in res.chosen.items()} == {k: o.key for k, o in all_int2.items()}
    assert res.validation.ne_increase == pytest.approx(val.ne_increase)
    last = res.rounds[-1]
    assert last["fits"] and last["verdict"]["rule"] == "point" and not last["verdict"]["interval"]


def test_cli_accept_flag_reaches_the_plan_and_the_report(setup, tmp_path):
    root, *_ = setup
    common = ["search", "--model", str(root / "model"), "--data", str(root / "data"), "--calib-windows", "2",
              "--eval-windows", "3", "--precisions", "fp32,int4,int2", "--layer-precisions", "fp32",
              "--max-ne-increase", "5%", "--max-auc-drop", "0.02", "--json"]
    r = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "p.json"), "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["accept"] == "interval" and json.loads((tmp_path / "p.json").read_text())["accept"] == "interval"
    assert all(x["verdict"]["rule"] == "interval" for x in out["rounds"])
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "Acceptance rule: interval" in report and "by the interval rule" in report
    r = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "q.json"), "--accept", "point"])
    assert r.exit_code == 0 and json.loads(r.stdout.strip().splitlines()[-1])["accept"] == "point"
    r = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "q2.json"), "--accept", "median"])
    assert r.exit_code == 2 and "'median' is not one of 'interval', 'point'" in r.output


def test_validation_json_round_trips_the_rule():
    v = Validation(0.001, (0.0, 0.002), 0.0, (-0.001, 0.001), 0.5, 0.7, 0.5005, 0.7, 10, 20, 100)
    b = Budget(0.0015, 0.001)
    assert judge(v, b, "point").to_json() == {"rule": "point", "accepted": True, "point": True, "interval": False,
                                              "reason": judge(v, b, "point").reason}
    assert judge(v, b).rule == "interval" and not judge(v, b).accepted


def test_verdicts_print_budgets_readably():
    """A huge budget printed ~300 digits; a budget of -0 printed `<= -0.000%`."""
    v = Validation(0.001, (0.0, 0.002), 0.0, (-0.001, 0.001), 0.5, 0.7, 0.5005, 0.7, 10, 20, 100)
    assert "<= +1e+302%" in judge(v, Budget(1e300, 1.0)).reason
    assert "> +0.000%; " in judge(v, Budget(-0.0, 1.0)).reason
    assert len(judge(v, Budget(1e300, 1e300)).reason) < 250
