"""A memory-bound neighbour for contention runs: copies a 256 MB array into another, over and over,
for SECONDS, then prints the copies and the bandwidth it used (read + write).

    taskset -c 1 python tools/_stream_neighbour.py 170 &   # then, on core 0, the benchmark:
    OMP_NUM_THREADS=1 taskset -c 0 prlimit --data=11000000000 python tools/bench_tiered.py --out X.json

It evicts the last-level cache and takes memory bandwidth, as another job on a serving host would.
"""

import sys
import time

import numpy as np

seconds = float(sys.argv[1])
a = np.ones(64 << 20, dtype=np.float32)
b = np.empty_like(a)
end, n = time.time() + seconds, 0
while time.time() < end:
    np.copyto(b, a)
    n += 1
print(f"copies {n}, {n * 2 * a.nbytes / seconds / 1e9:.1f} GB/s")
