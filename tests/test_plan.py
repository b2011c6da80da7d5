"""The plan is one typed, versioned object: rules plus PlanInfo, round-tripped through JSON."""

import json

import pytest

from lowprec.errors import InputError
from lowprec.plan import Budget, LayerChoice, Plan, PlanInfo, Predicted, SearchWindows, TableChoice, Validation
from lowprec.precision import Precision


def full_plan() -> Plan:
    v = Validation(0.001, (-0.0005, 0.002), 0.0002, (-0.001, 0.0013), 0.9, 0.75, 0.9009, 0.7498, 1234, 567, 9000)
    info = PlanInfo(kind="search", budgets=Budget(0.002, 0.001, 10_000), predicted=Predicted(0.0008, 0.0001),
                    validated=v, total_bytes=1801, table_bytes=1234, layer_bytes=567,
                    windows=SearchWindows((4,), (5, 6, 7)), objective="bytes", evaluations=31, rounds=2,
                    notes="hello")
    return Plan({"cat_1": TableChoice(Precision.FP8), "cat_*": TableChoice(Precision.INT4, {"kind": "hot", "ratio": 8.0}, "l2"),
                 "*": TableChoice(Precision.INT8)}, {"top.2": LayerChoice(Precision.FP32), "*": LayerChoice(Precision.INT8)}, info)


def test_round_trip_through_json():
    plan = full_plan()
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan
    assert again.info.validated.fits(0.002, 0.001) and again.table("cat_7").sharing == {"kind": "hot", "ratio": 8.0}
    assert again.table("cat_1").precision is Precision.FP8 and again.table("x").precision is Precision.INT8


def test_uniform_plan_and_empty_info_round_trip():
    plan = Plan.uniform(Precision.INT4, Precision.INT8)
    assert plan.to_json()["kind"] == "uniform int4" and "validated" not in plan.to_json()
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("change, match", [
    ({"validatd": {}}, "unknown plan keys"),
    ({"budgets": {"max_ne_increase": 0.1}}, "malformed plan information"),
    ({"budgets": [1, 2]}, "malformed plan information"),
    ({"predicted": {"d_ne": 0, "d_auc": 0, "extra": 1}}, "malformed plan information"),
    ({"version": 2}, "version 2 is not supported"),
    ({"version": True}, "version True is not supported"),  # True == 1 and 1.0 == 1: accepted before
    ({"version": 1.0}, "version 1.0 is not supported"),
    ({"tables": {"*": {}}}, "table '\\*': the rule gives no precision"),  # was fp32, in silence
    ({"tables": {"t": {"sharing": None, "range_method": "l2"}}}, "table 't': the rule gives no precision"),
    ({"layers": {"top.0": {}}}, "layer 'top.0': the rule gives no precision"),
])
def test_bad_plans_are_refused_naming_the_problem(change, match):
    obj = full_plan().to_json() | change
    with pytest.raises(InputError, match=match):
        Plan.from_json(obj, "p.json")


@pytest.mark.parametrize("sharing, match", [
    ({"kind": "hot", "ratio": 4, "seed": -1}, r"seed must be an integer in \[0, 2\*\*63\), got -1"),
    ({"kind": "hot", "ratio": 4, "seed": 1.7}, "got 1.7"),
    ({"kind": "hot", "ratio": 4, "seed": True}, "got True"),
    ({"kind": "hot", "ratio": 4, "hot": True}, "needs a numeric ratio"),
    ({"kind": "hot", "ratio": "4"}, "needs a numeric ratio"),
])
def test_hot_sharing_values_the_serving_hash_cannot_take_are_refused_in_the_plan(sharing, match):
    """Seed -1 was accepted, written to the artifact, and refused by every loader afterwards."""
    obj = {"format": "lowprec-plan", "version": 1, "tables": {"t": {"precision": "int4", "sharing": sharing}}}
    with pytest.raises(InputError, match="p.json: table 't': .*" + match):
        Plan.from_json(obj, "p.json")


def test_layers_cannot_take_table_only_precisions():
    with pytest.raises(InputError, match="layers take"):
        LayerChoice(Precision.FP8)


@pytest.mark.parametrize("key", ["tables", "layers"])
@pytest.mark.parametrize("value", [[{"precision": "int8"}], None, "int4", 3])
def test_tables_or_layers_that_are_not_objects_are_named(key, value):
    """QA 8b item 2: `"tables": [...]` said `malformed plan ('list' object has no attribute 'items')`."""
    from lowprec.errors import InputError
    from lowprec.plan import FORMAT, FORMAT_VERSION, Plan

    with pytest.raises(InputError, match=rf"p.json: `{key}` must be an object of name or pattern -> choice"):
        Plan.from_json({"format": FORMAT, "version": FORMAT_VERSION, key: value}, "p.json")


def test_sizes_are_said_as_a_person_says_them():
    """QA 8b item 4: an all-fp32 import said `(1.0x smaller than fp32)`."""
    from lowprec.cli._common import smaller

    assert smaller(8.0) == "8.0x smaller than fp32" and smaller(1.0) == "the size of fp32"
    assert smaller(1.04) == "the size of fp32" and smaller(0.75) == "1.3x larger than fp32"
