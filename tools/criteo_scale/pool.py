"""The study's shared work list: every lane, after its own fixed stages, takes what no other lane took.

Tasks run in priority order; each is claimed (Study.claim: a file under WORK/claims naming the lane) so
two lanes never run the same one, and a task whose inputs another lane is still producing (a float
model's calibration, the plan its cache comes from, seed 0's choices) waits. Choices read the stages of
every lane (each lane keeps its own state file; `lane_state` names them).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tools.criteo_scale.plans import HEURISTICS, HOT_ONLY
from tools.criteo_scale.study import UNIFORM, Study, meets, window_metrics

FIRST_UNIFORM = tuple(u for u in UNIFORM if u[1] == "minmax") + (("int2", "l2"),)
LANES = (1, 2, 3, 4)


def lane_state(state: Path, lane: int) -> Path:
    """reports/criteo_scale.json for lane 1, reports/criteo_scale.lane2.json etc. for the others."""
    return state if lane == 1 else state.with_name(f"{state.stem}.lane{lane}{state.suffix}")


def merged(state1: Path) -> dict[str, Any]:
    """Every lane's stages and notes in one state (lane 1's notes win)."""
    out: dict[str, Any] = {"stages": {}, "derived": {}, "runs": []}
    for lane in reversed(LANES):
        path = lane_state(state1, lane)
        if path.exists():
            s = json.loads(path.read_text())
            out["stages"].update(s.get("stages", {}))
            out["derived"].update(s.get("derived", {}))
            out["runs"] = [{**r, "lane": lane} for r in s.get("runs", [])] + out["runs"]
            out.setdefault("failed_attempts", []).extend(s.get("failed_attempts", []))
            if lane == 1:
                out["meta"] = s.get("meta", {})
    return out


def smallest_meeting(stages: dict, names: list[str], seed: int, ref: dict, window: str) -> str | None:
    """The variant with the fewest table bytes whose WINDOW metrics meet the tight budget against REF."""
    best = None
    for n in names:
        conv = stages.get(f"{n}/s{seed}/convert")
        ev = window_metrics(stages.get(f"{n}/s{seed}/eval")).get(window)
        if conv and conv.get("ok") and conv.get("result") and ev and meets(ev, ref, "tight"):
            if best is None or conv["result"]["embedding_bytes"] < best[0]:
                best = (conv["result"]["embedding_bytes"], n)
    return best[1] if best else None


def ready_to_choose(state1: Path) -> bool:
    stages = merged(state1)["stages"]
    first = [f"uniform/{p}-{k}/s0/eval" for p, k in FIRST_UNIFORM] + [f"rule/{h.name}/s0/eval" for h in HEURISTICS]
    return all(n in stages for n in ["float/s0/eval", *first])


def choose(st: Study, state1: Path) -> None:
    """Note seed 0's heuristic (chosen on the search-eval window) and smallest uniform meeting the budget."""
    stages = merged(state1)["stages"]
    ref = window_metrics(stages.get("float/s0/eval"))
    uni = [f"uniform/{p}-{k}" for p, k in UNIFORM]
    st.r.note("heuristic_chosen_on_search_eval", smallest_meeting(
        stages, [f"rule/{h.name}" for h in HEURISTICS], 0, ref["search_eval"], "search_eval"))
    st.r.note("smallest_uniform_meeting_tight_on_test", smallest_meeting(stages, uni, 0, ref["test"], "test"))
    st.r.note("smallest_uniform_meeting_tight_on_search_eval",
              smallest_meeting(stages, uni, 0, ref["search_eval"], "search_eval"))


@dataclass
class Task:
    name: str
    ready: Callable[[], bool]
    run: Callable[[], Any]


def tasks(st: Study, state1: Path) -> list[Task]:
    c = st.c
    model = lambda s: c.work / "models" / f"float/s{s}"  # noqa: E731
    calib = lambda s: (c.work / "calib" / f"s{s}.json").exists()  # noqa: E731
    plan = lambda b, s: (c.work / "plans" / f"search-{b}-s{s}.json").exists()  # noqa: E731

    def derived(key: str) -> Any:
        return merged(state1)["derived"].get(key)

    uni = lambda p, k: Task(f"uniform-{p}-{k}-s0", lambda: calib(0),  # noqa: E731
                            lambda: st.uniform(0, model(0), [(p, k)]))
    rule = lambda h: Task(f"rule-{h.name}-s0", lambda: calib(0), lambda: st.rule(h, 0, model(0)))  # noqa: E731
    out = [Task(f"search-tight-s{s}", lambda s=s: calib(s), lambda s=s: st.search("tight", s, model(s)))
           for s in c.seeds]
    # Most wanted first: the uniform and heuristic rows the tight plan is compared with, then drift.
    out += [uni("int2", "l2"), uni("int2", "minmax"), rule(HEURISTICS[0]), uni("int4", "minmax"), rule(HEURISTICS[2]),
            Task("drift-s0", lambda: plan("tight", 0), lambda: st.drift(model(0))),
            Task("search-loose-s0", lambda: plan("tight", 0), lambda: st.search("loose", 0, model(0))),
            Task("dense-only-s0", lambda: True, st.dense_only),
            uni("int8", "minmax"), uni("fp16", "minmax"), rule(HEURISTICS[1])]
    out.append(Task("choices", lambda: ready_to_choose(state1), lambda: choose(st, state1)))

    def seed_rows(s: int) -> None:
        uni, heur = derived("smallest_uniform_meeting_tight_on_test"), derived("heuristic_chosen_on_search_eval")
        if uni:
            p, k = uni.split("/")[1].split("-")
            st.uniform(s, model(s), [(p, k)])
        if heur:
            st.rule(next(h for h in HEURISTICS if f"rule/{h.name}" == heur), s, model(s))

    chosen = lambda: "heuristic_chosen_on_search_eval" in merged(state1)["derived"]  # noqa: E731
    out += [Task(f"seed-rows-s{s}", lambda s=s: calib(s) and chosen(), lambda s=s: seed_rows(s))
            for s in c.seeds[1:]]
    out += [rule(h) for h in HOT_ONLY]
    out.append(Task("trained-sharing", lambda: True, st.trained_sharing))
    out += [uni(p, k) for p, k in UNIFORM if (p, k) not in FIRST_UNIFORM]
    return out


def work(st: Study, state1: Path, poll: float = 30.0) -> None:
    """Run every ready, unclaimed task in order; wait while some task is neither done, claimed nor ready."""
    finished: set[str] = set()
    while True:
        waiting = []
        for t in tasks(st, state1):
            if t.name in finished:
                continue
            if not t.ready():
                waiting.append(t.name)
            elif t.name == "trained-sharing" or st.claim(t.name):
                t.run()
                finished.add(t.name)
                break  # priorities may have changed: start again from the top
            else:
                finished.add(t.name)  # another lane's
        else:
            if not waiting:
                return
            print(f"[{time.strftime('%H:%M:%S')}] waiting for {', '.join(waiting)}", flush=True)
            time.sleep(poll)
