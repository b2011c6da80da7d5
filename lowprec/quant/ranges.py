"""Choosing an activation range from a histogram (pure numpy).

The histogram has `len(hist)` equal bins over [a, b]. Every method returns (lo, hi) with
a <= lo < hi <= b; the activation quantizer then covers [min(lo, 0), max(hi, 0)].
- minmax:     (a, b).
- percentile: the (100-p)% and p% quantiles, interpolated inside bins.
- mse:        argmin over a grid of (lo, hi) of   Σ_inside n_k Δ²/12  +  Σ_outside n_k (c_k - clip(c_k))²,
              Δ = (hi - lo)/LEVELS, c_k the bin centres: rounding noise plus clipping error.
- entropy:    argmin over the same grid of KL(P ‖ Q): P the histogram with outliers folded into the
              edge bins, Q its LEVELS-level quantization spread uniformly over each level's non-empty
              bins (the TensorRT calibration rule, over two-sided ranges).
`clip_rate` is the share of the histogram's mass outside [lo, hi].
"""

from __future__ import annotations

import numpy as np

from lowprec.quant.linear import ACT_QMAX

LEVELS = ACT_QMAX  # steps across the range: codes 0..127 (lowprec.quant.linear)
GRID = 24


def _centres(a: float, b: float, n: int) -> np.ndarray:
    w = (b - a) / n
    return a + w * (np.arange(n) + 0.5)


def percentile_range(hist: np.ndarray, a: float, b: float, p: float) -> tuple[float, float]:
    total = hist.sum()
    if total == 0 or b <= a:
        return a, b
    cdf = np.concatenate([[0.0], np.cumsum(hist)]) / total
    edges = np.linspace(a, b, len(hist) + 1)
    lo = float(np.interp((100.0 - p) / 100.0, cdf, edges))
    hi = float(np.interp(p / 100.0, cdf, edges))
    return (lo, hi) if hi > lo else (a, b)


def _candidates(hist: np.ndarray, a: float, b: float) -> list[tuple[float, float]]:
    qs = 100.0 - np.geomspace(1e-4, 5.0, GRID - 1)
    his = [b] + [percentile_range(hist, a, b, q)[1] for q in qs]
    los = [a] + [percentile_range(hist, a, b, q)[0] for q in qs]
    return [(lo, hi) for lo in los for hi in his if hi > lo]


def mse_cost(hist: np.ndarray, a: float, b: float, lo: float, hi: float) -> float:
    c = _centres(a, b, len(hist))
    qlo, qhi = min(lo, 0.0), max(hi, 0.0)
    step = (qhi - qlo) / LEVELS
    inside = (c >= qlo) & (c <= qhi)
    clipped = np.clip(c, qlo, qhi)
    return float((hist[inside].sum() * step * step / 12.0) + (hist * (c - clipped) ** 2).sum())


def kl_cost(hist: np.ndarray, a: float, b: float, lo: float, hi: float) -> float:
    c = _centres(a, b, len(hist))
    qlo, qhi = min(lo, 0.0), max(hi, 0.0)
    inside = (c >= qlo) & (c <= qhi)
    if not inside.any():
        return np.inf
    idx = np.nonzero(inside)[0]
    p = hist[idx].astype(np.float64).copy()
    p[0] += hist[: idx[0]].sum()
    p[-1] += hist[idx[-1] + 1:].sum()
    level = np.minimum(((c[idx] - qlo) / max(qhi - qlo, 1e-12) * LEVELS).astype(np.int64), LEVELS - 1)
    nonzero = p > 0
    mass = np.bincount(level, weights=p, minlength=LEVELS)
    support = np.bincount(level, weights=nonzero.astype(np.float64), minlength=LEVELS)
    q = np.where(nonzero, mass[level] / np.maximum(support[level], 1), 0.0)
    ps, qs = p / p.sum(), q / max(q.sum(), 1e-300)
    m = ps > 0
    return float((ps[m] * np.log(ps[m] / np.maximum(qs[m], 1e-300))).sum())


def choose_range(hist: np.ndarray, a: float, b: float, method: str,
                 percentile: float = 99.99) -> tuple[float, float]:
    if b <= a or hist.sum() == 0 or method == "minmax":
        return a, b
    if method == "percentile":
        return percentile_range(hist, a, b, percentile)
    cost = {"mse": mse_cost, "entropy": kl_cost}[method]
    best = min(_candidates(hist, a, b), key=lambda r: cost(hist, a, b, *r))
    return float(best[0]), float(best[1])


def clip_rate(hist: np.ndarray, a: float, b: float, lo: float, hi: float) -> float:
    total = hist.sum()
    if total == 0:
        return 0.0
    c = _centres(a, b, len(hist))
    return float(hist[(c < min(lo, 0.0)) | (c > max(hi, 0.0))].sum() / total)
