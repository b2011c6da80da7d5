"""glibc malloc settings for batch scoring.

A DLRM forward allocates the same large activations every batch (4096 x 512 floats = 8 MB per wide
layer). glibc serves such blocks with fresh mmap pages (its threshold adapts, but not reliably), so a
batch can pay thousands of page faults for buffers the previous batch just freed: the latency plan of
tools/bench_e2e.py ran 23.0-28.0 ms per batch of 4096 across four processes with the default
settings and 23.1-23.7 ms with these (alternating runs, one thread). Blocks under 64 MB now come from
the heap and up to 256 MB of free heap is kept, so they are reused; larger buffers (whole tables in
`convert`) are still mapped and returned to the system when freed.

The CLI applies this at start-up; a library user may call `keep_buffers_in_heap()` too. Settings a user
gave through glibc's environment variables win.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_buffers_in_heap(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Apply the settings above; False (and nothing changed) off glibc or when the user set their own."""
    if not sys.platform.startswith("linux") or any(v in os.environ for v in _USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc; musl and others have no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
