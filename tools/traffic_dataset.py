"""tools/bench_tiered.py's Zipf traffic written as a prepared dataset in another dataset's layout.

    python tools/traffic_dataset.py --like D --out D2 [--windows 2] [--rows-per-window 300000] [--seed 0]

The tables (names, rows) and bags (hotness per table) of --like's dataset.json; the ids drawn as
bench_tiered draws them (per table a Zipf exponent in [1.05, 1.3] and a random permutation, seed
--seed); dense features and labels zero. So a model trained on --like can be converted, calibrated
on this data (row counts) and timed on it with tools/bench_plan_lookup.py: the same artifacts on
the benchmark's traffic and on the data's own (reports/tiered.md, multi-hot section).
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--like", required=True, help="dataset whose tables and hotness to copy")
    ap.add_argument("--out", required=True)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--rows-per-window", type=int, default=300_000)
    ap.add_argument("--chunk", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from bench_tiered import Traffic

    from lowprec.data.dataset import Dataset, DatasetWriter, SparseFeature
    from lowprec.fileio import atomic_dir

    like = Dataset(args.like).meta
    hot, rows = like.hotness, list(like.num_embeddings)
    traffic = Traffic(rows, args.seed)
    with atomic_dir(args.out, "dataset") as tmp:
        writer = DatasetWriter(tmp, list(like.dense_names),
                               [SparseFeature(f.name, n, h) for f, n, h in zip(like.sparse, rows, hot)])
        for w in range(args.windows):
            ww = writer.window(label=f"w{w}")
            for r0 in range(0, args.rows_per_window, args.chunk):
                n = min(args.chunk, args.rows_per_window - r0)
                seed = (w * args.rows_per_window + r0) * len(rows)
                ids = [traffic.ids(t, n * h, seed + t).reshape(n, h) for t, h in enumerate(hot)]
                ww.append(np.zeros((n, len(like.dense_names)), np.float32), np.concatenate(ids, 1).astype(np.int32),
                          np.zeros(n, np.int32))
            writer.add_window(ww)
        writer.finish()
    print(f"wrote {args.out}: {args.windows} x {args.rows_per_window:,} rows, hotness {hot}")


if __name__ == "__main__":
    main()
