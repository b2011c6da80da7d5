"""How good the label-free drift estimate is: reports/drift_without_labels.md (+ .json, .png).

    python tools/bench_labelfree.py [--work /tmp/labelfree/bench] [--clip-percentile 99.9]
                                    [--window-rows 20000] [--delayed]

Data: one latent synthetic dataset (`lowprec data synth --kind latent`, scale 0.01, seed 0, 46 days
of 100,000 rows), stationary (no data drift), rearranged into the monitored sequence:
  windows 0-1   train the float model (`lowprec train`, 1 epoch)       window 2: calibration
  windows 3-32  30 stationary windows: the first --window-rows rows of days 3-32
  window 33     days 33-42 joined into one window of 1,000,000 rows
  windows 34-36 the first --window-rows rows of days 43-45
(Scoring both models costs ~1-5k rows/s on the shared 2-core machine: the compute budget.)
Models: the float model, its intercept recalibrated on window 2 (the top layer's bias shifted so its
mean prediction matches window 2's click rate: the estimate assumes a calibrated reference, as a
production model is); its int8 artifact (every table and layer int8, static activation ranges by
minmax on window 2): the healthy candidate.
The planted quantization fault: from window 33 on the deployed candidate is an artifact whose
calibration clips (activation ranges from the --clip-percentile percentile on window 2, same
plan), as if a re-deploy had shipped a bad calibration. The job's database holds one candidate,
so this runs the job's own per-window step (`lowprec.drift.delayed.process_window`: the paired
pass with the label-free observer, both decisions, one transaction per window) with the candidate
switched at window 33 (each window's source row records which artifact scored it), and then
writes the drift report (index.html) from that database.
Labels present by default: each window's label-free record and labelled record come from one pass
(the label-free numbers read no label; tests/drift/test_delayed.py checks they equal those of a
window scored without its labels file). --delayed hides the labels first (label-free records only)
and restores them for a second pass that fills the labelled metrics in: twice the scoring.
Measured from the database: per window the estimated gap with its interval and the labelled gap
with its bootstrap interval; coverage (labelled gap inside the estimate's interval); false alarms
of the estimate rule (and of the labelled rule) over the 30 stationary windows; detection delay in
windows after the fault starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

TOOL = "bench_labelfree.py"
RAW_DAYS, DAY_ROWS, STATIONARY, FAULT_START = 46, 100_000, range(3, 33), 33


def sh(*args: Any) -> str:
    cmd = [sys.executable, "-m", "lowprec", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if r.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def build_data(raw: Path, out: Path, rows: int) -> None:
    """The monitored sequence from the raw days (see the module docstring)."""
    meta = json.loads((raw / "dataset.json").read_text())
    days = meta["windows"]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    windows = []
    for i in range(3):
        for k in ("dense", "sparse", "labels"):
            os.symlink(raw / f"day_{i}_{k}.npy", tmp / f"day_{i}_{k}.npy")
        windows.append(dict(days[i], index=i))
    groups = [[d] for d in range(3, 33)] + [list(range(33, 43)), [43], [44], [45]]
    for i, group in enumerate(groups, start=3):
        take = None if len(group) > 1 else rows  # the 1M-row window whole, the others their first `rows`
        for k in ("dense", "sparse", "labels"):
            arr = np.concatenate([np.load(raw / f"day_{d}_{k}.npy", mmap_mode="r")[:take] for d in group])
            np.save(tmp / f"day_{i}_{k}.npy", arr)
        first, last = days[group[0]], days[group[-1]]
        windows.append({"index": i, "rows": sum(min(days[d]["rows"], take or days[d]["rows"]) for d in group),
                        "label": first["label"], "start": first["start"], "end": last["end"]})
    meta["windows"] = windows
    meta["provenance"] = {k: v for k, v in meta["provenance"].items() if k != "window_stats"}
    meta["provenance"]["rearranged_by"] = f"tools/{TOOL} (days 33-42 joined into window {FAULT_START})"
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
    tmp.rename(out)


def recalibrate_intercept(model_dir: Path, data: Path, out: Path) -> None:
    """Shift the top layer's bias so the mean prediction on window 2 is its click rate (3 Newton steps)."""
    import torch

    from lowprec.checkpoint.float_model import load_float_model, save_float_model
    from lowprec.data.dataset import Dataset
    from lowprec.evaluation.scoring import evaluate

    model, _ = load_float_model(model_dir, writable=True)
    model.eval()
    ds = Dataset(data)
    for _ in range(3):
        m = evaluate(model, ds, [2]).per_window[2]
        ctr, pred = m["ctr"], m["calibration"] * m["ctr"]
        with torch.no_grad():
            model.top[-1].bias += float(np.log(ctr / (1 - ctr)) - np.log(pred / (1 - pred)))
    save_float_model(model, out, {"recalibrated": f"intercept on window 2 by tools/{TOOL}"})


def artifact(work: Path, name: str, method: str, percentile: float) -> None:
    from lowprec.calibrate import CalibConfig, calibrate, save_calibration
    from lowprec.checkpoint.convert import convert
    from lowprec.checkpoint.float_model import load_float_model, weights_sha256
    from lowprec.data.dataset import Dataset
    from lowprec.plan import Plan
    from lowprec.precision import Precision

    model, _ = load_float_model(work / "model-cal")
    c = calibrate(model, Dataset(work / "data"), CalibConfig((2,), method, percentile))
    save_calibration(c, work / f"{name}.calib.json", weights_sha256(work / "model-cal"))
    convert(work / "model-cal", Plan.uniform(Precision.INT8, Precision.INT8), work / name, c)


def prepare(work: Path, clip: float, rows: int) -> dict[str, float]:
    seconds = {}
    steps = [
        ("synth", work / "raw", lambda: sh("data", "synth", "--kind", "latent", "--out", work / "raw", "--scale", 0.01,
                                           "--windows", RAW_DAYS, "--rows-per-window", DAY_ROWS, "--seed", 0)),
        ("data", work / "data", lambda: build_data(work / "raw", work / "data", rows)),
        ("train", work / "model", lambda: sh("train", "--data", work / "data", "--windows", "0-1", "--out",
                                             work / "model", "--epochs", 1, "--seed", 0)),
        ("recalibrate", work / "model-cal", lambda: recalibrate_intercept(work / "model", work / "data",
                                                                          work / "model-cal")),
        ("healthy", work / "healthy", lambda: artifact(work, "healthy", "minmax", 100.0)),
        ("clipping", work / f"clip{clip}", lambda: artifact(work, f"clip{clip}", "percentile", clip)),
    ]
    for name, out, step in steps:
        if not out.exists():
            t0 = time.perf_counter()
            step()
            seconds[name] = round(time.perf_counter() - t0, 1)
    return seconds


def monitor(work: Path, clip: float, delayed: bool) -> dict[str, float]:
    """The job's per-window step over windows 3-36, the candidate switched at FAULT_START."""
    from types import SimpleNamespace

    from lowprec.checkpoint.float_model import weights_sha256
    from lowprec.checkpoint.load import load_model
    from lowprec.data.dataset import Dataset
    from lowprec.drift import report
    from lowprec.drift.delayed import process_window
    from lowprec.drift.job import DriftJob
    from lowprec.drift.store import DriftStore
    from lowprec.evaluation.paired import TableError
    from lowprec.fileio import sha256_file

    db, data = work / "drift.sqlite", work / "data"
    db.unlink(missing_ok=True)
    ds = Dataset(data)
    ref, _, _ = load_model(work / "model-cal")
    pairs = {}
    for name in ("healthy", f"clip{clip}"):
        cand, _, manifest = load_model(work / name)
        pairs[name] = SimpleNamespace(reference=ref, candidate=cand, manifest=manifest,
                                      reference_sha=weights_sha256(work / "model-cal"),
                                      candidate_sha=sha256_file(work / name / "manifest.json"),
                                      table_err=TableError.from_models(ref, cand))
    job = DriftJob(work / "model-cal", work / "healthy", data, "3-36", db, work / "report")
    monitored = list(range(3, FAULT_START + 4))
    passes = [("label_free_pass", True), ("fill_in_pass", False)] if delayed else [("pass", False)]
    seconds = {}
    with DriftStore(db) as store:
        run_id = store.start_run({"reference": str(work / "model-cal"), "candidate": "healthy, then clipping"})
        for name, hide in passes:
            t0 = time.perf_counter()
            for w in monitored:
                labels = data / f"day_{w}_labels.npy"
                if hide:
                    labels.rename(labels.with_name(f"hidden_{w}"))
                m = pairs["healthy" if w < FAULT_START else f"clip{clip}"]
                process_window(job, store, ds, m, w, run_id, None, m.table_err, lambda *a: None)
            if hide:
                for w in monitored:
                    (data / f"hidden_{w}").rename(data / f"day_{w}_labels.npy")
            seconds[name] = round(time.perf_counter() - t0, 1)
        store.finish_run(run_id, "done")
        report.write_report(work / "report", report.gather(store, job.config))
    return seconds


def analyse(db: Path) -> dict[str, Any]:
    from lowprec.drift.store import DriftStore

    with DriftStore(db) as s:
        est = {r["window"]: r for r in s.labelfree()}
        lab = {r["window"]: r for r in s.windows()}
        attr = s.attributions()
    rows = []
    for w in sorted(est):
        e, m = est[w], lab.get(w, {})
        gap = m.get("ne_gap")
        rows.append({"window": w, "label": e["label"], "rows": e["rows"], "fault": w >= FAULT_START,
                     **{k: e[k] for k in ("est_gap", "est_lo", "est_hi", "est_se", "est_se_rows", "est_shift",
                                          "kendall_tau", "abs_p50", "abs_p99", "psi", "est_alarm", "est_reason")},
                     "ne_gap": gap, "ne_gap_lo": m.get("ne_gap_lo"), "ne_gap_hi": m.get("ne_gap_hi"),
                     "labelled_alarm": m.get("alarm"), "stale_ne": m.get("stale_ne"),
                     "covered": gap is not None and e["est_lo"] <= gap <= e["est_hi"]})
    stat = [r for r in rows if r["window"] in STATIONARY]
    fault = [r for r in rows if r["fault"]]
    first = lambda key: next((r["window"] - FAULT_START for r in fault if r[key]), None)  # noqa: E731
    top = sorted((a for a in attr if a["window"] == FAULT_START and a["part"].startswith(("table:", "layer:"))),
                 key=lambda a: -a["kl"])[:5]
    return {"windows": rows, "coverage_all": float(np.mean([r["covered"] for r in rows])),
            "coverage_stationary": float(np.mean([r["covered"] for r in stat])),
            "coverage_fault": float(np.mean([r["covered"] for r in fault])),
            "false_alarms_estimate": sum(bool(r["est_alarm"]) for r in stat),
            "false_alarms_labelled": sum(bool(r["labelled_alarm"]) for r in stat), "stationary": len(stat),
            "delay_estimate": first("est_alarm"), "delay_labelled": first("labelled_alarm"),
            "attribution_fault_window": top}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/labelfree/bench")
    ap.add_argument("--clip-percentile", type=float, default=99.9)
    ap.add_argument("--delayed", action="store_true")
    ap.add_argument("--window-rows", type=int, default=20_000, help="rows of each window but the 1M-row one")
    ap.add_argument("--out", default="reports/drift_without_labels")
    ap.add_argument("--keep", action="store_true", help="keep --work (default: delete it when done)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    seconds = prepare(work, args.clip_percentile, args.window_rows)
    seconds.update(monitor(work, args.clip_percentile, args.delayed))
    result = {"command": bc.command_line(TOOL, argv), "machine": bc.machine(1), "load_before": load0,
              "load_after": os.getloadavg(), "seconds": seconds, "clip_percentile": args.clip_percentile,
              "window_rows": args.window_rows,
              "delayed": args.delayed, **analyse(work / "drift.sqlite")}
    out = Path(args.out)
    bc.write_json(out.with_suffix(".json"), result)
    for png in ("estimate.png",):
        if (work / "report" / png).is_file():
            shutil.copy(work / "report" / png, out.parent / f"{out.name}_{png}")
    from _labelfree_report import write_markdown

    write_markdown(out.with_suffix(".md"), result)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k not in ("windows", "machine")}, indent=1))


if __name__ == "__main__":
    main()
