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

1. candidates: E at lo = min + a R, hi = max - c R for a small set of cuts (a, c) (R = max - min;
   6 pairs from {0, 2%, 4%}^2 at int4 for rows up to 64 values, see `RangeSearchConfig.for_bits`);
   (0, 0) is FBGEMM's int4/int2 min/max. Keep the best per row.
2. refine: alternating least squares (Lloyd) from the best candidate. With codes q fixed, E is a
   quadratic in (s, b) minimised by the line fit x ~ s q + b: s = cov(q, x) / var(q),
   b = mean(x) - s mean(q). Each step is over-relaxed (w = 1.5), rounded to fp16, the codes are
   reassigned, and the new (s, b) kept on the rows where E went down.

During the search E is evaluated as s^2 sum_j (t_j - q_j)^2 with t = (x - b) / s in fp32; the
guard (`range_guard`) puts min/max back where it is not worse, re-scoring near-ties exactly, so the
result is never worse than min/max on any row.

Backends (`RangeSearchConfig.backend`, resolved by `backend_for`, the one rule): the C kernel of
`range_search_native` ("native", which also runs the guard; "auto" wherever it builds), the same
steps as torch ops below ("eager"), or those with the error passes torch.compile'd ("compile";
"auto" takes it for >= 2**25 values when the kernel cannot be built).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from lowprec.quant import range_search_native

FP16_MAX = 65504.0
BACKENDS = ("auto", "native", "compile", "eager")


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


def minmax_qparams(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """FBGEMM's min/max (scale, bias) for row ranges [lo, hi] and the (sub, mul) of its codes.

    int4/int2: `qparams_from_range`, codes with sub = b, mul = 1 / s. int8 (FBGEMM's TBE recipe,
    `fbgemm_gpu.tbe.utils.quantize.quantize_embs`): codes of FloatToFused8BitRowwiseQuantized from the
    fp32 range, sub = lo, mul = 255 / (hi - lo + 1e-8); stored s = fp16((hi - lo) / 255), b = fp16(lo).
    """
    if bits == 8:
        rng = hi - lo
        return fp16_round(rng / 255.0), fp16_round(lo), lo, torch.div(torch.tensor(255.0), rng + torch.tensor(1e-8))
    scale, bias = qparams_from_range(lo, hi, bits)
    return scale, bias, bias, torch.reciprocal(scale)


def codes_into(x: Tensor, sub: Tensor, mul: Tensor, bits: int, out: Tensor) -> Tensor:
    """q = clamp(rint((x - sub) * mul), 0, L) as float32 in `out`; sub/mul are [rows, 1].

    FBGEMM's rule is sub = b, mul = 1 / s (fp32 reciprocal), as in the module docstring.
    """
    torch.sub(x, sub, out=out)
    out.mul_(mul)
    out.round_()
    return out.clamp_(0, levels(bits))


def pack_float_codes(q: Tensor, bits: int) -> Tensor:
    """Integer-valued float codes [rows, dim] -> uint8 [rows, dim * bits / 8], low bits first.

    Element i of a row goes to byte i // (8 / bits) at bit (i % (8 / bits)) * bits; the byte is
    formed in float (exact below 256) so only a quarter/half of the values are converted.
    """
    per = 8 // bits
    grouped = q.view(q.shape[0], q.shape[1] // per, per)
    acc = grouped[..., 0] if per == 1 else torch.add(grouped[..., 0], grouped[..., 1], alpha=1 << bits)
    for i in range(2, per):
        acc.add_(grouped[..., i], alpha=1 << (bits * i))
    return acc.to(torch.int32).to(torch.uint8)  # float -> int32 -> uint8 is ~2x faster than direct


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
    backend: str = "auto"  # "native" (C kernel), "compile", "eager" or "auto": see `backend_for`

    def __post_init__(self) -> None:
        cands = self.candidates
        if not cands or tuple(cands[0]) != (0.0, 0.0) or len(cands) > 16:
            raise ValueError(f"candidates must start with (0.0, 0.0) (min/max), at most 16, got {cands}")
        if any(not (0.0 <= a and 0.0 <= c and a + c < 1.0) for a, c in cands):
            raise ValueError(f"candidate cuts must be >= 0 and leave a non-empty range, got {cands}")
        if self.refine_steps < 0 or not 0.0 < self.relaxation < 2.0 or self.chunk_elems < 1:
            raise ValueError(f"invalid RangeSearchConfig: {self}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

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


def _fused_grid(x: Tensor, bias: Tensor, inv: Tensor, top: float) -> Tensor:
    """[K, rows] sum_j (t - q)^2 of every candidate in one pass (compiled by torch.compile)."""
    t = (x.unsqueeze(0) - bias.unsqueeze(2)) * inv.unsqueeze(2)
    return (t - t.clamp(0.0, top).round()).square().sum(2)


def _fused_step(x: Tensor, b: Tensor, inv: Tensor, top: float) -> tuple[Tensor, Tensor, Tensor]:
    """sum (t - q)^2, sum q, sum q^2 per row for one (s, b) in one pass (compiled)."""
    t = (x - b) * inv
    q = t.clamp(0.0, top).round()
    return (t - q).square().sum(1, keepdim=True), q.sum(1, keepdim=True), q.square().sum(1, keepdim=True)


class _Kernels:
    """The two passes over the rows the torch backends make, eager or torch.compile'd (`fused`).

    The default is neither: "auto" (and "native") run the whole search in the C kernel of
    `range_search_native` (6-11x the eager search, same definition), and fall back here only where
    it cannot be built (no C compiler, no AVX2/F16C, not x86-64), with a warning (`backend_for`).

    The compiled versions fuse each candidate's 5 passes into one (the search runs ~1.8x faster)
    but cost a one-off compile per process (~5 s with torch's disk cache warm, 10-20 s cold) and
    sum in another order, so near-tie rows may pick another, equally good range. "auto" compiles
    only for tables of >= 2**25 values (128 MB of fp32): small tables and tests stay eager. The
    compiled code holds no fp16 casts (torch.compile drops float -> half -> float round trips):
    every fp16 rounding, and the final codes, stay eager.
    """

    _compiled: dict[str, object] = {}
    _failed = False

    def __init__(self, fused: bool):
        self.fused = fused and self._ready()

    @classmethod
    def _ready(cls) -> bool:
        if not cls._compiled and not cls._failed:
            try:
                cls._compiled = {f.__name__: torch.compile(f, dynamic=True) for f in (_fused_grid, _fused_step)}
            except Exception as exc:  # noqa: BLE001 - any compiler problem falls back to eager
                cls._fail(exc)
        return not cls._failed

    @classmethod
    def _fail(cls, exc: Exception) -> None:
        import warnings

        cls._failed = True
        warnings.warn(f"torch.compile unavailable for the L2 range search, using eager ops: {exc}", stacklevel=3)

    def grid(self, x, bias, scale, bits, cfg, buf) -> Tensor:
        if self.fused:
            try:
                return self._compiled["_fused_grid"](x, bias, torch.reciprocal(scale), float(levels(bits)))
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
                self.fused = False
        err = x.new_empty(len(cfg.candidates), x.shape[0])
        prev = None
        for k, (a, _) in enumerate(cfg.candidates):
            err[k] = _error(x, scale[k].unsqueeze(1), bias[k].unsqueeze(1), bits, buf, a == prev)[:, 0]
            prev = a
        return err

    def step(self, x, s, b, bits, buf) -> tuple[Tensor, Tensor, Tensor]:
        if self.fused:
            try:
                return self._compiled["_fused_step"](x, b, torch.reciprocal(s), float(levels(bits)))
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
                self.fused = False
        resid = _error(x, s, b, bits, buf, False)
        q = buf[2]
        return resid, q.sum(1, keepdim=True), torch.linalg.vector_norm(q, dim=1, keepdim=True).square_()


def _refit(moments, s: Tensor, b: Tensor, sums: tuple[Tensor, Tensor, Tensor], w: float):
    """One over-relaxed least-squares step for (s, b), given sum (t - q)^2, sum q, sum q^2.

    With codes fixed, E is minimised by the line fit t ~ alpha q + beta in t = (x - b) / s units.
    Means over the row: E[t] and E[t^2] follow from the row moments, and
    E[t q] = (E[t^2] + E[q^2] - resid / n) / 2, so only sum q and sum q^2 need a pass over q.
    """
    n, mean, var = moments  # var = E[(x - mean)^2]
    resid, sum_q, sum_qq = sums
    inv = torch.reciprocal(s)
    m_q, m_qq = sum_q / n, sum_qq / n
    m_t = (mean - b).mul_(inv)
    m_tt = (var * inv * inv).add_(m_t * m_t)
    var_q = m_qq - m_q * m_q
    cov = (m_tt + m_qq - resid / n).mul_(0.5).sub_(m_t * m_q)
    alpha = cov / var_q  # inf/nan where all codes are equal: rejected below
    new_s = fp16_round(s * (1 + w * (alpha - 1)))
    new_b = fp16_round(b + w * s * (m_t - alpha * m_q))
    ok = torch.isfinite(new_s * new_b) & (new_s != 0) & (var_q > 0)
    return torch.where(ok, new_s, s), torch.where(ok, new_b, b)


def _candidates(x, lo0, hi0, bits, cfg, buf, kernels: _Kernels) -> tuple[Tensor, ...]:
    """Errors of every candidate range; returns (scale, bias, err) of the best and err of (0, 0)."""
    cuts = torch.tensor(cfg.candidates, dtype=torch.float32)
    lo0, hi0 = lo0.reshape(1, -1), hi0.reshape(1, -1)  # candidates along dim 0: [K, rows]
    rng = hi0 - lo0
    scale, bias = qparams_from_range(lo0 + cuts[:, :1] * rng, hi0 - cuts[:, 1:] * rng, bits)
    err = kernels.grid(x, bias, scale, bits, cfg, buf).mul_(scale * scale)
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


def _search_chunk(x, lo0, hi0, bits, cfg, buf, packed, kernels: _Kernels) -> tuple[Tensor, ...]:
    """Best (scale, bias, err) and min/max err [rows, 1] for one chunk; its codes go to `packed`."""
    best_s, best_b, best_e, err_mm = _candidates(x, lo0, hi0, bits, cfg, buf, kernels)
    if cfg.refine_steps:
        n = x.shape[1]
        mean = x.sum(1, keepdim=True).div_(n)  # torch.var_mean over dim 1 is ~20x slower
        var = torch.linalg.vector_norm(torch.sub(x, mean, out=buf[0]), dim=1, keepdim=True).square_().div_(n)
        moments = (n, mean, var)
        s, b = best_s, best_b
        sums = kernels.step(x, s, b, bits, buf)
        for _ in range(cfg.refine_steps):
            s, b = _refit(moments, s, b, sums, cfg.relaxation)
            sums = kernels.step(x, s, b, bits, buf)
            resid = sums[0]
            better = resid * s * s < best_e
            best_e = torch.where(better, resid * s * s, best_e)
            best_s, best_b = torch.where(better, s, best_s), torch.where(better, b, best_b)
    packed.copy_(pack_float_codes(codes_into(x, best_b, torch.reciprocal(best_s), bits, buf[1]), bits))
    return best_s, best_b, best_e, err_mm


def backend_for(backend: str, numel: int) -> str:
    """The backend a search over `numel` values with `RangeSearchConfig.backend` runs (the one rule):
    "native" wherever the C kernel builds, else eager; "auto" is the C kernel wherever it builds,
    else the compiled passes for >= 2**25 values, else eager; "compile" falls back to eager where
    torch.compile fails."""
    if backend in ("auto", "native") and range_search_native.kernel() is not None:
        return "native"
    fused = backend == "compile" or (backend == "auto" and numel >= 1 << 25)
    return "compile" if fused and _Kernels._ready() else "eager"


def auto_backend(numel: int) -> str:
    """The backend "auto" runs for a search over `numel` values (`backend_for`)."""
    return backend_for("auto", numel)


class SearchResult(NamedTuple):
    """Per-row result of `search_ranges`: qparams [rows, 1], approximate errors, nearest codes."""

    scale: Tensor
    bias: Tensor
    err: Tensor
    err_minmax: Tensor
    packed: Tensor  # uint8 [rows, dim * bits / 8]: FBGEMM's codes for (scale, bias), packed
    lo: Tensor  # [rows, 1] row min and max (as passed in, or taken; NaN on non-finite rows if taken
    hi: Tensor  # by the native kernel, which then searched garbage: the caller must check them)
    guarded: bool = False  # min/max already put back where not worse (`range_guard`; the kernel does)
    flagged: int = 0  # when guarded: rows with a non-finite range or min/max qparams beyond fp16


def search_ranges(
    x: Tensor,
    bits: int,
    cfg: RangeSearchConfig | None = None,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    packed: Tensor | None = None,
    guard: bool = False,
    head: Tensor | None = None,
) -> SearchResult:
    """L2 search over rows of finite float32 `x` [rows, dim] (row min/max may be passed in).

    err and err_minmax are the (fp32, approximate) squared errors of the chosen qparams and of
    FBGEMM's min/max qparams. The packed codes are written to `packed` if given (it may be a
    strided view, e.g. the code bytes of fused rows). With `guard`, the native kernel also runs
    `range_guard`'s guard (result `guarded`) and writes the fp16 (scale, bias) to `head` [rows, 4]
    if given; the torch backends leave both to `range_guard.guarded_search`.
    """
    rows, dim = x.shape
    cfg = cfg or RangeSearchConfig.for_bits(bits, dim)
    out = [x.new_empty(rows, 1) for _ in range(4)]
    if packed is None:
        packed = torch.empty(rows, dim * bits // 8, dtype=torch.uint8)
    backend = backend_for(cfg.backend, x.numel())
    if backend == "native":  # 8 rows at a time in C: no buffers, one read of x
        *ranges, flagged = range_search_native.search(
            x.to(torch.float32).contiguous(), lo, hi, cfg.candidates, bits, cfg.refine_steps, cfg.relaxation,
            out, packed, guard, head)
        return SearchResult(*out, packed, *ranges, guard, flagged)
    lo = x.amin(1, keepdim=True) if lo is None else lo
    hi = x.amax(1, keepdim=True) if hi is None else hi
    step = max(1, cfg.chunk_elems // dim)
    buf = tuple(x.new_empty(min(step, rows), dim) for _ in range(3))
    kernels = _Kernels(backend == "compile")
    for i in range(0, rows, step):
        n = min(step, rows - i)
        chunk = (x[i : i + n], lo[i : i + n], hi[i : i + n])
        parts = _search_chunk(*chunk, bits, cfg, tuple(t[:n] for t in buf), packed[i : i + n], kernels)
        for dst, src in zip(out, parts):
            dst[i : i + n] = src
    return SearchResult(*out, packed, lo, hi)
