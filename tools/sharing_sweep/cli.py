"""Command line of the sweep (tools/hash_sharing_sweep.py): the full sweep, or from the committed
JSON only the report (--report-only), a CLI rerun of some rows (--check) or the comparison with
another full run (--compare-json)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sharing_sweep.check import check_cli, compare_runs
from sharing_sweep.common import RATIOS, REPO, find_run
from sharing_sweep.jobs import run_all
from sharing_sweep.report import write_report


def parse_args(argv: list[str] | None, description: str | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(description or __doc__).split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(REPO / "reports"))
    p.add_argument("--json-out", default=None, help="JSON path (default OUT_DIR/hash_sharing.json)")
    p.add_argument("--work", default="/tmp/lowprec-hash-sharing", help="Scratch directory (replaced).")
    p.add_argument("--keep-work", action="store_true")
    p.add_argument("--jobs", type=int, default=2, help="Worker processes (1 thread each).")
    p.add_argument("--datasets", default="movielens,synth")
    p.add_argument("--ml-input", default=str(REPO.parent / "shared" / "data" / "movielens-latest-small"))
    p.add_argument("--ml-seeds", type=int, default=5, help="MovieLens seeds for the spread study.")
    p.add_argument("--synth-windows", type=int, default=5)
    p.add_argument("--synth-seeds", type=int, default=3, help="Synthetic seeds for the spread study (at 64x).")
    p.add_argument("--synth-rows", type=int, default=50_000)
    p.add_argument("--synth-scale", type=float, default=0.3)
    p.add_argument("--big-rows", type=int, default=10_000, help="Synthetic tables with at least this many rows are compressed.")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    p.add_argument("--speed-rounds", type=int, default=15)
    p.add_argument("--speed-calls", type=int, default=5)
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--report-only", action="store_true", help="Only regenerate the Markdown and PNGs from the JSON.")
    p.add_argument("--check", action="store_true", help="Rerun some rows' recorded CLI commands and record the comparison.")
    p.add_argument("--compare-json", default=None, help="Record the comparison of the JSON with another full run's JSON.")
    args = p.parse_args(argv)
    args.datasets = [x.strip() for x in args.datasets.split(",") if x.strip()]
    args.ratios = [float(x) if "." in x else int(x) for x in args.ratios.split(",")]
    return args


def _from_json(args: argparse.Namespace, json_path: Path) -> dict[str, Any]:
    """The committed JSON, with the reproducibility comparisons asked for recorded in it."""
    res = json.loads(json_path.read_text())
    rep = res.setdefault("reproducibility", {})
    if args.compare_json:
        rep["full"] = compare_runs(res, Path(args.compare_json))
        print(json.dumps(rep["full"], indent=1)[:3000])
    if args.check:
        picks = [(d, rid) for d, rid in (("movielens", "robe-16"), ("movielens", "robe_exact-16"),
                                         ("movielens", "hot-movie-8-w19"), ("synth", "hash-64"))
                 if d in res["datasets"] and find_run(res["datasets"][d], rid)]
        rep["cli"] = check_cli(res, Path(args.work + "-check"), picks)
        print(json.dumps(rep["cli"], indent=1))
    return res


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    args = parse_args(argv, description)
    out_dir = Path(args.out_dir)
    json_path = Path(args.json_out) if args.json_out else out_dir / "hash_sharing.json"
    from_json = args.report_only or args.check or args.compare_json
    res = _from_json(args, json_path) if from_json else run_all(args)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=1) + "\n")
    write_report(res, out_dir)
    json_path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {json_path} and {out_dir / 'hash_sharing.md'}"
          + (f" in {res['tool']['seconds'] / 60:.1f} min" if not from_json else ""))
    return 0
