"""Tables on 2 MB transparent huge pages, for the benchmarks' --huge-pages.

Random reads of tables of hundreds of MB on 4 KB pages miss the TLB on almost every row, and the page
walk becomes part of the lookup; on 2 MB pages the walks mostly go (reports/tiered.md: fp32
1.24-1.28x faster at full Kaggle scale, tiered 1.08-1.09x, int4 1.06-1.08x). torch allocates CPU tensors on 4 KB pages where THP is
"madvise" (unless THP_MEM_ALLOC_ENABLE=1), and ext4 refuses MADV_COLLAPSE on file mappings here,
so the runtime's mapped artifacts stay on 4 KB pages.
"""

from __future__ import annotations

import ctypes
from typing import Any, Iterable

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25


def collapse(tensors: Iterable[Any]) -> int:
    """Back the whole 2 MB pages inside each CPU tensor with huge pages, now: madvise MADV_HUGEPAGE,
    then MADV_COLLAPSE (Linux >= 6.1), which copies the pages in place; contents unchanged. Returns
    the bytes collapsed: 0 where the kernel refuses (THP "never", older kernels, file mappings)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done, seen = 0, set()
    for t in tensors:
        start = t.data_ptr()
        lo = -(-start // HUGE_PAGE) * HUGE_PAGE
        hi = (start + t.numel() * t.element_size()) // HUGE_PAGE * HUGE_PAGE
        if hi <= lo or lo in seen:
            continue
        seen.add(lo)
        if libc.madvise(lo, hi - lo, MADV_HUGEPAGE) == 0 and libc.madvise(lo, hi - lo, MADV_COLLAPSE) == 0:
            done += hi - lo
    return done


def huge_bytes_around(address: int) -> int:
    """AnonHugePages (bytes) of the mapping holding `address` (/proc/self/smaps), 0 if none."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:  # a mapping's first line: "lo-hi perms ..."
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "AnonHugePages:":
                return int(line.split()[1]) * 1024
    return 0


def module_tensors(emb: Any) -> list[Any]:
    """What a lookup of a QuantizedEmbeddings reads at random: the TBE's rows, the id maps' buffers
    and rank directories."""
    return ([emb.tbe.weights_host] + [b for _, b in emb.named_buffers()]
            + [d for m in emb.id_maps for d in getattr(m, "dirs", [])])


def collapse_modules(mods: Iterable[Any]) -> dict[str, float]:
    """Every module's tables on huge pages; what a result records."""
    return {"collapsed_mib": sum(collapse(module_tensors(m)) for m in mods) / 2**20}


def describe(huge: dict[str, float] | None) -> str:
    """The page size of a result, for its report line (results before --huge-pages: 4 KB pages)."""
    if huge is None:
        return "; 4 KB pages (no --huge-pages)"
    return f"; tables on 2 MB pages (--huge-pages: {huge['collapsed_mib']:,.0f} MiB collapsed)"
