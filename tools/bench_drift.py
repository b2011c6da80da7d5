"""Drift-job benchmark: throughput and peak memory of `lowprec drift` against the window size.

    python tools/bench_drift.py [--window-rows 20000,80000,320000] [--scale 0.01]

One synthetic dataset per window size (`lowprec data synth`, one window of N rows, tables x
--scale; all share the cardinalities, so one model fits all), a float DLRM (random init: scoring
speed does not depend on what was learnt) and its int8 artifact (tables and layers int8, static
activation ranges calibrated on the smallest window, so the job also counts clipping). Each run is
`lowprec.drift.job.run` on that window with a fresh database and report, in a process of its own,
the window sizes interleaved per repeat. Measured: rows per second of the paired pass (both models
scored, the bootstrap and DeLong statistics; the job's own per-window `seconds`), the job's whole
wall time, and its peak memory (VmHWM, and sampled peaks of anonymous / file-backed resident
memory) over the process after imports. Writes reports/bench_drift.json (see --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402
from _bench_pair import int8_pair  # noqa: E402

TOOL = "bench_drift.py"


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One drift job on window 0 of --data (run in its own process)."""
    bc.set_threads(args.threads)
    from lowprec.drift.job import DriftJob, run
    from lowprec.drift.store import DriftStore

    work = Path(args.work)
    bc.settle_memory()  # VmHWM from here on: the work's peak, not the imports'
    base = bc.vm_status()
    with bc.RssSampler() as sampler:
        t0 = time.perf_counter()
        outcome = run(DriftJob(reference=Path(args.reference), candidate=Path(args.candidate), data=Path(args.data),
                               windows="0", db=work / "drift.sqlite", report=work / "report",
                               calibration=Path(args.calibration)))
        seconds = time.perf_counter() - t0
    with DriftStore(work / "drift.sqlite") as store:
        row = store.windows()[0]
    return {"seconds": seconds, "window_seconds": row["seconds"], "rows": row["rows"], "exit_code": outcome.exit_code,
            "base": base, "end": bc.vm_status(), "peaks": sampler.peaks}


def prepare(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from lowprec.data.dataset import Dataset
    from lowprec.data.synth import SynthConfig, generate
    from lowprec.fileio import atomic_dir

    data = {}
    for n in args.window_rows:
        with atomic_dir(tmp / f"data-{n}") as d:
            generate(SynthConfig(1, n, args.seed, args.scale), d)
        data[n] = tmp / f"data-{n}"
    small = Dataset(data[min(args.window_rows)])
    int8_pair(small, tmp, args.seed)
    return {"data": data, "model": tmp / "model", "artifact": tmp / "artifact", "calib": tmp / "calib.json",
            "table_rows": sum(f.num_embeddings for f in small.meta.sparse)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.child:
        res = child(args)
        print(json.dumps(res))
        return res
    threads = bc.set_threads(args.threads)
    result: dict[str, Any] = {"tool": TOOL, "command": bc.command_line(TOOL, argv), "machine": bc.machine(threads),
                              "settings": {k: v for k, v in vars(args).items() if k != "out" and v is not None}}
    with tempfile.TemporaryDirectory(prefix="lowprec-bench-drift-") as tmp:
        tmp = Path(tmp)
        prep = prepare(args, tmp)
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in args.window_rows}
        for r in range(args.repeats):
            for n in (args.window_rows if r % 2 == 0 else args.window_rows[::-1]):
                work = tmp / f"run-{n}-{r}"
                work.mkdir()
                res = bc.run_child([sys.executable, __file__, "--child", "--work", str(work),
                                            "--reference", str(prep["model"]), "--candidate", str(prep["artifact"]),
                                            "--data", str(prep["data"][n]), "--calibration", str(prep["calib"]),
                                            "--threads", str(args.threads)])
                runs[n].append(res)
                print(f"  window {n:>7,} rows: {res['rows'] / res['window_seconds']:,.0f} rows/s, "
                      f"job {res['seconds']:.1f} s, peak anon +{res['peaks']['RssAnon'] - res['base']['RssAnon']:.0f} MB",
                      file=sys.stderr)
    sizes = []
    for n, rs in runs.items():
        sizes.append({
            "rows": n,
            "rows_per_s": bc.spread([x["rows"] / x["window_seconds"] for x in rs]),
            "job_seconds": bc.spread([x["seconds"] for x in rs]),
            "job_rows_per_s": bc.spread([x["rows"] / x["seconds"] for x in rs]),
            "hwm_mb": bc.spread([x["end"]["VmHWM"] for x in rs]),
            "hwm_growth_mb": bc.spread([x["end"]["VmHWM"] - x["base"]["VmRSS"] for x in rs]),
            "anon_growth_mb": bc.spread([x["peaks"]["RssAnon"] - x["base"]["RssAnon"] for x in rs]),
            "file_peak_mb": bc.spread([x["peaks"]["RssFile"] for x in rs]),
            "base_mb": bc.spread([x["base"]["VmRSS"] for x in rs]),
            "exit_codes": sorted({x["exit_code"] for x in rs}),
        })
    smallest = sizes[0]
    for s in sizes:  # paired by repeat: run r of size n against run r of the smallest size
        s["anon_growth_vs_smallest"] = bc.paired_ratio(
            [x["peaks"]["RssAnon"] - x["base"]["RssAnon"] for x in runs[s["rows"]]],
            [x["peaks"]["RssAnon"] - x["base"]["RssAnon"] for x in runs[smallest["rows"]]])
        s["throughput_vs_smallest"] = bc.paired_ratio(
            [x["rows"] / x["window_seconds"] for x in runs[s["rows"]]],
            [x["rows"] / x["window_seconds"] for x in runs[smallest["rows"]]])
    result.update({"sizes": sizes, "table_rows": prep["table_rows"]})
    bc.write_json(args.out, result)
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window-rows", default="20000,80000,320000")
    p.add_argument("--scale", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=str(bc.REPORTS / "bench_drift.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for a in ("--work", "--reference", "--candidate", "--data", "--calibration"):
        p.add_argument(a, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.window_rows, args.scale, args.repeats = "500", 0.0005, 1
    if not args.child:
        args.window_rows = sorted(int(x) for x in str(args.window_rows).split(",") if x)
    return args


# ---------------------------------------------------------------------------------------------
# report


def figures(result: dict[str, Any], out_dir: Path) -> list[str]:
    plt = bc.plt()
    s = result["sizes"]
    x = [v["rows"] for v in s]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("rows_per_s", "paired pass"), ("job_rows_per_s", "whole job")):
        med = [v[key]["median"] / 1e3 for v in s]
        a1.errorbar(x, med, yerr=[[m - v[key]["min"] / 1e3 for m, v in zip(med, s)],
                                  [v[key]["max"] / 1e3 - m for m, v in zip(med, s)]], marker="o", capsize=3, label=label)
    a1.set_xscale("log")
    a1.set_xlabel("rows per window")
    a1.set_ylabel("k rows/s (both models)")
    a1.set_title("lowprec drift throughput")
    a1.legend(fontsize=8)
    for key, label in (("anon_growth_mb", "peak anon growth"), ("hwm_growth_mb", "peak RSS growth (VmHWM)")):
        med = [v[key]["median"] for v in s]
        a2.errorbar(x, med, yerr=[[m - v[key]["min"] for m, v in zip(med, s)],
                                  [v[key]["max"] - m for m, v in zip(med, s)]], marker="s", capsize=3, label=label)
    a2.set_xscale("log")
    a2.set_ylim(bottom=0)
    a2.set_xlabel("rows per window")
    a2.set_ylabel("MB over the process after imports")
    a2.set_title("lowprec drift memory")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "bench_drift.png", dpi=110)
    plt.close(fig)
    return ["bench_drift.png"]


def render(result: dict[str, Any], out_dir: Path) -> list[str]:
    figs = figures(result, out_dir)
    st = result["settings"]
    md = ["## e. Drift job: throughput and memory vs window size", "",
          f"`lowprec drift` (`lowprec.drift.job.run`) on one window per run: float DLRM (tables x {st['scale']}, "
          f"{result['table_rows']:,} rows, dim 16, random init) vs its int8 artifact (static int8 layers, so "
          f"clipping is counted), 200 bootstrap replicates, DeLong, SQLite record and the HTML/Markdown report; "
          f"one process per run, {st['repeats']} repeats with the window sizes interleaved. Rows/s counts rows scored "
          "by both models. Memory is the growth over the process after imports.", ""]
    rows = [[f"{v['rows']:,}", bc.fmt_spread(v["rows_per_s"], 1e-3, 1), bc.fmt_spread(v["job_seconds"], 1, 1),
             bc.fmt_spread(v["job_rows_per_s"], 1e-3, 1), bc.fmt_spread(v["anon_growth_mb"], 1, 0),
             bc.fmt_spread(v["hwm_growth_mb"], 1, 0), bc.fmt_ratio(v["anon_growth_vs_smallest"]),
             bc.fmt_ratio(v["throughput_vs_smallest"])] for v in result["sizes"]]
    md += bc.md_table(["rows per window", "paired pass k rows/s", "job seconds", "job k rows/s",
                       "peak anon growth MB", "peak RSS growth MB", "anon growth vs smallest window",
                       "pass throughput vs smallest window"], rows)
    md += [f"![drift]({figs[0]})", ""]
    big, small = result["sizes"][-1], result["sizes"][0]
    md += [f"**What it means.** Memory is flat in the window size: {big['rows'] // small['rows']}x more rows per window "
           f"change the peak anonymous memory by {bc.fmt_ratio(big['anon_growth_vs_smallest'])}, because the paired pass "
           "streams batches and spills the per-row scores DeLong needs to a file instead of holding them. The paired "
           f"pass scores both models at {small['rows_per_s']['median'] / 1e3:.0f}-{big['rows_per_s']['median'] / 1e3:.0f}k "
           "rows/s on one thread; the whole job's rate rises with the window size because its fixed costs (loading "
           "both models, the per-table quantization error, the report) are paid once per run.", ""]
    return md


if __name__ == "__main__":
    main()
