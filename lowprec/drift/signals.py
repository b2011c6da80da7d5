"""One window's alarm signals from its paired measurement: gaps net of the deployed plan's validated
gap, staleness of the float model against the baseline window, clipping against calibration.

The staleness baseline is the first recorded window that can be one (`baseline_problem`): enough
labels of each class (the [alarm] min_positives / min_negatives) and a finite float NE. A window
with 3 positives has an NE far from the model's (51 where 0.9 is usual) and a window of one label
class none at all; as the baseline either made every later window's staleness wrong or null."""

from __future__ import annotations

import math
from typing import Any

from lowprec.drift.alarm import Signals
from lowprec.evaluation.paired import WindowMeasure


def calib_rates(calib: dict[str, Any] | None, layers: list[str]) -> dict[str, float | None]:
    known = (calib or {}).get("layers", {})
    return {n: (float(known[n]["clip_rate"]) if n in known and known[n].get("clip_rate") is not None
                else None) for n in layers}


def expected_gap(manifest: dict[str, Any] | None) -> float:
    """The relative NE gap the deployed plan was accepted with (search validation), else 0.

    The alarm asks whether quantization went stale, i.e. whether the gap *moved* since deployment:
    a plan validated at -0.7% (sharing can regularise) is healthy at -0.7% and drifting at -4%."""
    validated = ((manifest or {}).get("plan") or {}).get("validated") or {}
    value = validated.get("ne_increase")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def expected_calibration_gap(manifest: dict[str, Any] | None) -> float:
    """The calibration ratio gap (Σp_plan / Σp_float - 1) the deployed plan was accepted with, else 0.

    Like the NE gap: a plan validated 6% below the float model's mean prediction is healthy there
    and drifting when that gap moves by more than the limit."""
    validated = ((manifest or {}).get("plan") or {}).get("validated") or {}
    value = validated.get("calibration_gap")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def signals_for(m: WindowMeasure, baseline: dict[str, Any] | None,
                calib: dict[str, float | None], expected: float = 0.0, expected_cal: float = 0.0) -> Signals:
    ref = m.reference
    stale_ne = stale_cal = None  # no baseline (yet)
    if baseline is not None:
        stale_ne = _ratio(ref["ne"], baseline["ref_ne"])
        stale_cal = _ratio(ref["calibration"], baseline["ref_calibration"])
    clipping = {n: (c["clip_rate"], calib.get(n)) for n, c in m.clipping.items() if c["clip_rate"] is not None}
    ctr, rows = ref.get("ctr", math.nan), getattr(m, "rows", None)
    pos = int(round(ctr * rows)) if rows is not None and math.isfinite(ctr) else None
    return Signals(m.ne_gap.estimate - expected, m.ne_gap.lo - expected, m.ne_gap.hi - expected,
                   m.ne_gap.se, m.delong.diff, m.delong.p_drop, m.cal_gap.estimate - expected_cal,
                   m.cal_gap.lo - expected_cal, m.cal_gap.hi - expected_cal, m.psi, clipping, stale_ne,
                   stale_cal, expected, pos, None if pos is None else rows - pos, expected_cal_gap=expected_cal,
                   rows=rows)


def label_counts(ctr: float | None, rows: int | None) -> tuple[int, int] | None:
    """(positives, negatives) of a window from its click rate and rows; None when unknown."""
    if ctr is None or rows is None or not math.isfinite(ctr):
        return None
    pos = int(round(ctr * rows))
    return pos, rows - pos


def baseline_problem(row: dict[str, Any], t: Any) -> str:
    """Why a window (keys ref_ne, ctr, rows) cannot be the staleness baseline under [alarm]
    thresholds `t` ("" when it can)."""
    counts = label_counts(row.get("ctr"), row.get("rows"))
    if counts is not None and (counts[0] < t.min_positives or counts[1] < t.min_negatives):
        return (f"too few labels: {counts[0]} positives / {counts[1]} negatives (minimum {t.min_positives} / "
                f"{t.min_negatives})")
    ne = row.get("ref_ne")
    if ne is None or not math.isfinite(ne):
        return "the float model's NE is not finite (one label class)"
    return ""


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return a / b - 1
