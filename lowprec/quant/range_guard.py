"""The L2 search's guarantee, never worse than FBGEMM's min/max on any row: the guard, in torch.

Owns the rule that puts min/max back on the rows where the search (`range_search`) did not beat
it, and `guarded_search`, the search with that rule applied: the native kernel
(range_search_kernel.c, `guard8`) applies it inside its one read of the rows; for the torch
backends `guard` below applies it after the search.

The rule, per row, with min/max's qparams from the row range (`range_search.minmax_qparams`):
- int4/int2, the search chose min/max's own (scale, bias): keep min/max's (the same codes).
- The search scores rows with an fp32 approximation of the error. While |bias| <= 200 |scale|, it
  is within 1e-4 per value (in units of scale^2) and 4e-4 relative of the exact error, so a row
  whose score is under 0.999 x min/max's minus 2e-4 dim scale^2 keeps the search's choice. The
  rest (about 1% of rows at int4, ~0% at int2) are re-scored exactly: the float64 sum of squares of
  the float32 dequantized row minus the row; min/max is kept where it is not worse.
- int8 min/max has codes of its own (FBGEMM's recipe), so its approximate score is recomputed
  first, and no row counts as the same.

The rows a search cannot encode (a non-finite range, min/max qparams beyond fp16) are counted in
`SearchResult.flagged`; the caller names them (`rowwise`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lowprec.quant.range_search import (
    FP16_MAX,
    RangeSearchConfig,
    SearchResult,
    codes_into,
    minmax_qparams,
    pack_float_codes,
    search_ranges,
)

_CHUNK_ELEMS = 1 << 19  # values scored or coded at a time (bounded memory when many rows need a look)


def guarded_search(x: Tensor, bits: int, cfg: RangeSearchConfig | None = None, lo: Tensor | None = None,
                   hi: Tensor | None = None, packed: Tensor | None = None,
                   head: Tensor | None = None) -> SearchResult:
    """`search_ranges` with the guard applied (`guarded`), the kept encoding's codes in `packed`
    and, if `head` [rows, 4] uint8 is given, each row's fp16 (scale, bias) in it."""
    res = search_ranges(x, bits, cfg, lo, hi, packed, guard=True, head=head)
    if res.guarded:
        return res
    res = guard(x, bits, res)
    if head is not None:
        head.copy_(torch.cat((res.scale, res.bias), 1).half().view(torch.uint8))
    return res


def guard(x: Tensor, bits: int, res: SearchResult) -> SearchResult:
    """The guard (module docstring) applied to an unguarded search result of rows x, in torch."""
    mm = minmax_qparams(res.lo, res.hi, bits)
    flagged = ~(torch.isfinite(res.lo) & torch.isfinite(res.hi)) | (mm[0].abs() > FP16_MAX) | (mm[1].abs() > FP16_MAX)
    err_mm = _approx_err(x, bits, mm) if bits == 8 else res.err_minmax
    revert = _revert_rows(x, bits, res, mm, err_mm)
    for rows in revert.split(_step(x)):
        res.packed[rows] = _packed(x.index_select(0, rows), bits, tuple(t[rows] for t in mm))
    scale, bias, err = (t.index_put((revert,), m[revert]) for t, m in zip(res[:3], (mm[0], mm[1], err_mm)))
    return res._replace(scale=scale, bias=bias, err=err, guarded=True, flagged=int(flagged.sum()))


def _revert_rows(x: Tensor, bits: int, res: SearchResult, mm: tuple[Tensor, ...], err_mm: Tensor) -> Tensor:
    """Indices of rows where min/max is not worse than the search's choice, near-ties decided exactly."""
    found = (res.scale, res.bias, res.bias, torch.reciprocal(res.scale))
    same = (res.scale == mm[0]) & (res.bias == mm[1]) & (bits != 8)
    slack = 2e-4 * x.shape[1] * mm[0] * mm[0]
    unsure = (res.err >= 0.999 * err_mm - slack) | (mm[1].abs() > 200 * mm[0].abs())
    revert = same[:, 0].clone()
    check = (unsure & ~same)[:, 0].nonzero()[:, 0]
    for block in check.split(_step(x)):
        xc = x.index_select(0, block)
        e_mm, e_found = (_row_err(xc, bits, tuple(t[block] for t in enc), True) for enc in (mm, found))
        revert[block] = (e_mm <= e_found)[:, 0]
    return revert.nonzero()[:, 0]


def _step(x: Tensor) -> int:
    return max(1, _CHUNK_ELEMS // max(x.shape[1], 1))


def _approx_err(x: Tensor, bits: int, enc: tuple[Tensor, ...]) -> Tensor:
    """fp32 squared error per row [rows, 1] of encoding (scale, bias, sub, mul), in chunks."""
    out = x.new_empty(x.shape[0], 1)
    for i in range(0, x.shape[0], _step(x)):
        part = slice(i, i + _step(x))
        out[part] = _row_err(x[part], bits, tuple(t[part] for t in enc), False)
    return out


def _row_err(x: Tensor, bits: int, enc: tuple[Tensor, ...], exact: bool) -> Tensor:
    """Squared error [rows, 1] of the float32 dequantized rows (as the TBE computes them) of encoding
    (scale, bias, sub, mul): summed in float64 when `exact`, else in float32."""
    scale, bias, sub, mul = enc
    x_hat = codes_into(x, sub, mul, bits, torch.empty_like(x)).mul_(scale).add_(bias)
    diff = x_hat.double().sub_(x) if exact else x_hat.sub_(x)
    return torch.linalg.vector_norm(diff, dim=1, keepdim=True).square_()


def _packed(x: Tensor, bits: int, enc: tuple[Tensor, ...]) -> Tensor:
    """Packed codes of encoding (scale, bias, sub, mul) for the rows x."""
    return pack_float_codes(codes_into(x, enc[2], enc[3], bits, torch.empty_like(x)), bits)
