"""Plan rules that apply to nothing: a glob pattern matching no table or layer is refused, tables no
rule covers are converted at fp32 with a warning, and every plan error names the plan file."""

from __future__ import annotations

import json

import pytest

from helpers import make_tiny_dataset, random_float_model, run_cli as cli
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError, InputWarning
from lowprec.plan import Plan


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("plans")
    ds = Dataset(make_tiny_dataset(root / "data", windows=1, rows=100, tables=(50, 20, 8)))
    return random_float_model(ds, root / "model")


def _plan(tmp_path, tables, layers=None):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"format": "lowprec-plan", "version": 1, "tables": tables, "layers": layers or {}}))
    return path


@pytest.mark.parametrize("tables, layers, words", [
    ({"x*": {"precision": "int4"}}, None, "plan table pattern(s) ['x*'] match no table"),
    ({"t0": {"precision": "int4"}, "t[7-9]": {"precision": "int8"}, "*": {"precision": "int8"}}, None,
     "['t[7-9]'] match no table"),
    ({"*": {"precision": "int4"}}, {"mlp.*": {"precision": "int8"}}, "plan layer pattern(s) ['mlp.*'] match no layer"),
    ({"cat_2": {"precision": "int4"}}, None, "plan names table(s) the model lacks: ['cat_2']"),
])
def test_rules_that_match_nothing_are_refused_naming_the_plan_file(model, tmp_path, tables, layers, words):
    path = _plan(tmp_path, tables, layers)
    r = cli("convert", "--model", model, "--plan", path, "--out", tmp_path / "art")
    assert r.exit_code == 2, r.output
    assert f"{path}: " in r.output and words in r.output, r.output
    assert not (tmp_path / "art").exists()


def test_tables_no_rule_covers_are_warned_about(model, tmp_path):
    path = _plan(tmp_path, {"t0": {"precision": "int4"}, "t1": {"precision": "int4"}})  # t2's entry deleted
    r = cli("convert", "--model", model, "--plan", path, "--out", tmp_path / "art")
    assert r.exit_code == 0, r.output
    assert "warning: " in r.output and "covers table(s) ['t2']" in r.output and str(path) in r.output, r.output
    # a plan covering every table, with no layer rules (every layer fp32 by design), warns about nothing
    with pytest.warns(InputWarning, match=r"covers table\(s\) \['t2'\]"):
        Plan.load(path).check_against(["t0", "t1", "t2"], ["top.0"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        Plan.load(_plan(tmp_path, {"t*": {"precision": "int4"}})).check_against(["t0", "t1", "t2"], ["top.0"])
        Plan.load(_plan(tmp_path, {"*": {"precision": "int4"}}, {"top.0": {"precision": "int8"}})
                  ).check_against(["t0"], ["top.0"])
    with pytest.warns(InputWarning, match=r"covers layer\(s\) \['top.1'\]"):
        Plan.load(_plan(tmp_path, {"*": {"precision": "int4"}}, {"top.0": {"precision": "int8"}})
                  ).check_against(["t0"], ["top.0", "top.1"])


def test_check_against_names_where_the_plan_came_from():
    plan = Plan.from_json({"format": "lowprec-plan", "version": 1, "tables": {"zz": {"precision": "int4"}}},
                          "some/PLAN.json")
    with pytest.raises(InputError, match=r"^some/PLAN.json: plan names table\(s\)"):
        plan.check_against(["t0"], [])
