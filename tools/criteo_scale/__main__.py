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
import json
import os
import platform
import sys
import time
from pathlib import Path

from tools.criteo_scale.plans import HEURISTICS, HOT_ONLY
from tools.criteo_scale.render import render
from tools.criteo_scale.runner import ROOT, Runner
from tools.criteo_scale.study import UNIFORM, Study, StudyConfig, meets, window_metrics

LANES = (1, 2, 3, 4)
PRESETS = {
    "full": dict(scale=1.0, rows_per_window=250_000),
    "smoke": dict(scale=0.02, rows_per_window=20_000),
}


def smallest_meeting(r: Runner, names: list[str], seed: int, ref: dict, window: str) -> str | None:
    """The variant with the fewest table bytes whose WINDOW metrics meet the tight budget against REF."""
    best = None
    for n in names:
        conv = r.result(f"{n}/s{seed}/convert")
        ev = window_metrics(r.state["stages"].get(f"{n}/s{seed}/eval")).get(window)
        if conv and ev and meets(ev, ref, "tight"):
            if best is None or conv["embedding_bytes"] < best[0]:
                best = (conv["embedding_bytes"], n)
    return best[1] if best else None


def choices(r: Runner) -> None:
    """Pick (and note) seed 0's heuristic (on the search-eval window) and smallest uniform meeting the budget."""
    ref = window_metrics(r.state["stages"].get("float/s0/eval"))
    if not ref:
        return
    uni = [f"uniform/{p}-{m}" for p, m in UNIFORM]
    r.note("heuristic_chosen_on_search_eval",
           smallest_meeting(r, [f"rule/{h.name}" for h in HEURISTICS], 0, ref["search_eval"], "search_eval"))
    r.note("smallest_uniform_meeting_tight_on_test", smallest_meeting(r, uni, 0, ref["test"], "test"))
    r.note("smallest_uniform_meeting_tight_on_search_eval", smallest_meeting(r, uni, 0, ref["search_eval"],
                                                                            "search_eval"))


def run_main(st: Study) -> None:
    """Lane 1: the data, then everything about seed 0's model, most wanted first."""
    st.synth()
    f0 = st.float_model(0)
    st.dense_only()
    st.search("tight", 0, f0)
    first = [u for u in UNIFORM if u[1] == "minmax"] + [("int2", "l2")]
    st.uniform(0, f0, first)
    for rule in HEURISTICS + HOT_ONLY:
        st.rule(rule, 0, f0)
    choices(st.r)
    st.search("loose", 0, f0)
    st.drift(f0)
    st.trained_sharing()
    st.uniform(0, f0, [u for u in UNIFORM if u not in first])
    choices(st.r)


def wait_for(what: str, ready, poll: float = 30.0) -> None:
    while not ready():
        print(f"[{time.strftime('%H:%M:%S')}] waiting for {what}", flush=True)
        time.sleep(poll)


def run_lane2(st: Study, main_state: Path) -> None:
    """Lane 2 (its own process and state file): trained sharing, then seeds 1.. of the headline rows."""
    def main_derived() -> dict:
        return json.loads(main_state.read_text()).get("derived", {}) if main_state.exists() else {}

    wait_for("the data (lane 1)", lambda: "window_stats" in main_derived())
    models = {seed: st.float_model(seed) for seed in st.c.seeds[1:]}
    for seed, f in models.items():
        st.search("tight", seed, f)
    wait_for("seed 0's choices (lane 1)", lambda: main_derived().get("heuristic_chosen_on_search_eval", 0) != 0
             and "smallest_uniform_meeting_tight_on_test" in main_derived())
    d = main_derived()
    for seed in st.c.seeds[1:]:
        f = st.c.work / "models" / f"float/s{seed}"
        if d.get("smallest_uniform_meeting_tight_on_test"):
            p, m = d["smallest_uniform_meeting_tight_on_test"].split("/")[1].split("-")
            st.uniform(seed, f, [(p, m)])
        if d.get("heuristic_chosen_on_search_eval"):
            st.rule(next(h for h in HEURISTICS if f"rule/{h.name}" == d["heuristic_chosen_on_search_eval"]), seed, f)
    st.trained_sharing()


def lane_state(state: Path, lane: int) -> Path:
    """reports/criteo_scale.json for lane 1, reports/criteo_scale.lane2.json etc. for the others."""
    return state if lane == 1 else state.with_name(f"{state.stem}.lane{lane}{state.suffix}")


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
    ap.add_argument("--lane", type=int, choices=LANES, default=1,
                    help="1: data + seed 0 (state --state); 2: other seeds + trained sharing; 3: trained sharing; "
                         "4: the float model of `lowprec train`'s own defaults (lanes 2-4 keep their state beside "
                         "--state)")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.render_only:
        cfg = StudyConfig(work=args.work, **PRESETS[args.preset], train_args=tuple(args.train_args.split()), lane=args.lane,
                          seeds=tuple(int(s) for s in args.seeds.split(",")))
        meta = {"preset": args.preset, "config": {k: str(v) for k, v in cfg.__dict__.items()},
                "command": "python -m tools.criteo_scale " + " ".join(sys.argv[1:] if argv is None else argv)}
        runner = Runner(lane_state(args.state, args.lane), args.work / "logs", args.data_limit_gb, meta)
        runner.state.setdefault("runs", []).append(machine())
        runner.save()
        if args.lane == 1:
            run_main(Study(runner, cfg))
        elif args.lane == 2:
            run_lane2(Study(runner, cfg), args.state)
        elif args.lane == 3:
            Study(runner, cfg).trained_sharing()
        else:
            Study(runner, cfg).defaults_model()
        runner.state["runs"][-1]["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        runner.state["runs"][-1]["load_avg_end"] = os.getloadavg()
        runner.save()
    state = json.loads(args.state.read_text())
    for lane in LANES[1:]:  # the other lanes' stages and notes join lane 1's
        path = lane_state(args.state, lane)
        if path.exists():
            more = json.loads(path.read_text())
            state["stages"] = {**state["stages"], **more.get("stages", {})}
            state["derived"] = {**more.get("derived", {}), **state.get("derived", {})}
            state["runs"] = state.get("runs", []) + [{**r, "lane": lane} for r in more.get("runs", [])]
    notes = args.report.with_name(args.report.stem + ".notes.md")
    args.report.write_text(render(state, notes.read_text() if notes.exists() else ""))
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
