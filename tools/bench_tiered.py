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
  tiered           {"kind": "tiered", "tiers": --tiers}, cold rows at --cold: the runtime's
                   padded path (rank directory id map, then one TBE over every tier); tables
                   under --min-rows plain at --small (cache-resident: a tier would add slots only)
  tiered, split upstream   the same module's TBE on indices already split into tiers (the id map
                   done by the data path, as the loader already builds FeatureIds): the layout's
                   own lookup cost
  tiered id map    the id map alone (what moving it upstream saves)
Every tiered output is checked against the uniform fp32 one within the tiers' quantization error, and
the split-upstream output equals the runtime's. Also reported: each variant's bytes, the tiers'
share of lookups, and after a popularity shift (--shift of the ranks move to new ids) the hot tier's
share before and after re-ranking from the shifted traffic's counts.
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
from lowprec.serve.tiers import TierSpec, rank_tiers, traffic_shares  # noqa: E402

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


def weight_chunks(t: int, n: int, dim: int, seed: int):
    """Table t's float rows N(0, 0.05^2), CHUNK rows at a time (one generator per table)."""
    g = torch.Generator().manual_seed(seed * 1000 + t)
    for start in range(0, n, CHUNK):
        yield start, torch.empty(min(CHUNK, n - start), dim).normal_(0.0, 0.05, generator=g)


def weight(t: int, n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.cat([w for _, w in weight_chunks(t, n, dim, seed)])


def uniform_module(rows: list[int], dim: int, p: Precision, pooling: int, seed: int) -> QuantizedEmbeddings:
    """Every table at p, encoded one table at a time straight into the TBE."""
    tables = [PhysicalTable(f"t{i}", n, dim, p) for i, n in enumerate(rows)]
    feats = [Feature(t.key) for t in tables]
    serving = [TableServing(SPARSE_NAMES[i], pooling, ((i,),)) for i in range(len(rows))]
    emb = QuantizedEmbeddings(dim, tables, feats, serving, rows=rows)
    for t, dst in enumerate(emb.table_weights()):  # chunk by chunk: no whole float table held
        for start, w in weight_chunks(t, rows[t], dim, seed):
            code = table_codec(p).encode(w)
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
    out = []
    for part in text.split(","):
        share, _, p = part.partition(":")
        out.append([float(share), p])
    return out


def _bytes(emb: QuantizedEmbeddings) -> int:
    rows = sum(w.numel() for w in emb.table_weights())
    return rows + sum(b.numel() * b.element_size() for b in emb.buffers())


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
    tiered = TableChoice(Precision(args.cold), {"kind": "tiered", "tiers": parse_tiers(args.tiers)})
    mods["tiered"], _ = shared_module(rows, args.dim, tiered, TableChoice(Precision(args.small)), args.min_rows,
                                      counts, args.pooling, args.seed)
    print("built hot sharing and tiered", file=sys.stderr, flush=True)
    for p in UNIFORM:
        t0 = time.perf_counter()
        mods[p] = uniform_module(rows, args.dim, Precision(p), args.pooling, args.seed)
        print(f"built {p} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return mods


def run(args: argparse.Namespace) -> dict[str, Any]:
    bc.set_threads(args.threads)
    rows = [max(1, int(round(n * args.scale))) for n in KAGGLE_CARDINALITIES]
    traffic = Traffic(rows, args.seed)
    n_calib = args.calib_batches * args.batch * args.pooling
    counts = [traffic.counts(t, n_calib, 10_000 + args.seed) for t in range(len(rows))]
    batches = [traffic.batch(args.batch, args.pooling, args.seed + 1 + k) for k in range(args.batches)]
    mods = build(args, rows, counts)
    tiered = mods["tiered"]
    split = [tiered.padded_inputs([f.table(t) for t in range(len(rows))]) for f in batches]
    check = {}
    with torch.no_grad():
        ref = mods["fp32"].lookup_ids(batches[0])
        for name, m in mods.items():
            check[f"{name} vs fp32, max |diff|"] = float((m.lookup_ids(batches[0]) - ref).abs().max())
        got = tiered.lookup_ids(batches[0])
        check["tiered split upstream vs runtime, max |diff|"] = float(
            (tiered.pooled_from_tbe(tiered.tbe(*split[0]), args.batch) - got).abs().max())
    n = len(batches)
    variants = {name: bc.cycling(lambda k, m=m: m.lookup_ids(batches[k]), n) for name, m in mods.items()}
    variants["tiered, split upstream"] = bc.cycling(
        lambda k: tiered.pooled_from_tbe(tiered.tbe(*split[k]), args.batch), n)
    variants["tiered id map only"] = bc.cycling(
        lambda k: tiered.padded_inputs([batches[k].table(t) for t in range(len(rows))]), n)
    load_before = os.getloadavg()
    with torch.no_grad():
        times = bc.interleaved(variants, args.repeats, block_seconds=args.block_seconds,
                               min_seconds=3 * args.block_seconds)
    lookups = args.batch * len(rows) * args.pooling
    byts = {name: _bytes(m) for name, m in mods.items()}
    byts["tiered, split upstream"] = byts["tiered"]
    spec = TierSpec.from_json({"kind": "tiered", "tiers": parse_tiers(args.tiers)}, "*")
    big = [t for t, n in enumerate(rows) if n >= args.min_rows]
    shifted = traffic.shift(args.shift, args.seed + 7)
    n_eval = args.batches * args.batch * args.pooling
    new_counts = [shifted.counts(t, n_calib, 20_000 + args.seed) if t in big else counts[t] for t in range(len(rows))]
    return {
        "command": bc.command_line(TOOL, sys.argv[1:]), "machine": bc.machine(args.threads),
        "load_before": load_before, "load_after": os.getloadavg(),
        "config": vars(args), "rows": rows, "lookups_per_call": lookups, "checks": check,
        "times": times, "bytes": byts,
        "ms": {k: bc.spread([x * 1000 for x in v]) for k, v in times.items()},
        "over_int4": {k: bc.speedup(times["int4"], v) for k, v in times.items()},
        "over_fp32": {k: bc.speedup(times["fp32"], v) for k, v in times.items()},
        "bytes_over_int4": {k: v / byts["int4"] for k, v in byts.items()},
        "hot_share": {
            "tables": [SPARSE_NAMES[t] for t in big],
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
             f"neither tiered nor shared (the tiered plan's at {c['small']}, hot sharing's at its precision). Median [min-max] over "
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
              "Checks (max |diff| of pooled outputs against uniform fp32; split upstream against the runtime): "
              + ", ".join(f"{k.replace(', max |diff|', '')} {v:.3g}" for k, v in r["checks"].items())]
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--pooling", type=int, default=20)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--calib-batches", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--block-seconds", type=float, default=0.1, help="timed block length (3 blocks a repeat)")
    ap.add_argument("--tiers", default="0.02:fp16", help="upper tiers, hottest first: SHARE:PRECISION,...")
    ap.add_argument("--cold", default="int4")
    ap.add_argument("--min-rows", type=int, default=100_000,
                    help="tables with fewer rows are not tiered or shared (they sit in cache anyway)")
    ap.add_argument("--small", default="fp16", help="precision of the tiered plan's untiered small tables")
    ap.add_argument("--hot-ratio", type=float, default=2.0)
    ap.add_argument("--hot-precision", default="int8")
    ap.add_argument("--shift", type=float, default=0.01, help="share of ranks whose ids move (popularity shift)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="reports/tiered.json")
    ap.add_argument("--render", metavar="JSON", help="only print the report tables of an earlier result")
    args = ap.parse_args(argv)
    if args.render:
        import json

        print("\n".join(render(json.loads(Path(args.render).read_text()))))
        return
    result = run(args)
    bc.write_json(args.out, result)
    print(f"{'variant':<24} {'ms/call':>22} {'x int4':>20} {'x fp32':>20} {'bytes/int4':>10}")
    for k in result["ms"]:
        b = result["bytes_over_int4"].get(k)
        print(f"{k:<24} {bc.fmt_spread(result['ms'][k]):>22} {bc.fmt_ratio(result['over_int4'][k]):>20} "
              f"{bc.fmt_ratio(result['over_fp32'][k]):>20} {'' if b is None else f'{b:.3f}':>10}")
    print(result["checks"], result["hot_share"], result["load_before"], result["load_after"])


if __name__ == "__main__":
    main()
