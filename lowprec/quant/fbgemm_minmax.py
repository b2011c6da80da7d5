"""Min/max row-wise quantization through FBGEMM's own quantize ops, in the artifact's row layout.

FBGEMM's ops write [codes | scale | bias] per row; the inference TBE (reverse_qparam=False) and
lowprec's artifacts want [fp16 scale | fp16 bias | codes]. FBGEMM's ops also skip NaN (a NaN
value drops out of its row's min/max and is coded 0: nothing in their output shows it), so every
block is checked for NaN/Inf after its op, while it is in cache, and every stored fp16 scale and
bias for range. On any failed check the path returns None and `rowwise.fused_rows` runs its
reference path, which names the bad row; tests check both give the same bytes.

int4/int2 (`fbgemm_minmax_native.nbit_rows`, C): FBGEMM's quantize routine (the one the op
calls) is called on 16 KB blocks straight into the output rows, each block checked in L1
(0.93-1.04x the bare op's throughput at int2, one thread, load ~8). int8, and int4/int2 where
that kernel cannot be built: the torch op on 1 MB blocks, each block's rows rearranged into the
output while in cache, NaN/Inf checked by the native check (`first_non_finite_row`) or, without a
compiler, numpy's max (NaN propagates through it; +Inf is caught there, -Inf by the bias). The
output is the only table-sized buffer: an anonymous mapping advised for huge pages and reused by
the next call (`huge_empty`). Measured per part in tools/bench_minmax_path.py,
reports/out_of_core.md.
"""

from __future__ import annotations

import math
import mmap
import sys

import numpy as np
import torch
from torch import Tensor

from lowprec.quant import fbgemm_minmax_native

_SB_BYTES = 4  # fp16 scale + fp16 bias
_FBGEMM_BLOCK = 1 << 18  # values per block through FBGEMM's quantize ops (1 MB of fp32: the L2 cache)
_HUGE_FROM = 4 << 20  # outputs from 4 MB get an anonymous mapping advised for huge pages
_HUGE_PAGE = 2 << 20
_KEEP_UP_TO = 128 << 20  # one such mapping up to this size is kept for the next call (a chunk's)
_spare: list[mmap.mmap] = []


def huge_empty(nbytes: int) -> Tensor:
    """An uninitialised uint8 tensor of `nbytes`; from 4 MB one anonymous private mapping advised
    MADV_HUGEPAGE (the machine's THP mode is 'madvise': 2 MB pages fault ~500x less often).

    It is anonymous memory like torch.empty's (RssAnon, RLIMIT_DATA). The last such mapping (up to
    128 MB, a convert chunk's output) is kept: once its tensor is gone (nothing else refers to the
    mapping) the next call reuses its pages, already faulted in, as convert's next chunk does.
    Fresh pages cost a fault each; for a chunk that is as long as FBGEMM's op takes."""
    if nbytes < _HUGE_FROM:
        return torch.empty(nbytes, dtype=torch.uint8)
    if _spare and len(_spare[0]) >= nbytes and sys.getrefcount(_spare[0]) == 2:  # list + argument
        return torch.frombuffer(_spare[0], dtype=torch.uint8, count=nbytes)
    size = -(-nbytes // _HUGE_PAGE) * _HUGE_PAGE  # whole huge pages: sizes a few bytes apart share one
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no THP here: ordinary pages
        pass
    _spare[:] = [buf] if size <= _KEEP_UP_TO else []
    return torch.frombuffer(buf, dtype=torch.uint8, count=nbytes)  # the tensor keeps `buf` alive


def fbgemm_minmax_rows(x: Tensor, bits: int) -> Tensor | None:
    """min/max rows through FBGEMM's own quantize ops, rearranged to (scale, bias) first.

    FBGEMM's ops skip NaN and do not check fp16 range, so each block is checked after its op:
    every value finite and every stored fp16 scale and bias finite, exactly the rows the
    reference path accepts. On a failed check, or where the op does not apply (no rows; rows that
    are not whole 4-byte words), None: the reference path then names the bad row."""
    rows, dim = x.shape
    cb = dim * bits // 8
    if rows == 0 or cb % 4:
        return None
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm, loads FBGEMM's library)

    if bits != 8:
        flat = huge_empty(rows * (_SB_BYTES + cb) + _SB_BYTES)  # 4 spare bytes: see the kernel
        bad = fbgemm_minmax_native.nbit_rows(x, bits, flat)
        if bad is not None:
            return flat[: rows * (_SB_BYTES + cb)].view(rows, _SB_BYTES + cb) if bad < 0 else None
        del flat  # unused: torch_op_rows reuses its mapping
    return torch_op_rows(x, bits)


def torch_op_rows(x: Tensor, bits: int) -> Tensor | None:
    """`fbgemm_minmax_rows` through FBGEMM's torch ops on 1 MB blocks (int8; int4/int2 without the
    native kernel): each block rearranged while its op output is in cache, then checked."""
    rows, dim = x.shape
    flat = huge_empty(rows * (_SB_BYTES + dim * bits // 8))
    out = _Rows(flat.numpy(), rows, dim, bits)
    step = max(1, _FBGEMM_BLOCK // dim)
    place = out.int8_block if bits == 8 else out.nbit_block
    for i, block in zip(range(0, rows, step), x.split(step)):  # split: one call for all views
        place(block, i)
        if not _finite_block(block):  # the block is still in cache
            return None
    if not _finite_fp16_pairs(out.sb):
        return None
    return flat.view(rows, out.width)


def _finite_block(block: Tensor) -> bool:
    """Whether every value of the block is finite: the native check, else numpy's max (NaN
    propagates through it; +Inf shows there, -Inf in the block's stored biases)."""
    bad = fbgemm_minmax_native.first_non_finite_row(block)
    if bad is not None:
        return bad < 0
    return math.isfinite(np.maximum.reduce(block.detach().numpy(), axis=None))


class _Rows:
    """The output rows [fp16 scale | fp16 bias | codes], filled block by block from FBGEMM's
    [codes | scale | bias] while each block's op output is in cache; `sb` keeps the (scale, bias)
    words contiguous for one fp16-range check at the end."""

    def __init__(self, flat: np.ndarray, rows: int, dim: int, bits: int) -> None:
        self.bits, self.dim = bits, dim
        self.width = _SB_BYTES + dim * bits // 8
        self.flat = flat
        self.words = flat.view(np.int32).reshape(rows, self.width // 4)
        if bits == 8:  # each row's codes as one opaque item: one strided copy of dim-byte items
            self.codes = np.ndarray((rows,), f"V{dim}", flat, _SB_BYTES, (self.width,))
            self.half = torch.empty(2 * rows, dtype=torch.float16)
            self.sb = self.half.numpy().view(np.int32)
        else:
            self.sb = np.empty(rows, dtype=np.int32)

    def nbit_block(self, block: Tensor, i: int) -> None:
        """int4/int2 [codes | fp16 scale | fp16 bias]: the block's rows are copied whole (one
        memcpy) to 4 bytes past their rows' starts, so the codes land in place; each row's
        (scale, bias) word then goes to its row's first word (and to `sb`)."""
        q = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(block, self.bits).numpy()
        n, w = q.shape
        self.flat[_SB_BYTES + i * w : (i + n) * w] = q.reshape(-1)[:-_SB_BYTES]
        sb = self.sb[i : i + n]
        sb[:] = q.view(np.int32)[:, -1]
        self.words[i : i + n, 0] = sb

    def int8_block(self, block: Tensor, i: int) -> None:
        """int8 [codes | fp32 scale | fp32 bias]: codes copied as dim-byte items, (scale, bias)
        stored fp16 as FBGEMM's TBE recipe does (torch's cast: vectorised, round to nearest even)."""
        q = torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(block).numpy()
        n, d = q.shape[0], self.dim
        self.codes[i : i + n] = np.ndarray((n,), f"V{d}", q, 0, (d + 8,))
        pairs = np.ndarray((n,), np.int64, q, d, (d + 8,)).copy()  # fp32 (scale, bias) per row
        self.half[2 * i : 2 * (i + n)].copy_(torch.from_numpy(pairs).view(torch.float32))
        self.words[i : i + n, 0] = self.sb[i : i + n]


def _finite_fp16_pairs(w: np.ndarray) -> bool:
    """Whether both fp16 halves of every int32 word are finite (exponent bits not all ones):
    adding 0x0400 to a half's exponent bits 0x7C00 carries into its top bit, for no other value
    (integer ops: numpy's float16 arithmetic is scalar software)."""
    t = np.bitwise_and(w, 0x7C007C00)
    t += 0x04000400
    return not int(np.bitwise_or.reduce(t) & np.int32(-0x7FFF8000))  # bits 31 and 15: 0x80008000
