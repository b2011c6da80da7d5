"""Min/max row-wise quantization through FBGEMM's own quantize ops, in the artifact's row layout.

FBGEMM's ops write [codes | scale | bias] per row; the inference TBE (reverse_qparam=False) and
lowprec's artifacts want [fp16 scale | fp16 bias | codes]. This rearranges block by block without
a second copy of the table. `lowprec.quant.rowwise.fused_rows` calls it for method="minmax" and
falls back to its reference path where it returns None; tests check both give the same bytes.
"""

from __future__ import annotations

import torch
from torch import Tensor

_SB_BYTES = 4  # fp16 scale + fp16 bias
_FAST_LIMIT = 30000.0  # |values| below this: no scale or bias can leave fp16's range
_FBGEMM_BLOCK = 1 << 20  # values per block through FBGEMM's quantize ops (4 MB of fp32)


def fbgemm_minmax_rows(x: Tensor, bits: int) -> Tensor | None:
    """min/max rows through FBGEMM's own quantize ops, rearranged to (scale, bias) first.

    FBGEMM's ops ignore NaN and do not check fp16 range: each block's min and max (NaN if any value
    is) must lie within +-30000, where no row's scale or bias can leave fp16's range; otherwise None
    (use the reference path, which names the bad row), as where the op does not apply (no rows;
    rows that are not whole 4-byte words)."""
    rows, dim = x.shape
    cb = dim * bits // 8
    if rows == 0 or cb % 4:
        return None
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    width = _SB_BYTES + cb
    step = max(1, _FBGEMM_BLOCK // dim)  # blocks of 4 MB of fp32: few Python calls per chunk
    # Each FBGEMM row [codes | sb] is copied whole to 4 bytes past its row's start, so the codes
    # land in place; the block's sb words are then written over the rows' first words (the copy
    # put row r's sb in row r + 1's slot, which the next block's, or the spare row, overwrites).
    flat = torch.empty((rows + 1) * width, dtype=torch.uint8)
    words = flat.view(torch.int32).view(rows + 1, width // 4)
    for i in range(0, rows, step):
        block = x[i : i + step]
        n = block.shape[0]
        lo, hi = torch.aminmax(block)  # NaN propagates; Inf or |v| near fp16's limit: no fast path
        if not (-_FAST_LIMIT < float(lo) and float(hi) < _FAST_LIMIT):
            return None
        if bits == 8:  # [codes | fp32 scale | fp32 bias]; stored fp16 as FBGEMM's TBE recipe does
            q = torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(block)
            words[i : i + n, 1:] = q[:, :dim].view(torch.int32)
            sb = torch.empty((n, 2), dtype=torch.float16).copy_(q[:, dim:].view(torch.float32))
            words[i : i + n, 0] = sb.view(torch.int32)[:, 0]
        else:  # [codes | fp16 scale | fp16 bias]
            q = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(block, bits)
            flat[_SB_BYTES + i * width : _SB_BYTES + (i + n) * width] = q.view(-1)
            words[i : i + n, 0] = q.view(torch.int32)[:, -1]
    out = flat[: rows * width].view(rows, width)
    return out
