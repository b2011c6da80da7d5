"""Delayed labels: score a window before its labels exist, fill the labelled metrics in later.

A window's labels are there when its `day_{i}_labels.npy` file is. Every window scored gets a
label-free record (`labelfree` table: the estimate, rank agreement, |Δp|, PSI, the estimate rule's
decision) and its per-part attribution (`attribution`), whether or not labels exist; a window whose
labels exist also gets its labelled row (`windows`, with clipping and table error) in the SAME
transaction. A window recorded without labels is "pending"; a later run that finds its labels
file re-scores it and writes the labelled row, marks the label-free record filled (run id, time)
and never rewrites it, again in one transaction. So there is one record per window (primary keys
on window; the label-free estimate and the labelled measurement side by side), and
`window_events` keeps the history: one `estimate` event when the label-free record is written, one
`labels` event when the labelled one is, each with its decision. A run killed mid-window leaves
the window as it was (SQLite rolls the transaction back), and the next run redoes it.

The label-free pass reads no label: pending windows are scored through `PendingLabels`, a view of
the dataset that hands the paired pass zeros for the missing labels; the labelled numbers of that
pass are discarded. Windows with labels are scored once for both records.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lowprec.data.dataset import Dataset, window_files
from lowprec.data.npyfiles import load_window_array
from lowprec.drift.attribution import LabelFreeObserver
from lowprec.drift.estimate_rule import decide_estimate
from lowprec.drift.labelfree import LabelFreeConfig
from lowprec.drift.record import finite, labelled_record
from lowprec.drift.sources import alarm_json, labels_stat, window_labels_sha, window_source
from lowprec.drift.store import DriftStore, now
from lowprec.drift.tiers import TierShareObserver
from lowprec.errors import InputError
from lowprec.filekind import check_regular
from lowprec.evaluation.paired import PairedConfig, TableError, WindowMeasure, evaluate_window
from lowprec.evaluation.stats import MIN_INTERVAL_ROWS

BASELINE_KEY = "estimate_baseline_window"


def labels_present(ds: Dataset, w: int) -> bool:
    """Window w's labels file is there (missing: pending); InputError if something else is at its
    path (a FIFO the job would block on, a directory)."""
    return check_regular(window_files(ds.root, w)["labels"])


class PendingLabels(Dataset):
    """`ds` where windows without a labels file read as all-zero labels (for the label-free pass)."""

    def __init__(self, ds: Dataset):  # a view: no re-read of dataset.json
        self.root, self.meta = ds.root, ds.meta

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if labels_present(self, index):
            return super().arrays(index)
        info, files = self.meta.window(index), window_files(self.root, index)
        out = []
        for kind, shape in (("dense", (info.rows, len(self.meta.dense_names))), ("sparse", (info.rows, self.meta.slots))):
            path = files[kind]
            arr = load_window_array(path, index, kind)
            if arr.shape != shape:
                raise InputError(f"{path}: shape {arr.shape}, dataset.json says {shape}")
            out.append(arr)
        return out[0], out[1], np.broadcast_to(np.int32(0), (info.rows,))


def score_plan(store: DriftStore, ds: Dataset, chosen: list[int]) -> tuple[list[int], list[int]]:
    """(windows to score in this run in order, the pending ones among them whose labels arrived)."""
    labelled = store.recorded()
    estimated = {r["window"] for r in store.labelfree()}
    new = [w for w in chosen if w not in labelled and w not in estimated]
    fill = [w for w in chosen if w in estimated and w not in labelled and labels_present(ds, w)]
    return sorted(new + fill), fill


def labelfree_config(job: Any) -> LabelFreeConfig:
    b = job.config.bootstrap
    return LabelFreeConfig(confidence=b.confidence, seed=b.seed)


def score(paired: PairedConfig, lf: LabelFreeConfig, spill_prefix: Any, ds: Dataset, reference: Any,
          candidate: Any, w: int, table_err: TableError | None,
          progress: Any = None) -> tuple[WindowMeasure, LabelFreeObserver, bool, list[dict[str, Any]]]:
    """One paired pass over window w with the label-free and the tier-share observers (every rank
    runs this); returns the measure, the label-free observer, whether labels exist, the tier rows."""
    has = labels_present(ds, w)
    obs = LabelFreeObserver(reference, candidate, lf, w, ds.meta.window(w).rows)
    tiers = TierShareObserver(candidate)  # tiered tables' traffic per tier, in the same pass
    m = evaluate_window(reference, candidate, ds if has else PendingLabels(ds), w, paired, spill_prefix,
                        table_err, progress, observers=[obs, tiers])
    return m, obs, has, tiers.rows(w)


def process_window(job: Any, store: DriftStore, ds: Dataset, models: Any, w: int, run_id: int,
                   calib: dict[str, Any] | None, table_err: TableError | None, stages: Any) -> None:
    """Score window w and record what is new about it (one transaction)."""
    info = ds.meta.window(w)
    m, obs, has, tiers = score(job.paired, labelfree_config(job), job.spill_prefix, ds, models.reference,
                        models.candidate, w, table_err, stages(f"drift window {w}", info.rows, "rows"))
    fill = any(r["window"] == w for r in store.labelfree())
    estimate = None if fill else _estimate_row(job, store, ds, w, run_id, obs, m.psi, has)
    attribution = [] if fill else [finite(dict(r, window=w)) for r in obs.attribution.result()]

    def write_estimate(st: DriftStore) -> None:
        st.insert("labelfree", [estimate])
        st.insert("attribution", attribution)
        st.insert("window_events", [{"window": w, "run_id": run_id, "kind": "estimate",
                                     "alarm": estimate["est_alarm"], "reason": estimate["est_reason"]}])
        if estimate.get("rows", 0) >= MIN_INTERVAL_ROWS and not _qualifies(st, st.meta(BASELINE_KEY)):
            st.set_meta(BASELINE_KEY, str(w))  # the first window with an se to measure growth from

    if not has:  # tier shares need no labels: recorded with the estimate
        with store.transaction():
            write_estimate(store)
            store.insert("window_sources", [dict(window_source(job, ds, models, w, judged=False), window=w)])
            store.insert("tier_share", tiers)
        return
    row, clips, tables = labelled_record(job, store, ds, models, w, run_id, calib, table_err, m)

    def also(st: DriftStore) -> None:
        if fill:
            st.conn.execute('UPDATE labelfree SET filled_run_id = ?, filled = ? WHERE "window" = ?', (run_id, now(), w))
            # judged now, with these thresholds (the source row was written with the label-free record)
            st.conn.execute('UPDATE window_sources SET thresholds = ? WHERE "window" = ?', (alarm_json(job), w))
        else:
            write_estimate(st)
        st.insert("window_events", [{"window": w, "run_id": run_id, "kind": "labels", "alarm": row["alarm"],
                                     "reason": row["reason"]}])
        st.insert("window_labels", [{"window": w, "labels_sha256": window_labels_sha(ds, w),
                                     "labels_stat": labels_stat(ds, w)}])

    if w in store.tier_windows():  # recorded with the window's estimate, before its labels
        tiers = []
    store.record_window(row, clips, tables, None if fill else window_source(job, ds, models, w), tiers, also=also)


def _qualifies(store: DriftStore, window: str | None) -> bool:
    """`window` (the estimate baseline's meta value) names a recorded estimate of at least
    MIN_INTERVAL_ROWS rows: a smaller one, chosen by an older lowprec, gives way to the next that is
    not (as the staleness baseline does), else it would switch the growth test off for good."""
    return window is not None and any(str(r["window"]) == window and (r.get("rows") or 0) >= MIN_INTERVAL_ROWS
                                      for r in store.labelfree())


def _estimate_row(job: Any, store: DriftStore, ds: Dataset, w: int, run_id: int, obs: LabelFreeObserver,
                  psi: float, has: bool) -> dict[str, Any]:
    info = ds.meta.window(w)
    e = dict(obs.acc.result().to_json(), psi=psi)
    base_w = store.meta(BASELINE_KEY)
    baseline = next((r for r in store.labelfree() if str(r["window"]) == base_w), None)
    d = decide_estimate(finite(e), baseline, job.config.estimate, has)
    return finite({**e, "window": w, "run_id": run_id, "label": info.label, "start": info.start, "end": info.end,
                   "has_labels": int(has), "baseline_window": baseline["window"] if baseline else w,
                   "est_baseline": baseline["est_gap"] if baseline else e["est_gap"], "est_shift": d.shift,
                   "est_alarm": int(d.alarm), "est_triggers": list(d.triggers), "est_reason": d.reason,
                   "est_warnings": list(d.warnings)})


def estimate_summaries(store: DriftStore, chosen: list[int], scored: list[int]) -> list[dict[str, Any]]:
    """Per chosen window with a label-free record: the estimate, its decision, and whether labels are in."""
    keys = ("label", "rows", "est_gap", "est_lo", "est_hi", "est_ne_diff", "est_shift", "kendall_tau",
            "abs_p99", "psi", "est_reason", "est_warnings")
    return [{"window": r["window"], "est_alarm": bool(r["est_alarm"]), "processed": r["window"] in scored,
             "labels": "pending" if not r["labelled"] else "filled" if r["filled_run_id"] is not None else "present",
             **{k: r[k] for k in keys}} for r in store.labelfree() if r["window"] in set(chosen)]
