"""Min/max row-wise quantization through FBGEMM's own quantize ops, in the artifact's row layout.

FBGEMM's ops write [codes | scale | bias] per row; the inference TBE (reverse_qparam=False) and
lowprec's artifacts want [fp16 scale | fp16 bias | codes]. `fbgemm_minmax_rows` runs the op block by
block (1 MB of fp32 input, so the block is still in cache for the checks) and rearranges each
block into the output, which is the only table-sized buffer. `lowprec.quant.rowwise.fused_rows`
calls it for method="minmax" and falls back to its reference path where it returns None; tests
check both give the same bytes.

Where the time went (profiled on 1M x 64 rows; tools/bench_minmax_path.py, reports/out_of_core.md):
page faults on the fresh output (4 KB pages: about as long as the op itself), a separate aminmax
pass over the input before the op, numpy float16 checks (scalar software) and per-block strided
copies. Now: the output is one anonymous mapping advised for transparent huge pages and reused by
the next call once its tensor is gone (`huge_empty`); the input is read once more, from cache,
by a max (NaN propagates); the (scale, bias) words are gathered per block, checked for fp16
range with integer ops and placed with one strided copy at the end.
"""

from __future__ import annotations

import math
import mmap
import sys

import numpy as np
import torch
from torch import Tensor

_SB_BYTES = 4  # fp16 scale + fp16 bias
_FBGEMM_BLOCK = 1 << 18  # values per block through FBGEMM's quantize ops (1 MB of fp32: the L2 cache)
_HUGE_FROM = 4 << 20  # outputs from 4 MB get an anonymous mapping advised for huge pages
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
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no THP here: ordinary pages
        pass
    _spare[:] = [buf] if nbytes <= _KEEP_UP_TO else []
    return torch.frombuffer(buf, dtype=torch.uint8)  # the tensor keeps `buf` alive


def fbgemm_minmax_rows(x: Tensor, bits: int) -> Tensor | None:
    """min/max rows through FBGEMM's own quantize ops, rearranged to (scale, bias) first.

    FBGEMM's ops skip NaN and do not check fp16 range, so each block is checked after its op:
    max(block) must be finite (NaN propagates through max; +Inf is caught there, -Inf by the bias)
    and every stored fp16 scale and bias finite, exactly the rows the reference path accepts. On a
    failed check, or where the op does not apply (no rows; rows that are not whole 4-byte words),
    None: the reference path then names the bad row."""
    rows, dim = x.shape
    cb = dim * bits // 8
    if rows == 0 or cb % 4:
        return None
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    width = _SB_BYTES + cb
    flat = huge_empty((rows + 1) * width)  # one spare row: see _nbit_block
    words = flat.numpy().view(np.int32).reshape(rows + 1, width // 4)
    sb = np.empty(rows, dtype=np.int32)  # (scale, bias) words, placed once at the end
    xn, top = x.detach().numpy(), np.maximum.reduce
    step = max(1, _FBGEMM_BLOCK // dim)
    block_fn = _int8_block if bits == 8 else _nbit_block
    for i in range(0, rows, step):
        block_fn(x[i : i + step], bits, words, sb, i)
        if not math.isfinite(top(xn[i : i + step], axis=None)):  # the block is still in cache
            return None
    if not _finite_fp16_pairs(sb):
        return None
    words[:rows, 0] = sb
    return flat[: rows * width].view(rows, width)


def _nbit_block(block: Tensor, bits: int, words: np.ndarray, sb: np.ndarray, i: int) -> None:
    """int4/int2 [codes | fp16 scale | fp16 bias]: the block's rows are copied whole (one memcpy)
    to 4 bytes past their rows' starts, so the codes land in place (each row's (scale, bias) word
    lands in the next row's first word, overwritten at the end); the words go to `sb`."""
    q = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(block, bits).numpy()
    n, width = q.shape
    words.reshape(-1).view(np.uint8)[_SB_BYTES + i * width : _SB_BYTES + (i + n) * width] = q.reshape(-1)
    sb[i : i + n] = q.view(np.int32)[:, -1]


def _int8_block(block: Tensor, bits: int, words: np.ndarray, sb: np.ndarray, i: int) -> None:
    """int8 [codes | fp32 scale | fp32 bias]: codes copied, (scale, bias) stored fp16 as FBGEMM's
    TBE recipe does (torch's cast: vectorised)."""
    q = torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(block)
    n, dim = q.shape[0], q.shape[1] - 8
    words[i : i + n, 1:] = q.numpy()[:, :dim].view(np.int32)
    sb[i : i + n] = q[:, dim:].view(torch.float32).to(torch.float16).numpy().view(np.int32)[:, 0]


def _finite_fp16_pairs(w: np.ndarray) -> bool:
    """Whether both fp16 halves of every int32 word are finite (exponent bits not all ones):
    adding 0x0400 to a half's exponent bits 0x7C00 carries into its top bit, for no other value
    (integer ops: numpy's float16 arithmetic is scalar software)."""
    t = np.bitwise_and(w, 0x7C007C00)
    t += 0x04000400
    return not int(np.bitwise_or.reduce(t) & np.int32(-0x7FFF8000))  # bits 31 and 15: 0x80008000
