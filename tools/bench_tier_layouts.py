"""Tier layouts side by side: the whole model's lookups (raw ids, the runtime's native path) under
several tier layouts against uniform int4, in one process, interleaved.

    OMP_NUM_THREADS=1 prlimit --data=11000000000 python tools/bench_tier_layouts.py \
        --layouts '0.02:fp16;0.01:fp16;0.02:int8;0.02:fp16,0.1:int4' [--stage whole|layout] --out reports/X.json

bench_tiered times one layout (--tiers) against the uniform precisions; this asks which layout is
fastest. Every layout is bench_tiered's tiered plan (id order unless it ends `@rank`, the tables of >= --min-rows rows
tiered over --cold, the others at --small) on its tables and Zipf traffic. --stage layout times the
TBE and pooling on ids split beforehand (the layout's own cost, without the split); --parts adds
each layout's split, its TBE on each group's ids alone (untiered tables, each tier) and on no ids,
and its pooling, timed in the same rounds. --uniform adds uniform precisions; --huge-pages both
times every module beside a copy on 2 MB pages (the gain of huge pages, paired). Prints and
writes median [min-max] ms a call, speed over int4 paired per repeat, and bytes over int4.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402
import _huge_pages as hp  # noqa: E402
import bench_tiered as bt  # noqa: E402

from lowprec.allocator import keep_buffers_in_heap  # noqa: E402
from lowprec.serve import tier_native  # noqa: E402


HUGE = ", 2 MB pages"


def feature_groups(plan: Any) -> dict[str, list[int]]:
    """The TBE features of a split plan by group: the untiered tables', and each tier's (tier 0 the
    hottest, the last the cold one) over the tiered tables."""
    groups: dict[str, list[int]] = {"untiered tables": []}
    f = 0
    for kind, k in zip(plan.kinds.tolist(), plan.tiers.tolist()):
        if kind == tier_native.COPY:
            groups["untiered tables"].append(f)
        for j in range(k if kind != tier_native.COPY else 0):
            groups.setdefault(f"tier {j}", []).append(f + j)
        f += k
    return groups


def only(idx: torch.Tensor, off: torch.Tensor, features: list[int], n_features: int, batch: int):
    """The TBE inputs (idx, off) with every bag outside `features` emptied."""
    lens = off[1:] - off[:-1]
    keep = torch.zeros(n_features, dtype=torch.bool)
    keep[features] = True
    bags = keep.repeat_interleave(batch)
    new_off = torch.zeros_like(off)
    new_off[1:] = torch.cumsum(torch.where(bags, lens, 0), 0)
    return idx[torch.repeat_interleave(bags, lens)].contiguous(), new_off


def parts(name: str, m: Any, batches: list[Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """Where a layout's call goes: the split, the TBE on each group's ids alone (other bags empty),
    the TBE on no ids (its fixed cost: writing every feature's output), the pooling; and each
    group's lookups a call."""
    plan, n = tier_native.plan_of(m), len(batches)
    pre = [tier_native.split(plan, f.indices, f.batch) for f in batches]
    outs = [m.tbe(*x) for x in pre]
    variants = {f"{name}: split": bc.cycling(lambda k: tier_native.split(plan, batches[k].indices, batches[k].batch), n),
                f"{name}: pooling": bc.cycling(lambda k: tier_native.pool(plan.tiers, outs[k], batches[k].batch, m.dim), n)}
    lookups = {}
    for group, features in {**feature_groups(plan), "no ids": []}.items():
        sub = [only(i, o, features, plan.features, f.batch) for (i, o), f in zip(pre, batches)]
        lookups[group] = int(sub[0][0].numel())
        variants[f"{name}: TBE, {group}"] = bc.cycling(lambda k, sub=sub: m.tbe(*sub[k]), n)
    return variants, lookups


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    bc.set_threads(1)
    keep_buffers_in_heap()  # as the CLI does
    rows = [max(1, int(round(n * args.scale))) for n in bt.KAGGLE_CARDINALITIES]
    _, counts, batches = bt.workload(rows, args)
    mods = {"int4": bt.uniform_module(rows, args.dim, bt.Precision("int4"), args.pooling, args.seed)}
    for layout in args.layouts.split(";"):
        tiers, _, order = layout.partition("@")
        choice = bt.TableChoice(bt.Precision(args.cold), {"kind": "tiered", "tiers": bt.parse_tiers(tiers),
                                                         "order": order or "id"})
        mods[layout], _ = bt.shared_module(rows, args.dim, choice, bt.TableChoice(bt.Precision(args.small)),
                                           args.min_rows, counts, args.pooling, args.seed)
        gc.collect()
    for p in filter(None, args.uniform.split(",")):
        mods[p] = bt.uniform_module(rows, args.dim, bt.Precision(p), args.pooling, args.seed)
    if args.huge_pages == "on":
        hp.collapse_modules(mods.values())
    elif args.huge_pages == "both":  # each module beside a copy on 2 MB pages, timed in the same rounds
        mods |= {f"{name}{HUGE}": copy.deepcopy(m) for name, m in mods.items()}
        hp.collapse_modules(m for name, m in mods.items() if name.endswith(HUGE))
    want = [mods["int4"].lookup_ids(f) for f in batches]
    n = len(batches)
    variants = {}
    for name, m in mods.items():
        plan = tier_native.plan_of(m)
        if args.stage == "layout" and plan is not None and tier_native.kernel() is not None:
            pre = [tier_native.split(plan, f.indices, f.batch) for f in batches]
            variants[name] = bc.cycling(lambda k, m=m, p=plan, pre=pre: tier_native.lookup_split(
                m, p, *pre[k], batches[k].batch), n)
        else:
            variants[name] = bc.cycling(lambda k, m=m: m.lookup_ids(batches[k]), n)
    lookups = {}
    if args.parts and tier_native.kernel() is not None:
        for name, m in mods.items():
            if tier_native.plan_of(m) is not None:
                more, lookups[name] = parts(name, m, batches)
                variants |= more
    with torch.no_grad():  # every layout looks up the int4 rows of its cold tier: outputs within fp16 of them
        diff = {name: max(float((m.lookup_ids(f) - w).abs().max()) for f, w in zip(batches, want))
                for name, m in mods.items()}
        load_before = os.getloadavg()
        times = bc.interleaved(variants, args.repeats, block_seconds=args.block_seconds,
                               min_seconds=3 * args.block_seconds)
    byts = {name: bt._bytes(m) for name, m in mods.items()}
    return {"command": bc.command_line("bench_tier_layouts.py", argv), "machine": bc.machine(1),
            "load_before": load_before, "load_after": os.getloadavg(), "config": vars(args), "rows": rows,
            "ms": {k: bc.spread([x * 1000 for x in v]) for k, v in times.items()},
            "over_int4": {k: bc.speedup(times["int4"], v) for k, v in times.items()},
            "bytes_over_int4": {k: v / byts["int4"] for k, v in byts.items()},
            "max_abs_diff_vs_int4": diff, "lookups_per_call": lookups,
            "huge_page_gain": {k[:-len(HUGE)]: bc.speedup(times[k[:-len(HUGE)]], v) for k, v in times.items()
                               if k.endswith(HUGE)}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bt.workload_args(ap)
    ap.add_argument("--layouts", default="0.02:fp16;0.01:fp16;0.02:int8",
                    help="';'-separated tier layouts, each SHARE:PRECISION,... hottest first (bench_tiered --tiers), "
                         "@rank at the end for tiers stored by rank (ids through the rank map), e.g. 0.02:fp16@rank")
    ap.add_argument("--small", default="fp16", help="precision of the untiered tables")
    ap.add_argument("--stage", choices=["whole", "layout"], default="whole",
                    help="whole: split + TBE + pooling as the runtime runs them; layout: TBE + pooling on ids split before")
    ap.add_argument("--parts", action="store_true",
                    help="also time each layout's parts: the split, the TBE on each group's ids alone, the pooling")
    ap.add_argument("--uniform", default="", help="also these uniform precisions, e.g. fp32,fp16")
    ap.add_argument("--huge-pages", choices=["off", "on", "both"], default="off",
                    help="tables on 2 MB pages (tools/_huge_pages.py); both: each module and a copy on them, "
                         "side by side (the gain of huge pages, paired per repeat)")
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args(argv)
    r = run(args, argv)
    print(bc.machine_line(r["machine"]) + f"; load {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after")
    for k in r["ms"]:
        b = r["bytes_over_int4"].get(k)
        print(f"  {k:44s} {bc.fmt_spread(r['ms'][k])} ms  x int4 {bc.fmt_ratio(r['over_int4'][k])}"
              + (f"  bytes x int4 {b:.3f}" if b is not None else ""))
    for name, gain in r["huge_page_gain"].items():
        print(f"  {name}: 2 MB pages {bc.fmt_ratio(gain)} as fast as 4 KB pages")
    for name, groups in r["lookups_per_call"].items():
        print(f"  {name}: lookups a call {groups}")
    if args.out:
        bc.write_json(args.out, r)


if __name__ == "__main__":
    main()
