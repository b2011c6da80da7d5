"""Embedding lookup benchmark: lowprec's runtime vs raw FBGEMM vs 26 torch EmbeddingBags.

    python tools/bench_lookup.py [--scale 0.05] [--dims 16,64,128] [--poolings 1,20] [--plan PLAN.json]

Tables: the 26 Criteo-Kaggle cardinalities (lowprec.data.synth.KAGGLE_CARDINALITIES) x --scale,
float values N(0, 0.05^2). Ids: per table Zipf over ranks (exponent 1.05-1.3, as `lowprec data
synth`) mapped through a random permutation, --batch samples x --poolings ids per bag; optionally
uniform ids too (`--uniform-extra D:H`, the memory-bound case). Per (dim, pooling), interleaved in
every repeat:

  EmbeddingBag fp32   one torch nn.EmbeddingBag(mode="sum") per table, 26 calls on prebuilt
                      per-table (B, pooling) id tensors, over the rows of lowprec's fp32 TBE (views)
  fbgemm P            raw FBGEMM: an IntNBitTableBatchedEmbeddingBagsCodegen (all 26 tables at
                      precision P, BoundsCheckMode.NONE) called directly with int32 indices/offsets
                      in its feature-major layout. It is the very module lowprec holds
                      (`QuantizedEmbeddings.tbe`), and its indices/offsets are the very tensors of the
                      FeatureIds lowprec gets, so only the calling path differs (where in memory a
                      copy of the tables lands moves a lookup by up to ~30% here)
  fbgemm fp32, separate module   the same, but an independent module holding a byte copy: shows
                      that placement effect
  lowprec P           QuantizedEmbeddings.lookup_ids on the batch's FeatureIds (what QuantizedDLRM
                      gets from the data loader: `iter_batches(..., feature_ids=True)`)
  fbgemm/lowprec plan the same, every table at its own precision from a plan (mixed precision)
  lowprec P, id matrix   QuantizedEmbeddings.forward on the (B, 26 x pooling) int64 id matrix,
                      which it converts to FeatureIds itself (first precision only)
  id matrix -> FeatureIds   that conversion alone: the work the loader takes off the serving path

lowprec's tables are built the way `lowprec convert` builds them (`quantize_form` of each float
table, min/max ranges, then `embeddings_from_forms`); lowprec's outputs are checked equal to raw
FBGEMM's (and the separate module's). A torch.profiler pass over lowprec's forward
splits its time by top-level op. Writes reports/bench_lookup.json (see --out); its section of
reports/benchmarks.md is rendered by tools/_bench_lookup_report.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

from fbgemm_gpu.split_embedding_configs import SparseType  # noqa: E402
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (  # noqa: E402
    IntNBitTableBatchedEmbeddingBagsCodegen,
)
from fbgemm_gpu.tbe.config.embedding_config import BoundsCheckMode, EmbeddingLocation  # noqa: E402

from lowprec.serve.quantize import embeddings_from_forms, quantize_form  # noqa: E402
from lowprec.data.ids import FeatureIds  # noqa: E402
from lowprec.data.synth import KAGGLE_CARDINALITIES, SPARSE_NAMES, zipf_ranks  # noqa: E402
from lowprec.serve.forms import dense_form  # noqa: E402
from lowprec.serve.runtime import QuantizedEmbeddings  # noqa: E402
from lowprec.plan import Plan, TableChoice  # noqa: E402
from lowprec.precision import Precision  # noqa: E402

# the variant names the report reads, and the report itself (bench_all calls bench_lookup.render)
from _bench_lookup_report import EB, INPUTS, SEPARATE, render  # noqa: E402, F401

TOOL = "bench_lookup.py"
PRECISIONS = ("fp32", "fp16", "int8", "int4", "int2")


def fixed_plan() -> tuple[dict[str, str], str]:
    """A mixed plan shaped like search results: big tables int4, mid int8, small fp16."""
    out = {}
    for name, n in zip(SPARSE_NAMES, KAGGLE_CARDINALITIES):
        out[name] = "int4" if n >= 1_000_000 else "int8" if n >= 10_000 else "fp16"
    return out, ("fixed mixed plan (no --plan given): int4 for tables with >= 1M rows at full Kaggle "
                 "scale, int8 for >= 10k, fp16 below")


def plan_precisions(path: str | None) -> tuple[dict[str, str], str]:
    if not path:
        return fixed_plan()
    plan = Plan.load(path)
    return ({n: plan.table(n).precision.value for n in SPARSE_NAMES},
            f"plan searched by `lowprec search` ({path})")


def make_ids(rows: list[int], batch: int, pooling: int, dist: str, seed: int) -> torch.Tensor:
    """(batch, tables x pooling) int64 ids, table-major columns (what lowprec's batches hold)."""
    rng = np.random.default_rng(seed)
    cols = []
    for n in rows:
        if dist == "zipf":
            perm = rng.permutation(n)
            ids = perm[zipf_ranks(rng.random(batch * pooling), n, float(rng.uniform(1.05, 1.3)))]
        else:
            ids = rng.integers(0, n, batch * pooling)
        cols.append(ids.reshape(batch, pooling))
    return torch.from_numpy(np.concatenate(cols, axis=1).astype(np.int64))


def float_tables(rows: list[int], dim: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.empty(n, dim).normal_(0.0, 0.05, generator=g) for n in rows]


def lowprec_module(tables: list[torch.Tensor], precisions: list[Precision], pooling: int) -> QuantizedEmbeddings:
    """Quantize every table as `lowprec convert` does and build the runtime module from the forms."""
    forms = [quantize_form(dense_form(f"t{i}", w), TableChoice(p, None, "minmax"), None)
             for i, (w, p) in enumerate(zip(tables, precisions))]
    emb = embeddings_from_forms(tables[0].shape[1], [(n, pooling) for n in SPARSE_NAMES], forms)
    emb.eval()
    return emb


def raw_fbgemm(emb: QuantizedEmbeddings) -> IntNBitTableBatchedEmbeddingBagsCodegen:
    """A plain FBGEMM inference TBE holding a byte copy of `emb`'s tables."""
    specs = [(t.key, t.rows, t.dim, t.precision.sparse_type, EmbeddingLocation.HOST) for t in emb.physical]
    tbe = IntNBitTableBatchedEmbeddingBagsCodegen(specs, output_dtype=SparseType.FP32, device="cpu",
                                                  bounds_check_mode=BoundsCheckMode.NONE)
    tbe.initialize_weights()
    for (dst, _), src in zip(tbe.split_embedding_weights(split_scale_shifts=False), emb.table_weights()):
        dst.copy_(src)
    return tbe


def profile_forward(emb: QuantizedEmbeddings, sparse: FeatureIds, calls: int) -> dict[str, float]:
    """Milliseconds per forward by top-level op (torch.profiler), lowprec's forward only."""
    from torch.profiler import ProfilerActivity, profile

    emb.lookup_ids(sparse)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            emb.lookup_ids(sparse)
    totals: dict[str, float] = {}
    for evt in prof.events():
        if evt.cpu_parent is None:
            totals[evt.name] = totals.get(evt.name, 0.0) + evt.cpu_time_total / 1000 / calls
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _id_batches(args: argparse.Namespace, rows: list[int], pooling: int, dist: str):
    """--batches distinct id batches, cycled through by every variant: each call sees new ids, as in
    serving (one batch reused would leave its indices and rows hot in cache for raw FBGEMM only).
    Returns the id matrices, their per-table slices and their FeatureIds (what the loader hands over)."""
    batches = [make_ids(rows, args.batch, pooling, dist, args.seed + 1 + k) for k in range(args.batches)]
    per_table = [[c.contiguous() for c in torch.split(s, pooling, dim=1)] for s in batches]
    fids = [FeatureIds.from_matrix(s, (pooling,) * len(rows)) for s in batches]
    return batches, per_table, fids


def _checks(lp: dict[str, QuantizedEmbeddings], fp32: QuantizedEmbeddings, separate, bags, per_table,
            sparse: torch.Tensor, ids: FeatureIds) -> dict[str, float]:
    """Max |diff| of lowprec's outputs against raw FBGEMM's, the separate module's, the EmbeddingBags'."""
    check: dict[str, float] = {}
    for name in lp:
        a = lp[name].lookup_ids(ids)
        check[name] = float((a - lp[name].tbe(ids.indices, ids.offsets).view_as(a)).abs().max())
    first = next(iter(lp))
    check[f"{first}: id matrix vs FeatureIds input"] = float((lp[first](sparse) - lp[first].lookup_ids(ids)).abs().max())
    a = fp32.lookup_ids(ids)
    check["separate fbgemm fp32"] = float((a - separate(ids.indices, ids.offsets).view_as(a)).abs().max())
    fp32_ref = torch.stack([bag(ids) for bag, ids in zip(bags, per_table[0])], dim=1)
    check["EmbeddingBag vs lowprec fp32"] = float((fp32_ref - a).abs().max())
    return check


def _variants(lp: dict[str, QuantizedEmbeddings], separate, bags, batches, per_table, fids, hotness):
    """Every timed variant, each cycling through the id batches."""
    n, first = len(batches), next(iter(lp))
    variants = {EB: bc.cycling(lambda k: [bag(ids) for bag, ids in zip(bags, per_table[k])], n)}
    for name in lp:  # raw FBGEMM: the TBE module lowprec holds, on the same index tensors
        variants[f"fbgemm {name}"] = bc.cycling(lambda k, t=lp[name].tbe: t(fids[k].indices, fids[k].offsets), n)
        variants[f"lowprec {name}"] = bc.cycling(lambda k, m=lp[name]: m.lookup_ids(fids[k]), n)
    variants[SEPARATE] = bc.cycling(lambda k: separate(fids[k].indices, fids[k].offsets), n)
    variants[f"lowprec {first}, id matrix"] = bc.cycling(lambda k: lp[first](batches[k]), n)
    variants[INPUTS] = bc.cycling(lambda k: FeatureIds.from_matrix(batches[k], hotness), n)
    return variants


def _summary(args: argparse.Namespace, dim: int, pooling: int, dist: str, rows: list[int],
             table_bytes: dict[str, int], times: dict[str, list[float]], prof: dict, check: dict) -> dict[str, Any]:
    """One configuration's record: times, paired ratios, overheads, profile, correctness."""
    precisions = list(table_bytes)
    first = precisions[0]
    # raw time / lowprec time = lowprec throughput / raw FBGEMM throughput
    ratios = {name: bc.paired_ratio(times[f"fbgemm {name}"], times[f"lowprec {name}"]) for name in precisions}
    out = {
        "dim": dim, "pooling": pooling, "ids": dist, "batch": args.batch, "rows": rows,
        "lookups_per_call": args.batch * len(rows) * pooling,
        "table_bytes": table_bytes, "fp32_table_bytes": sum(rows) * dim * 4,
        "times": times,
        "lowprec_over_fbgemm": ratios,
        "tbe_over_embeddingbag": {name: bc.speedup(times[EB], times[f"fbgemm {name}"]) for name in precisions},
        "lowprec_over_embeddingbag": {name: bc.speedup(times[EB], times[f"lowprec {name}"]) for name in precisions},
        "over_fp32_fbgemm": {name: bc.speedup(times["fbgemm fp32"], times[f"fbgemm {name}"])
                             for name in precisions} if "fp32" in precisions else {},
        "separate_over_same_fbgemm_fp32": bc.paired_ratio(times["fbgemm fp32"], times[SEPARATE])
        if "fp32" in precisions else None,
        "matrix_over_feature_ids": bc.paired_ratio(times[f"lowprec {first}"], times[f"lowprec {first}, id matrix"]),
        "overhead_ms": _overhead(times, first),
        "profile_ms_per_call": prof,
        "max_abs_diff": check,
    }
    print(f"  D={dim:<3d} pooling={pooling:<2d} {dist:7s} lowprec/fbgemm: "
          + "  ".join(f"{k} {bc.fmt_ratio(v)}" for k, v in ratios.items()), file=sys.stderr)
    return out


def bench_config(args: argparse.Namespace, dim: int, pooling: int, dist: str,
                 plan: dict[str, str]) -> dict[str, Any]:
    rows = [max(2, int(round(c * args.scale))) for c in KAGGLE_CARDINALITIES]
    n_tables = len(rows)
    tables = float_tables(rows, dim, args.seed)
    batches, per_table, fids = _id_batches(args, rows, pooling, dist)
    precisions = {p: [Precision(p)] * n_tables for p in args.precisions}
    precisions["plan"] = [Precision(plan[n]) for n in SPARSE_NAMES]
    lp: dict[str, QuantizedEmbeddings] = {}
    table_bytes: dict[str, int] = {}
    with torch.inference_mode():
        for name, ps in precisions.items():
            lp[name] = lowprec_module(tables, ps, pooling)
            table_bytes[name] = sum(int(w.numel()) for w in lp[name].table_weights())
        # The EmbeddingBags read the very rows of lowprec's fp32 TBE (FBGEMM's CPU fp32 row layout
        # is the plain row-major table), so neither side wins or loses by where its copy landed.
        fp32 = lp.get("fp32") or lowprec_module(tables, [Precision.FP32] * n_tables, pooling)
        bags = [torch.nn.EmbeddingBag.from_pretrained(w.view(torch.float32), freeze=True, mode="sum")
                for w in fp32.table_weights()]
        separate = raw_fbgemm(fp32)  # an independent FBGEMM module holding a byte copy
        del tables
        check = _checks(lp, fp32, separate, bags, per_table, batches[0], fids[0])
        variants = _variants(lp, separate, bags, batches, per_table, fids, (pooling,) * n_tables)
        times = bc.interleaved(variants, args.repeats, args.warmup, args.min_seconds, args.block_seconds)
        prof = {name: profile_forward(lp[name], fids[0], args.profile_calls)
                for name in ("fp32", "int4") if name in lp} if args.profile_calls else {}
    return _summary(args, dim, pooling, dist, rows, table_bytes, times, prof, check)


def _overhead(times: dict[str, list[float]], p: str) -> dict[str, dict[str, float]]:
    """ms per batch at precision p, per repeat: lowprec's time over raw FBGEMM (Python and
    dispatch), the id-matrix conversion alone, and what the id-matrix input adds to a call."""
    raw, lp, matrix = times[f"fbgemm {p}"], times[f"lowprec {p}"], times[f"lowprec {p}, id matrix"]
    return {"total": bc.spread([1e3 * (a - b) for a, b in zip(lp, raw)]),
            "conversion": bc.spread([1e3 * x for x in times[INPUTS]]),
            "matrix_input": bc.spread([1e3 * (m - a) for m, a in zip(matrix, lp)])}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=0.05, help="x the Kaggle cardinalities (0.05: 1.7M rows)")
    p.add_argument("--dims", default="16,64,128")
    p.add_argument("--poolings", default="1,20", help="ids per bag")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--uniform-extra", default="64:20",
                   help="extra DIM:POOLING configs with uniform ids (memory-bound), comma-separated; '' for none")
    p.add_argument("--plan", default=None, help="PLAN.json for the mixed-precision variant")
    p.add_argument("--batches", type=int, default=8, help="distinct id batches cycled through")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=0.12, help="per variant per repeat")
    p.add_argument("--block-seconds", type=float, default=0.01, help="back-to-back calls of one variant")
    p.add_argument("--profile-calls", type=int, default=20, help="0: no profiler pass")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    p.add_argument("--out", default=str(bc.REPORTS / "bench_lookup.json"))
    args = p.parse_args(argv)
    if args.tiny:
        args.scale, args.dims, args.poolings, args.batch = 0.0005, "16", "1,4", 64
        args.uniform_extra, args.repeats, args.warmup, args.min_seconds, args.profile_calls = "16:4", 2, 1, 0.002, 2
        args.batches, args.block_seconds = 2, 0.001
    args.precisions = [Precision.parse(x).value for x in args.precisions.split(",")]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    threads = bc.set_threads(args.threads)
    plan, plan_source = plan_precisions(args.plan)
    configs = [(int(d), int(h), "zipf") for d in args.dims.split(",") for h in args.poolings.split(",")]
    configs += [(int(x.split(":")[0]), int(x.split(":")[1]), "uniform")
                for x in args.uniform_extra.split(",") if x.strip()]
    result = {
        "tool": TOOL, "command": bc.command_line(TOOL, argv), "machine": bc.machine(threads),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "plan": {"source": plan_source, "tables": plan}, "configs": [],
    }
    for dim, pooling, dist in configs:
        result["configs"].append(bench_config(args, dim, pooling, dist, plan))
    bc.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
