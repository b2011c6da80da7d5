"""Can stock FBGEMM/torch ops split ids into tiers cheaply enough for a tiered table to beat int4?

    OMP_NUM_THREADS=1 python tools/_tiered_split_ops.py [--repeats 11] [--out /tmp/tiered/split_ops.json]

The 7 Criteo Kaggle tables of >= 100k rows (33.6M rows; the ones a tiered plan tiers), D=16,
batch 2048, 20 Zipf ids a bag (tools/bench_tiered.py's traffic), bare FBGEMM inference TBEs (no
lowprec runtime), timed interleaved in one process against uniform int4 on the same ids:

  int4, fp16                uniform tables, the ids as they come
  int4/fp16, rank-ordered   the same on ids renumbered by popularity (row order = rank: hot rows
                            packed, no tiers)
  tiered, pre-split         a 2% fp16 tier + int4 cold tier per table, one TBE of 14 tables, on ids
                            already split and compacted (what the layout costs if the split is free)
  tiered, bucketize         the split by FBGEMM's block_bucketize_sparse_features on rank-ordered
                            ids (tier = id range), then the pre-split TBE
  tiered, -1 pads           every bag in both tiers, the other tier's slots -1 (no compaction)
  split ops alone           block_bucketize; masked_select_jagged_1d x2; pruned_array_lookup (FBGEMM's
                            index remapping: original id -> rank, 4 B a row)
Ranks are drawn from the Zipf law and mapped to ids through a fixed permutation, so "rank-ordered
ids" are what a vocabulary issuing ids by popularity would hand over. Every tiered variant's output
is checked equal (to fp32 rounding) to the pre-split one.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_common as bc  # noqa: E402
from fbgemm_gpu.split_embedding_configs import SparseType  # noqa: E402
from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode  # noqa: E402
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (  # noqa: E402
    IntNBitTableBatchedEmbeddingBagsCodegen as TBE,
)
from fbgemm_gpu.tbe.config.embedding_config import EmbeddingLocation  # noqa: E402

from lowprec.data.synth import KAGGLE_CARDINALITIES, zipf_ranks  # noqa: E402

D, B, P, HOT = 16, 2048, 20, 0.02
ops = torch.ops.fbgemm


def tbe(specs: list[tuple[int, SparseType]]) -> TBE:
    m = TBE([("", n, D, st, EmbeddingLocation.HOST) for n, st in specs], pooling_mode=PoolingMode.SUM,
            device="cpu")
    m.initialize_weights()
    g = torch.Generator().manual_seed(0)
    for (w, qparams), (n, st) in zip(m.split_embedding_weights(), specs):
        if st == SparseType.FP16:  # N(0, 0.05^2) values; fill_random_weights' random bytes hold NaNs
            w.view(torch.float16).copy_(torch.randn(n, D, generator=g) * 0.05)
        else:  # random codes, one (scale, bias) for every row
            w.copy_(torch.randint(0, 256, w.shape, generator=g, dtype=torch.uint8))
            qparams.view(torch.float16).copy_(torch.tensor([0.01, -0.075], dtype=torch.float16))
    return m


class Setup:
    def __init__(self, seed: int = 0):
        self.rows = [n for n in KAGGLE_CARDINALITIES if n >= 100_000]
        self.T = T = len(self.rows)
        rng = np.random.default_rng(seed)
        self.a = [float(rng.uniform(1.05, 1.3)) for _ in self.rows]
        perm = [torch.from_numpy(rng.permutation(n).astype(np.int64)) for n in self.rows]
        self.H = [int(HOT * n) for n in self.rows]
        self.hcol = torch.tensor(self.H).view(T, 1)
        self.pos = [torch.tensor([0, h, n]) for n, h in zip(self.rows, self.H)]
        self.block = torch.tensor(self.rows)
        self.lengths = torch.full((T * B,), P, dtype=torch.int64)
        self.offsets = torch.arange(0, T * B * P + 1, P, dtype=torch.int64)
        self.off2 = torch.cat([self.offsets[:-1], self.offsets + self.offsets[-1]])
        rank_of = [torch.empty_like(p).scatter_(0, p, torch.arange(len(p))) for p in perm]
        self.remap = torch.cat([r.int() for r in rank_of])
        self.remap_off = torch.tensor([0, *np.cumsum(self.rows)], dtype=torch.int64)
        self.batches = []
        for s in range(3):
            ranks = [torch.from_numpy(zipf_ranks(np.random.default_rng([s, t]).random(B * P), n, self.a[t])
                                      .astype(np.int64)) for t, n in enumerate(self.rows)]
            self.batches.append((torch.cat([perm[t][r] for t, r in enumerate(ranks)]), torch.cat(ranks)))
        self.int4 = tbe([(n, SparseType.INT4) for n in self.rows])
        self.fp16 = tbe([(n, SparseType.FP16) for n in self.rows])
        self.tier = tbe([(h, SparseType.FP16) for h in self.H] + [(n - h, SparseType.INT4) for n, h in zip(self.rows, self.H)])

    def bucketize(self, ranks):
        lengths, idx, *_ = ops.block_bucketize_sparse_features(self.lengths, ranks, False, False, self.block, 2,
                                                               None, None, -1, self.pos)
        return idx, ops.asynchronous_complete_cumsum(lengths)

    def jagged(self, ranks):
        v = ranks.view(self.T, -1)
        hot = (v < self.hcol).view(-1)
        hv, hl = ops.masked_select_jagged_1d(ranks, self.lengths, hot)
        cv, cl = ops.masked_select_jagged_1d((v - self.hcol).view(-1), self.lengths, ~hot)
        return torch.cat([hv, cv]), ops.asynchronous_complete_cumsum(torch.cat([hl, cl]))

    def padded(self, ranks):
        v = ranks.view(self.T, -1)
        pad = torch.tensor(-1)
        idx = torch.cat([torch.where(v < self.hcol, v, pad).view(-1), torch.where(v >= self.hcol, v - self.hcol, pad).view(-1)])
        return idx, self.off2

    def tiered(self, idx, off):
        return self.tier(idx, off).view(B, 2, self.T * D).sum(1)

    def to_ranks(self, ids):
        return ops.pruned_array_lookup(ids.int(), self.offsets.int(), self.remap, self.remap_off)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--out", default="/tmp/tiered/split_ops.json")
    args = ap.parse_args(argv)
    bc.set_threads(1)
    load0 = os.getloadavg()
    s = Setup()
    pre = [s.bucketize(r) for _, r in s.batches]
    for k, (ids, ranks) in enumerate(s.batches):  # every split gives the same lookups
        want = s.tiered(*pre[k])
        assert torch.equal(s.jagged(ranks)[0], pre[k][0]) and torch.equal(s.to_ranks(ids).long(), ranks)
        torch.testing.assert_close(s.tiered(*s.padded(ranks)), want, rtol=1e-5, atol=1e-5)
    n = len(s.batches)
    cyc = bc.cycling
    var = {
        "int4": cyc(lambda k: s.int4(s.batches[k][0], s.offsets), n),
        "fp16": cyc(lambda k: s.fp16(s.batches[k][0], s.offsets), n),
        "int4, rank-ordered ids": cyc(lambda k: s.int4(s.batches[k][1], s.offsets), n),
        "fp16, rank-ordered ids": cyc(lambda k: s.fp16(s.batches[k][1], s.offsets), n),
        "tiered, pre-split": cyc(lambda k: s.tiered(*pre[k]), n),
        "tiered, bucketize (rank-ordered ids)": cyc(lambda k: s.tiered(*s.bucketize(s.batches[k][1])), n),
        "tiered, index remap + bucketize": cyc(lambda k: s.tiered(*s.bucketize(s.to_ranks(s.batches[k][0]).long())), n),
        "tiered, -1 pads": cyc(lambda k: s.tiered(*s.padded(s.batches[k][1])), n),
        "split alone: bucketize": cyc(lambda k: s.bucketize(s.batches[k][1]), n),
        "split alone: masked_select_jagged_1d": cyc(lambda k: s.jagged(s.batches[k][1]), n),
        "split alone: index remap (pruned_array_lookup)": cyc(lambda k: s.to_ranks(s.batches[k][0]), n),
    }
    with torch.no_grad():
        times = bc.interleaved(var, args.repeats, block_seconds=0.1, min_seconds=0.3)
    out = {"machine": bc.machine(1), "load_before": load0, "load_after": os.getloadavg(),
           "lookups_per_call": s.T * B * P, "repeats": args.repeats,
           "variants": {k: {"ms": bc.spread([x * 1e3 for x in v]), "over_int4": bc.speedup(times["int4"], v)}
                        for k, v in times.items()}}
    bc.write_json(args.out, out)
    print(bc.machine_line(out["machine"]))
    print(f"load average before {load0[0]:.2f}, after {out['load_after'][0]:.2f}; "
          f"{out['lookups_per_call']:,} lookups a call; median [min-max] of {args.repeats} interleaved repeats\n")
    print("| variant | ms / call | x int4 (speed) |\n| --- | --- | --- |")
    for k, v in out["variants"].items():
        print(f"| {k} | {bc.fmt_spread(v['ms'])} | {bc.fmt_ratio(v['over_int4'])} |")


if __name__ == "__main__":
    main()
