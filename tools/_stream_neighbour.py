"""A neighbour for contention runs, on the other core for SECONDS, then a line of what it did.

    taskset -c 1 python tools/_stream_neighbour.py 170 [--mode stream|cache] &   # then, on core 0:
    OMP_NUM_THREADS=1 taskset -c 0 prlimit --data=11000000000 python tools/bench_tiered.py --out X.json

stream (default): copies a 256 MB array into another, over and over: it evicts the last-level cache
and takes memory bandwidth, as a batch job beside a server would.
cache: sums random 64-byte lines of a 24 MB array, over and over: it keeps most of this machine's
32 MB L3 for itself with little bandwidth, as other tenants' hot data on a shared cache would.
"""

import argparse
import time

import numpy as np

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("seconds", type=float)
ap.add_argument("--mode", choices=["stream", "cache"], default="stream")
args = ap.parse_args()
end, n = time.time() + args.seconds, 0
if args.mode == "stream":
    a = np.ones(64 << 20, dtype=np.float32)
    b = np.empty_like(a)
    while time.time() < end:
        np.copyto(b, a)
        n += 1
    print(f"copies {n}, {n * 2 * a.nbytes / args.seconds / 1e9:.1f} GB/s")
else:
    lines = np.ones(((24 << 20) // 64, 16), dtype=np.float32)
    rng = np.random.default_rng(0)
    buf = np.empty((1 << 12, 16), dtype=np.float32)  # 256 KB, stays in L2: no streaming writes
    while time.time() < end:  # fresh random lines each time: over time all 24 MB are touched
        np.take(lines, rng.integers(0, len(lines), len(buf)), axis=0, out=buf)
        n += 1
    print(f"gathers {n}, {n * len(buf) / args.seconds / 1e6:.1f} M lines/s from {lines.nbytes >> 20} MB")
