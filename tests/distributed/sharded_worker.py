"""One rank of the sharded-serving test (run by torchrun from test_sharded.py).

argv: ARTIFACT DATA OUT_DIR. Two sharded models: "plan" (the artifact's shard-plan.json) and
"tablewise" (whole tables, round robin). Every rank scores its own rows (different batch sizes per
rank, several steps) through each and through the unsharded runtime, and writes
OUT_DIR/rank{r}.json with, per model, the differences and the bytes its TBE holds, and what each
rank raised when rank 1 was handed bad inputs."""

import json
import sys
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as tdist

from lowprec.checkpoint.artifact import load_artifact
from lowprec.data.dataset import Dataset
from lowprec.serve.shard_plan import Shard, ShardPlan, load_shard_plan
from lowprec.serve.sharded import load_sharded


STEPS = [(300, 700), (1, 64), (257, 5)]  # rows of rank 0 and rank 1 at each step


def score(model, whole, dense_m, sparse_m, rank: int) -> dict:
    diffs, n = [], 0
    for step, sizes in enumerate(STEPS):
        a = sum(sum(s) for s in STEPS[:step]) + sum(sizes[:rank])
        rows = slice(a, a + sizes[rank])
        dense = torch.from_numpy(np.array(dense_m[rows], dtype=np.float32))
        sparse = torch.from_numpy(np.array(sparse_m[rows], dtype=np.int64))
        with torch.inference_mode():
            got, want = model(dense, sparse), whole(dense, sparse)
        diffs.append(float((got - want).abs().max()))
        n += int((got != want).sum())
    return {"max_abs_diff": max(diffs), "differing": n, "local_bytes": model.embeddings.local_bytes}


def refusals(model, whole, dense_m, sparse_m, rank: int) -> dict:
    """Rank 1 is handed an id past its table's end, then a NaN dense feature; rank 0 good rows. Each
    rank's error (type: message), then a good call on both (the ranks must still be in step)."""
    dense = torch.from_numpy(np.array(dense_m[:50], dtype=np.float32))
    sparse = torch.from_numpy(np.array(sparse_m[:50], dtype=np.int64))
    errors = []
    for bad in ("id", "dense"):
        d, s = dense.clone(), sparse.clone()
        if rank == 1 and bad == "id":
            s[7, 0] = 10**9
        if rank == 1 and bad == "dense":
            d[3, 2] = float("nan")
        try:
            with torch.inference_mode():
                model(d, s)
            errors.append("none")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    with torch.inference_mode():
        after = float((model(dense, sparse) - whole(dense, sparse)).abs().max())
    return {"errors": errors, "after": after}


def main() -> None:
    art, data, out = sys.argv[1:4]
    tdist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = tdist.get_rank(), tdist.get_world_size()
    plan = load_shard_plan(art)
    keys = sorted({s.table for s in plan.shards})
    tablewise = ShardPlan(world, tuple(Shard(k, 0, max(s.stop for s in plan.of_table(k)), i % world, 0, 0.0)
                                       for i, k in enumerate(keys)), plan.manifest_sha256)
    whole, _ = load_artifact(art)
    dense_m, sparse_m, _ = Dataset(data).arrays(1)
    result = {"rank": rank, "total_bytes": sum(w.numel() for w in whole.embeddings.table_weights())}
    for name, p in (("plan", plan), ("tablewise", tablewise)):
        result[name] = score(load_sharded(art, p), whole, dense_m, sparse_m, rank)
    result["refusals"] = refusals(load_sharded(art, plan), whole, dense_m, sparse_m, rank)
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump(result, fh)
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()
