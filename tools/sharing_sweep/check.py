"""Reproducibility of the sweep: rerun some rows' recorded CLI commands in a fresh directory
(`--check`), or compare the JSON with another full run's (`--compare-json`); timings excluded."""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from sharing_sweep.common import TIMING_KEYS, cli, find_run
from sharing_sweep.models import plan_json


def strip_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items()
                if k not in TIMING_KEYS and not k.startswith("seconds")}
    if isinstance(obj, list):
        return [strip_timing(x) for x in obj]
    return obj


def diff_numbers(a: Any, b: Any, path: str = "") -> list[str]:
    """Every leaf that differs between two JSON values (paths and commands excluded)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in ("commands", "data", "prepare", "plan", "calibrations"):
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in one")
            else:
                out += diff_numbers(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff_numbers(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def compare_runs(mine: dict[str, Any], other_path: Path) -> dict[str, Any]:
    other = json.loads(other_path.read_text())
    diffs = diff_numbers(strip_timing(mine["datasets"]), strip_timing(other["datasets"]))
    leaves = _count_leaves(strip_timing(mine["datasets"]))
    return {"kind": "full rerun", "other": str(other_path), "other_created": other["tool"]["created"],
            "other_command": other["tool"]["command"], "other_minutes": round(other["tool"]["seconds"] / 60, 1),
            "compared_numbers": leaves, "differences": diffs[:50], "identical": not diffs}


def _count_leaves(obj: Any) -> int:
    if isinstance(obj, dict):
        return sum(_count_leaves(v) for k, v in obj.items() if k not in ("commands",))
    if isinstance(obj, list):
        return sum(_count_leaves(v) for v in obj)
    return 1


def _rerun(ds: dict[str, Any], run: dict[str, Any], work: Path) -> dict[str, Any]:
    """Rerun one row's recorded commands with the work directory moved to `work` (the data set and,
    for hot sharing, the dense model and its calibration first): per variant AUC, NE (and bytes)."""
    old_root = str(Path(ds["data"]).parents[1])

    def fix(c: str) -> list[str]:
        return shlex.split(c.replace(old_root, str(work)))[1:]  # drop "lowprec"

    if not Path(ds["data"].replace(old_root, str(work))).exists():
        cli(fix(ds["prepare"]))
    got: dict[str, Any] = {}
    if run["method"] == "hot":
        dense = find_run(ds, f"dense-s{run['seed']}")
        dense_dir = Path(fix(dense["commands"][0])[-1])
        if not dense_dir.exists():
            cli(fix(dense["commands"][0]))
            for c in dense["calibrations"].values():
                cli(fix(c))
    else:
        cli(fix(run["commands"][0]))
        got["float"] = cli(fix(run["commands"][1]))
    for prec, v in run["variants"].items():
        convert_args = fix(v["commands"][0])
        if "--plan" in convert_args:
            plan_path = Path(convert_args[convert_args.index("--plan") + 1])
            plan_path.parent.mkdir(parents=True, exist_ok=True)
            plan_path.write_text(json.dumps(plan_json(run["plan_spec"], prec), indent=1))
        cli(convert_args)
        ins = cli(fix(v["commands"][1]))
        ev = cli(fix(v["commands"][2]))
        got[prec] = {"auc": ev["auc"], "ne": ev["ne"], "embedding_bytes": ins["embedding_bytes"]}
    return got


def check_cli(res: dict[str, Any], work: Path, ids: list[tuple[str, str]]) -> dict[str, Any]:
    """Rerun the recorded CLI commands of some rows (fresh data, fresh paths) and compare the
    AUC/NE/bytes they print with the JSON's numbers."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    rows = []
    for ds_name, rid in ids:
        ds = res["datasets"][ds_name]
        run = find_run(ds, rid)
        got = _rerun(ds, run, work)
        mism = []
        for variant, keys in (("float", ("auc", "ne")),) + tuple((p, ("auc", "ne", "embedding_bytes"))
                                                              for p in run["variants"]):
            if variant not in got:
                continue
            ref = run["float"] if variant == "float" else run["variants"][variant]
            mism += [f"{variant} {k}: {got[variant][k]!r} vs {ref[k]!r}" for k in keys if got[variant][k] != ref[k]]
        rows.append({"dataset": ds_name, "id": rid, "variants": (["float"] if "float" in got else [])
                     + sorted(run["variants"]), "identical": not mism, "mismatches": mism})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return {"kind": "CLI rerun of recorded commands", "rows": rows, "identical": all(r["identical"] for r in rows)}
