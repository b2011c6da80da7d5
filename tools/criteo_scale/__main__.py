"""Criteo-scale study: every variant of issue 14 through the real `lowprec` CLI, then the report.

    python -m tools.criteo_scale --preset full  --work /tmp/scale        # ~1.5 h on 2 busy cores
    python -m tools.criteo_scale --preset smoke --work /tmp/scale-smoke  # minutes, same stages
    python -m tools.criteo_scale --render-only                           # JSON -> Markdown again

Runs the stages of tools/criteo_scale/study.py in priority order (the headline seed first), records
every number in --state (reports/criteo_scale.json) and renders --report (reports/criteo_scale.md).
Resumable: rerun the same command after a crash and finished stages are skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from tools.criteo_scale.pool import LANES, lane_state, merged, work
from tools.criteo_scale.render import render
from tools.criteo_scale.runner import ROOT, Runner
from tools.criteo_scale.study import Study, StudyConfig

PRESETS = {
    "full": dict(scale=1.0, rows_per_window=250_000),
    "smoke": dict(scale=0.02, rows_per_window=20_000),
}


def run_main(st: Study, state1: Path) -> None:
    """Lane 1: the data and seed 0's float model, then the shared work list (the dense-only model for the
    gap-closure number is a task there, after seed 0's searches and the rows they are compared with)."""
    st.synth()
    st.float_model(0)
    work(st, state1)


def wait_for(what: str, ready, poll: float = 30.0) -> None:
    while not ready():
        print(f"[{time.strftime('%H:%M:%S')}] waiting for {what}", flush=True)
        time.sleep(poll)


def run_lane2(st: Study, state1: Path) -> None:
    """Lane 2 (its own process and state file): the other seeds' float models, then the shared work list."""
    wait_for("the data (lane 1)", lambda: "window_stats" in merged(state1)["derived"])
    for seed in st.c.seeds[1:]:
        st.float_model(seed)
    work(st, state1)


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_avg_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="full")
    ap.add_argument("--work", type=Path, default=Path("/tmp/scale"))
    ap.add_argument("--state", type=Path, default=ROOT / "reports" / "criteo_scale.json")
    ap.add_argument("--report", type=Path, default=ROOT / "reports" / "criteo_scale.md")
    ap.add_argument("--data-limit-gb", type=float, default=8.0, help="RLIMIT_DATA of every stage")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-args", default="", help="extra `lowprec train` flags for every training")
    ap.add_argument("--sharing-ratios", default="4,16,64",
                    help="post-training hot-sharing ratios the searches offer ('' for precisions only)")
    ap.add_argument("--lane", type=int, choices=LANES, default=1,
                    help="1: data + seed 0 (state --state); 2: other seeds + trained sharing; 3: trained sharing; "
                         "4: the float model of `lowprec train`'s own defaults (lanes 2-4 keep their state beside "
                         "--state)")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.render_only:
        cfg = StudyConfig(work=args.work, **PRESETS[args.preset], train_args=tuple(args.train_args.split()), lane=args.lane,
                          sharing_ratios=args.sharing_ratios,
                          seeds=tuple(int(s) for s in args.seeds.split(",")))
        meta = {"preset": args.preset, "config": {k: str(v) for k, v in cfg.__dict__.items()},
                "command": "python -m tools.criteo_scale " + " ".join(sys.argv[1:] if argv is None else argv)}
        runner = Runner(lane_state(args.state, args.lane), args.work / "logs", args.data_limit_gb, meta,
                        peers=tuple(lane_state(args.state, k) for k in LANES))
        runner.state.setdefault("runs", []).append({**machine(), "command": meta["command"]})
        runner.save()
        if args.lane == 1:
            run_main(Study(runner, cfg), args.state)
        elif args.lane == 2:
            run_lane2(Study(runner, cfg), args.state)
        elif args.lane == 3:
            wait_for("the data (lane 1)", lambda: "window_stats" in merged(args.state)["derived"])
            Study(runner, cfg).trained_sharing()  # first here: the other lanes start with seed 0's variants
            work(Study(runner, cfg), args.state)
        else:
            Study(runner, cfg).defaults_model()
        runner.state["runs"][-1]["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        runner.state["runs"][-1]["load_avg_end"] = os.getloadavg()
        runner.save()
    state = merged(args.state)
    notes = args.report.with_name(args.report.stem + ".notes.md")
    args.report.write_text(render(state, notes.read_text() if notes.exists() else ""))
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
