"""Label-free paired signals of one window: what the candidate's divergence from its float reference
says about the NE gap before any label arrives.

The estimate. If the float reference is calibrated (a row's label is Bernoulli(p_r)), the candidate's
expected log-loss increase on that row is the Kullback-Leibler divergence

    KL_i = KL(Bern(p_r) || Bern(p_c)) = p_r log(p_r/p_c) + (1-p_r) log((1-p_r)/(1-p_c)),

and the reference's expected log-loss is its entropy H_i = H(p_r). The labelled relative gap
`ne_gap` = Σ ll_c / Σ ll_r - 1 (lowprec.evaluation.stats) is therefore estimated, label-free, by

    est_gap = Σ KL_i / Σ H_i          (probabilities clipped to [1e-7, 1-1e-7] as the log-loss is).

The absolute NE difference NE_c - NE_r is estimated by est_ne_diff = mean KL / H(p̄_r), the base
rate p̄_r being the mean of p_r (the labels' mean is not known yet).

Its interval is where the LABELLED gap of these rows should fall. Given the scores, the labelled gap
differs from est_gap by label noise: with d_i = ll_c - ll_r and R = est_gap, the delta method gives
Var(Σ(d_i - R ll_r,i)) / (Σ H_i)², and d_i - R ll_r,i = y_i·(u_i + R v_i) + const_i with
u_i = logit p_r - logit p_c, v_i = logit p_r, so each row contributes p_r(1-p_r)(u_i + R v_i)²
(exact for Bernoulli labels; kept as the sums Σp(1-p)u², Σp(1-p)uv, Σp(1-p)v²). Added to it, the
estimator's own row-sampling variance (CLT over rows): Σ(KL_i - R H_i)² / (Σ H_i)². The interval is
est_gap ± z·sqrt(both). All of it is sums over rows: ranks merge them by gathering each batch's
sums and adding them in the one-process batch order (`distributed.fold_rows`), so a data-parallel
run gives the one-process numbers bit for bit; the |Δp| histogram holds counts (exact in any order).

Other signals, label-free too: the distribution of |p_c - p_r| (a fixed log-spaced histogram, 20
bins a decade from 1e-8; quantiles are reported as the upper edge of their bin, ≤12% high), the
mean scores, and rank agreement between the two models (Kendall's tau-b and Spearman's rho, scipy)
on a fixed subsample: row i of the window is in it when a splitmix64 hash of (seed, window, i) is
below `rank_rows / rows`, so any split of the rows over ranks selects the same rows. PSI of the
scores comes with the paired pass (lowprec.evaluation.stats.psi); the per-table / per-layer
attribution is lowprec.drift.attribution.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowprec import distributed as dist
from lowprec.evaluation.stats import MIN_INTERVAL_ROWS, PROB_EPS

ABS_EDGES = np.concatenate([[0.0], 10.0 ** np.arange(-8, 0.0001, 0.05)])  # |Δp| bins; bin 0: < 1e-8
QUANTILES = (0.5, 0.9, 0.99)
# columns of the window's sums
SUMS = ("rows", "kl", "h", "kl2", "klh", "h2", "nu2", "nuv", "nv2", "p_ref", "p_cand", "abs")


@dataclass(frozen=True)
class LabelFreeConfig:
    confidence: float = 0.95
    rank_rows: int = 20000  # rows of the rank-agreement subsample
    attribution_rows: int = 512  # rows on which tables and layers are swapped one at a time
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.rank_rows < 0 or self.attribution_rows < 0:
            raise ValueError("rank_rows and attribution_rows must be >= 0")


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=np.float64), PROB_EPS, 1 - PROB_EPS)


def row_kl(p_ref: np.ndarray, p_cand: np.ndarray) -> np.ndarray:
    """KL(Bernoulli(p_ref) || Bernoulli(p_cand)) per row, probabilities clipped as the log-loss."""
    r, c = _clip(p_ref), _clip(p_cand)
    return np.maximum(r * (np.log(r) - np.log(c)) + (1 - r) * (np.log1p(-r) - np.log1p(-c)), 0.0)


def row_entropy(p: np.ndarray) -> np.ndarray:
    r = _clip(p)
    return -(r * np.log(r) + (1 - r) * np.log1p(-r))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def row_sums(p_ref: np.ndarray, p_cand: np.ndarray) -> np.ndarray:
    """The SUMS columns over these rows (float64)."""
    r, c = _clip(p_ref), _clip(p_cand)
    kl, h = row_kl(r, c), row_entropy(r)
    w = r * (1 - r)
    u, v = _logit(r) - _logit(c), _logit(r)
    return np.array([len(r), kl.sum(), h.sum(), (kl * kl).sum(), (kl * h).sum(), (h * h).sum(),
                     (w * u * u).sum(), (w * u * v).sum(), (w * v * v).sum(),
                     np.sum(p_ref, dtype=np.float64), np.sum(p_cand, dtype=np.float64),
                     np.abs(np.asarray(p_cand, np.float64) - np.asarray(p_ref, np.float64)).sum()])


def subsample_key(seed: int, window: int, rows: np.ndarray) -> np.ndarray:
    """A uniform in [0, 1) per global row index: splitmix64 of (seed, window, row)."""
    with np.errstate(over="ignore"):
        x = (np.asarray(rows, dtype=np.uint64) + np.uint64(window) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64(seed) * np.uint64(0xD1B54A32D192ED03))
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class Estimate:
    """The label-free record of one window (None where it cannot be computed)."""

    rows: int
    est_gap: float
    est_lo: float
    est_hi: float
    est_se: float  # both variance parts: where the labelled gap should fall
    est_se_rows: float  # the estimator's row-sampling part alone (the alarm rule's noise)
    est_ne_diff: float
    base_rate: float  # mean p_ref: the base rate of est_ne_diff
    ref_mean: float
    cand_mean: float
    abs_mean: float
    abs_p50: float
    abs_p90: float
    abs_p99: float
    abs_max: float
    kendall_tau: float | None
    spearman: float | None
    rank_rows: int

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}


def estimate_from_sums(s: np.ndarray, confidence: float) -> dict[str, float]:
    """est_gap, its interval and standard errors, est_ne_diff from the SUMS of a window (the interval
    and est_se undefined, NaN, below stats.MIN_INTERVAL_ROWS rows, as the measured gap's)."""
    n, kl, h, kl2, klh, h2, nu2, nuv, nv2 = s[:9]
    nan = float("nan")
    if n <= 0 or h <= 0:
        return {"est_gap": nan, "est_lo": nan, "est_hi": nan, "est_se": nan, "est_se_rows": nan,
                "est_ne_diff": nan, "base_rate": nan}
    r = kl / h
    var_labels = max(nu2 + 2 * r * nuv + r * r * nv2, 0.0) / (h * h)
    var_rows = max(kl2 - 2 * r * klh + r * r * h2, 0.0) / (h * h)
    se = math.sqrt(var_labels + var_rows)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    base = float(s[SUMS.index("p_ref")] / n)
    hb = float(row_entropy(np.array([base]))[0])
    if n < MIN_INTERVAL_ROWS:  # a few rows' CLT interval means nothing (width 0 on one row): undefined
        se = nan
    return {"est_gap": float(r), "est_lo": float(r - z * se), "est_hi": float(r + z * se), "est_se": se,
            "est_se_rows": math.sqrt(var_rows), "est_ne_diff": float(kl / n / hb), "base_rate": base}


def hist_quantile(hist: np.ndarray, q: float) -> float:
    """Upper edge of the |Δp| bin where the cumulative share reaches q."""
    total = hist.sum()
    if total <= 0:
        return float("nan")
    k = int(np.searchsorted(np.cumsum(hist), q * total, side="left"))
    return float(ABS_EDGES[min(k + 1, len(ABS_EDGES) - 1)])


def rank_agreement(pairs: np.ndarray) -> tuple[float | None, float | None]:
    """Kendall's tau-b and Spearman's rho of (p_ref, p_cand) rows (None under 3 rows or no spread)."""
    from scipy import stats as sps

    if len(pairs) < 3 or np.ptp(pairs[:, 0]) == 0 or np.ptp(pairs[:, 1]) == 0:
        return None, None
    tau = sps.kendalltau(pairs[:, 0], pairs[:, 1]).statistic
    rho = sps.spearmanr(pairs[:, 0], pairs[:, 1]).statistic
    return float(tau), float(rho)


class LabelFreeAccumulator:
    """Streams one window's label-free sums (the SUMS, the |Δp| histogram, the rank subsample)."""

    def __init__(self, cfg: LabelFreeConfig, window: int, window_rows: int):
        self.cfg, self.window = cfg, window
        self.rate = min(1.0, cfg.rank_rows / window_rows) if window_rows > 0 else 0.0
        self.sums = np.zeros(len(SUMS))
        self.batch_sums: list[np.ndarray] = []  # each batch's SUMS, for the ordered merge over ranks
        self.hist = np.zeros(len(ABS_EDGES))  # bin k: [edge_k, edge_k+1), last bin: >= 1
        self.abs_max = 0.0
        self.pairs: list[np.ndarray] = []

    def update(self, p_ref: np.ndarray, p_cand: np.ndarray, row0: int) -> None:
        if len(p_ref) == 0:
            return
        sums = row_sums(p_ref, p_cand)
        self.batch_sums.append(sums)
        self.sums += sums
        d = np.abs(np.asarray(p_cand, np.float64) - np.asarray(p_ref, np.float64))
        self.hist += np.bincount(np.searchsorted(ABS_EDGES, d, side="right") - 1, minlength=len(ABS_EDGES))
        self.abs_max = max(self.abs_max, float(d.max()))
        keep = self.keep(row0, len(p_ref), self.rate)
        if keep.any():
            self.pairs.append(np.column_stack([p_ref[keep], p_cand[keep]]).astype(np.float64))

    def keep(self, row0: int, n: int, rate: float) -> np.ndarray:
        return subsample_key(self.cfg.seed, self.window, np.arange(row0, row0 + n)) < rate

    def merge(self) -> None:
        """The sums of every rank's batches in batch order (as one process adds them), the histogram
        all-reduced, the subsample gathered (no-op in one process)."""
        if not dist.active():
            return
        rows = dist.gather_rows(np.reshape(self.batch_sums, (-1, len(SUMS))), "label-free sums")
        self.sums = dist.fold_rows(rows, len(SUMS))
        self.hist = dist.all_reduce_sum(self.hist, "label-free histogram")
        self.abs_max = float(dist.all_reduce_max(np.array([self.abs_max]), "label-free max")[0])
        local = np.concatenate(self.pairs) if self.pairs else np.zeros((0, 2))
        self.pairs = [dist.gather_rows(local, "label-free rank subsample")]

    def result(self) -> Estimate:
        s, n = self.sums, self.sums[0]
        pairs = np.concatenate(self.pairs) if self.pairs else np.zeros((0, 2))
        tau, rho = rank_agreement(pairs)
        mean = (lambda k: float(s[SUMS.index(k)] / n) if n > 0 else float("nan"))  # noqa: E731
        return Estimate(rows=int(n), **estimate_from_sums(s, self.cfg.confidence),
                        ref_mean=mean("p_ref"), cand_mean=mean("p_cand"), abs_mean=mean("abs"),
                        abs_p50=hist_quantile(self.hist, 0.5), abs_p90=hist_quantile(self.hist, 0.9),
                        abs_p99=hist_quantile(self.hist, 0.99), abs_max=self.abs_max if n > 0 else float("nan"),
                        kendall_tau=tau, spearman=rho, rank_rows=len(pairs))
