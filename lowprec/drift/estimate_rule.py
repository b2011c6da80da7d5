"""The alarm rule on the label-free signals: [estimate] thresholds (their own, not [alarm]'s) and
the decision for one window from its label-free record (lowprec.drift.labelfree.Estimate).

With e_t the window's estimated relative NE gap (Σ KL / Σ H), s_t its row-sampling standard error,
and b the estimate of the baseline window (the first window of >= 100 rows given a label-free
record; with s_b):

  ALARM (estimate) when any of
      shift:  e_t - b - gap_allowance > z · sqrt(s_t² + s_b²)   the divergence grew since the baseline
      limit:  e_t - z · s_t > gap_limit                          the divergence itself is too large
A window of fewer than 100 rows (stats.MIN_INTERVAL_ROWS) is not judged ("too few rows"): the CLT
se of a few rows says nothing (0 on one row). Warnings (never an alarm by themselves): Kendall's tau
between the two models' scores below `min_kendall`; the 99th percentile of |p_cand - p_ref| above `abs_p99_limit`; PSI above `psi_limit`.
The estimate is one-sided (KL >= 0 cannot say the candidate got better), and it assumes the float
reference is calibrated on the window (docs/drift.md says when that breaks). Every message says
"estimate": no label was read (an alarm on a window whose labels were there says so, "from scores
only", not "no labels read"); an alarm's reason prints the quantity its test compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from lowprec.errors import InputError
from lowprec.evaluation.stats import MIN_INTERVAL_ROWS


@dataclass(frozen=True)
class EstimateThresholds:
    gap_allowance: float = 0.0005  # growth of the estimated gap over its baseline tolerated (0.05%)
    gap_limit: float = 0.002  # estimated gap (net of its noise) beyond which the divergence alarms (0.2%)
    z: float = 3.0  # one-sided z of both tests (row-sampling noise of the estimates)
    min_kendall: float = 0.9  # warn when the models' rank agreement (Kendall tau-b) falls below
    abs_p99_limit: float = 0.05  # warn when the 99th percentile of |p_cand - p_ref| exceeds
    psi_limit: float = 0.1  # warn when the PSI of the two models' scores exceeds

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InputError(f"drift config: estimate.{f.name} must be a finite number >= 0, got {v}")
        if self.z <= 0:
            raise InputError("drift config: estimate.z must be > 0")
        if self.min_kendall > 1:
            raise InputError("drift config: estimate.min_kendall must be <= 1")


@dataclass(frozen=True)
class EstimateDecision:
    alarm: bool
    triggers: tuple[str, ...]
    reason: str
    warnings: tuple[str, ...]
    shift: float | None


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.3f}%"


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def decide_estimate(e: dict[str, Any], baseline: dict[str, Any] | None, t: EstimateThresholds,
                    has_labels: bool = False) -> EstimateDecision:
    """The rule above for the window's record `e` (keys of Estimate + psi) against `baseline`'s.
    Each reason prints the quantity its test compared (row-sampling se only: the interval
    [est_lo, est_hi] adds label noise and is where the labelled gap should fall, not what is
    tested); `has_labels`: the window's labels were there (the estimate still reads none)."""
    gap, se = e.get("est_gap"), e.get("est_se_rows")
    if not (_ok(gap) and _ok(se)):
        return EstimateDecision(False, (), "estimate: n/a (no rows scored)", (), None)
    trig: list[tuple[str, str]] = []
    shift = None
    text = f"estimated NE gap {_pct(gap)} [CI {_pct(e.get('est_lo'))}, {_pct(e.get('est_hi'))}]"
    rows = e.get("rows")
    if _ok(rows) and rows < MIN_INTERVAL_ROWS:  # one row: se 0, and its own KL/H was "beyond the limit"
        return EstimateDecision(False, (), f"estimate: too few rows: {rows} (minimum {MIN_INTERVAL_ROWS}) for its "
                                           f"row-sampling se: not judged; estimated NE gap {_pct(gap)} (no interval)",
                                (), None)
    tiny_base = baseline is not None and _ok(baseline.get("rows")) and baseline["rows"] < MIN_INTERVAL_ROWS
    if tiny_base:  # a few rows' estimate is no baseline to measure growth from (se 0 on one row)
        text += f", no shift test: the baseline window {baseline['window']} has too few rows ({baseline['rows']})"
    elif baseline is not None and _ok(baseline.get("est_gap")) and _ok(baseline.get("est_se_rows")):
        shift = gap - baseline["est_gap"]
        noise = math.hypot(se, baseline["est_se_rows"])
        if shift - t.gap_allowance > t.z * noise:
            trig.append(("estimate_shift", f"estimated NE gap {_pct(gap)} grew by {_pct(shift)} since the baseline "
                                           f"window {baseline['window']} ({_pct(baseline['est_gap'])}): growth minus "
                                           f"the {_pct(t.gap_allowance)} allowance = {_pct(shift - t.gap_allowance)} "
                                           f"> {t.z:g} x se {_pct(noise)} (row sampling of both estimates) = "
                                           f"{_pct(t.z * noise)}"))
    if gap - t.z * se > t.gap_limit:
        trig.append(("estimate_limit", f"estimated NE gap {_pct(gap)} - {t.z:g} x se {_pct(se)} (row sampling) "
                                       f"= {_pct(gap - t.z * se)} is beyond the {_pct(t.gap_limit)} limit"))
    warnings = []
    tau, p99, psi = e.get("kendall_tau"), e.get("abs_p99"), e.get("psi")
    if _ok(tau) and tau < t.min_kendall:
        warnings.append(f"estimate: rank agreement of the two models' scores Kendall tau {tau:.3f} < {t.min_kendall:g}")
    if _ok(p99) and p99 > t.abs_p99_limit:
        warnings.append(f"estimate: 99th percentile |p_cand - p_ref| {p99:.3g} > {t.abs_p99_limit:g}")
    if _ok(psi) and psi > t.psi_limit:
        warnings.append(f"estimate: score PSI {psi:.3f} > {t.psi_limit:g}")
    if trig:
        head = "ALARM (estimate, from scores only; the labels are judged apart)" if has_labels else \
            "ALARM (estimate, no labels read)"
        reason = f"{head}: " + "; ".join(m for _, m in trig)
    else:
        base = "" if shift is None else f", {_pct(shift)} vs baseline window {baseline['window']}"  # type: ignore[index]
        reason = f"healthy (estimate): {text}{base}"
    return EstimateDecision(bool(trig), tuple(c for c, _ in trig), reason, tuple(warnings), shift)
