"""Pure statistics of the paired drift evaluation: numpy in, numbers out; no I/O, no torch.

Everything here accumulates over mini-batches in memory that does not grow with the window.

- Paired relative NE gap. On the same rows the entropy normaliser of NE is shared, so
      gap = NE_cand / NE_ref - 1 = Σ ll_cand / Σ ll_ref - 1,
  ll the per-row log-loss (probabilities clipped as in `lowprec.evaluation.metrics`).
- Poisson bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012, "Estimating uncertainty for
  massive data streams"): every row gets K independent weights w_ik ~ Poisson(1) from a seeded
  generator keyed by the row's index (so a data-parallel split draws the same weights) and only
  the K weighted sums are kept, so a replicate statistic (the gap, the
  calibration ratio) costs O(K) memory. The interval is the percentile interval of the replicates,
  the standard error their standard deviation. Weights are drawn by inverting Poisson(1)'s CDF on
  16-bit uniforms (probabilities exact to 2^-16; ~13x faster than `Generator.poisson`).
- Delta-method standard error of a ratio of paired sums, R = Σc / Σr:
      se(R) ≈ sqrt(Σ (c_i - R r_i)²) / Σ r_i        (cross-check of the bootstrap).
- DeLong's paired AUC test (DeLong, DeLong & Clarke-Pearson 1988; Sun & Xu 2014): per model j the
  placement of a positive i is V10_j(i) = P_neg(s < s_i) + ½ P_neg(s = s_i), of a negative k
  V01_j(k) = P_pos(s > s_k) + ½ P_pos(s = s_k). Then AUC_j = mean V10_j = mean V01_j and
      Var(AUC_1 - AUC_2) = (S10_11 + S10_22 - 2 S10_12) / m + (S01_11 + S01_22 - 2 S01_12) / n,
  S10, S01 the (ddof 1) covariance matrices of the placements over the m positives and n negatives.
  Placements come from each model's fixed-size score histograms (`metrics.score_bins`), so scores in
  one bin count as ties, exactly as `BinaryStats.auc` does.
- PSI (population stability index) between the two models' score distributions over the reference's
  score deciles: PSI = Σ_d (c_d - r_d) ln(c_d / r_d). Label-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lowprec.evaluation.metrics import _EPS as PROB_EPS

# Columns of the Poisson-bootstrap sums.
COLS = ("weight", "positives", "ll_ref", "ll_cand", "pred_ref", "pred_cand")


def row_logloss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row log-loss with the clipping `BinaryStats` uses, in float64."""
    pc = np.clip(np.asarray(p, dtype=np.float64), PROB_EPS, 1 - PROB_EPS)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(pc) + (1 - y) * np.log1p(-pc))


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _poisson1_table() -> np.ndarray:
    """weight for each 16-bit uniform u: #{k : round(2^16 CDF(k)) <= u}, CDF of Poisson(1)."""
    k = np.arange(20)
    pmf = np.exp(-1.0) / np.cumprod(np.maximum(k, 1)).astype(np.float64)
    thresholds = np.round(np.cumsum(pmf) * 65536.0)
    return np.searchsorted(thresholds, np.arange(65536), side="right").astype(np.uint8)


_POISSON1 = _poisson1_table()


def poisson1(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Poisson(1) draws (uint8) by table lookup on 16-bit uniforms."""
    return _POISSON1[rng.integers(0, 65536, size=shape, dtype=np.uint16)]


class PoissonBootstrap:
    """K replicate sums of (weight, positives, ll_ref, ll_cand, pred_ref, pred_cand).

    Row i's K weights depend only on (seed, stream, i): they are drawn for blocks of BLOCK rows,
    block b from its own generator SeedSequence(seed, spawn_key=(stream, b)). So any split of the
    rows (ranks of a data-parallel job, lowprec.distributed) sees the weights one process sees."""

    BLOCK = 4096

    def __init__(self, replicates: int, seed: int, stream: int = 0):
        self.k, self.seed, self.stream = replicates, seed, stream
        self.next_row = 0
        self._block: tuple[int, np.ndarray] | None = None
        self.sums = np.zeros((replicates, len(COLS)), dtype=np.float64)

    def _weights_of_block(self, b: int) -> np.ndarray:
        if self._block is None or self._block[0] != b:
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.stream, b)))
            self._block = (b, poisson1(rng, (self.k, self.BLOCK)))
        return self._block[1]

    def weights(self, row0: int, n: int) -> np.ndarray:
        """(K, n) weights of rows row0 .. row0+n-1."""
        parts, i = [], row0
        while i < row0 + n:
            b, off = divmod(i, self.BLOCK)
            take = min(self.BLOCK - off, row0 + n - i)
            parts.append(self._weights_of_block(b)[:, off: off + take])
            i += take
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def update(self, y: np.ndarray, ll_ref: np.ndarray, ll_cand: np.ndarray,
               p_ref: np.ndarray, p_cand: np.ndarray, row0: int | None = None) -> None:
        """Add rows row0.. (default: right after the previous update's rows)."""
        self.sums += self.batch_sums(y, ll_ref, ll_cand, p_ref, p_cand, row0)

    def batch_sums(self, y: np.ndarray, ll_ref: np.ndarray, ll_cand: np.ndarray,
                   p_ref: np.ndarray, p_cand: np.ndarray, row0: int | None = None) -> np.ndarray:
        """The (K, 6) replicate sums of rows row0.. alone (what `update` adds)."""
        n = len(y)
        row0 = self.next_row if row0 is None else row0
        self.next_row = row0 + n
        if n == 0:
            return np.zeros_like(self.sums)
        v = np.column_stack([np.ones(n), y, ll_ref, ll_cand, p_ref, p_cand]).astype(np.float64)
        return self.weights(row0, n).astype(np.float64) @ v

    def ratio(self, num: str, den: str) -> np.ndarray:
        """Replicates of Σnum / Σden - 1 (nan where a replicate's denominator is 0)."""
        a, b = self.sums[:, COLS.index(num)], self.sums[:, COLS.index(den)]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(b > 0, a / b - 1.0, np.nan)


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float
    se: float


MIN_INTERVAL_ROWS = 100  # fewer rows and an interval over rows is undefined (NaN), as PSI (10 a bucket)


def percentile_interval(estimate: float, replicates: np.ndarray, confidence: float,
                        rows: int | None = None) -> Interval:
    """Percentile bootstrap interval and the replicates' standard deviation as the standard error.
    Undefined (NaN lo, hi, se) on fewer than MIN_INTERVAL_ROWS rows: a 1-row window's Poisson
    replicates all give the same ratio (an interval of width 0, which alarmed on one row's score),
    and on a few rows the percentile interval badly understates the uncertainty."""
    r = replicates[np.isfinite(replicates)]
    if len(r) < 2 or (rows is not None and rows < MIN_INTERVAL_ROWS):
        return Interval(estimate, float("nan"), float("nan"), float("nan"))
    alpha = 1.0 - confidence
    lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate, float(lo), float(hi), float(r.std(ddof=1)))


class RatioMoments:
    """Streaming Σr, Σc, Σr², Σc², Σrc for the delta-method standard error of Σc / Σr."""

    def __init__(self) -> None:
        self.s = np.zeros(5, dtype=np.float64)

    def update(self, r: np.ndarray, c: np.ndarray) -> None:
        r, c = np.asarray(r, np.float64), np.asarray(c, np.float64)
        self.s += (r.sum(), c.sum(), (r * r).sum(), (c * c).sum(), (r * c).sum())

    def ratio_se(self) -> float:
        sr, sc, srr, scc, src = self.s
        if sr <= 0:
            return float("nan")
        ratio = sc / sr
        ss = max(scc - 2 * ratio * src + ratio * ratio * srr, 0.0)
        return math.sqrt(ss) / sr


def placement_tables(hist_pos: np.ndarray, hist_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bin: placement of a positive (share of negatives below + ½ tied) and of a negative
    (share of positives above + ½ tied)."""
    n_pos, n_neg = hist_pos.sum(), hist_neg.sum()
    neg_below = np.cumsum(hist_neg) - hist_neg
    pos_above = hist_pos.sum() - np.cumsum(hist_pos)
    v10 = (neg_below + 0.5 * hist_neg) / max(n_neg, 1e-300)
    v01 = (pos_above + 0.5 * hist_pos) / max(n_pos, 1e-300)
    return v10, v01


@dataclass(frozen=True)
class DeLongResult:
    auc_ref: float
    auc_cand: float
    diff: float  # auc_cand - auc_ref
    var: float
    z: float
    p_two_sided: float
    p_drop: float  # one-sided P-value of H1: auc_cand < auc_ref


class DeLongAccumulator:
    """Centred second moments of the two models' placements, per class.

    Built from each model's (hist_pos, hist_neg) over the whole window; `update` then takes the
    rows' score bins and labels in batches (the second pass over the spilled scores)."""

    def __init__(self, ref_hists: tuple[np.ndarray, np.ndarray],
                 cand_hists: tuple[np.ndarray, np.ndarray], auc_ref: float, auc_cand: float):
        self.tables = (placement_tables(*ref_hists), placement_tables(*cand_hists))
        self.auc = (auc_ref, auc_cand)
        self.m = self.n = 0
        self.s10 = np.zeros(3)  # Σ d1², Σ d2², Σ d1 d2 over positives (d = V - AUC)
        self.s01 = np.zeros(3)

    def update(self, bins_ref: np.ndarray, bins_cand: np.ndarray, y: np.ndarray) -> None:
        pos = np.asarray(y) > 0.5
        (v10r, v01r), (v10c, v01c) = self.tables
        for mask, tr, tc, acc in ((pos, v10r, v10c, self.s10), (~pos, v01r, v01c, self.s01)):
            d1 = tr[bins_ref[mask]] - self.auc[0]
            d2 = tc[bins_cand[mask]] - self.auc[1]
            acc += ((d1 * d1).sum(), (d2 * d2).sum(), (d1 * d2).sum())
        self.m += int(pos.sum())
        self.n += int((~pos).sum())

    def result(self) -> DeLongResult:
        return delong_from_moments(self.auc[0], self.auc[1], self.m, self.n, self.s10, self.s01)


def delong_from_moments(auc_ref: float, auc_cand: float, m: int, n: int,
                        s10: np.ndarray, s01: np.ndarray) -> DeLongResult:
    """DeLong's z test of AUC_cand - AUC_ref from centred placement moments (Σd1², Σd2², Σd1d2)."""
    diff = auc_cand - auc_ref
    nan = float("nan")
    if m < 2 or n < 2:
        return DeLongResult(auc_ref, auc_cand, diff, nan, nan, nan, nan)
    c10 = np.asarray(s10) / (m - 1)
    c01 = np.asarray(s01) / (n - 1)
    var = float((c10[0] + c10[1] - 2 * c10[2]) / m + (c01[0] + c01[1] - 2 * c01[2]) / n)
    if var <= 0:
        same = diff == 0
        z = 0.0 if same else math.copysign(math.inf, diff)
        return DeLongResult(auc_ref, auc_cand, diff, max(var, 0.0), z,
                            1.0 if same else 0.0, 0.5 if same else float(diff > 0))
    z = diff / math.sqrt(var)
    return DeLongResult(auc_ref, auc_cand, diff, var, z, 2 * normal_sf(abs(z)), normal_sf(-z))


def psi(hist_ref: np.ndarray, hist_cand: np.ndarray, quantiles: int = 10, floor: float = 1e-6) -> float:
    """PSI of the candidate's score distribution against the reference's, over reference quantiles.

    Bucket edges are the reference histogram's bins at its 1/q .. (q-1)/q quantiles; both
    distributions are counted over the same bin ranges (so a bucket may hold ≠ 1/q of the reference
    when many scores share a bin). NaN (undefined, never a warning) with fewer than 10 scores a
    bucket: a window of one row scored PSI 27.6, a warning that meant nothing."""
    tr, tc = hist_ref.sum(), hist_cand.sum()
    if min(tr, tc) < 10 * quantiles:
        return float("nan")
    cr, cc = np.cumsum(hist_ref), np.cumsum(hist_cand)
    cuts = np.searchsorted(cr, tr * np.arange(1, quantiles) / quantiles, side="left")
    cuts = np.unique(cuts)
    edges_r = np.concatenate([[0.0], cr[cuts], [tr]]) / tr
    edges_c = np.concatenate([[0.0], cc[cuts], [tc]]) / tc
    r = np.maximum(np.diff(edges_r), floor)
    c = np.maximum(np.diff(edges_c), floor)
    return float(((c - r) * np.log(c / r)).sum())


def weighted_row_error(row_err: np.ndarray, row_norm: np.ndarray, counts: np.ndarray,
                       dim: int) -> dict[str, float | None]:
    """Lookup-weighted quantization error of one table.

    mse = Σ c_r e_r / (D Σ c_r) (per element and lookup), rel = Σ c_r e_r / Σ c_r ||w_r||², and
    sqnr_db = -10 log10 rel (None when the table is exact); e_r = ||w_r - q_r||² the row's squared error, c_r its lookups."""
    total = float(counts.sum())
    if total <= 0:
        return {"lookups": 0.0, "mse": None, "rel": None, "sqnr_db": None}
    err = float((counts * row_err).sum())
    norm = float((counts * row_norm).sum())
    rel = err / norm if norm > 0 else None
    sqnr = -10 * math.log10(rel) if rel else None  # None: no error at all (or no norm)
    return {"lookups": total, "mse": err / (dim * total), "rel": rel, "sqnr_db": sqnr}
