"""The runtime's id bounds check, native (one pass) against torch ops (amax per table + min), side
by side in one process, with raw FBGEMM as the reference.

    python tools/bench_bounds_check.py [--scale 0.05] [--dim 16] [--pooling 20] [--out reports/bounds_check_native.json]

bench_lookup's tables (26 Kaggle cardinalities x --scale, built as `lowprec convert` builds them)
and Zipf ids; per precision, interleaved in every repeat: the raw TBE on the FeatureIds' tensors
(`fbgemm P`), `QuantizedEmbeddings.lookup_ids` with the native check (`lowprec P`) and with the
torch-op check (`lowprec P, torch check`: the module's native passes off, as on a host without a C
compiler or in TorchScript), and each check alone. Outputs of the three lookups are checked equal.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402
import bench_lookup as bl  # noqa: E402

from lowprec.data.ids import FeatureIds  # noqa: E402
from lowprec.data.synth import KAGGLE_CARDINALITIES  # noqa: E402
from lowprec.precision import Precision  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, Any]:
    bc.set_threads(1)
    rows = [max(2, int(round(n * args.scale))) for n in KAGGLE_CARDINALITIES]
    tables = bl.float_tables(rows, args.dim, args.seed)
    fids = [FeatureIds.from_matrix(bl.make_ids(rows, args.batch, args.pooling, "zipf", args.seed + k).numpy(),
                                   (args.pooling,) * len(rows)) for k in range(args.batches)]
    n, variants, equal = len(fids), {}, {}
    for p in args.precisions.split(","):
        emb = bl.lowprec_module(tables, [Precision.parse(p)] * len(rows), args.pooling)
        torch_ops = bl.lowprec_module(tables, [Precision.parse(p)] * len(rows), args.pooling)
        torch_ops.native_split = False  # its lookups and checks run the torch ops
        with torch.no_grad():
            want = emb.tbe(fids[0].indices, fids[0].offsets).view(args.batch, len(rows), args.dim)
            equal[p] = bool(torch.equal(emb.lookup_ids(fids[0]), want) and torch.equal(torch_ops.lookup_ids(fids[0]), want))
        variants[f"fbgemm {p}"] = bc.cycling(lambda k, t=emb.tbe: t(fids[k].indices, fids[k].offsets), n)
        variants[f"lowprec {p}"] = bc.cycling(lambda k, m=emb: m.lookup_ids(fids[k]), n)
        variants[f"lowprec {p}, torch check"] = bc.cycling(lambda k, m=torch_ops: m.lookup_ids(fids[k]), n)
        if p == args.precisions.split(",")[0]:
            variants["check alone, native"] = bc.cycling(lambda k, m=emb: m.check_flat(fids[k].indices, args.batch), n)
            variants["check alone, torch ops"] = bc.cycling(
                lambda k, m=torch_ops: m.check_flat(fids[k].indices, args.batch), n)
    load_before = os.getloadavg()
    with torch.no_grad():
        times = bc.interleaved(variants, args.repeats, block_seconds=args.block_seconds, min_seconds=args.min_seconds)
    ms = {k: bc.spread([x * 1000 for x in v]) for k, v in times.items()}
    ratios = {}
    for p in args.precisions.split(","):
        ratios[f"lowprec {p} / fbgemm {p} (throughput)"] = bc.paired_ratio(times[f"fbgemm {p}"], times[f"lowprec {p}"])
        ratios[f"lowprec {p}, torch check / fbgemm {p}"] = bc.paired_ratio(times[f"fbgemm {p}"],
                                                                        times[f"lowprec {p}, torch check"])
    ratios["check: native speedup over torch ops"] = bc.paired_ratio(times["check alone, torch ops"],
                                                                     times["check alone, native"])
    return {"command": bc.command_line("tools/bench_bounds_check.py", sys.argv[1:]), "machine": bc.machine(1),
            "load_before": load_before, "load_after": os.getloadavg(), "config": vars(args), "rows": sum(rows),
            "ids_per_call": args.batch * args.pooling * len(rows), "outputs_equal": equal, "ms": ms, "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--min-seconds", type=float, default=0.2, help="per variant per repeat")
    ap.add_argument("--block-seconds", type=float, default=0.02, help="back-to-back calls of one variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args(argv)
    r = run(args)
    print(bc.machine_line(r["machine"]))
    print(f"{r['ids_per_call']:,} ids a call, {r['rows']:,} rows; outputs equal: {r['outputs_equal']}")
    for k, v in r["ms"].items():
        print(f"  {k:32s} {bc.fmt_spread(v)} ms")
    for k, v in r["ratios"].items():
        print(f"  {k}: {bc.fmt_ratio(v)}")
    if args.out:
        bc.write_json(args.out, r)


if __name__ == "__main__":
    main()
