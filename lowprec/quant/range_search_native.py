"""The native (C) backend of the L2 range search: building, loading and calling range_search_kernel.c.

The kernel computes exactly what `range_search._search_chunk` does
(same float32 operations per value; sums in another order), 8 rows at a time, so every pass over
those rows runs on data in L1 instead of one memory-bound pass over a whole chunk per operation:
the search reads each input value from memory once (reports/out_of_core.md, "L2 range search").
With `guard` it then applies `range_guard.guard`'s rule to those rows (bit for bit the torch
guard's result) and writes the fused rows' fp16 headers, so nothing runs over whole chunks after it.

Built on first use by `lowprec.native` (system C compiler, cached in ~/.cache/lowprec). Needs AVX2
and F16C (x86-64 since ~2013). Where it cannot be built `kernel()` returns None once with a warning,
and the search runs its torch backends instead. Above PARALLEL_FROM_ROWS rows the rows are split
over torch's intra-op threads (ctypes releases the GIL; every row is searched alone, so the bytes
are those of one thread, tested).
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from lowprec import native

SOURCE = Path(__file__).with_name("range_search_kernel.c")


def _declare(dll: ctypes.CDLL) -> None:
    f = dll.lowprec_l2_search
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    f.argtypes = [p, i64, i32, p, p, i32, p, i32, i32, i32, ctypes.c_float, p, p, p, p, p, i64, i32, p, p]
    f.restype = i32


def kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, built on first use; None (warned once) where it cannot be."""
    return native.load(SOURCE, _declare, "native L2 range search")


PARALLEL_FROM_ROWS = 1 << 14  # below this one thread: a part must outweigh handing it to a thread
_pool_state: list[ThreadPoolExecutor] = []


def _threads(rows: int) -> int:
    """Threads for a search over `rows`: torch's intra-op thread count (OMP_NUM_THREADS,
    torch.set_num_threads), one below PARALLEL_FROM_ROWS rows."""
    return 1 if rows < PARALLEL_FROM_ROWS else max(1, min(torch.get_num_threads(), rows // PARALLEL_FROM_ROWS))


def _parts(rows: int) -> list[tuple[int, int]]:
    """Row ranges of near-equal size, one per thread, split at multiples of 8 (the kernel's group)."""
    n = _threads(rows)
    cuts = [min(rows, -(-(rows * i // n) // 8) * 8) for i in range(n + 1)]
    cuts[-1] = rows
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _pool() -> ThreadPoolExecutor:
    """One pool for the process, as many workers as torch has threads (the kernel releases the GIL)."""
    want = torch.get_num_threads()
    if not _pool_state or _pool_state[0]._max_workers != want:
        if _pool_state:
            _pool_state.pop().shutdown(wait=False)
        _pool_state.append(ThreadPoolExecutor(max_workers=want, thread_name_prefix="lowprec-l2"))
    return _pool_state[0]


def search(x: Tensor, lo: Tensor | None, hi: Tensor | None, cuts: tuple[tuple[float, float], ...], bits: int,
           steps: int, relaxation: float, out: tuple[Tensor, ...], packed: Tensor, guard: bool = False,
           head: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
    """Run the kernel on rows x [rows, dim] (float32, contiguous); returns the row ranges (lo, hi)
    and, with `guard`, the number of rows flagged (non-finite range, min/max beyond fp16; else 0).

    Without lo/hi the kernel takes each row's min and max itself (in the same read), NaN for both
    on rows holding a NaN or an infinity (the caller reports those). out = (scale, bias, err,
    err_minmax), float32 [rows, 1] contiguous; packed is uint8 [rows, dim * bits / 8] (any
    strides). With `guard` the kernel runs `range_guard`'s guard: out and packed are then the kept
    encoding's, and `head` (uint8 [rows, 4], if given) gets the fp16 (scale, bias) of each row.
    """
    rows, dim = x.shape
    given = lo is not None and hi is not None
    lo, hi = ((t.reshape(-1).to(torch.float32).contiguous() for t in (lo, hi)) if given
              else (x.new_empty(rows), x.new_empty(rows)))
    if rows == 0:
        return lo.reshape(-1, 1), hi.reshape(-1, 1), 0
    lib = kernel()
    if lib is None:
        raise RuntimeError("the native L2 range search kernel is unavailable")
    if not (x.is_contiguous() and x.dtype == torch.float32):
        raise ValueError("native search needs contiguous float32 rows")
    if not all(t.is_contiguous() and t.numel() == rows for t in out):
        raise ValueError("native search outputs must be contiguous, one value per row")
    if head is not None and not (guard and head.dtype == torch.uint8 and head.shape == (rows, 4)
                                 and head.stride(1) == 1):
        raise ValueError("native search writes a header only when guarding, into uint8 [rows, 4] rows")
    codes = packed if packed.stride(1) == 1 and (head is None or head.stride(0) == packed.stride(0)) else None
    if codes is None:  # strided codes (or a header with another row stride) go through a buffer
        codes = torch.empty(packed.shape, dtype=torch.uint8)
    cut = torch.tensor(cuts, dtype=torch.float32).reshape(-1)
    head_ptr = head.data_ptr() if head is not None and codes is packed else None
    f32 = 4

    def part(r0: int, r1: int) -> tuple[int, int]:
        """The kernel on rows [r0, r1): every row is searched alone, so any split gives the same bytes."""
        flagged = ctypes.c_int64(0)
        rc = lib.lowprec_l2_search(
            x.data_ptr() + r0 * dim * f32, r1 - r0, dim, lo.data_ptr() + r0 * f32, hi.data_ptr() + r0 * f32,
            int(given), cut.data_ptr(), len(cuts), bits, steps, relaxation,
            *(t.data_ptr() + r0 * f32 for t in out), codes.data_ptr() + r0 * codes.stride(0), codes.stride(0),
            int(guard), head_ptr + r0 * head.stride(0) if head_ptr else None, ctypes.byref(flagged))
        return rc, flagged.value
    results = [part(a, b) for a, b in _parts(rows)] if _threads(rows) == 1 else \
        list(_pool().map(lambda ab: part(*ab), _parts(rows)))
    rc = next((r for r, _ in results if r), 0)
    if rc:
        raise ValueError(f"native L2 range search rejected its arguments (dim {dim}, {bits} bits, code {rc})")
    flagged = sum(n for _, n in results)
    if codes is not packed:
        packed.copy_(codes)
        if head is not None:
            head.copy_(torch.cat(out[:2], 1).half().view(torch.uint8))
    return lo.reshape(-1, 1), hi.reshape(-1, 1), flagged
