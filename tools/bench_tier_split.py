"""The native tiered id split of this tree against a commit's, side by side in one process.

    python tools/bench_tier_split.py --against HEAD [--scale 1.0] [--out reports/tier_split.json]

Builds bench_tiered's tables of >= --min-rows rows (full Criteo Kaggle cardinalities x --scale) as
the tiered plan with rows in rank order and in id order, and its Zipf traffic (bench_tiered.Traffic);
compiles lowprec/serve/tier_split.c as it is here and as it was at --against (lowprec.native, the
same flags); and times, interleaved, each kernel's split of the same batches in the three modes:
ranked ids (compares only), raw ids through the rank map, and raw ids through the id-order rank
directories. Before timing, the two kernels' outputs are checked equal in every mode. Prints and
writes the median [min-max] ms a call and this tree's speedup, paired per repeat.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402
import bench_tiered as bt  # noqa: E402

from lowprec import native  # noqa: E402
from lowprec.serve import tier_native  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCE = "lowprec/serve/tier_split.c"


def kernel_at(commit: str, work: Path):
    """The split kernel of `commit`, compiled as lowprec.native compiles the current one."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{SOURCE}"], check=True,
                         capture_output=True).stdout
    path = work / "tier_split.c"
    path.write_bytes(src)
    lib = native.build(path)
    tier_native._declare(lib)
    return lib


def split_with(lib, plan, ids: torch.Tensor, batch: int, ranked: bool):
    """tier_native.split through `lib` instead of the current kernel."""
    current = tier_native.kernel
    tier_native.kernel = lambda: lib
    try:
        return tier_native.split(plan, ids, batch, ranked)
    finally:
        tier_native.kernel = current


def run(args: argparse.Namespace) -> dict[str, Any]:
    bc.set_threads(1)
    rows = [n for n in (max(1, int(round(n * args.scale))) for n in bt.KAGGLE_CARDINALITIES) if n >= args.min_rows]
    _, counts, batches = bt.workload(rows, args)
    mods = {}
    for order in ("rank", "id"):
        choice = bt.TableChoice(bt.Precision(args.cold), {"kind": "tiered", "tiers": bt.parse_tiers(args.tiers),
                                                         "order": order})
        mods[order], _ = bt.shared_module(rows, args.dim, choice, choice, 0, counts, args.pooling, args.seed)
    ranked = [mods["rank"].ranked(f) for f in batches]
    modes = {"ranked ids": (mods["rank"], ranked, True), "raw ids, rank map": (mods["rank"], batches, False),
             "raw ids, id-order directories": (mods["id"], batches, False)}
    with tempfile.TemporaryDirectory() as work:
        libs = {f"at {args.against}": kernel_at(args.against, Path(work)), "this tree": tier_native.kernel()}
        variants, checks = {}, {}
        for mode, (m, src, r) in modes.items():
            plan = tier_native.plan_of(m)
            outs = [split_with(lib, plan, src[0].indices, args.batch, r) for lib in libs.values()]
            checks[mode] = all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))
            for name, lib in libs.items():
                variants[f"{mode}: {name}"] = bc.cycling(
                    lambda k, lib=lib, p=plan, s=src, r=r: split_with(lib, p, s[k].indices, args.batch, r),
                    len(batches))
        load_before = os.getloadavg()
        times = bc.interleaved(variants, args.repeats, block_seconds=args.block_seconds,
                               min_seconds=3 * args.block_seconds)
    ms = {k: bc.spread([x * 1000 for x in v]) for k, v in times.items()}
    speedup = {mode: bc.speedup(times[f"{mode}: at {args.against}"], times[f"{mode}: this tree"]) for mode in modes}
    return {"command": bc.command_line("tools/bench_tier_split.py", sys.argv[1:]), "machine": bc.machine(1),
            "load_before": load_before, "config": vars(args), "rows": rows,
            "ids_per_call": args.batch * args.pooling * len(rows), "outputs_equal": checks, "ms": ms,
            "speedup": speedup}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", default="HEAD", help="the commit whose kernel is the reference")
    bt.workload_args(ap)  # bench_tiered's tables, traffic and timing; only tables of >= --min-rows rows here
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args(argv)
    r = run(args)
    print(bc.machine_line(r["machine"]))
    print(f"{r['ids_per_call']:,} ids a call over {len(r['rows'])} tiered tables; outputs equal: {r['outputs_equal']}")
    for k, v in r["ms"].items():
        print(f"  {k:55s} {bc.fmt_spread(v)} ms")
    for mode, s in r["speedup"].items():
        print(f"  {mode}: this tree {bc.fmt_ratio(s)} the split at {args.against}")
    if args.out:
        bc.write_json(args.out, r)


if __name__ == "__main__":
    main()
