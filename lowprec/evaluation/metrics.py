"""Accuracy metrics for CTR models over mergeable sufficient statistics.

`BinaryStats` holds sums (weight, labels, predictions, log-loss) and two score histograms, so the
statistics of two windows combine by addition (as TorchRec's metrics do) and every metric is a pure
function of them:

- log-loss  = -Σw(y log p + (1-y) log(1-p)) / Σw
- NE        = log-loss / H(p̄), H the entropy of the average click rate p̄ = Σwy/Σw (He et al. 2014)
- calibration = Σwp / Σwy (1 is perfect)
- AUC       = P(score_pos > score_neg) + ½ P(tie), from the histograms.

The histogram bins a probability by the top bits of its float32 bit pattern, which is monotone for
non-negative floats: bins are ~2.4e-4 relative wide (13 mantissa bits kept), so two scores tie only
when they agree to ~4 significant digits. `auc_exact` (rank-based) is the brute-force reference.

A metric that is undefined (AUC and NE of rows with one label class: NE divides by the entropy of a
base rate of 0 or 1; anything of no rows) is NaN here;
what lowprec prints or writes shows it as null (lowprec.jsonsafe). Predictions that are NaN or Inf
(a model whose weights overflow) are refused (`check_finite`: NonFinitePredictions, an InputError).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lowprec.errors import InputError

MIN_CLASS_LABELS = 30  # fewer labels of a class and an AUC, or a difference of AUCs, rests on too little
# (drift's default min_positives / min_negatives; the search's and eval's warnings)
_SHIFT = 10  # drop 10 of float32's 23 mantissa bits
_NBINS = (0x3F800000 >> _SHIFT) + 1  # bit pattern of 1.0f, shifted, inclusive
_EPS = 1e-7


def score_bins(p: np.ndarray) -> np.ndarray:
    """Monotone bin index of probabilities in [0, 1] (float32 bit pattern >> _SHIFT)."""
    p32 = np.clip(np.asarray(p, dtype=np.float32), 0.0, 1.0)
    return (p32.view(np.int32) >> _SHIFT).astype(np.int64)


class NonFinitePredictions(InputError):
    """Predictions holding NaN or Inf: the model's weights overflow on these inputs (exit 2)."""


def check_finite(p: np.ndarray, what: str = "the model") -> None:
    """NonFinitePredictions naming `what` when any prediction is NaN or Inf."""
    bad = int(np.count_nonzero(~np.isfinite(p)))
    if bad:
        raise NonFinitePredictions(
            f"{what}: {bad:,} of {np.size(p):,} predictions are NaN or Inf: its weights overflow on these "
            f"inputs (trained with too high a --lr / --sparse-lr?); retrain it with lower learning rates")


def _entropy(rate: float) -> float:
    rate = min(max(rate, _EPS), 1 - _EPS)
    return -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))


@dataclass
class BinaryStats:
    """Mergeable sufficient statistics of (probability, label, weight) triples."""

    weight: float = 0.0
    positives: float = 0.0
    pred_sum: float = 0.0
    logloss_sum: float = 0.0
    hist_pos: np.ndarray = field(default_factory=lambda: np.zeros(_NBINS, dtype=np.float64))
    hist_neg: np.ndarray = field(default_factory=lambda: np.zeros(_NBINS, dtype=np.float64))

    def update(self, p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> "BinaryStats":
        p = np.asarray(p, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        w = np.ones_like(p) if w is None else np.asarray(w, dtype=np.float64).ravel()
        if p.size == 0:
            return self
        check_finite(p)
        pc = np.clip(p, _EPS, 1 - _EPS)
        self.weight += float(w.sum())
        self.positives += float((w * y).sum())
        self.pred_sum += float((w * p).sum())
        self.logloss_sum += float(-(w * (y * np.log(pc) + (1 - y) * np.log1p(-pc))).sum())
        bins = score_bins(p)  # (in place: a bincount over all ~1M bins cost 17x more a 4,096-row batch)
        np.add.at(self.hist_pos, bins, w * y)
        np.add.at(self.hist_neg, bins, w * (1 - y))
        return self

    def __add__(self, other: "BinaryStats") -> "BinaryStats":
        return BinaryStats(
            self.weight + other.weight,
            self.positives + other.positives,
            self.pred_sum + other.pred_sum,
            self.logloss_sum + other.logloss_sum,
            self.hist_pos + other.hist_pos,
            self.hist_neg + other.hist_neg,
        )

    @property
    def logloss(self) -> float:
        return self.logloss_sum / self.weight if self.weight else float("nan")

    @property
    def ne(self) -> float:
        if not 0 < self.positives < self.weight:  # no rows, or one label class: H(p̄) = 0
            return float("nan")
        return self.logloss / _entropy(self.positives / self.weight)

    @property
    def calibration(self) -> float:
        return self.pred_sum / self.positives if self.positives else float("nan")

    @property
    def ctr(self) -> float:
        return self.positives / self.weight if self.weight else float("nan")

    @property
    def auc(self) -> float:
        return auc_from_histograms(self.hist_pos, self.hist_neg)

    def summary(self) -> dict[str, float]:
        return {
            "rows": int(self.weight) if float(self.weight).is_integer() else self.weight,  # (a count: 21319, not 21319.0)
            "ne": self.ne,
            "logloss": self.logloss,
            "auc": self.auc,
            "calibration": self.calibration,
            "ctr": self.ctr,
        }


def scarce_class(positives: float, rows: float) -> str | None:
    """"6 positive" (or "2 positive and 2 negative" when both are) when `rows` hold some, but fewer
    than MIN_CLASS_LABELS, labels of a class; else None (none at all makes AUC undefined, which
    callers say otherwise)."""
    if positives != positives or rows != rows:
        return None
    pos = int(round(positives))
    scarce = [f"{n} {kind}" for n, kind in ((pos, "positive"), (int(round(rows)) - pos, "negative"))
              if n < MIN_CLASS_LABELS]
    if not scarce or min(pos, int(round(rows)) - pos) == 0:
        return None
    return " and ".join(scarce)


def auc_from_histograms(hist_pos: np.ndarray, hist_neg: np.ndarray) -> float:
    """AUC with ties counted half: Σ_b pos_b (neg below b + ½ neg_b) / (P N), computed as
    (pos · cumsum(neg) - ½ pos · neg) / (P N): three passes over the ~1M bins, not seven."""
    p_total, n_total = hist_pos.sum(), hist_neg.sum()
    if p_total == 0 or n_total == 0:
        return float("nan")
    return float((np.dot(hist_pos, np.cumsum(hist_neg)) - 0.5 * np.dot(hist_pos, hist_neg)) / (p_total * n_total))


def auc_exact(p: np.ndarray, y: np.ndarray) -> float:
    """Rank-based AUC (Mann-Whitney U with average ranks for ties): the reference."""
    from scipy.stats import rankdata

    p, y = np.asarray(p, dtype=np.float64), np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
