"""Tight-budget search under the interval acceptance rule vs uniform and single-rule plans (issue #14, latent data).

    python tools/search_acceptance.py --work /tmp/accept --seeds 0,1,2 --lane 1 &   # lanes share the seeds:
    python tools/search_acceptance.py --work /tmp/accept --seeds 0,1,2 --lane 2 &   # each claims the next one
    wait; python tools/search_acceptance.py --render-only                           # JSON -> Markdown tables

Per seed s (data seed = training seed = s), through the real `lowprec` CLI (tools/criteo_scale/runner.py:
one subprocess per stage under RLIMIT_DATA, resumable, command, exit code, seconds, peak RSS, load
average and commit recorded in reports/search_acceptance/s{s}.json):
  data     `data synth --kind latent --scale SCALE --windows 7 --rows-per-window ROWS --seed s`
  windows  train 0-3, calibration + sensitivity 4, search validation 5, **test 6** (nothing is trained,
           searched or chosen on it: the searches report their plan there, the others are evaluated there)
  float    `train` with its defaults (--seed s), `eval` on 5,6, `calibrate` on 4
  search   tight budget (NE +0.1%, AUC -0.001) with hot sharing 4/16/64x, `--accept interval`; then the
           same search with `--accept point` (same sensitivity cache: only its validation rounds run)
  uniform  `convert --precision P --range-method M` + `eval` on 5,6 (the smallest meeting it on 6 is the
           issue's comparator)
  rules    single-rule heuristics (tools/criteo_scale/plans.py Rule, L2 ranges) + `eval` on 5,6; the best is
           the smallest that meets the budget on window 5 (chosen there, reported on 6)
Rendering (`--render-only`) writes reports/search_acceptance.tables.md; the hand-written reading is in
reports/search_acceptance.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools.criteo_scale.plans import Rule  # noqa: E402
from tools.criteo_scale.runner import ROOT, Runner  # noqa: E402
from tools._search_acceptance_report import render  # noqa: E402

STATE = ROOT / "reports" / "search_acceptance"
UNIFORM = (("int4", "l2"), ("int2", "minmax"), ("int2", "l2"), ("int8", "l2"))  # int8 last: needed only if int4 misses
RULES = (Rule("int4", 16, "l2"), Rule("int4", 64, "l2"), Rule("int2", 16, "l2"))
BUDGET = ("0.1%", "0.001")
WINDOWS = {"train": "0-3", "calib": "4", "val": "5", "test": "6"}


class Seed:
    """The stages of one seed (see the module doc); `work` holds its data, models and plans."""

    def __init__(self, runner: Runner, work: Path, seed: int, scale: float, rows: int, point: bool = True):
        self.r, self.work, self.s, self.scale, self.rows, self.point = runner, work, seed, scale, rows, point
        self.data, self.model, self.calib = work / "data", work / "float", work / "calib.json"

    def run(self, name: str, args: list[str], output: Path | None = None, **extra) -> None:
        self.r.run(name, args, output, extra={"load_at_start": os.getloadavg(), **extra})

    def evals(self, name: str, model: Path) -> None:
        self.run(f"{name}/eval", ["eval", "--model", str(model), "--data", str(self.data), "--windows",
                                  f"{WINDOWS['val']},{WINDOWS['test']}", "--json"])

    def artifact(self, name: str, convert_args: list[str]) -> None:
        if self.r.done(f"{name}/eval") and self.r.done(f"{name}/convert"):
            return
        art = self.work / "art" / name.replace("/", "_")
        self.r.state["stages"].pop(f"{name}/convert", None)
        self.run(f"{name}/convert", ["convert", "--model", str(self.model), *convert_args, "--out", str(art),
                                     "--json"])
        if art.exists():
            self.evals(name, art)
        shutil.rmtree(art, ignore_errors=True)

    def search(self, rule: str) -> None:
        plans = self.work / "plans"
        plans.mkdir(parents=True, exist_ok=True)
        plan = plans / f"search-{rule}.json"
        first = plans / "search-interval.cache.json"
        own = plan.with_name(plan.stem + ".cache.json")
        if rule != "interval" and first.exists() and not own.exists():
            shutil.copyfile(first, own)  # same model, windows, options: neither budget nor rule is in its key
        self.run(f"search/{rule}/search", [
            "search", "--model", str(self.model), "--data", str(self.data), "--calib-windows", WINDOWS["calib"],
            "--eval-windows", WINDOWS["val"], "--test-windows", WINDOWS["test"], "--max-ne-increase", BUDGET[0],
            "--max-auc-drop", BUDGET[1], "--calibration", str(self.calib), "--sharing-ratios", "4,16,64",
            "--precisions", "fp32,fp16,int8,int4,int2", "--layer-precisions", "fp32", "--accept", rule,
            "--out", str(plan), "--report", str(self.work / "reports" / rule), "--json"], plan)

    def all(self) -> None:
        self.run("data/synth", ["data", "synth", "--kind", "latent", "--out", str(self.data), "--scale",
                                str(self.scale), "--windows", "7", "--rows-per-window", str(self.rows), "--seed",
                                str(self.s), "--json"], self.data / "dataset.json")
        self.run("float/train", ["train", "--data", str(self.data), "--windows", WINDOWS["train"], "--out",
                                 str(self.model), "--seed", str(self.s), "--json"], self.model)
        self.run("float/calibrate", ["calibrate", "--model", str(self.model), "--data", str(self.data), "--windows",
                                     WINDOWS["calib"], "--out", str(self.calib), "--json"], self.calib)
        self.evals("float", self.model)
        self.search("interval")
        if self.point:
            self.search("point")
        for p, m in UNIFORM:
            self.artifact(f"uniform/{p}-{m}", ["--precision", p, "--range-method", m])
        tables = self.tables()
        for rule in RULES:
            path = rule.write(tables, self.work / "plans" / f"{rule.name}.json")
            self.artifact(f"rule/{rule.name}", ["--plan", str(path), "--calibration", str(self.calib)])

    def tables(self) -> dict[str, int]:
        from lowprec.data.dataset import Dataset

        meta = Dataset(self.data).meta
        return dict(zip(meta.sparse_names, meta.num_embeddings))


def claim(work: Path, seed: int, lane: int) -> bool:
    """Lanes share the seed list: a seed belongs to the first lane that claims it (a file under WORK/claims)."""
    d = work / "claims"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"s{seed}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return path.read_text().strip() == str(lane)
    with os.fdopen(fd, "w") as f:
        f.write(str(lane))
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/accept"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lane", type=int, default=1)
    ap.add_argument("--scale", type=float, default=0.2)
    ap.add_argument("--rows-per-window", type=int, default=250_000)
    ap.add_argument("--data-limit-gb", type=float, default=5.0, help="RLIMIT_DATA of every stage")
    ap.add_argument("--keep", action="store_true", help="keep each seed's data and models when it is done")
    ap.add_argument("--skip-point", action="store_true", help="no `--accept point` rerun of the search")
    ap.add_argument("--state", type=Path, default=STATE)
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.render_only:
        for seed in (int(s) for s in args.seeds.split(",")):
            if not claim(args.work, seed, args.lane):
                continue
            args.state.mkdir(parents=True, exist_ok=True)
            work = args.work / f"s{seed}"
            meta = {"seed": seed, "scale": args.scale, "rows_per_window": args.rows_per_window, "lane": args.lane,
                    "command": "python tools/search_acceptance.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count()}
            runner = Runner(args.state / f"s{seed}.json", args.work / "logs" / f"s{seed}", args.data_limit_gb, meta)
            Seed(runner, work, seed, args.scale, args.rows_per_window, not args.skip_point).all()
            runner.state["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            runner.save()
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    out = args.state.with_name("search_acceptance.tables.md")
    out.write_text(render(args.state))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
