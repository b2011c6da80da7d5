"""How `lowprec search --objective latency` times a table option, and how else it could: side by side.

    python tools/bench_option_timing.py --model M --data D --calibration CALIB.json --window 2 \\
        --context ART_FP32 --tables cat_2,cat_20 [--tier-layouts '0.02:fp16/int4/rank;0.02:fp16/int4'] --out X.json

Per table and option (fp32/fp16/int8/int4 and the --tier-layouts), each built full size by the search's
emulator on the search's cached calibration batches (--window, 50,000 rows, 4,096-row batches), the
marginal microseconds of one batch (its lookup minus its first sample's, ids as the search hands them:
ranks for '/rank' layouts) under five protocols:

  built, 1+7        the search's protocol before 2026-12-01: one warm-up call right after building, median of 7
  built, 20+21      the search's protocol now (lowprec.search.latency.WARMUP_CALLS and REPEATS)
  cycled            20 warm-up calls, then the median over calls cycling through every cached batch
  cycled, flushed   as cycled, with 64 MB written before each timed call (other tables' traffic
                    evicting this one's rows)
  in the model      the option looked up right after the --context artifact's whole-model lookup of the
                    same 2,048 rows, minus that lookup alone (interleaved, 15 repeats of 6 calls): its
                    cost when the other tables share the cache

Prints one line per option; writes --out (JSON). Exploratory: which protocol predicts a whole model's
lookup time is checked against tools/bench_plan_lookup.py (reports/tiered.md, multi-hot section).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import _bench_common as bc

TOOL = "bench_option_timing.py"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--window", type=int, required=True, help="calibration window (the search's --calib-windows)")
    ap.add_argument("--context", required=True, help="artifact whose whole-model lookup shares the cache")
    ap.add_argument("--tables", required=True, help="comma-separated table names")
    ap.add_argument("--precisions", default="fp32,fp16,int8,int4")
    ap.add_argument("--tier-layouts", default="0.02:fp16/int4/rank;0.02:fp16/int4")
    ap.add_argument("--max-rows", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    return ap.parse_args(argv)


def median_us(calls: list[Callable[[], Any]], warm: int, reps: int, flush: Any = None) -> float:
    """Median us of `reps` calls cycling through `calls` after `warm` untimed ones."""
    for i in range(warm):
        calls[i % len(calls)]()
    ts = []
    for i in range(reps):
        if flush is not None:
            flush.add_(1)
        t0 = time.perf_counter()
        calls[i % len(calls)]()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    threads = bc.set_threads(args.threads)
    import torch

    from lowprec.calibrate import load_calibration
    from lowprec.checkpoint.artifact import load_artifact
    from lowprec.checkpoint.float_model import load_float_model
    from lowprec.data.batches import iter_batches
    from lowprec.data.dataset import Dataset
    from lowprec.data.ids import FeatureIds
    from lowprec.precision import Precision
    from lowprec.search.latency import REPEATS, WARMUP_CALLS
    from lowprec.search.sensitivity import Emulator, FloatCache
    from lowprec.search.space import SearchSpace, options_for

    model = load_float_model(args.model)[0]
    ds = Dataset(args.data)
    cache = FloatCache(model, ds, [args.window], args.max_rows)
    emu = Emulator(model, cache, load_calibration(args.calibration))
    space = SearchSpace(tuple(Precision(p) for p in args.precisions.split(",")), (Precision.FP32,),
                        tier_layouts=tuple(x for x in args.tier_layouts.split(";") if x))
    items = options_for(model.config, space, sharing=True)
    context = load_artifact(args.context)[0].embeddings
    rows = []
    for b in iter_batches(ds, [args.window], 2048, feature_ids=True):
        rows += [b] if len(b) == 2048 else []
        if len(rows) == 6:
            break
    flush = torch.zeros(64 << 20, dtype=torch.uint8)
    names, hot = model.config.table_names, [t.hotness for t in model.config.tables]
    out: dict[str, Any] = {"tool": TOOL, "command": bc.command_line(TOOL, argv), "machine": bc.machine(threads),
                           "tables": {}}
    for name in args.tables.split(","):
        t = names.index(name)
        col = slice(sum(hot[:t]), sum(hot[:t + 1]))
        res = out["tables"][name] = {}
        for o in items[f"table:{name}"]:
            emb = emu.table_module(o, space.range_method, full=True)
            ranked = bool(emb.rank_maps())

            def ids_of(matrix: torch.Tensor, emb=emb, ranked=ranked) -> FeatureIds:
                f = FeatureIds.from_matrix(matrix, (hot[t],))
                return emb.ranked(f) if ranked else f

            def looks(ids: list[FeatureIds], emb=emb, ranked=ranked) -> list[Callable[[], Any]]:
                return [lambda f=f: emb.lookup_ids(f, ranked) for f in ids]

            batches = [ids_of(b.sparse[t]) for b in cache.batches]
            firsts = [ids_of(b.sparse[t][:1]) for b in cache.batches]
            with torch.inference_mode():
                w, n = WARMUP_CALLS, REPEATS  # the search's protocol now
                r = {"built, 1+7": median_us(looks(batches[:1]), 1, 7) - median_us(looks(firsts[:1]), 1, 7),
                     f"built, {w}+{n}": median_us(looks(batches[:1]), w, n) - median_us(looks(firsts[:1]), w, n),
                     "cycled": median_us(looks(batches), w, n * len(batches)) - median_us(looks(firsts), w, n),
                     "cycled, flushed": (median_us(looks(batches), w, n * len(batches), flush)
                                         - median_us(looks(firsts), w, n, flush))}
                mine = [ids_of(b.sparse[:, col]) for b in rows]
                pair = {"context": [lambda b=b: context.lookup_ids(b.ids) for b in rows],
                        "context + option": [lambda b=b, f=f, e=emb, rk=ranked: (context.lookup_ids(b.ids),
                                                                                 e.lookup_ids(f, rk))
                                             for b, f in zip(rows, mine)]}
                times = bc.interleaved({k: bc.cycling(lambda i, c=c: c[i](), len(c)) for k, c in pair.items()},
                                       15, warmup=6, block_seconds=0.03)
                r["in the model"] = (statistics.median(times["context + option"]) - statistics.median(times["context"])) * 1e6
            res[o.key.split("|", 1)[1]] = {k: round(v, 1) for k, v in r.items()}
            print(name, o.key.split("|", 1)[1], res[o.key.split("|", 1)[1]], flush=True)
            del emb, batches, firsts
    bc.write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
