"""Per-row clipping ranges for row-wise quantization: FBGEMM's min/max rule and an L2 search.

Owns the map from a row's clipping range [lo, hi] to the (scale, bias) FBGEMM stores, and the
error-minimising choice of that range for every row at once (``method='l2'`` in `rowwise`).

Range -> stored qparams (FBGEMM ``FloatToFusedNBitRowwiseQuantizedSBHalf``, verified bit-exact):

    b = fp16(lo);  r = hi - b (fp32);  s = 1 if r == 0 else r / L;  s = fp16(s);  s = 1 if s == 0
    q = clamp(rint((x - b) * (1 / s)), 0, L),  L = 2**bits - 1,  x_hat = q * s + b

fp16(.) is round-to-nearest-even to half precision; rint rounds half to even. min/max is
lo = min(x_row), hi = max(x_row).

L2 search: minimise E(lo, hi) = sum_j (q_j s + b - x_j)^2 per row, with the fp16-rounded (s, b)
that are actually stored. Vectorised over rows (no Python loop over rows), in chunks of ~1M
values that stay in cache:

1. candidates: E at lo = min + a R, hi = max - c R for a small grid of cuts (a, c) (R = max - min,
   `RangeSearchConfig.for_bits`); (0, 0) is FBGEMM's min/max. Keep the best per row.
2. refine: alternating least squares (Lloyd) from the best candidate. With codes q fixed, E is a
   quadratic in (s, b) minimised by the line fit x ~ s q + b: s = cov(q, x) / var(q),
   b = mean(x) - s mean(q). Each step is over-relaxed (w = 1.5), rounded to fp16, the codes are
   reassigned, and the new (s, b) kept on the rows where E went down.

During the search E is evaluated as s^2 sum_j (t_j - q_j)^2 with t = (x - b) / s in fp32; the
caller (`rowwise._guard`) re-scores near-ties with min/max exactly, so the result is never worse
than min/max on any row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

FP16_MAX = 65504.0


def levels(bits: int) -> int:
    """Largest code for `bits`-bit unsigned codes (L = 2**bits - 1)."""
    return (1 << bits) - 1


def fp16_round(v: Tensor) -> Tensor:
    """Round float32 values to the nearest fp16 (ties to even); returned as float32."""
    return v.to(torch.float16).to(torch.float32)


def qparams_from_range(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """FBGEMM's (scale, bias) for clipping range [lo, hi], as float32 holding fp16 values."""
    bias = fp16_round(lo)
    rng = hi - bias
    scale = torch.where(rng == 0, 1.0, rng / levels(bits))
    scale = fp16_round(scale)
    scale = torch.where(scale == 0, 1.0, scale)
    return scale, bias


def codes_into(x: Tensor, sub: Tensor, mul: Tensor, bits: int, out: Tensor) -> Tensor:
    """q = clamp(rint((x - sub) * mul), 0, L) as float32 in `out`; sub/mul are [rows, 1].

    FBGEMM's rule is sub = b, mul = 1 / s (fp32 reciprocal), as in the module docstring.
    """
    torch.sub(x, sub, out=out)
    out.mul_(mul)
    out.round_()
    return out.clamp_(0, levels(bits))


@dataclass(frozen=True)
class RangeSearchConfig:
    """Knobs of the L2 range search; `for_bits` gives the measured defaults.

    `candidates` are (low cut, high cut) pairs, as fractions of (max - min) moved in from each
    end; the first must be (0, 0), FBGEMM's min/max. Pairs sharing a low cut should be adjacent
    (the shifted rows x - b are reused).
    """

    candidates: tuple[tuple[float, float], ...]
    refine_steps: int = 2  # least-squares refinement steps after the candidates
    relaxation: float = 1.5  # over-relaxation w of each refinement step (1 = plain Lloyd)
    chunk_elems: int = 1 << 20  # elements per chunk (working set of a few MB stays in cache)

    def __post_init__(self) -> None:
        cands = self.candidates
        if not cands or tuple(cands[0]) != (0.0, 0.0) or len(cands) > 16:
            raise ValueError(f"candidates must start with (0.0, 0.0) (min/max), at most 16, got {cands}")
        if any(not (0.0 <= a and 0.0 <= c and a + c < 1.0) for a, c in cands):
            raise ValueError(f"candidate cuts must be >= 0 and leave a non-empty range, got {cands}")
        if self.refine_steps < 0 or not 0.0 < self.relaxation < 2.0 or self.chunk_elems < 1:
            raise ValueError(f"invalid RangeSearchConfig: {self}")

    @classmethod
    def grid(cls, cuts: tuple[float, ...], **kw) -> RangeSearchConfig:
        """All (a, c) pairs of `cuts` (which must start with 0.0)."""
        return cls(candidates=tuple((a, c) for a in cuts for c in cuts), **kw)

    @classmethod
    def for_bits(cls, bits: int, dim: int = 64) -> RangeSearchConfig:
        """Defaults tuned on Gaussian, Laplace and Student-t rows (see reports/quantize.md).

        Rows up to 64 values: six cut pairs from {0, g, 2g}^2 (int4 error within 0.5% of the full
        3 x 3 grid, ~20% faster). Longer rows have rarer extremes and a wider spread of best cuts:
        the full {0, g, 2g, 3g}^2 grid, g growing like sqrt(dim). Two refinement steps.
        """
        base = {8: 0.001, 4: 0.02, 2: 0.1}
        if bits not in base:
            raise ValueError(f"the L2 range search supports 8, 4 or 2 bits, got {bits}")
        g = base[bits]
        if dim <= 64:
            pairs = ((0, 0), (0, 2), (1, 1), (1, 2), (2, 0), (2, 1))
            return cls(candidates=tuple((a * g, c * g) for a, c in pairs))
        g = min(g * (dim / 128) ** 0.5, 0.12)
        return cls.grid((0.0, g, 2 * g, 3 * g))


def _error(x: Tensor, s: Tensor, b: Tensor, bits: int, buf: tuple[Tensor, ...], shifted: bool):
    """sum_j (t_j - q_j)^2 for t = (x - b) / s and nearest codes q ([rows, 1], in units of s^2).

    Leaves the codes in buf[2]. With `shifted`, buf[0] already holds x - b.
    """
    u, t, q = buf
    if not shifted:
        torch.sub(x, b, out=u)
    torch.mul(u, torch.reciprocal(s), out=t)
    torch.clamp(t, 0, levels(bits), out=q).round_()  # = clamp(rint(t)): the bounds are integers
    return torch.linalg.vector_norm(t.sub_(q), dim=1, keepdim=True).square_()


def _refit(moments, s: Tensor, b: Tensor, resid: Tensor, q: Tensor, w: float):
    """One over-relaxed least-squares step for (s, b), given the codes q left by `_error`.

    With codes fixed, E is minimised by the line fit t ~ alpha q + beta in t = (x - b) / s units.
    sum t and sum t^2 follow from the row moments and sum t q = (sum t^2 + sum q^2 - resid) / 2,
    so only sum q and sum q^2 need a pass over the codes.
    """
    n, mean, m2 = moments
    inv = torch.reciprocal(s)
    sum_q = q.sum(1, keepdim=True)
    sum_qq = torch.linalg.vector_norm(q, dim=1, keepdim=True).square_()
    sum_t = (mean - b).mul_(inv * n)
    sum_tt = (m2 + n * (mean - b).square_()).mul_(inv * inv)
    cov = (sum_tt + sum_qq - resid) / 2 - sum_t * sum_q / n
    var_q = sum_qq - sum_q * sum_q / n
    ok = var_q > 0
    alpha = cov / torch.where(ok, var_q, 1.0)
    beta = (sum_t - alpha * sum_q) / n
    new_s = fp16_round(s + w * (s * alpha - s))
    new_b = fp16_round(b + w * (s * beta))
    ok &= torch.isfinite(new_s) & torch.isfinite(new_b) & (new_s != 0)
    return torch.where(ok, new_s, s), torch.where(ok, new_b, b)


def _candidates(x, lo0, hi0, bits, cfg, buf) -> tuple[Tensor, ...]:
    """Errors of every candidate range; returns (scale, bias, err) of the best and err of (0, 0)."""
    cuts = torch.tensor(cfg.candidates, dtype=torch.float32)
    lo0, hi0 = lo0.reshape(1, -1), hi0.reshape(1, -1)  # candidates along dim 0: [K, rows]
    rng = hi0 - lo0
    scale, bias = qparams_from_range(lo0 + cuts[:, :1] * rng, hi0 - cuts[:, 1:] * rng, bits)
    err = x.new_empty(len(cfg.candidates), x.shape[0])
    prev = None
    for k, (a, _) in enumerate(cfg.candidates):
        s_k = scale[k].unsqueeze(1)
        err[k] = _error(x, s_k, bias[k].unsqueeze(1), bits, buf, a == prev).mul_(s_k * s_k)[:, 0]
        prev = a
    best = _argmin_dim0(err)
    pick = [t.gather(0, best).reshape(-1, 1) for t in (scale, bias, err)]
    return (*pick, err[0].reshape(-1, 1))


def _argmin_dim0(err: Tensor) -> Tensor:
    """Row of the smallest entry per column of err [K <= 16, n] (>= 0), as int64 [1, n].

    torch's argmin over a short dim 0 is ~100x slower than amin here, so the candidate index
    is written into the 4 low mantissa bits (non-negative floats order like their int32 bits).
    """
    tagged = err.view(torch.int32).bitwise_and(-16)
    tagged.bitwise_or_(torch.arange(err.shape[0], dtype=torch.int32).unsqueeze(1))
    return tagged.amin(0, keepdim=True).bitwise_and_(15).long()


def _search_chunk(x, lo0, hi0, bits, cfg, buf, codes) -> tuple[Tensor, ...]:
    """Best (scale, bias, err) and min/max err [rows, 1] for one chunk; the codes go to `codes`."""
    best_s, best_b, best_e, err_mm = _candidates(x, lo0, hi0, bits, cfg, buf)
    if cfg.refine_steps:
        n = x.shape[1]
        mean = x.sum(1, keepdim=True).div_(n)  # torch.var_mean over dim 1 is ~20x slower
        m2 = torch.linalg.vector_norm(torch.sub(x, mean, out=buf[0]), dim=1, keepdim=True).square_()
        moments = (n, mean, m2)
        s, b = best_s, best_b
        codes_into(x, b, torch.reciprocal(s), bits, buf[2])  # its error is known: best_e
        resid = best_e / (s * s)
        for _ in range(cfg.refine_steps):
            s, b = _refit(moments, s, b, resid, buf[2], cfg.relaxation)
            resid = _error(x, s, b, bits, buf, False)
            better = resid * s * s < best_e
            best_e = torch.where(better, resid * s * s, best_e)
            best_s, best_b = torch.where(better, s, best_s), torch.where(better, b, best_b)
    q = codes_into(x, best_b, torch.reciprocal(best_s), bits, buf[1])
    codes.copy_(q.to(torch.int32))  # float -> int32 -> uint8 is ~2x faster than float -> uint8
    return best_s, best_b, best_e, err_mm


class SearchResult(NamedTuple):
    """Per-row result of `search_ranges`: qparams [rows, 1], approximate errors, nearest codes."""

    scale: Tensor
    bias: Tensor
    err: Tensor
    err_minmax: Tensor
    codes: Tensor  # uint8 [rows, dim], FBGEMM's rounding rule for (scale, bias)


def search_ranges(
    x: Tensor, bits: int, cfg: RangeSearchConfig | None = None, lo: Tensor | None = None, hi: Tensor | None = None
) -> SearchResult:
    """L2 search over rows of finite float32 `x` [rows, dim] (row min/max may be passed in).

    err and err_minmax are the (fp32, approximate) squared errors of the chosen qparams and of
    FBGEMM's min/max qparams.
    """
    rows, dim = x.shape
    cfg = cfg or RangeSearchConfig.for_bits(bits, dim)
    lo = x.amin(1, keepdim=True) if lo is None else lo
    hi = x.amax(1, keepdim=True) if hi is None else hi
    out = [x.new_empty(rows, 1) for _ in range(4)]
    codes = torch.empty(rows, dim, dtype=torch.uint8)
    step = max(1, cfg.chunk_elems // dim)
    buf = tuple(x.new_empty(min(step, rows), dim) for _ in range(3))
    for i in range(0, rows, step):
        n = min(step, rows - i)
        chunk = (x[i : i + n], lo[i : i + n], hi[i : i + n])
        parts = _search_chunk(*chunk, bits, cfg, tuple(t[:n] for t in buf), codes[i : i + n])
        for dst, src in zip(out, parts):
            dst[i : i + n] = src
    return SearchResult(*out, codes)
