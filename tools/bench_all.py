"""Run every benchmark and regenerate reports/benchmarks.md with its figures.

    python tools/bench_all.py                 # default sizes (~10-15 min on 2 cores)
    python tools/bench_all.py --render-only   # rebuild the Markdown and figures from reports/bench_*.json
    python tools/bench_all.py --tiny --reports /tmp/r   # smoke-test sizes into another directory

Order: bench_e2e (which also writes the plan `lowprec search` chose, reports/bench_e2e_plan.json)
-> bench_lookup --plan that plan -> bench_convert -> bench_search -> bench_drift. Each tool runs in
a process of its own (so no benchmark inherits another's memory) and writes reports/bench_<name>.json;
this script then renders every section (each tool's `render`) into one document.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

TOOLS = ("e2e", "lookup", "convert", "search", "drift")  # run order (lookup uses e2e's plan)
SECTIONS = ("lookup", "convert", "e2e", "search", "drift")  # report order (the brief's a-e)
COMMAND = "python tools/bench_all.py"


def run_tools(args: argparse.Namespace, reports: Path) -> dict[str, float]:
    seconds = {}
    for name in TOOLS:
        if args.only and name not in args.only:
            continue
        cmd = [sys.executable, f"tools/bench_{name}.py", "--out", _rel(reports / f"bench_{name}.json"),
               "--threads", str(args.threads)]
        if name == "e2e":
            cmd += ["--plan-out", _rel(reports / "bench_e2e_plan.json")]
        if name == "lookup" and (reports / "bench_e2e_plan.json").is_file():
            cmd += ["--plan", _rel(reports / "bench_e2e_plan.json")]
        if args.tiny:
            cmd.append("--tiny")
        print(f"== {' '.join(cmd[1:])}", file=sys.stderr)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=_env(), cwd=bc.REPO)
        seconds[name] = time.perf_counter() - t0
        print(f"   done in {seconds[name]:.0f} s", file=sys.stderr)
    return seconds


def _rel(path: Path) -> str:
    """`path` relative to the repository when inside it (commands in the report stay portable)."""
    try:
        return str(path.resolve().relative_to(bc.REPO))
    except ValueError:
        return str(path.resolve())


def _env() -> dict[str, str]:
    import os

    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(bc.REPO), os.environ.get("PYTHONPATH")])))


def load(reports: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name in SECTIONS:
        f = reports / f"bench_{name}.json"
        if f.is_file():
            out[name] = json.loads(f.read_text())
    return out


def headline(r: dict[str, dict[str, Any]]) -> list[str]:
    md = ["## Headline", ""]
    if "lookup" in r:
        cfgs = r["lookup"]["configs"]
        names = list(cfgs[0]["lowprec_over_fbgemm"])
        cells = []
        for n in names:
            meds = [c["lowprec_over_fbgemm"][n]["median"] for c in cfgs]
            cells.append(f"{n} {min(meds):.2f}-{max(meds):.2f}x")
        missed = sorted({f"D={c['dim']}/{c['pooling']} per bag" for c in cfgs for n in names
                         if c["lowprec_over_fbgemm"][n]["median"] < 0.95})
        md.append(f"- **lookup, lowprec / raw FBGEMM throughput** (range of per-configuration medians over "
                  f"{len(cfgs)} configurations): {'; '.join(cells)}. Target >= 0.95x: "
                  + ("met everywhere." if not missed else f"missed at {', '.join(missed)} (see section a)."))
        d16 = next((c for c in cfgs if c["dim"] == 16 and c["pooling"] == 1 and c["ids"] == "zipf"), None)
        if d16:
            md.append(f"- **one TBE vs 26 EmbeddingBags** (D=16, one id per bag, fp32): "
                      f"{bc.fmt_ratio(d16['tbe_over_embeddingbag']['fp32'])} (raw FBGEMM), "
                      f"{bc.fmt_ratio(d16['lowprec_over_embeddingbag']['fp32'])} (lowprec).")
        for c in cfgs:
            if c["dim"] == 64 and c["pooling"] == 20 and "int4" in c["over_fp32_fbgemm"]:
                md.append(f"- **int4 vs fp32 FBGEMM** (D=64, 20 ids per bag, {c['ids']} ids): "
                          f"{bc.fmt_ratio(c['over_fp32_fbgemm']['int4'])}.")
    if "convert" in r:
        q = r["convert"]["quantizers"]
        if "lowprec_l2_4" in q and "aten_4bit_opt" in q:
            l2 = q["lowprec_l2_4"]
            md.append(f"- **int4 range search**: lowprec l2 MSE / ATen optimized = {l2['mse_vs_aten_opt']:.3f}, "
                      f"MSE / FBGEMM min-max = {l2['mse_vs_fbgemm']:.3f}, at "
                      f"{bc.fmt_ratio(l2['speed_vs_aten_opt'], 0)} ATen optimized's speed "
                      f"({bc.fmt_spread(l2['gbs'], 1, 3)} GB/s) and {bc.fmt_ratio(l2['speed_vs_fbgemm'])} FBGEMM min-max's.")
        m = r["convert"]["models"]
        if m:
            big = m[-1]
            md.append(f"- **lowprec convert memory**: a {big['model_mb']:.0f} MB float model converts with a peak "
                      f"anonymous-memory growth of {big['anon_growth_mb']['median']:.0f} MB = "
                      f"{big['anon_growth_mb']['median'] / big['largest_table_mb']:.2f}x its largest table "
                      f"({big['largest_table_mb']:.0f} MB), {big['anon_growth_mb']['median'] / big['model_mb']:.2f}x the model; "
                      f"{bc.fmt_spread(big['gbs'], 1, 2)} GB/s.")
    if "e2e" in r:
        e = r["e2e"]
        md.append("- **end-to-end samples/s vs float** (batch "
                  f"{e['batch']}): " + "; ".join(f"{k} {bc.fmt_ratio(v)}" for k, v in e["vs_float"].items() if k != "float") + ".")
    if "search" in r:
        s = r["search"]
        md.append(f"- **search vs exhaustive**: {s['search']['evaluations']} vs {s['exhaustive']['evaluations']} evaluations "
                  f"({s['evaluations_ratio']:.0f}x fewer), {bc.fmt_ratio(s['time_ratio'], 1)} less wall time, "
                  + (f"bytes found / exhaustive best {s['bytes_ratio']:.3f}." if s["bytes_ratio"] else "no plan fits exhaustively."))
    if "drift" in r:
        sz = r["drift"]["sizes"]
        md.append(f"- **drift job**: {sz[0]['rows']:,} -> {sz[-1]['rows']:,} rows per window: paired pass "
                  f"{sz[0]['rows_per_s']['median'] / 1e3:.0f}k -> {sz[-1]['rows_per_s']['median'] / 1e3:.0f}k rows/s, "
                  f"peak anonymous memory growth {sz[0]['anon_growth_mb']['median']:.0f} -> "
                  f"{sz[-1]['anon_growth_mb']['median']:.0f} MB ({bc.fmt_ratio(sz[-1]['anon_growth_vs_smallest'])}).")
    return md + [""]


def render(reports: Path, seconds: dict[str, float] | None, total: float | None, tiny: bool) -> Path:
    results = load(reports)
    if not results:
        raise SystemExit(f"no bench_*.json in {reports}; run without --render-only first")
    machines = [res["machine"] for res in results.values()]
    m = machines[0]
    md = ["# Benchmarks", "", "Regenerate everything (data, runs, this file and the figures) with one command:", "",
          "```", COMMAND + (" --tiny" if tiny else ""), "```", ""]
    if seconds:
        md.append(f"Last full run took {total / 60:.1f} min ("
                  + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + "). ")
    else:
        md.append("Rendered from the JSON of the last run (`--render-only`). ")
    md += [f"Machine: {bc.machine_line(m)}. 1-min load average at the start of each tool: "
           + ", ".join(f"{k} {res['machine']['loadavg_1min']}" for k, res in results.items()) + ".", "",
           "Method: every number is a ratio of variants measured side by side in one process and one run, "
           "interleaved within each repeat (short blocks of each, in a fresh random order every round) after warm-up, so a change in machine load hits "
           "them alike; spreads are median [min-max] over repeats (IQR in the JSON). Torch threads are pinned "
           f"to {m['torch_threads']} for every variant. The machine is shared, so absolute times move between "
           "runs; the ratios are the result. Per-tool JSON (every repeat's raw time): `reports/bench_*.json`.", ""]
    md += headline(results)
    for name in SECTIONS:
        if name in results:
            mod = importlib.import_module(f"bench_{name}")
            md += mod.render(results[name], reports)
            md += [f"Command: `{results[name]['command']}`.", ""]
    out = reports / "benchmarks.md"
    out.write_text("\n".join(md).rstrip() + "\n")
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reports", default=str(bc.REPORTS))
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--only", default="", help="comma-separated subset of tools to run (others' JSON is reused)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.only = [x for x in args.only.split(",") if x]
    reports = Path(args.reports)
    reports.mkdir(parents=True, exist_ok=True)
    seconds, total = None, None
    timing = reports / "bench_all_timing.json"  # so a re-render still says how long a full run takes
    if not args.render_only:
        t0 = time.perf_counter()
        seconds = run_tools(args, reports)
        total = time.perf_counter() - t0
        if not args.only:
            bc.write_json(timing, {"seconds": seconds, "total": total})
    elif timing.is_file() and not args.tiny:
        saved = json.loads(timing.read_text())
        seconds, total = saved["seconds"], saved["total"]
    out = render(reports, seconds, total, args.tiny)
    print(out)
    return out


if __name__ == "__main__":
    main()
