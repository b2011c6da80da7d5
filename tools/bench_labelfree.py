"""How good the label-free drift estimate is: reports/drift_without_labels.md (+ .json, .png).

    python tools/bench_labelfree.py [--work /tmp/labelfree/bench] [--scale-dense 1.5] [--delayed]

One latent synthetic dataset (`lowprec data synth --kind latent`, scale 0.01, seed 0, 46 days of
100,000 rows) rearranged into the monitored sequence (the files of days 0-32 are linked as they
are):
  windows 0-1   train the float model (`lowprec train`, 1 epoch)       window 2: calibration
  windows 3-32  30 stationary windows of 100,000 rows
  window 33     days 33-42 joined into one window of 1,000,000 rows, FAULT planted
  windows 34-36 days 43-45, 100,000 rows each, the same fault
The planted fault: the dense features are multiplied by --scale-dense (labels keep following the
unscaled values, as `--drift dense-scale` does with x3.5), so the int8 candidate's static activation
ranges (minmax on window 2) clip; the float model also sees inputs it was not trained on.
The candidate is `lowprec convert --precision int8 --layer-precision int8 --calibration`.
Then `lowprec drift` on windows 3-36 (labels present: each window's label-free record and labelled
record come from the same pass; the label-free numbers read no label, tests/drift/test_delayed.py
checks they equal those of a window scored without its labels file). With --delayed the labels of
windows 3-36 are first hidden (one run: label-free records only), then restored (a second run fills
them in): the end-to-end delayed mode, twice the scoring.
Measured from the database: per window the estimated gap with its interval and the labelled gap
with its bootstrap interval; coverage (labelled gap inside the estimate's interval); false alarms
of the estimate rule (and of the labelled rule) over the 30 stationary windows; detection delay in
windows after the fault starts. The drift job's own report (index.html) is kept in --work.
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


def build_data(raw: Path, out: Path, scale: float) -> None:
    """The monitored sequence from the raw days (see the module docstring)."""
    meta = json.loads((raw / "dataset.json").read_text())
    days = meta["windows"]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    windows = []
    for i in range(FAULT_START):
        for k in ("dense", "sparse", "labels"):
            os.symlink(raw / f"day_{i}_{k}.npy", tmp / f"day_{i}_{k}.npy")
        windows.append(dict(days[i], index=i))
    groups = [list(range(33, 43)), [43], [44], [45]]
    for j, group in enumerate(groups):
        i = FAULT_START + j
        for k in ("dense", "sparse", "labels"):
            arr = np.concatenate([np.load(raw / f"day_{d}_{k}.npy") for d in group])
            np.save(tmp / f"day_{i}_{k}.npy", arr * np.float32(scale) if k == "dense" else arr)
        first, last = days[group[0]], days[group[-1]]
        windows.append({"index": i, "rows": sum(days[d]["rows"] for d in group), "label": first["label"],
                        "start": first["start"], "end": last["end"]})
    meta["windows"] = windows
    meta["provenance"] = {k: v for k, v in meta["provenance"].items() if k != "window_stats"}
    meta["provenance"]["rearranged_by"] = f"tools/{TOOL} (dense x{scale} from window {FAULT_START})"
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
    tmp.rename(out)


def prepare(work: Path, scale: float) -> dict[str, float]:
    seconds = {}
    steps = [
        ("synth", work / "raw", lambda: sh("data", "synth", "--kind", "latent", "--out", work / "raw", "--scale", 0.01,
                                           "--windows", RAW_DAYS, "--rows-per-window", DAY_ROWS, "--seed", 0)),
        ("data", work / "data", lambda: build_data(work / "raw", work / "data", scale)),
        ("train", work / "model", lambda: sh("train", "--data", work / "data", "--windows", "0-1", "--out",
                                             work / "model", "--epochs", 1, "--seed", 0)),
        ("calibrate", work / "calib.json", lambda: sh("calibrate", "--model", work / "model", "--data", work / "data",
                                                       "--windows", 2, "--out", work / "calib.json")),
        ("convert", work / "artifact", lambda: sh("convert", "--model", work / "model", "--precision", "int8",
                                                   "--layer-precision", "int8", "--calibration", work / "calib.json",
                                                   "--out", work / "artifact")),
    ]
    for name, out, step in steps:
        if not out.exists():
            t0 = time.perf_counter()
            step()
            seconds[name] = round(time.perf_counter() - t0, 1)
    return seconds


def drift(work: Path, db: Path) -> dict[str, Any]:
    out = sh("drift", "--reference", work / "model", "--candidate", work / "artifact", "--data", work / "data",
             "--windows", f"3-{FAULT_START + 3}", "--db", db, "--report", work / "report",
             "--calibration", work / "calib.json", "--json")
    return json.loads(out.strip().splitlines()[-1])


def run_drift(work: Path, delayed: bool) -> dict[str, float]:
    db = work / "drift.sqlite"
    for p in (db, work / "report"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    data, monitored = work / "data", range(3, FAULT_START + 4)
    seconds = {}
    if delayed:
        for w in monitored:  # the raw days' files are shared: move the links / files, not the targets
            (data / f"day_{w}_labels.npy").rename(data / f"hidden_{w}_labels.npy")
        t0 = time.perf_counter()
        first = drift(work, db)
        seconds["label_free_run"] = round(time.perf_counter() - t0, 1)
        assert first["labels_pending"] == list(monitored), first["labels_pending"]
        for w in monitored:
            (data / f"hidden_{w}_labels.npy").rename(data / f"day_{w}_labels.npy")
    t0 = time.perf_counter()
    drift(work, db)
    seconds["fill_in_run" if delayed else "run"] = round(time.perf_counter() - t0, 1)
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
    ap.add_argument("--scale-dense", type=float, default=1.5)
    ap.add_argument("--delayed", action="store_true")
    ap.add_argument("--out", default="reports/drift_without_labels")
    ap.add_argument("--keep", action="store_true", help="keep --work (default: delete it when done)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    seconds = prepare(work, args.scale_dense)
    seconds.update(run_drift(work, args.delayed))
    result = {"command": bc.command_line(TOOL, argv), "machine": bc.machine(1), "load_before": load0,
              "load_after": os.getloadavg(), "seconds": seconds, "scale_dense": args.scale_dense,
              "delayed": args.delayed, **analyse(work / "drift.sqlite")}
    out = Path(args.out)
    bc.write_json(out.with_suffix(".json"), result)
    for png in ("estimate.png", "gap.png"):
        if (work / "report" / png).is_file():
            shutil.copy(work / "report" / png, out.parent / f"{out.name}_{png}")
    from _labelfree_report import write_markdown

    write_markdown(out.with_suffix(".md"), result)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k not in ("windows", "machine")}, indent=1))


if __name__ == "__main__":
    main()
