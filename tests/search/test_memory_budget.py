"""A memory budget in the refine loop (hand-made sensitivities, the real MILP, a stub validation).

The solver starts at margin x the accuracy budget; under a memory budget that multiplier can hold no
plan at all, at the start or after a failed round forbade choices. That is "the multiplier is too
small", not the end of the search: the loop moves to the least multiplier that holds a plan
(`least_margin`, checked against brute force). Only when no multiplier holds one, or the rounds run
out and the all-fp32 fallback breaks the memory budget, is it an error, naming the budgets with bytes
written as check_memory writes them. (The end-to-end case is in test_search.py, on a trained model.)"""

import itertools

import numpy as np
import pytest

from lowprec.errors import InputError
from lowprec.plan import Validation
from lowprec.precision import Precision
from lowprec.search import run as search_run
from lowprec.search.solver import Budget, Sensitivity, auc_price, least_margin, ne_price
from lowprec.search.space import Option

A, B = "table:A", "table:B"


def items():
    return {A: [Option(A, Precision.FP32, bytes=1000), Option(A, Precision.INT8, bytes=250)],
            B: [Option(B, Precision.FP32, bytes=1000), Option(B, Precision.INT8, bytes=250),
                Option(B, Precision.INT2, bytes=63)]}


SENS = {f"{A}|fp32": Sensitivity(0.0, 0.0), f"{A}|int8": Sensitivity(0.0004, 0.0, 0.0001),  # priced 0.0005
        f"{B}|fp32": Sensitivity(0.0, 0.0), f"{B}|int8": Sensitivity(0.0002, 0.0, 0.0001),  # 0.0003
        f"{B}|int2": Sensitivity(0.0008, 0.0, 0.0001)}  # 0.0009


def _val(ok):
    ne = 0.0 if ok else 0.01
    return Validation(ne, (ne, ne), 0.0, (0.0, 0.0), 0.5, 0.7, 0.5 * (1 + ne), 0.7, 0, 0, 1000)


def _choices(chosen):
    return {k: o.precision.value for k, o in chosen.items()}


def test_a_multiplier_too_small_for_the_memory_budget_is_raised_not_the_end():
    """Within 400 bytes only {A int8, B int2} fits (priced 0.0014: 1.4 x the 0.1% budget), so the
    solve at margin 0.9 is infeasible; the search validates that plan instead of ending."""
    cfg = search_run.SearchConfig((0,), (1,), Budget(0.001, 0.001, 400))
    best, rounds = search_run.refine(items(), SENS, cfg, None, lambda chosen, n: _val(True))
    assert best is not None and _choices(best[0]) == {A: "int8", B: "int2"}
    assert rounds[0]["multiplier"] == pytest.approx(1.4, rel=1e-4) and rounds[0]["bytes"] == 313 <= 400


def test_an_infeasible_solve_after_a_failed_round_moves_up_again():
    """{A int8, B int8} (500 bytes) fails validation; backing off forbids A int8, and m / 4 then holds
    no plan within 1,300 bytes: the least multiplier that does (0.3: A fp32 + B int8) is validated next."""
    cfg = search_run.SearchConfig((0,), (1,), Budget(0.001, 0.001, 1300))
    best, rounds = search_run.refine(items(), SENS, cfg, None,
                                     lambda chosen, n: _val(chosen[A].precision is not Precision.INT8))
    assert [(r["fits"], r["bytes"]) for r in rounds] == [(False, 500), (True, 1250)]
    assert rounds[1]["multiplier"] == pytest.approx(0.3, rel=1e-4)
    assert best is not None and _choices(best[0]) == {A: "fp32", B: "int8"}


def test_no_multiplier_holding_a_plan_is_an_error_naming_the_budgets():
    # an NE budget of 0 allows only lossless options, and no plan of them fits 1,500 bytes
    cfg = search_run.SearchConfig((0,), (1,), Budget(0.0, 0.001, 1500))
    with pytest.raises(InputError) as exc:
        search_run.refine(items(), SENS, cfg, None, lambda chosen, n: pytest.fail("nothing to validate"))
    msg = str(exc.value)
    assert msg.startswith("no plan meets the budgets: within --memory-budget 1,500 bytes ([budgets] memory_budget")
    assert "NE increase <= +0.000%" in msg and "a budget of 0" in msg and "takes 2,000 bytes" in msg
    # after a failed round: the choices it ruled out leave nothing within 600 bytes (A must stay fp32)
    cfg = search_run.SearchConfig((0,), (1,), Budget(0.001, 0.001, 600))
    with pytest.raises(InputError, match=r"within --memory-budget 600 bytes .*1 validated plan\(s\) within it "
                                         r"failed the accuracy budget .*the choices they ruled out leave no plan"):
        search_run.refine(items(), SENS, cfg, None, lambda chosen, n: _val(False))


def test_a_float_fallback_over_the_memory_budget_is_an_error():
    cfg = search_run.SearchConfig((0,), (1,), Budget(0.001, 0.001, 1_999), max_rounds=3)
    rounds = [{"round": 1, "fits": False, "validated": _val(False).to_json()}]
    with pytest.raises(InputError, match=r"within --memory-budget 1,999 bytes .*round 1: NE \+1\.000%.*the 3 "
                                         r"validation rounds \(\[search\] max_rounds\) are spent.*takes 2,000 bytes"):
        search_run.float_fallback(items(), rounds, cfg)
    fallback = search_run.float_fallback(items(), rounds, search_run.SearchConfig((0,), (1,), Budget(0.001, 0.001, 2000)))
    assert _choices(fallback) == {A: "fp32", B: "fp32"}


def test_least_margin_is_the_least_multiplier_any_plan_needs():
    rng = np.random.default_rng(1)
    for trial in range(20):
        opts = {f"table:t{i}": [Option(f"table:t{i}", p, bytes=int(1000 / (j + 1) + rng.integers(0, 50)))
                                for j, p in enumerate([Precision.FP32, Precision.INT8, Precision.INT4])]
                for i in range(3)}
        sens = {o.key: Sensitivity(0.0, 0.0) if o.precision is Precision.FP32 else
                Sensitivity(float(rng.random() * 1e-3), float(rng.random() * 1e-3), float(rng.random() * 1e-4))
                for v in opts.values() for o in v}
        budget = Budget(0.001, 0.002, int(rng.integers(800, 2500)))
        forbidden = {o.key for v in opts.values() for o in v[1:] if rng.random() < 0.2}
        need = [max(sum(ne_price(sens[o.key]) for o in plan) / budget.max_ne_increase,
                    sum(auc_price(sens[o.key]) for o in plan) / budget.max_auc_drop)
                for plan in itertools.product(*opts.values())
                if sum(o.bytes for o in plan) <= budget.memory_bytes and not {o.key for o in plan} & forbidden]
        got = least_margin(opts, sens, budget, forbidden)
        assert (got is None) == (not need), trial
        if need:
            assert got == pytest.approx(min(need), rel=1e-6), trial
