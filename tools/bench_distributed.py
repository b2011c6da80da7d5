"""Data-parallel and model-parallel lowprec on this machine: 1 vs 2 ranks (one thread each).

    python tools/bench_distributed.py [--rows 100000] [--windows 2] [--scale 0.01] [--launches 4]

One synthetic dataset (`lowprec data synth`), a float DLRM (random init: speed does not depend on
what was learnt), its int8 artifact (int8 tables, static int8 layers calibrated on window 0) and a
2-rank shard plan of it. Then torchrun launches of this file as worker ranks, 1 and 2 ranks
alternating (1 2 2 1 ...), each launch timing after one warm-up: `evaluate` of the artifact over
every window (eval), the paired drift pass (`evaluate_window`, float vs artifact) over window 0, and
a precision search (`lowprec.search.run.search`: sensitivity on up to 20,000 rows of window 0 dealt
over the ranks, at most 2 data-parallel validation rounds on window 1; rate = searches an hour);
and loading the sharded artifact (bytes of tables each rank's TBE holds). Per launch and rank:
seconds of work and seconds inside collectives (waiting for the slower rank included). Throughput
= rows / the slowest rank's seconds; the 2-vs-1 ratio pairs launch i of 2 ranks with launch i of 1.
Writes reports/distributed.json and reports/distributed.md (with the Criteo-TB projection).
The machine is shared: the load average (uptime) is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402
from _bench_pair import int8_pair  # noqa: E402

TOOL = "bench_distributed.py"
SEARCH_ROWS = 20_000


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def worker(args: argparse.Namespace) -> None:
    """One rank (under torchrun): time eval and drift, load the sharded artifact."""
    import torch

    torch.set_num_threads(1)
    from lowprec import distributed as dist
    from lowprec.checkpoint.load import load_model
    from lowprec.data.dataset import Dataset
    from lowprec.evaluation.paired import PairedConfig, evaluate_window
    from lowprec.evaluation.scoring import evaluate

    ready = time.time()
    dist.setup()
    ds = Dataset(args.data)
    windows = list(ds.meta.window_indices)
    ref, _, _ = load_model(args.model)
    cand, _, _ = load_model(args.artifact)
    out: dict[str, Any] = {"rank": dist.rank(), "world": dist.world_size(), "ready_unix": ready}
    for name, fn in (("eval", lambda: evaluate(cand, ds, windows, 4096)),
                     ("drift", lambda: evaluate_window(ref, cand, ds, 0, PairedConfig(), Path(args.work) / f"s{dist.rank()}-")),
                     ("search", _search(args, ds))):
        if name != "search":  # the search reuses the warm eval code; one run of it costs seconds
            fn()  # warm-up
        dist.barrier(name)
        c0 = dist.TIMING["collective_s"]
        t0 = time.perf_counter()
        fn()
        out[name] = {"seconds": time.perf_counter() - t0, "collective_s": dist.TIMING["collective_s"] - c0}
    if dist.world_size() == 2:
        from lowprec.serve.sharded import load_sharded

        out["sharded_local_bytes"] = load_sharded(args.artifact).embeddings.local_bytes
    out["table_bytes"] = sum(w.numel() for w in cand.embeddings.table_weights())
    everyone: list[Any] = [None] * dist.world_size()
    if dist.active():
        import torch.distributed as tdist

        tdist.all_gather_object(everyone, json.dumps(out))
    else:
        everyone = [json.dumps(out)]
    if dist.is_main():
        Path(args.result).write_text(json.dumps([json.loads(x) for x in everyone]))
    dist.teardown()


def _search(args: argparse.Namespace, ds: Any):
    from lowprec.calibrate import load_calibration
    from lowprec.checkpoint.float_model import load_float_model
    from lowprec.precision import Precision
    from lowprec.search.run import SearchConfig, search
    from lowprec.search.solver import Budget
    from lowprec.search.space import SearchSpace

    model, _ = load_float_model(args.model)
    calib = load_calibration(Path(args.model).parent / "calib.json")
    space = SearchSpace(tuple(map(Precision, ("fp16", "int8", "int4"))), tuple(map(Precision, ("fp32", "int8"))))
    cfg = SearchConfig((0,), (1,), Budget(0.001, 0.001, None), space, max_rows=SEARCH_ROWS, max_rounds=2)
    return lambda: search(args.model, model, ds, cfg, calib)


def prepare(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from lowprec.data.dataset import Dataset
    from lowprec.data.synth import SynthConfig, generate
    from lowprec.fileio import atomic_dir, sha256_file
    from lowprec.serve.shard_plan import plan_shards, save_shard_plan
    from lowprec.checkpoint.artifact import read_manifest

    with atomic_dir(tmp / "data") as d:
        generate(SynthConfig(args.windows, args.rows, args.seed, args.scale), d)
    ds = Dataset(tmp / "data")
    calib = int8_pair(ds, tmp, args.seed)
    plan = plan_shards(read_manifest(tmp / "artifact"), sha256_file(tmp / "artifact" / "manifest.json"), 2,
                       calib["row_counts"])
    save_shard_plan(plan, tmp / "artifact")
    return {"data": tmp / "data", "model": tmp / "model", "artifact": tmp / "artifact",
            "rows": args.rows * args.windows, "plan": plan.to_json()}


def launch(nproc: int, prep: dict[str, Any], tmp: Path, i: int) -> tuple[list[dict[str, Any]], float]:
    from lowprec.launch import free_port

    result = tmp / f"result-{nproc}-{i}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), __file__, "--worker",
           "--data", str(prep["data"]), "--model", str(prep["model"]), "--artifact", str(prep["artifact"]),
           "--work", str(tmp), "--result", str(result)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOWPREC_DIST_TIMEOUT": "600"}
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env, timeout=3600)
    ranks = json.loads(result.read_text())
    return ranks, min(r["ready_unix"] for r in ranks) - t0


def summarise(runs: dict[int, list[list[dict[str, Any]]]], rows: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage in ("eval", "drift", "search"):
        tput = {n: [rows[stage] / max(r[stage]["seconds"] for r in ranks) for ranks in rs] for n, rs in runs.items()}
        share = {n: [max(r[stage]["collective_s"] / r[stage]["seconds"] for r in ranks) for ranks in rs]
                 for n, rs in runs.items()}
        out[stage] = {"rows": rows[stage],
                      "rows_per_s": {n: bc.spread(v) for n, v in tput.items()},
                      "collective_share": {n: bc.spread(v) for n, v in share.items()},
                      "ratio_2_vs_1": bc.paired_ratio(tput[2], tput[1])}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.worker:
        worker(args)
        return {}
    if args.from_json:  # regenerate the Markdown from a finished run
        from _distributed_report import write_report

        result = json.loads(Path(args.from_json).read_text())
        write_report(result, args.report)
        return result
    threads = bc.set_threads(1)
    result: dict[str, Any] = {"tool": TOOL, "command": bc.command_line(TOOL, argv), "machine": bc.machine(threads),
                              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "report")},
                              "load_before": load_average()}
    runs: dict[int, list[list[dict[str, Any]]]] = {1: [], 2: []}
    startup: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="lowprec-bench-dist-") as tmp:
        tmp = Path(tmp)
        prep = prepare(args, tmp)
        for i in range(args.launches):
            for n in ((1, 2) if i % 2 == 0 else (2, 1)):
                ranks, start = launch(n, prep, tmp, i)
                runs[n].append(ranks)
                startup[n].append(start)
                print(f"  {n} rank(s): eval {max(r['eval']['seconds'] for r in ranks):.2f} s, "
                      f"drift {max(r['drift']['seconds'] for r in ranks):.2f} s, "
                      f"search {max(r['search']['seconds'] for r in ranks):.2f} s, start-up {start:.1f} s",
                      file=sys.stderr)
    result["load_after"] = load_average()
    result.update(summarise(runs, {"eval": prep["rows"], "drift": args.rows, "search": 3600}))  # search: per hour
    result["startup_s"] = {n: bc.spread(v) for n, v in startup.items()}
    result["runs"] = runs
    result["shard_plan"] = prep["plan"]
    result["sharded_local_bytes"] = [r["sharded_local_bytes"] for r in runs[2][0]]
    result["table_bytes"] = runs[1][0][0]["table_bytes"]
    bc.write_json(args.out, result)
    from _distributed_report import write_report  # noqa: E402  (the Markdown, kept apart)

    result = json.loads(Path(args.out).read_text())  # the recorded form (string keys), as --from-json reads it
    write_report(result, args.report)
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000, help="Rows per window.")
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--scale", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--launches", type=int, default=4, help="torchrun launches per rank count.")
    p.add_argument("--out", default=str(bc.REPORTS / "distributed.json"))
    p.add_argument("--report", default=str(bc.REPORTS / "distributed.md"))
    p.add_argument("--from-json", help="Only rewrite --report from this finished run's JSON.")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("data", "model", "artifact", "work", "result"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
