"""The native tiered id split of this tree against a commit's, side by side in one process.

    python tools/bench_tier_split.py --against HEAD [--scale 1.0] [--out reports/tier_split.json]

Builds bench_tiered's tables of >= --min-rows rows (full Criteo Kaggle cardinalities x --scale) as
the tiered plan with rows in rank order and in id order, and its Zipf traffic (bench_tiered.Traffic);
compiles lowprec/serve/tier_split.c as it is here and as it was at --against (lowprec.native, the
same flags), each with its own tier_native and rank-directory format (the tables its SplitPlan
hands the kernel: 16 ids a word before 32); and times, interleaved, each kernel's split of the same batches in the three modes:
ranked ids (compares only), raw ids through the rank map, and raw ids through the id-order rank
directories (with --lookup, also each split followed by the tables' TBE lookups and the pooling of
their output, each version's own: the native pooling since the eighth session, torch ops before). Before timing, the two kernels' outputs are checked equal in every mode. Prints and
writes the median [min-max] ms a call and this tree's speedup, paired per repeat.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
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
from lowprec.serve import tier_native, tiers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCE = "lowprec/serve/tier_split.c"
MODULE = "lowprec/serve/tier_native.py"


def at_commit(commit: str, work: Path):
    """`commit`'s split: its tier_native module (its SplitPlan reads the tables its kernel's way)
    with its kernel compiled as lowprec.native compiles the current one."""
    def show(path: str) -> bytes:
        return subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{path}"], check=True,
                              capture_output=True).stdout
    (work / "tier_split.c").write_bytes(show(SOURCE))
    (work / "tier_native_at.py").write_bytes(show(MODULE))
    spec = importlib.util.spec_from_file_location("tier_native_at", work / "tier_native_at.py")
    mod = sys.modules["tier_native_at"] = importlib.util.module_from_spec(spec)  # its dataclass looks there
    spec.loader.exec_module(mod)
    lib = native.build(work / "tier_split.c")
    mod._declare(lib)
    mod.kernel = lambda: lib
    return mod


def block_at(commit: str) -> int:
    """Ids per rank-directory word in `commit`'s format (16 before the 32-id words)."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:lowprec/serve/tiers.py"], check=True,
                         capture_output=True, text=True).stdout
    found = re.search(r"^BLOCK = (\d+)", src, re.M)
    return int(found.group(1)) if found else tiers.BLOCK


def plan_in_block(mod, m, block: int):
    """`mod`'s SplitPlan of `m` with the id-order tiers' directories re-made at `block` ids a word
    (what that version's artifacts hold), the module's own directories put back after."""
    saved = [(im, im.dirs, im.block) for im in m.id_maps if getattr(im, "dirs", None)]
    try:
        for im, dirs, _ in saved:
            if im.block != block:
                bits = (torch.stack(dirs).unsqueeze(-1) >> torch.arange(im.block)) & 1  # tier, word, bit
                n = bits.shape[1] * im.block
                im.dirs = [tiers.directory(torch.nonzero(b.reshape(-1)).flatten(), n, block) for b in bits]
                im.block = block
        return mod.SplitPlan.of(m)
    finally:
        for im, dirs, b in saved:
            im.dirs, im.block = dirs, b


def pooled(mod, m, plan, out: torch.Tensor, batch: int) -> torch.Tensor:
    """`out` pooled as `mod`'s version of the runtime pools it: its native pooling where it has one
    (since the eighth session), else the module's torch ops."""
    return mod.pool(plan.tiers, out, batch, m.dim) if hasattr(mod, "pool") else m.pooled_from_tbe(out, batch)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    bc.set_threads(1)
    rows = [n for n in (max(1, int(round(n * args.scale))) for n in bt.KAGGLE_CARDINALITIES)
            if n >= args.min_rows or args.with_small]
    _, counts, batches = bt.workload(rows, args)
    mods = {}
    for order in ("rank", "id"):
        choice = bt.TableChoice(bt.Precision(args.cold), {"kind": "tiered", "tiers": bt.parse_tiers(args.tiers),
                                                         "order": order})
        small = bt.TableChoice(bt.Precision(args.small))  # with --with-small: the plan's untiered tables
        mods[order], _ = bt.shared_module(rows, args.dim, choice, small, args.min_rows, counts, args.pooling,
                                          args.seed)
    ranked = [mods["rank"].ranked(f) for f in batches]
    modes = {"ranked ids": (mods["rank"], ranked, True), "raw ids, rank map": (mods["rank"], batches, False),
             "raw ids, id-order directories": (mods["id"], batches, False)}
    with tempfile.TemporaryDirectory() as work:
        splits = {f"at {args.against}": at_commit(args.against, Path(work)), "this tree": tier_native}
        blocks = {f"at {args.against}": block_at(args.against), "this tree": tiers.BLOCK}
        variants, checks = {}, {}
        for mode, (m, src, r) in modes.items():
            plans = {name: plan_in_block(mod, m, blocks[name]) for name, mod in splits.items()}
            outs = [mod.split(plans[name], src[0].indices, args.batch, r) for name, mod in splits.items()]
            checks[mode] = all(torch.equal(a, b) for a, b in zip(outs[0], outs[1]))
            for name, mod in splits.items():
                variants[f"{mode}: {name}"] = bc.cycling(
                    lambda k, mod=mod, p=plans[name], s=src, r=r: mod.split(p, s[k].indices, args.batch, r),
                    len(batches))
                if args.lookup:  # the split, the tables' TBE lookups and the pooling, as the runtime runs them
                    variants[f"{mode} + lookup: {name}"] = bc.cycling(
                        lambda k, mod=mod, m=m, p=plans[name], s=src, r=r: pooled(mod, m, p, m.tbe(*mod.split(
                            p, s[k].indices, args.batch, r)), args.batch), len(batches))
        load_before = os.getloadavg()
        times = bc.interleaved(variants, args.repeats, block_seconds=args.block_seconds,
                               min_seconds=3 * args.block_seconds)
    ms = {k: bc.spread([x * 1000 for x in v]) for k, v in times.items()}
    timed = [mode for mode in modes] + ([f"{mode} + lookup" for mode in modes] if args.lookup else [])
    speedup = {mode: bc.speedup(times[f"{mode}: at {args.against}"], times[f"{mode}: this tree"]) for mode in timed}
    return {"command": bc.command_line("bench_tier_split.py", argv), "machine": bc.machine(1),
            "load_before": load_before, "config": vars(args), "rows": rows,
            "ids_per_call": args.batch * args.pooling * len(rows), "outputs_equal": checks, "ms": ms,
            "speedup": speedup}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", default="HEAD", help="the commit whose kernel is the reference")
    bt.workload_args(ap)  # bench_tiered's tables, traffic and timing; only tables of >= --min-rows rows here
    ap.add_argument("--with-small", action="store_true",
                    help="also the tables under --min-rows, untiered at --small, as the whole model has them "
                         "(the split copies their ids into the TBE's input)")
    ap.add_argument("--small", default="fp16", help="precision of the untiered tables with --with-small")
    ap.add_argument("--lookup", action="store_true",
                    help="also time each split followed by the tables' TBE lookups and pooling (the split's cost in the pipeline, "
                         "where the TBE's rows compete with the split's tables for the cache)")
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args(argv)
    r = run(args, argv)
    print(bc.machine_line(r["machine"]))
    tiered = sum(n >= r['config']['min_rows'] for n in r['rows'])
    print(f"{r['ids_per_call']:,} ids a call over {len(r['rows'])} tables ({tiered} tiered); outputs equal: {r['outputs_equal']}")
    for k, v in r["ms"].items():
        print(f"  {k:55s} {bc.fmt_spread(v)} ms")
    for mode, s in r["speedup"].items():
        print(f"  {mode}: this tree {bc.fmt_ratio(s)} the split at {args.against}")
    if args.out:
        bc.write_json(args.out, r)


if __name__ == "__main__":
    main()
