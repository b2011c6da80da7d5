"""The labelled record of one drift window: the paired measurement and the labelled decision as the
rows `DriftStore.record_window` writes (window row, layer clipping, table error). NaN/inf become NULL."""

from __future__ import annotations

import math
from typing import Any

from lowprec.data.dataset import Dataset
from lowprec.drift.alarm import decide
from lowprec.drift.signals import baseline_problem, calib_rates, expected_calibration_gap, expected_gap, signals_for
from lowprec.drift.store import DriftStore
from lowprec.evaluation.paired import TableError, WindowMeasure
from lowprec.train import seen_in_training


LEARNED_FROM = "--reference learned from this window"  # (the warning the CLI gathers into one line)


def labelled_record(job: Any, store: DriftStore, ds: Dataset, models: Any, w: int, run_id: int,
                    calib: dict[str, Any] | None, table_err: TableError | None,
                    m: WindowMeasure) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The labelled window row (metrics, gaps, decision), its clipping rows and table-error rows."""
    info = ds.meta.window(w)
    rates = calib_rates(calib, list(m.clipping))
    t = job.config.alarm
    base = store.baseline()
    if base is not None and baseline_problem(base, t):  # (chosen by an older lowprec)
        base = None
    here = {"window": w, "ref_ne": m.reference["ne"], "ref_calibration": m.reference["calibration"],
            "ctr": m.reference["ctr"], "rows": m.rows}
    cannot = baseline_problem(here, t) if base is None else ""
    if base is None and not cannot:
        base = here  # the first window that can be the baseline: this one
    s = signals_for(m, base, rates, expected_gap(models.manifest), expected_calibration_gap(models.manifest))
    d = decide(s, store.previous_state(w), t)
    learned = seen_in_training(models.reference_info, ds, [w])
    warnings = d.warnings + tuple(
        f"{LEARNED_FROM} ({kind} data): both models' metrics here are not held-out, and as "
        f"a staleness baseline it makes later windows look stale; monitor windows after the training ones"
        for kind in learned.values())
    row = {
        "window": w, "run_id": run_id, "label": info.label, "start": info.start, "end": info.end,
        "rows": m.rows, "ctr": m.reference["ctr"], "seconds": m.seconds,
        **{f"ref_{k}": m.reference[k] for k in ("ne", "logloss", "auc", "calibration")},
        **{f"cand_{k}": m.candidate[k] for k in ("ne", "logloss", "auc", "calibration")},
        "ne_gap": m.ne_gap.estimate, "ne_gap_lo": m.ne_gap.lo, "ne_gap_hi": m.ne_gap.hi,
        "ne_gap_se": m.ne_gap.se, "ne_gap_se_delta": m.ne_gap_se_delta,
        "auc_diff": m.delong.diff, "auc_se": math.sqrt(m.delong.var) if m.delong.var >= 0 else None,
        "auc_z": m.delong.z, "auc_p": m.delong.p_two_sided, "auc_p_drop": m.delong.p_drop,
        "cal_gap": m.cal_gap.estimate, "cal_gap_lo": m.cal_gap.lo, "cal_gap_hi": m.cal_gap.hi, "psi": m.psi,
        "baseline_window": base["window"] if base else None, "stale_ne": s.stale_ne,
        "stale_calibration": s.stale_calibration, "cusum_up": d.state.up, "cusum_down": d.state.down,
        "alarm": int(d.alarm), "triggers": d.triggers, "reason": d.reason, "warnings": warnings,
        "staleness": d.staleness + ((f"no staleness baseline yet: window {w} cannot be the float model's "
                                     f"baseline ({cannot}); the first recorded window with enough labels of "
                                     f"each class and a finite NE becomes it",) if cannot else ()),
    }
    clip_rows = [{"window": w, "layer": n, "clip_rate": c["clip_rate"], "calib_clip_rate": rates.get(n),
                  "clipped": c["clipped"], "elements": c["elements"], "range_lo": c["range"][0],
                  "range_hi": c["range"][1], "observed_min": (c["observed"] or [None, None])[0],
                  "observed_max": (c["observed"] or [None, None])[1]} for n, c in m.clipping.items()]
    notes = table_err.notes if table_err is not None else {}
    table_rows = [{"window": w, "table_name": n, **(e or {}), "note": notes.get(n)}
                  for n, e in m.table_error.items()]
    return finite(row), [finite(r) for r in clip_rows], [finite(r) for r in table_rows]


def finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf -> None (SQLite NULL; JSON null)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
