"""`lowprec drift --on-alarm recalibrate`: new artifacts beside the deployed one for the first alarmed
window of each alarm (consecutive alarmed windows in the history are one alarm), calibrated on the
latest healthy windows before it and/or on the alarmed window itself, each
re-scored on the alarmed window and recorded (`recalibrations`, `recal_tier_share`) with a reason
that says whether the new calibration closes the gap and what that means. Their names carry the
history in --db (`recal_paths`): a second history of the same candidate never replaces what the
first recorded (history is append-only), and a rerun of one history finds its own files.

`check_recal_outputs` runs before any window is scored: every path a recalibration may write must be
free or lowprec's own of that kind (and free when --db is a new history: a file there was recorded by
a history since deleted), so a refusal comes before anything is recorded. The artifact
and its calibration file commit as a pair (no artifact is left without its calibration); a rerun
redoes a recalibration that no row records.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lowprec.data.dataset import Dataset
from lowprec.drift.alarm import CusumState, decide
from lowprec.drift.dbfile import history_tag
from lowprec.drift.record import finite
from lowprec.drift.signals import baseline_problem, calib_rates, expected_calibration_gap, expected_gap, signals_for
from lowprec.drift.store import DriftStore
from lowprec.drift.tiers import TierShareObserver
from lowprec.errors import InputError, warn
from lowprec.evaluation.paired import evaluate_window
from lowprec.fileio import sha256_file
from lowprec.progress import Stages


def recalibrate(job: Any, store: DriftStore, ds: Dataset, models: Any, chosen: list[int],
                calib: dict[str, Any] | None, run_id: int, stages: Stages) -> list[dict[str, Any]]:
    """New artifacts for the first alarmed window of each alarm the requested windows are in (once an
    alarm: a daily job asking for each new window of a week-long alarm reuses the recalibration of its
    first day), calibrated on healthy and/or that alarmed window."""
    rows = sorted(store.windows(), key=lambda r: r["window"])
    out: list[dict[str, Any]] = []
    for target in alarm_starts(rows, chosen):
        out += _recalibrate_alarm(job, store, ds, models, rows, target, calib, run_id, stages)
    return out


def alarm_starts(rows: list[dict[str, Any]], chosen: list[int]) -> list[int]:
    """The first window of each alarm (a run of consecutive alarmed windows in the history, `rows`
    in window order) that holds a window of `chosen`: a run over a backlog of two alarms has two."""
    starts, start = [], None
    for r in rows:
        start = (r["window"] if start is None else start) if r["alarm"] else None  # (None: no alarm here)
        if start is not None and r["window"] in chosen and start not in starts:
            starts.append(start)
    return starts


def _recalibrate_alarm(job: Any, store: DriftStore, ds: Dataset, models: Any, rows: list[dict[str, Any]],
                       target: int, calib: dict[str, Any] | None, run_id: int, stages: Stages) -> list[dict[str, Any]]:
    """The recalibrations of the alarm that began at window `target`: recorded ones reused."""
    rc = job.config.recalibrate
    out: list[dict[str, Any]] = []
    for source in (("healthy", "alarmed") if rc.source == "both" else (rc.source,)):
        done = store.recalibration(target, source)
        if done is not None:
            out.append(done)
            continue
        windows = [target] if source == "alarmed" else \
            [r["window"] for r in rows if r["window"] < target and not r["alarm"]][-rc.healthy_windows:]
        skip = _recal_obstacle(job, models, target, source, windows)
        if skip:
            warn(f"--on-alarm recalibrate: no recalibration from the {source} window(s) of alarm window "
                 f"{target}: {skip}")
            out.append({"alarm_window": target, "source": source, "skipped": skip})
            continue
        out.append(_recalibrate_one(job, store, ds, models, target, source, windows, calib, run_id, stages))
    return out


def recal_paths(job: Any, target: int, source: str) -> tuple[Path, Path]:
    """The recalibrated artifact for (alarm window, source) of the history in `--db`, and its
    calibration file beside it: `CANDIDATE.recal-w{t}[-alarmed].{history}` (dbfile.history_tag), so a
    second history of the same candidate (a new --db after revised labels, other data or settings)
    never replaces what the first recorded, and a rerun of one history finds its own files."""
    c, kind = job.candidate, "" if source == "healthy" else "-alarmed"
    out = c.with_name(f"{c.name}.recal-w{target}{kind}.{history_tag(job.db)}")
    return out, out.with_name(out.name + ".calib.json")


def check_recal_outputs(job: Any, chosen: list[int]) -> None:
    """Before any window is scored: every path a recalibration of any requested window may write
    (the artifact directory and its calibration file) must be free or lowprec's own of that kind,
    and its directory writable; InputError naming the path otherwise (nothing written)."""
    from lowprec.fileio import claim_output

    rc = job.config.recalibrate
    inputs = [job.reference, job.candidate, job.data]
    new_history = not job.db.is_file() or job.db.stat().st_size == 0
    for w in chosen:
        for source in (("healthy", "alarmed") if rc.source == "both" else (rc.source,)):
            art, calib = recal_paths(job, w, source)
            claim_output(art, "artifact", inputs, what="--on-alarm recalibrate: the recalibrated artifact")
            claim_output(calib, "calibration", inputs, what="--on-alarm recalibrate: the recalibration's calibration")
            held = [p for p in (art, calib) if p.is_file() or (p.is_dir() and any(p.iterdir()))]
            if new_history and held:  # not a leftover of this history's killed run
                raise InputError(
                    f"--on-alarm recalibrate: {held[0]} exists, but --db {job.db} is a "
                    f"new history, which wrote nothing there: a history at this path, since deleted, recorded "
                    f"it; refusing to replace it (move it away, or give --db another path)")
    d = job.candidate.resolve().parent
    if not os.access(d, os.W_OK | os.X_OK):
        raise InputError(f"--on-alarm recalibrate writes its artifacts beside --candidate, in {d}, which is not "
                         f"writable; make it writable or run without --on-alarm recalibrate")


def _recal_obstacle(job: Any, models: Any, target: int, source: str, windows: list[int]) -> str:
    if not windows:
        return f"no healthy window before the first alarm (window {target}) to calibrate on"
    src = (models.manifest or {}).get("source", {}).get("sha256")
    if src is not None and src != models.reference_sha:
        return "the deployed artifact was not converted from this --reference (sha256 differs)"
    return ""  # (its output paths were checked before any window: check_recal_outputs)


def _recalibrate_one(job: Any, store: DriftStore, ds: Dataset, models: Any, target: int,
                     source: str, windows: list[int], calib: dict[str, Any] | None, run_id: int,
                     stages: Stages) -> dict[str, Any]:
    from lowprec.calibrate import CalibConfig, calibrate, save_calibration
    from lowprec.checkpoint.artifact import load_artifact
    from lowprec.checkpoint.convert import convert
    from lowprec.checkpoint.float_model import load_float_model
    from lowprec.plan import Plan

    rc = job.config.recalibrate
    method = rc.method or (calib or {}).get("method") or "minmax"
    percentile = rc.percentile if rc.method else float((calib or {}).get("percentile", rc.percentile))
    float_model, _ = load_float_model(job.reference)
    rows = sum(ds.meta.window(w).rows for w in windows)
    c = calibrate(float_model, ds, CalibConfig(tuple(windows), method, percentile, job.batch_size),
                  stages(f"recalibrate on windows {windows}", 2 * rows, "rows"))
    out_dir, calib_path = recal_paths(job, target, source)
    convert(job.reference, Plan.from_json(models.manifest["plan"], "deployed artifact's plan", tier_order=False),
            out_dir, c)  # (its layouts as deployed, even ones a new plan may not take)
    try:
        save_calibration(c, calib_path, models.reference_sha)
    except BaseException:  # never an artifact without its calibration (no row records it: rerun redoes both)
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    runtime, _ = load_artifact(out_dir)
    tiers = TierShareObserver(runtime)  # the re-ranked tiers' shares on the alarmed window
    m = evaluate_window(models.reference, runtime, ds, target, job.paired, job.spill_prefix, None,
                        stages(f"rescore window {target}", ds.meta.window(target).rows, "rows"), [tiers])
    expected = expected_gap(models.manifest)
    d = decide(signals_for(m, None, calib_rates(c, list(m.clipping)), expected,
                           expected_calibration_gap(models.manifest)), CusumState(), job.config.alarm)
    t = job.config.alarm
    closes = not d.alarm and m.ne_gap.lo - expected <= t.ne_gap_allowance and \
        (not t.two_sided or m.ne_gap.hi - expected >= -t.ne_gap_allowance)
    before = next(r for r in store.windows() if r["window"] == target)
    row = finite({
        "run_id": run_id, "alarm_window": target, "source": source, "calib_windows": json.dumps(windows),
        "method": method, "artifact": str(out_dir), "artifact_sha256": sha256_file(out_dir / "manifest.json"),
        "calibration": str(calib_path), "ne_gap": m.ne_gap.estimate, "ne_gap_lo": m.ne_gap.lo,
        "ne_gap_hi": m.ne_gap.hi, "auc_diff": m.delong.diff, "cal_gap": m.cal_gap.estimate,
        "alarm": int(d.alarm), "closes": int(closes),
        "reason": _recal_reason(source, windows, target, closes, before, (m, d), t),
    })
    store.record_recalibration(row, tiers.rows(target))
    return store.recalibration(target, source) or row


_SIGNALS = {  # trigger -> (what it measures, the window row's column, the measure after, how said)
    "ne_gap": ("NE gap", "ne_gap", lambda m: m.ne_gap.estimate, "pct"),
    "auc_drop": ("AUC difference", "auc_diff", lambda m: m.delong.diff, "auc"),
    "calibration_gap": ("calibration gap", "cal_gap", lambda m: m.cal_gap.estimate, "pct"),
}


def _changes(before: dict[str, Any], m: Any) -> str:
    """'NE gap +0.31% -> +0.02%' for each signal that alarmed on the window (the NE gap when none is
    recorded), before and after the recalibration."""
    from lowprec.drift.alarm import pct

    fired = {x if x in _SIGNALS else "ne_gap" for x in before.get("triggers") or ()}  # (NE CI and CUSUMs)
    out = []
    for key in [k for k in _SIGNALS if k in fired] or ["ne_gap"]:
        name, column, now, how = _SIGNALS[key]
        said = (lambda x: pct(x)) if how == "pct" else (lambda x: "n/a" if x is None or x != x else f"{x:+.4f}")
        out.append(f"{name} {said(before.get(column))} -> {said(now(m)) if m is not None else 'n/a'}")
    return "; ".join(out)


def _recal_reason(source: str, windows: list[int], target: int, closes: bool, before: dict[str, Any],
                  after: Any, t: Any) -> str:
    """The verdict on one recalibration, in terms of what alarmed on the window (`before`, its
    recorded row) and what was measured after (`after`: a WindowMeasure and its Decision, or None
    in tests of the staleness note). A claim about the ranges is made from the measured clipping."""
    from lowprec.drift.alarm import pct

    m, d = after if after is not None else (None, None)
    change = _changes(before, m)
    still = f"; it still alarms on {', '.join(d.triggers)}" if d is not None and d.triggers else ""
    clipping = [w for w in (d.warnings if d is not None else ()) if w.startswith("activation clipping")]
    static = bool(m.clipping) if m is not None else True  # (layers with static int8 input ranges)
    if source == "healthy" and closes:
        text = (f"recalibrating on healthy windows {windows} clears the alarm ({change}): the activation "
                f"ranges had gone stale; review and deploy the new artifact")
    elif source == "healthy":
        if not static:
            why = "the candidate has no static int8 layer, so its activation ranges are not what moved"
        elif clipping:
            why = (f"the healthy windows' ranges do not cover window {target}'s inputs ({clipping[0]}): the data "
                   f"changed after them")
        else:
            why = (f"the healthy windows' ranges do cover window {target}'s inputs (no layer clips beyond its "
                   f"calibration-time rate), so the ranges are not the cause: see the per-table errors, "
                   f"layer precisions and the float model's staleness")
        text = f"recalibrating on healthy windows {windows} does not clear the alarm ({change}{still}): {why}"
    elif closes:
        text = (f"recalibrating on the alarmed window {target} itself clears the alarm ({change}): the ranges "
                f"now cover the drifted inputs (calibrated and scored on the same rows, so optimistic: "
                f"confirm on the next window)")
    elif m is not None and abs(m.ne_gap.estimate) < 0.5 * abs(before["ne_gap"] or 0.0):
        text = (f"ranges fitted to the alarmed window {target} shrink but do not close the gap ({change}{still}): "
                f"the drifted inputs need ranges so wide that int8 loses resolution")
    else:
        text = (f"even ranges fitted to the alarmed window {target} do not clear the alarm ({change}{still}): the "
                f"activation ranges are not the cause (see the per-table errors and layer precisions)")
    stale = before.get("stale_ne")  # (not from a window with too few labels: its NE says nothing)
    if stale is not None and abs(stale) > t.staleness_ne_limit and not baseline_problem(before, t):
        text += (f". Note the float reference itself is stale on window {target} (NE {pct(stale, 1)} vs its "
                 f"baseline): retraining, not recalibration, fixes that")
    return text
