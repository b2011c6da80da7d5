"""Model-parallel serving over 2 gloo ranks: each rank holds about half of the table bytes, and the
sharded model scores as the unsharded artifact (exactly with whole tables; to fp32 rounding when a
table is split by id range, whose partial sums add in another order)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lowprec.launch import free_port
from lowprec.serve.shard_plan import ShardPlan, plan_shards
from tests.distributed.conftest import WAIT_S, env, in_process, last_json
from tests.helpers import REPO


def test_plan_balances_bytes_and_splits_big_tables():
    manifest = {"physical_tables": [{"key": "big", "rows": 1000, "dim": 16, "precision": "int8"},
                                    {"key": "a", "rows": 300, "dim": 16, "precision": "int8"},
                                    {"key": "b", "rows": 200, "dim": 16, "precision": "fp32"}],
                "features": [{"table": k, "transform": {"kind": "identity"}} for k in ("big", "a", "b")],
                "serving": [{"name": n, "hotness": 1, "groups": [[i]]} for i, n in enumerate(("big", "a", "b"))]}
    plan = plan_shards(manifest, "x", 2)
    total = 1000 * 20 + 300 * 20 + 200 * 64  # int8 rows of 16: 16 codes + fp16 scale and bias
    assert sum(plan.rank_bytes()) == total
    assert max(plan.rank_bytes()) <= total / 2 * 1.25
    assert [(s.first, s.stop) for s in plan.of_table("big")] == [(0, 500), (500, 1000)]
    for key, rows in (("big", 1000), ("a", 300), ("b", 200)):  # every row of every table placed once
        pieces = plan.of_table(key)
        assert pieces[0].first == 0 and pieces[-1].stop == rows
        assert all(p.stop == q.first for p, q in zip(pieces, pieces[1:]))
    assert ShardPlan.from_json(json.loads(json.dumps(plan.to_json())), "t") == plan
    # expected lookups: hot rows at the front of `big` move the cut of the balance, not the pieces
    counts = {"big": [100.0] * 10 + [0.0] * 990, "a": [1.0] * 300, "b": [1.0] * 200}
    hot = plan_shards(manifest, "x", 2, counts)
    assert sum(hot.rank_lookups()) == pytest.approx(1000 + 300 + 200)


@pytest.mark.parametrize("order", ["id", "rank"])
def test_tiers_are_credited_with_their_own_rows_lookups(tmp_path, order):
    """A tiered table's tiers expect the lookups of the ids in them, row by row, not the whole
    table's: against a brute-force ranking of the calibration counts."""
    import torch

    from helpers import make_tiny_dataset, random_float_model
    from lowprec.checkpoint.convert import convert
    from lowprec.data.dataset import Dataset
    from lowprec.fileio import read_json
    from lowprec.plan import Plan, TableChoice
    from lowprec.precision import Precision

    ds = Dataset(make_tiny_dataset(tmp_path / "data", windows=1, rows=200, hotness=(1, 3, 1)))
    model = random_float_model(ds, tmp_path / "model")
    n = ds.meta.num_embeddings[1]
    counts = [float((i * 7919) % 13) for i in range(n)]  # ties, and hot ids scattered over the ids
    spec = {"kind": "tiered", "tiers": [[0.1, "fp16"], [0.3, "int8"]], "order": order}
    convert(model, Plan({"t1": TableChoice(Precision.INT4, spec), "*": TableChoice(Precision.INT8)}),
            tmp_path / "art", {"row_counts": {"t1": torch.tensor(counts)}})
    manifest = read_json(tmp_path / "art" / "manifest.json", "manifest")
    plan = plan_shards(manifest, "x", 2, {"t1": counts})
    ranked = sorted(range(n), key=lambda i: (-counts[i], i))
    hot_end, warm_end = int(0.1 * n + 0.5), int(0.4 * n + 0.5)
    tiers = [ranked[:hot_end], ranked[hot_end:warm_end], ranked[warm_end:]]
    t1 = next(s for s in manifest["serving"] if s["name"] == "t1")
    feats = [manifest["features"][f] for g in t1["groups"] for f in g]
    keys = {f["transform"]["tier"]: f["table"] for f in feats}
    assert sorted(keys) == [0, 1, 2]
    for j, ids in enumerate(tiers):
        rows = ids if order == "rank" else sorted(ids)
        for piece in plan.of_table(keys[j]):  # each piece: the counts of the ids in its rows
            assert piece.lookups == pytest.approx(sum(counts[i] for i in rows[piece.first:piece.stop]))


def _run(work, tmp_path) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           str(REPO / "tests" / "distributed" / "sharded_worker.py"), str(work["art"]), str(work["data"]),
           str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_S, env=env(), cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]


def test_two_ranks_score_as_the_unsharded_artifact(work, tmp_path):
    r = in_process("shard", work["art"], "--ranks", "2", "--json")
    assert r.exit_code == 0, r.output
    plan = last_json(r.stdout)
    assert plan["world_size"] == 2 and len(plan["shards"]) > 3  # the 60-row table is split
    shown = in_process("inspect", work["art"])
    assert "shard plan (2 ranks)" in shown.stdout and "t0[0:30]" in shown.stdout
    ranks = _run(work, tmp_path)
    total = ranks[0]["total_bytes"]
    planned = [x["plan"] for x in ranks]
    assert sum(x["local_bytes"] for x in planned) == total
    assert all(x["local_bytes"] <= 0.6 * total for x in planned)
    assert all(x["max_abs_diff"] < 1e-5 for x in planned)
    assert all(x["tablewise"]["differing"] == 0 for x in ranks)  # bit-identical logits
    # a rank handed bad input raises; the other raised nothing and waited in a collective until the
    # process group's timeout: now it is told at once, and both serve the next call
    bad, good = ranks[1]["refusals"], ranks[0]["refusals"]
    assert bad["errors"][0].startswith("IdOutOfRange: ") and bad["errors"][1].startswith("BadServingInput: ")
    assert good["errors"] == ["PeerRefused: rank 1 refused its input (see that rank's error): this call served no rank"] * 2
    assert bad["after"] < 1e-5 and good["after"] < 1e-5
