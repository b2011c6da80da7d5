"""Tiered tables against uniform precisions and hot sharing: lookup throughput and bytes on Zipf traffic.

    python tools/bench_tiered.py [--scale 1.0] [--dim 16] [--tiers 0.02:fp16] [--cold int4]

Tables: the 26 Criteo-Kaggle cardinalities x --scale, float values N(0, 0.05^2), generated one table
at a time (seeded), so no process holds more than the modules themselves. Traffic: per table a fixed
Zipf law over ranks (exponent 1.05-1.3, as `lowprec data synth`) mapped through a fixed random
permutation of the ids; --batch samples x --pooling ids a bag. Row access counts for hot sharing and
tiering come from --calib-batches separate batches of that traffic (what `lowprec calibrate`
records), never from the timed batches.

Variants, each built the way `lowprec convert` builds it (lowprec.serve.quantize), timed
interleaved in one process (tools/_bench_common.interleaved) on the loader's FeatureIds:
  uniform P        every table at P (fp32, fp16, int8, int4): the runtime's direct TBE path
  hot sharing      {"kind": "hot", "ratio": R, "hot": 0.5} at --hot-precision (searchsorted id map)
                   on tables of >= --min-rows rows, smaller ones plain at that precision
  tiered           {"kind": "tiered", "tiers": --tiers}, cold rows at --cold, rows of each tier in
                   id order (rank directories, 0.5 B a row): the runtime's native fused split
                   (lowprec.serve.tier_native) on the ids as they come; tables under --min-rows
                   plain at --small (cache-resident: a tier would add slots only)
  tiered, torch ops        the same module on its stock-op path (TierLookup, -1 padded bags): the
                   fallback where no C compiler is found, and the TorchScript export's path
  tiered rank order        "order": "rank" (rows by rank, a 4 B-a-row rank map): ids as they come
                   (the split gathers id -> rank), and `, ranked ids` (the feature pipeline issues
                   ranks: the split is compares only, the rank map is not read)
  int4 rank order, ranked ids / int4, small tables at --small / both: the tiered plan without tiers
                   (big tables' rows by rank fed ranks; small tables at the plan's --small; both)
  split alone: ...          the native split by itself, each mode (what it costs against a lookup)
  layout alone: ...         the tiered module's TBE and pooling on ids split before the timer (what
                   the layout costs if the split were free)
Every output is checked against the uniform fp32 one within the quantization error; the native
split's output equals the stock path's bit for bit, ranked ids' equal raw ids'. Also reported: each
variant's bytes (ranked ids: without the rank map, which the server never reads), the tiers' share
of lookups, and after a popularity shift (--shift of the ranks move to new ids) the hot tier's share
before and after re-ranking from the shifted traffic's counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402
import _huge_pages as hp  # noqa: E402

from lowprec.allocator import keep_buffers_in_heap  # noqa: E402
from lowprec.data.ids import FeatureIds  # noqa: E402
from lowprec.data.synth import KAGGLE_CARDINALITIES, SPARSE_NAMES, zipf_ranks  # noqa: E402
from lowprec.plan import TableChoice  # noqa: E402
from lowprec.precision import Precision  # noqa: E402
from lowprec.serve.forms import dense_form  # noqa: E402
from lowprec.serve.quantize import QuantizedForm, embeddings_from_forms, quantize_form  # noqa: E402
from lowprec.serve.runtime import PhysicalTable, QuantizedEmbeddings, TableServing  # noqa: E402
from lowprec.serve.forms import Feature  # noqa: E402
from lowprec.serve.sharing import post_training_form  # noqa: E402
from lowprec.serve.tables import table_codec  # noqa: E402
from lowprec.serve import tier_native  # noqa: E402
from lowprec.serve.tiers import TierSpec, parse_layout, rank_tiers, traffic_shares  # noqa: E402

TOOL = "bench_tiered.py"
UNIFORM = ("fp32", "fp16", "int8", "int4")


class Traffic:
    """Per table a fixed Zipf exponent and rank -> id permutation; batches of ids drawn from them."""

    def __init__(self, rows: list[int], seed: int):
        rng = np.random.default_rng(seed)
        self.rows = rows
        self.a = [float(rng.uniform(1.05, 1.3)) for _ in rows]
        self.perm = [rng.permutation(n).astype(np.int32) for n in rows]

    def ids(self, t: int, count: int, seed: int) -> np.ndarray:
        u = np.random.default_rng([seed, t]).random(count)
        return self.perm[t][zipf_ranks(u, self.rows[t], self.a[t])]

    def batch(self, batch: int, pooling: int, seed: int) -> FeatureIds:
        cols = [self.ids(t, batch * pooling, seed).reshape(batch, pooling) for t in range(len(self.rows))]
        return FeatureIds.from_matrix(np.concatenate(cols, axis=1), (pooling,) * len(self.rows))

    def counts(self, t: int, count: int, seed: int) -> torch.Tensor:
        return torch.from_numpy(np.bincount(self.ids(t, count, seed), minlength=self.rows[t]).astype(np.float32))

    def shift(self, share: float, seed: int) -> "Traffic":
        """The same laws with the ids of the top `share` of ranks moved onto random other ids."""
        out = Traffic.__new__(Traffic)
        out.rows, out.a, out.perm = self.rows, self.a, []
        rng = np.random.default_rng(seed)
        for n, perm in zip(self.rows, self.perm):
            k = int(share * n)
            p = perm.copy()
            if k:
                other = rng.choice(np.arange(k, n), size=min(k, n - k), replace=False)
                p[:len(other)], p[other] = perm[other], perm[:len(other)]
            out.perm.append(p)
        return out


CHUNK = 1 << 20
RANKED_INT4 = "int4 rank order, ranked ids"
SMALL_INT4 = "int4, small tables at --small"
RANKED_SMALL_INT4 = "int4 rank order, small tables at --small, ranked ids"
RANKED_UNTIERED = (RANKED_INT4, RANKED_SMALL_INT4)  # untiered modules fed ranked ids


def weight_chunks(t: int, n: int, dim: int, seed: int):
    """Table t's float rows N(0, 0.05^2), CHUNK rows at a time (one generator per table)."""
    g = torch.Generator().manual_seed(seed * 1000 + t)
    for start in range(0, n, CHUNK):
        yield start, torch.empty(min(CHUNK, n - start), dim).normal_(0.0, 0.05, generator=g)


def weight(t: int, n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.cat([w for _, w in weight_chunks(t, n, dim, seed)])


def uniform_module(rows: list[int], dim: int, p: Precision | list[Precision], pooling: int, seed: int,
                   ranks: dict[int, torch.Tensor] | None = None) -> QuantizedEmbeddings:
    """Every table at p (or table t at p[t]), encoded one table at a time straight into the TBE; tables
    in `ranks` (t -> int32 id -> rank) store their rows by rank, hottest first, and take ranked ids."""
    ps = p if isinstance(p, list) else [p] * len(rows)
    tables = [PhysicalTable(f"t{i}", n, dim, ps[i]) for i, n in enumerate(rows)]
    feats = [Feature(t.key) for t in tables]
    serving = [TableServing(SPARSE_NAMES[i], pooling, ((i,),)) for i in range(len(rows))]
    emb = QuantizedEmbeddings(dim, tables, feats, serving, rows=rows)
    for t, dst in enumerate(emb.table_weights()):  # chunk by chunk: no whole float table held
        if ranks and t in ranks:  # row r holds the id of rank r (one whole float table held)
            chunks = [(0, weight(t, rows[t], dim, seed)[torch.argsort(ranks[t].long())])]
        else:
            chunks = weight_chunks(t, rows[t], dim, seed)
        for start, w in chunks:
            code = table_codec(ps[t]).encode(w)
            dst[start:start + len(w), :code.shape[1]].copy_(code)
    return emb.eval()


def shared_module(rows: list[int], dim: int, choice: TableChoice, small: TableChoice, min_rows: int,
                  counts: list[torch.Tensor], pooling: int, seed: int) -> tuple[QuantizedEmbeddings, list[QuantizedForm]]:
    """Tables of >= min_rows rows under `choice` (a sharing kind), smaller ones plain at `small`."""
    forms = []
    for t, n in enumerate(rows):
        form = dense_form(f"t{t}", weight(t, n, dim, seed))
        if n >= min_rows:
            form = post_training_form(form, choice.sharing, counts[t], f"t{t}")
        forms.append(quantize_form(form, choice if n >= min_rows else small, counts[t]))
    emb = embeddings_from_forms(dim, [(SPARSE_NAMES[t], pooling) for t in range(len(rows))], forms, rows)
    return emb.eval(), forms


def parse_tiers(text: str) -> list[list[Any]]:
    """--tiers 'SHARE:PRECISION,...' -> the upper tiers of a layout, checked as the search checks its
    --tier-layouts (lowprec.serve.tiers.parse_layout; the cold tier is --cold)."""
    return parse_layout(f"{text}/int4", "--tiers")[0]["tiers"]


def _bytes(emb: QuantizedEmbeddings) -> int:
    """What an artifact of `emb` stores: the tables' rows and the id maps' tensors, each once. The
    id-order tiers' rank directories sit in a list on their TierLookup, not among the module's
    buffers (counted here since the seventh session: before, the reports' id-order byte ratios left
    them out); the runtime's shared popcount table is not stored."""
    rows = sum(w.numel() for w in emb.table_weights())
    maps = {b.data_ptr(): b for name, b in emb.named_buffers() if not name.endswith(".popcount")}
    maps |= {d.data_ptr(): d for m in emb.id_maps for d in getattr(m, "dirs", [])}
    return rows + sum(b.numel() * b.element_size() for b in maps.values())


def shares(traffic: Traffic, spec: TierSpec, counts: list[torch.Tensor], big: list[int], n_ids: int,
           seed: int) -> list[float]:
    """The upper tiers' share of `traffic`'s lookups into the `big` tables, tiers ranked by `counts`."""
    hit = total = 0.0
    for t in big:
        tiers = rank_tiers(counts[t], spec.sizes(traffic.rows[t]))
        window = traffic.counts(t, n_ids, seed)
        s = traffic_shares(tiers, window)
        hit += sum(s[:-1]) * float(window.sum())
        total += float(window.sum())
    return hit / total


def build(args: argparse.Namespace, rows: list[int], counts: list[torch.Tensor]) -> dict[str, QuantizedEmbeddings]:
    mods: dict[str, QuantizedEmbeddings] = {}
    # the shared forms first: their float working copies peak before the big uniform modules exist
    hot = TableChoice(Precision(args.hot_precision), {"kind": "hot", "ratio": args.hot_ratio, "hot": 0.5})
    mods["hot sharing"], _ = shared_module(rows, args.dim, hot, TableChoice(hot.precision), args.min_rows,
                                           counts, args.pooling, args.seed)
    for name, order in (("tiered", "id"), ("tiered rank order", "rank")):
        tiered = TableChoice(Precision(args.cold), {"kind": "tiered", "tiers": parse_tiers(args.tiers), "order": order})
        mods[name], _ = shared_module(rows, args.dim, tiered, TableChoice(Precision(args.small)), args.min_rows,
                                      counts, args.pooling, args.seed)
    print("built hot sharing and tiered", file=sys.stderr, flush=True)
    for p in UNIFORM:
        t0 = time.perf_counter()
        mods[p] = uniform_module(rows, args.dim, Precision(p), args.pooling, args.seed)
        print(f"built {p} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    # the tiered plan without its tiers, taken apart (module docstring): ranked int4, --small tables, both
    ranks = mods["tiered rank order"].rank_maps()
    mixed = [Precision.INT4 if n >= args.min_rows else Precision(args.small) for n in rows]
    mods[RANKED_INT4] = uniform_module(rows, args.dim, Precision.INT4, args.pooling, args.seed, ranks)
    mods[SMALL_INT4] = uniform_module(rows, args.dim, mixed, args.pooling, args.seed)
    mods[RANKED_SMALL_INT4] = uniform_module(rows, args.dim, mixed, args.pooling, args.seed, ranks)
    return mods


def stock(m: QuantizedEmbeddings, f: FeatureIds, ranked: bool = False) -> torch.Tensor:
    """`m`'s lookup on its stock-op path (the native split turned off for this call)."""
    m.native_split = False
    try:
        return m.lookup_ids(f, ranked)
    finally:
        m.native_split = True


def checks(mods: dict[str, QuantizedEmbeddings], batches: list[FeatureIds], ranked: list[FeatureIds]) -> dict[str, Any]:
    """Max |diff| of each variant against uniform fp32, and the native/stock and ranked/raw identities."""
    check: dict[str, Any] = {}
    with torch.no_grad():
        ref = mods["fp32"].lookup_ids(batches[0])
        for name, m in ((k, v) for k, v in mods.items() if k not in RANKED_UNTIERED):
            check[f"{name} vs fp32, max |diff|"] = float((m.lookup_ids(batches[0]) - ref).abs().max())
        for name, same in ((RANKED_INT4, "int4"), (RANKED_SMALL_INT4, SMALL_INT4)):
            check[f"{name} == {same} on raw ids"] = bool(torch.equal(
                mods[name].lookup_ids(ranked[0]), mods[same].lookup_ids(batches[0])))
        for name in ("tiered", "tiered rank order"):
            m = mods[name]
            got = m.lookup_ids(batches[0])
            check[f"{name}: native split == torch ops"] = bool(torch.equal(got, stock(m, batches[0])))
        m = mods["tiered rank order"]
        got = m.lookup_ids(batches[0])
        check["ranked ids == raw ids (native, torch ops)"] = [
            bool(torch.equal(m.lookup_ids(ranked[0], True), got)), bool(torch.equal(stock(m, ranked[0], True), got))]
        check["native split available"] = tier_native.kernel() is not None
    return check


def timed_variants(mods: dict[str, QuantizedEmbeddings], batches: list[FeatureIds],
                   ranked: list[FeatureIds]) -> dict[str, Any]:
    n = len(batches)
    variants = {name: bc.cycling(lambda k, m=m, src=ranked if name in RANKED_UNTIERED else batches:
                                 m.lookup_ids(src[k]), n) for name, m in mods.items()}
    tiered, rank_order = mods["tiered"], mods["tiered rank order"]
    variants["tiered, torch ops"] = bc.cycling(lambda k: stock(tiered, batches[k]), n)
    variants["tiered rank order, ranked ids"] = bc.cycling(lambda k: rank_order.lookup_ids(ranked[k], True), n)
    for name, m, src, r in (("id order", tiered, batches, False), ("rank order, id -> rank", rank_order, batches, False),
                            ("rank order, ranked ids", rank_order, ranked, True)):
        plan = tier_native.plan_of(m)
        if plan is not None and tier_native.kernel() is not None:
            variants[f"split alone: {name}"] = bc.cycling(
                lambda k, p=plan, s=src, r=r: tier_native.split(p, s[k].indices, s[k].batch, r), n)
            if name != "rank order, id -> rank":  # the layout's own cost: TBE + pooling on split ids
                pre = [tier_native.split(plan, f.indices, f.batch, r) for f in src]
                variants[f"layout alone ({name.split(',')[0]}): TBE + pooling, ids split before"] = bc.cycling(
                    lambda k, m=m, p=plan, pre=pre: tier_native.lookup_split(m, p, *pre[k], batches[k].batch), n)
    return variants


def workload(rows: list[int], args: argparse.Namespace) -> tuple[Traffic, list[torch.Tensor], list[FeatureIds]]:
    """Zipf traffic over tables of `rows`, row counts from --calib-batches batches of it (what calibration
    records), and the --batches timed batches (never counted)."""
    traffic = Traffic(rows, args.seed)
    n_calib = args.calib_batches * args.batch * args.pooling
    counts = [traffic.counts(t, n_calib, 10_000 + args.seed) for t in range(len(rows))]
    return traffic, counts, [traffic.batch(args.batch, args.pooling, args.seed + 1 + k) for k in range(args.batches)]


def workload_args(ap: argparse.ArgumentParser) -> None:
    """The options that define the tables, the traffic and the timing (shared with bench_tier_split)."""
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--calib-batches", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--block-seconds", type=float, default=0.1, help="timed block length (3 blocks a repeat)")
    ap.add_argument("--tiers", default="0.02:fp16", help="upper tiers, hottest first: SHARE:PRECISION,...")
    ap.add_argument("--cold", default="int4")
    ap.add_argument("--min-rows", type=int, default=100_000,
                    help="tables with fewer rows are not tiered or shared (they sit in cache anyway)")
    ap.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    bc.set_threads(args.threads)
    keep_buffers_in_heap()  # as the CLI does: per-call buffers reused, not fresh mmap pages
    rows = [max(1, int(round(n * args.scale))) for n in KAGGLE_CARDINALITIES]
    names = list(SPARSE_NAMES)
    if args.tiered_only:  # only the tables a tiered plan tiers: what the layout itself changes
        names = [name for name, n in zip(names, rows) if n >= args.min_rows]
        rows = [n for n in rows if n >= args.min_rows]
    traffic, counts, batches = workload(rows, args)
    n_calib = args.calib_batches * args.batch * args.pooling
    mods = build(args, rows, counts)
    huge = hp.collapse_modules(mods.values()) if args.huge_pages else None  # as a THP-backed server has them
    ranked = [mods["tiered rank order"].ranked(f) for f in batches]
    check = checks(mods, batches, ranked)
    variants = timed_variants(mods, batches, ranked)
    load_before = os.getloadavg()
    with torch.no_grad():
        times = bc.interleaved(variants, args.repeats, block_seconds=args.block_seconds,
                               min_seconds=3 * args.block_seconds)
    lookups = args.batch * len(rows) * args.pooling
    byts = {name: _bytes(m) for name, m in mods.items()}
    byts["tiered, torch ops"] = byts["tiered"]
    rank_bytes = sum(b.numel() * b.element_size() for n, b in mods["tiered rank order"].named_buffers()
                     if n.endswith(".rank"))
    byts["tiered rank order, ranked ids"] = byts["tiered rank order"] - rank_bytes
    spec = TierSpec.from_json({"kind": "tiered", "tiers": parse_tiers(args.tiers)}, "*")
    big = [t for t, n in enumerate(rows) if n >= args.min_rows]
    shifted = traffic.shift(args.shift, args.seed + 7)
    n_eval = args.batches * args.batch * args.pooling
    new_counts = [shifted.counts(t, n_calib, 20_000 + args.seed) if t in big else counts[t] for t in range(len(rows))]
    return {
        "command": bc.command_line(TOOL, argv), "machine": bc.machine(args.threads),
        "load_before": load_before, "load_after": os.getloadavg(),
        "config": vars(args), "rows": rows, "lookups_per_call": lookups, "checks": check, "huge_pages": huge,
        "times": times, "bytes": byts,
        "ms": {k: bc.spread([x * 1000 for x in v]) for k, v in times.items()},
        "over_int4": {k: bc.speedup(times["int4"], v) for k, v in times.items()},
        "over_fp32": {k: bc.speedup(times["fp32"], v) for k, v in times.items()},
        "bytes_over_int4": {k: v / byts["int4"] for k, v in byts.items()},
        "hot_share": {
            "tables": [names[t] for t in big],
            "calibrated traffic": shares(traffic, spec, counts, big, n_eval, 30_000),
            "after shift, old ranking": shares(shifted, spec, counts, big, n_eval, 30_000),
            "after shift, re-ranked": shares(shifted, spec, new_counts, big, n_eval, 30_001),
        },
    }


def render(r: dict[str, Any]) -> list[str]:
    """The measured tables of reports/tiered.md from a result."""
    c = r["config"]
    lines = [f"`{r['command']}`", "", bc.machine_line(r["machine"]) + f"; load average before "
             f"{r['load_before'][0]:.1f}, after {r['load_after'][0]:.1f}", "",
             f"{sum(r['rows']):,} rows, D={c['dim']}, batch {c['batch']}, {c['pooling']} Zipf ids a bag, "
             f"{r['lookups_per_call']:,} lookups a call, {c['threads']} thread(s); tiers {c['tiers']} / {c['cold']}; "
             f"hot sharing ratio {c['hot_ratio']} at {c['hot_precision']}; tables under {c['min_rows']:,} rows "
             f"neither tiered nor shared (the tiered plan's at {c['small']}, hot sharing's at its precision)"
             f"{'; only the tiered tables served (--tiered-only)' if c.get('tiered_only') else ''}{hp.describe(r.get('huge_pages'))}. Median [min-max] over "
             f"{c['repeats']} interleaved repeats; ratios paired per repeat.", ""]
    rows = [[k, bc.fmt_spread(r["ms"][k], digits=1), f"{r['lookups_per_call'] / r['ms'][k]['median'] / 1e3:.1f}",
             bc.fmt_ratio(r["over_fp32"][k]), bc.fmt_ratio(r["over_int4"][k]),
             f"{r['bytes'][k] / 1e6:,.0f}" if k in r["bytes"] else "", 
             f"{r['bytes_over_int4'][k]:.3f}" if k in r["bytes_over_int4"] else ""] for k in r["ms"]]
    lines += bc.md_table(["variant", "ms / call", "M lookups/s", "x fp32 (speed)", "x int4 (speed)", "MB",
                          "bytes / int4"], rows)
    h = r["hot_share"]
    lines += ["", f"Upper tiers' share of lookups into the {len(h['tables'])} tiered tables: "
              f"calibrated traffic {h['calibrated traffic']:.3f}; after a popularity shift "
              f"({c['shift']:.0%} of ranks moved to other ids) with the old ranking "
              f"{h['after shift, old ranking']:.3f}, re-ranked from the shifted traffic's counts "
              f"{h['after shift, re-ranked']:.3f}.", "",
              "Checks (max |diff| of pooled outputs against uniform fp32; the native split against the torch ops and ranked ids against raw ids, bit for bit): "
              + ", ".join(f"{k.replace(', max |diff|', '')} {v:.3g}" if isinstance(v, float) else f"{k}: {v}"
                         for k, v in r["checks"].items())]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    workload_args(ap)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiered-only", action="store_true",
                    help="serve only the tables of >= --min-rows rows (the 19 small ones are the same in every variant)")
    ap.add_argument("--small", default="fp16", help="precision of the tiered plan's untiered small tables")
    ap.add_argument("--hot-ratio", type=float, default=2.0)
    ap.add_argument("--hot-precision", default="int8")
    ap.add_argument("--shift", type=float, default=0.01, help="share of ranks whose ids move (popularity shift)")
    ap.add_argument("--huge-pages", action="store_true", help="time every variant's tables on 2 MB pages (tools/_huge_pages.py)")
    ap.add_argument("--out", default="reports/tiered.json")
    ap.add_argument("--render", metavar="JSON", help="only print the report tables of an earlier result")
    args = ap.parse_args(argv)
    if args.render:
        import json

        print("\n".join(render(json.loads(Path(args.render).read_text()))))
        return
    result = run(args, argv)
    bc.write_json(args.out, result)
    print(f"{'variant':<24} {'ms/call':>22} {'x int4':>20} {'x fp32':>20} {'bytes/int4':>10}")
    for k in result["ms"]:
        b = result["bytes_over_int4"].get(k)
        print(f"{k:<24} {bc.fmt_spread(result['ms'][k]):>22} {bc.fmt_ratio(result['over_int4'][k]):>20} "
              f"{bc.fmt_ratio(result['over_fp32'][k]):>20} {'' if b is None else f'{b:.3f}':>10}")
    print(result["checks"], result["hot_share"], result["load_before"], result["load_after"])


if __name__ == "__main__":
    main()
