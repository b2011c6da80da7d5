"""The sweep's job list per data set and the process pool that runs it.

Each job trains (or converts) one model in its own single-threaded worker process (spawned), so the
numbers do not depend on --jobs or on job order; a job waits for the jobs named in its `after` list
(hot sharing needs its seed's dense model and calibration). After the pool: paired DeLong of every
model against the dense model of its seed, runs sorted, the done-when checks."""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sharing_sweep.acceptance import acceptance
from sharing_sweep.common import (AUC_TOL, INT8_AUC_TOL, METHODS, MIN_COMPRESSION, PRECISIONS, REPO,
                                  calib_path, probs_path, worker_init)
from sharing_sweep.data import prepare_data
from sharing_sweep.models import run_job
from sharing_sweep.scoring import delong
from sharing_sweep.timing import speed_job


def _sweep_jobs(ctx: dict[str, Any], args: argparse.Namespace) -> list[dict]:
    """Every method at every ratio (seed 0), hot sharing of the dense model, the references."""
    ml = ctx["name"] == "movielens"
    table_names = "*" if ctx["big"] is None else ctx["big"]
    rest: list[dict] = []
    exact_ratios = args.ratios if ml else [16]
    for method in ("hash", "qr", "robe", "robe_exact"):
        for r in (exact_ratios if method == "robe_exact" else args.ratios):
            rest.append({"id": f"{method}-{r}", "method": method, "ratio": r, "seed": 0,
                         "spec": METHODS[method][2].format(r=r), "group": "sweep",
                         "precisions": list(PRECISIONS), "drop_model": not ml and method != "robe_exact"})
    for r in args.ratios:
        rest.append({"id": f"hot-{r}", "method": "hot", "ratio": r, "seed": 0, "group": "sweep",
                     "plan": {"tables": table_names, "sharing": {"kind": "hot", "ratio": r}},
                     "calib_path": calib_path(ctx, 0, ctx["calib"]), "precisions": list(PRECISIONS),
                     "after": ["dense-s0"]})
    rest.append({"id": "noemb", "method": "noemb", "ratio": 1e6, "seed": 0, "group": "reference",
                 "spec": METHODS["noemb"][2], "precisions": ["int8"], "drop_model": True})
    rest.append({"id": "robe_wproj-16", "method": "robe_wproj", "ratio": 16, "seed": 0, "group": "sweep",
                 "spec": METHODS["robe_wproj"][2].format(r=16), "precisions": ["fp32", "int8"],
                 "counts_path": calib_path(ctx, 0, ctx["calib"]), "after": ["dense-s0", "robe_exact-16"]})
    return rest


def _movielens_jobs(ctx: dict[str, Any]) -> list[dict]:
    """MovieLens only: realign + fine-tune, hot sharing of the `movie` table (acceptance, hot fraction)."""
    rest = [{"id": "robe_realign-16", "method": "robe_realign", "ratio": 16, "seed": 0,
             "spec": METHODS["robe_realign"][2].format(r=16), "group": "sweep",
             "precisions": list(PRECISIONS)}]
    # acceptance: movie table only, 8x, counts from 2015 (window 19) or from the training years
    for spec in (ctx["calib"], ctx["calib_extra"]):
        rest.append({"id": f"hot-movie-8-w{spec}", "method": "hot", "ratio": 8, "seed": 0,
                     "group": "acceptance", "calib_windows": spec, "calib_path": calib_path(ctx, 0, spec),
                     "plan": {"tables": ["movie"], "sharing": {"kind": "hot", "ratio": 8}},
                     "precisions": ["fp32", "int8"], "after": ["dense-s0"]})
    for frac in (0.0, 0.25, 0.75, 0.9):
        rest.append({"id": f"hot-movie-8-h{frac:g}", "method": "hot", "ratio": 8, "seed": 0,
                     "group": "hot-fraction", "hot": frac, "calib_windows": ctx["calib_extra"],
                     "calib_path": calib_path(ctx, 0, ctx["calib_extra"]), "after": ["dense-s0"],
                     "plan": {"tables": ["movie"], "sharing": {"kind": "hot", "ratio": 8, "hot": frac}},
                     "precisions": ["int8"]})
    return rest


def _seed_jobs(ctx: dict[str, Any], seeds: list[int]) -> list[dict]:
    """The seed-spread study: the methods at one ratio (16x MovieLens, 64x synthetic) per extra seed."""
    ml = ctx["name"] == "movielens"
    seed_ratio = 16 if ml else 64
    rest: list[dict] = []
    for s in seeds[1:]:
        for method in ("hash", "qr", "robe") + (("robe_exact",) if ml else ()):
            rest.append({"id": f"{method}-{seed_ratio}-s{s}", "method": method, "ratio": seed_ratio, "seed": s,
                         "spec": METHODS[method][2].format(r=seed_ratio), "group": "seeds",
                         "precisions": ["int8"], "drop_model": True})
        if ml:
            rest.append({"id": f"hot-movie-8-s{s}", "method": "hot", "ratio": 8, "seed": s,
                         "group": "seeds", "calib_path": calib_path(ctx, s, ctx["calib"]),
                         "calib_windows": ctx["calib"], "after": [f"dense-s{s}"],
                         "plan": {"tables": ["movie"], "sharing": {"kind": "hot", "ratio": 8}},
                         "precisions": ["int8"]})
    return rest


def jobs_for(ctx: dict[str, Any], args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """(dense jobs, the rest). A job runs once the jobs in its `after` list are done."""
    ml = ctx["name"] == "movielens"
    seeds = list(range(args.ml_seeds if ml else args.synth_seeds))
    dense = [{"id": f"dense-s{s}", "method": "dense", "ratio": 1, "seed": s, "spec": "dense",
              "group": "sweep" if s == 0 else "seeds", "calibrate": s == 0 or ml,
              "precisions": list(PRECISIONS) if s == 0 else ["int8"]} for s in seeds]
    rest = _sweep_jobs(ctx, args) + (_movielens_jobs(ctx) if ml else []) + _seed_jobs(ctx, seeds)
    return dense, rest


def _header(args: argparse.Namespace, ctxs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The JSON before any job: tool, machine, settings, per data set its context and no runs."""
    results: dict[str, Any] = {
        "tool": {"command": " ".join(shlex.quote(a) for a in [sys.executable.replace(str(REPO) + "/", ""),
                                                              "tools/hash_sharing_sweep.py", *sys.argv[1:]]),
                 "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "jobs": args.jobs},
        "machine": machine_info(),
        "settings": {"ratios": list(args.ratios), "precisions": list(PRECISIONS), "auc_tol": AUC_TOL,
                     "int8_auc_tol": INT8_AUC_TOL, "min_compression": MIN_COMPRESSION,
                     "train_defaults": "lowprec train defaults: 2 epochs, batch 512, Adam lr 1e-3, "
                                       "SparseAdam lr 1e-2, D=16, bottom 64, top 64,32",
                     "layers": "fp32 MLP layers in every artifact (table effects only)"},
        "datasets": {},
    }
    for name, ctx in ctxs.items():
        results["datasets"][name] = {k: ctx[k] for k in ("data", "prepare", "train", "eval", "calib",
                                                          "calib_extra", "big", "tables", "windows", "id_stats")}
        results["datasets"][name]["runs"] = []
    return results


def _run_pool(pool: cf.Executor, todo: list[tuple[dict, dict]], results: dict[str, Any], started: float) -> None:
    """Submit every job whose `after` jobs are done, collect results as they finish, until none is left."""
    done: set[tuple[str, str]] = set()
    futs: dict[cf.Future, tuple[dict, dict]] = {}

    def submit_ready() -> None:
        for jc in list(todo):
            j, c = jc
            if any((c["name"], a) not in done for a in j.get("after", [])):
                continue
            todo.remove(jc)
            futs[pool.submit(run_job, j, c)] = jc

    submit_ready()
    while futs:
        finished, _ = cf.wait(list(futs), return_when=cf.FIRST_COMPLETED)
        for fut in finished:
            j, c = futs.pop(fut)
            res = fut.result()
            for key in ("calib_windows", "hot"):
                if key in j:
                    res[key] = j[key]
            results["datasets"][c["name"]]["runs"].append(res)
            done.add((c["name"], j["id"]))
            print(f"[{time.time() - started:7.1f}s] {c['name']:<9} {res['id']:<22} "
                  f"{res['seconds']:6.1f}s", file=sys.stderr, flush=True)
        submit_ready()


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    work = Path(args.work).resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ctxs = prepare_data(args, work)
    results = _header(args, ctxs)
    todo: list[tuple[dict, dict]] = []
    for ctx in ctxs.values():
        d, r = jobs_for(ctx, args)
        todo += [(j, ctx) for j in d + r]
    # dense (hot sharing needs them) and big synthetic jobs first: keeps both workers busy
    todo.sort(key=lambda jc: (jc[0]["method"] != "dense", jc[1]["name"] != "synth"))
    with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn"),
                                initializer=worker_init) as pool:
        _run_pool(pool, todo, results, started)
        if "synth" in ctxs and not args.no_speed:
            fut = pool.submit(speed_job, ctxs["synth"], 16, args.speed_rounds, args.speed_calls, 2048)
            results["speed"] = fut.result()
            print(f"[{time.time() - started:7.1f}s] speed done", file=sys.stderr, flush=True)
    for name, ctx in ctxs.items():
        attach_delong(results["datasets"][name], ctx)
    for ds in results["datasets"].values():
        ds["runs"].sort(key=lambda r: (r["group"], list(METHODS).index(r["method"]), r["ratio"],
                                       r.get("seed", 0), r["id"]))
    results["tool"]["seconds"] = round(time.time() - started, 1)
    results["acceptance"] = acceptance(results)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return results


def attach_delong(ds: dict[str, Any], ctx: dict[str, Any]) -> None:
    """Paired DeLong of every float model and artifact against the dense float model of its seed."""
    y = np.load(probs_path(ctx, "labels-s0", "y"))
    for r in ds["runs"]:
        ref = np.load(probs_path(ctx, f"dense-s{r.get('seed', 0)}", "float"))
        entries = ([("float", r["float"])] if "float" in r else []) + list(r["variants"].items())
        for variant, entry in entries:
            if r["method"] == "dense" and variant == "float":
                continue
            entry["vs_dense"] = delong(ref, np.load(probs_path(ctx, r["id"], variant)), y)


def machine_info() -> dict[str, Any]:
    import fbgemm_gpu  # noqa: F401
    import torch

    import lowprec

    cpu, flags = "unknown", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        for line in info.splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    isa = [x for x in ("avx2", "avx512f", "fma") if f" {x}" in flags]
    mem = ""
    try:
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": isa, "memory": mem, "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "fbgemm_gpu": lowprec.FBGEMM_VERSION, "lowprec": lowprec.__version__, "numpy": np.__version__,
            "threads_per_process": 1, "load_average_at_start": list(os.getloadavg()),
            "date": dt.date.today().isoformat()}
