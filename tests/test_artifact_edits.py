"""Hand edits of an artifact's side files that used to be accepted and change what is shown or
served: a shard-plan.json whose shards no longer tile a table (ids past them were dropped), a
manifest.json whose summary numbers or layer set disagree with what it stores."""

from __future__ import annotations

import json

import pytest

from helpers import make_tiny_dataset, random_float_model, run_cli as cli
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    root = tmp_path_factory.mktemp("edits")
    ds = Dataset(make_tiny_dataset(root / "data", windows=1, rows=100, tables=(50, 20, 8)))
    model = random_float_model(ds, root / "model")
    r = cli("convert", "--model", model, "--precision", "int4", "--out", root / "art")
    assert r.exit_code == 0, r.output
    r = cli("shard", root / "art", "--ranks", "2")
    assert r.exit_code == 0, r.output
    return root / "art"


def _copy(art, tmp_path):
    import shutil

    shutil.copytree(art, tmp_path / "a")
    return tmp_path / "a"


def _edit_plan(a, edit):
    path = a / "shard-plan.json"
    plan = json.loads(path.read_text())
    edit(plan)
    path.write_text(json.dumps(plan))


def _piece(plan, table):
    return next(s for s in plan["shards"] if s["table"] == table)


@pytest.mark.parametrize("edit, words", [
    (lambda p: _piece(p, "t0").update(stop=5), "'t0': rows 5..24 are in no shard"),  # ids 5..24 dropped
    (lambda p: _piece(p, "t1").update(first=3), "'t1': rows 0..2 are in no shard"),
    (lambda p: p["shards"].append(dict(_piece(p, "t2"), stop=4)), "'t2': shards overlap"),
    (lambda p: _piece(p, "t2").update(stop=9), "'t2': a shard ends at row 9, past the table's 8 rows"),
    (lambda p: p["shards"].remove(_piece(p, "t1")), "'t1': rows 0..19 are in no shard"),
    (lambda p: _piece(p, "t1").update(rank=2), "'t1': shard [0, 20) on rank 2"),
    (lambda p: p["shards"].append(dict(_piece(p, "t1"), table="t9")), "table(s) ['t9']"),
    (lambda p: _piece(p, "t1").update(first="0"), "malformed shard plan"),
])
def test_a_shard_plan_that_does_not_tile_the_tables_is_refused(art, tmp_path, edit, words):
    from lowprec.serve.sharded import load_shard_plan, load_sharded

    a = _copy(art, tmp_path)
    _edit_plan(a, edit)
    r = cli("inspect", a)
    assert r.exit_code == 2, r.output
    assert words in r.output and "shard-plan.json" in r.output, r.output
    with pytest.raises(InputError, match="shard-plan.json"):
        load_shard_plan(a)
    with pytest.raises(InputError, match="shard-plan.json"):
        load_sharded(a)


def test_a_shard_plan_given_in_code_is_checked_too(art):
    from lowprec.serve.sharded import Shard, ShardPlan, load_shard_plan, load_sharded

    plan = load_shard_plan(art)
    assert plan is not None and cli("inspect", art).exit_code == 0
    short = ShardPlan(1, tuple(Shard(s.table, s.first, s.stop, 0, 0, 0.0) for s in plan.shards if s.first == 0),
                      plan.manifest_sha256)  # t0's second piece left out
    with pytest.raises(InputError, match="'t0': rows 25..49 are in no shard"):
        load_sharded(art, short)
