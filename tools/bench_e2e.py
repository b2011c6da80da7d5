"""End-to-end inference benchmark: samples/s of the float DLRM vs its quantized artifacts.

    python tools/bench_e2e.py [--scale 0.05] [--rows-per-window 60000] [--batch 2048]

The pipeline a user runs, as library calls: `lowprec data synth` (Criteo-Kaggle-shaped, tables x
--scale) -> `lowprec train` (windows 0-2, one short epoch; the reference DLRM's Kaggle MLPs
13-512-256-64-D and 512-256-1) -> `lowprec calibrate` (window 3) -> `lowprec search` (sensitivity on
window 3, validation on window 4, budgets --max-ne-increase / --max-auc-drop) -> `lowprec convert`.
Then, interleaved per repeat on --batches distinct batches of --batch rows from window 5:

  float             the float DLRM (torch nn.EmbeddingBag per table, fp32 Linear layers)
  artifact fp32     lowprec runtime, tables fp32 in one FBGEMM TBE, layers fp32
  int8 dynamic      tables int8, every layer int8 with dynamic activation quantization
  int8 static       tables int8, every layer int8 with calibrated (static) activation qparams
  searched plan     the plan `lowprec search` chose (per-table and per-layer precisions)
  latency plan      the plan `lowprec search --objective latency` chose under the same budgets

The latency plan is also checked against its own prediction: the search predicts a plan's time per
batch as the sum of its options' times (each table a one-table TBE lookup, each layer its forward,
on the search's cached batches of SEARCH_BATCH rows); both plans are then timed whole, interleaved,
on batches of that size.

samples/s = batch / seconds per forward; ratios vs float paired per repeat. The NE and AUC of each
variant on windows 5-6 are reported beside the speed. The searched plan is also written to
--plan-out for tools/bench_lookup.py --plan. Writes reports/bench_e2e.json (see --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as bc  # noqa: E402

TOOL = "bench_e2e.py"
from _bench_e2e_report import VARIANTS, render  # noqa: E402,F401  (bench_all calls bench_e2e.render)
SEARCH_BATCH = 4096  # the rows per cached batch the search's sensitivity and latency model use


def build(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Data, model, calibration, searched plan and the artifacts; returns paths and stage times."""
    from lowprec.calibrate import CalibConfig, calibrate, save_calibration
    from lowprec.checkpoint.float_model import save_float_model
    from lowprec.data.dataset import Dataset
    from lowprec.data.synth import SynthConfig, generate
    from lowprec.fileio import atomic_dir, sha256_file
    from lowprec.search.driver import SearchRequest, run_search
    from lowprec.train import TrainConfig, train

    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    with atomic_dir(tmp / "data") as d:
        generate(SynthConfig(7, args.rows_per_window, args.seed, args.scale), d)
    ds = Dataset(tmp / "data")
    stages["synth"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bottom = tuple(args.bottom_mlp) + (args.dim,)
    model, info = train(ds, TrainConfig(windows=(0, 1, 2), epochs=args.epochs, seed=args.seed,
                                        embedding_dim=args.dim, bottom_mlp=bottom, top_mlp=tuple(args.top_mlp)))
    save_float_model(model, tmp / "model", info)
    stages["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    calib = calibrate(model, ds, CalibConfig((3,)))
    save_calibration(calib, tmp / "calib.json", sha256_file(tmp / "model" / "model.safetensors"))
    stages["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result, summary = run_search(SearchRequest(
        model_dir=tmp / "model", data_dir=tmp / "data", out=tmp / "plan.json", calib_windows="3",
        eval_windows="4", max_ne_increase=args.max_ne_increase, max_auc_drop=args.max_auc_drop,
        calib_path=str(tmp / "calib.json"), max_rows=args.search_rows))
    stages["search"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    os.environ["LOWPREC_CACHE"] = str(tmp / "cache")  # time every option afresh, in this run
    latency_result, latency_summary = run_search(SearchRequest(
        model_dir=tmp / "model", data_dir=tmp / "data", out=tmp / "plan-latency.json", calib_windows="3",
        eval_windows="4", max_ne_increase=args.max_ne_increase, max_auc_drop=args.max_auc_drop,
        calib_path=str(tmp / "calib.json"), max_rows=args.search_rows, objective="latency"))
    stages["search (latency)"] = time.perf_counter() - t0
    return {"ds": ds, "model_dir": tmp / "model", "calib": tmp / "calib.json", "plan": tmp / "plan.json",
            "latency_plan": tmp / "plan-latency.json", "search": summary, "latency_search": latency_summary,
            "latency_rounds": [{"multiplier": r["multiplier"], "fits": r["fits"],
                                "ne_increase": r["validated"]["ne_increase"], "auc_drop": r["validated"]["auc_drop"],
                                "layers": {k: v for k, v in r["choices"].items() if k.startswith("layer:")}}
                               for r in latency_result.rounds],
            "stages": stages, "train_info": info}


def convert_all(built: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from lowprec.calibrate import load_calibration
    from lowprec.checkpoint.artifact import load_artifact
    from lowprec.checkpoint.convert import convert
    from lowprec.plan import Plan
    from lowprec.precision import Precision

    calib = load_calibration(built["calib"])
    plans = {
        "artifact fp32": (Plan.uniform(Precision.FP32, Precision.FP32), None),
        "int8 dynamic": (Plan.uniform(Precision.INT8, Precision.INT8), None),
        "int8 static": (Plan.uniform(Precision.INT8, Precision.INT8), calib),
        "searched plan": (Plan.load(built["plan"]), calib),
        "latency plan": (Plan.load(built["latency_plan"]), calib),
    }
    out = {}
    for name, (plan, c) in plans.items():
        t0 = time.perf_counter()
        manifest = convert(built["model_dir"], plan, tmp / name.replace(" ", "-"), c)
        runtime, _ = load_artifact(tmp / name.replace(" ", "-"))
        out[name] = {"runtime": runtime, "seconds": time.perf_counter() - t0,
                     "embedding_bytes": manifest["embedding_bytes"], "layer_bytes": manifest["layer_bytes"],
                     "fp32_embedding_bytes": manifest["fp32_embedding_bytes"],
                     "layers": {k: v["precision"] + ("" if v["precision"] != "int8" else
                                                    " static" if v["input_qparams"] else " dynamic")
                                for k, v in manifest["layers"].items()},
                     "tables": {t["name"]: t["precision"] for t in manifest["tables"]}}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    threads = bc.set_threads(args.threads)
    from lowprec.checkpoint.float_model import load_float_model
    from lowprec.data.batches import iter_batches
    from lowprec.evaluation.scoring import evaluate

    result: dict[str, Any] = {"tool": TOOL, "command": bc.command_line(TOOL, argv), "machine": bc.machine(threads),
                              "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    with tempfile.TemporaryDirectory(prefix="lowprec-bench-e2e-") as tmp:
        tmp = Path(tmp)
        built = build(args, tmp)
        arts = convert_all(built, tmp)
        float_model, _ = load_float_model(built["model_dir"])
        models = {"float": float_model, **{k: v["runtime"] for k, v in arts.items()}}
        batches = []
        for b in iter_batches(built["ds"], [5], args.batch, feature_ids=True):
            if len(b) == args.batch:
                batches.append(b)
            if len(batches) == args.batches:
                break
        if not batches:
            raise SystemExit(f"window 5 holds fewer than --batch {args.batch} rows")
        with torch.inference_mode():
            # every model gets the ids in the layout it reads (the quantized runtime: the loader's
            # FeatureIds), as `lowprec eval` and the drift job hand them over
            inputs = {k: [(b.dense, b.ids_for(m)) for b in batches] for k, m in models.items()}
            ref = float_model(*inputs["float"][0])
            diffs = {k: float((m(*inputs[k][0]) - ref).abs().max()) for k, m in models.items()}
            variants = {name: bc.cycling(lambda k, m=m, xs=inputs[name]: m(*xs[k]), len(batches))
                        for name, m in models.items()}
            times = bc.interleaved(variants, args.repeats, args.warmup, args.min_seconds, args.block_seconds)
            latency_check = check_latency_model(args, built, {k: models[k] for k in ("searched plan", "latency plan")})
        quality = {k: evaluate(m, built["ds"], [5, 6]).overall.summary() for k, m in models.items()}
        if args.plan_out:
            Path(args.plan_out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(built["plan"], args.plan_out)
        plan_json = json.loads(built["plan"].read_text())
    result.update({
        "stages_seconds": built["stages"],
        "train": {"rows_seen": built["train_info"]["rows_seen"], "final_epoch_logloss": built["train_info"]["final_epoch_logloss"]},
        "search": {k: built["search"][k] for k in ("total_bytes", "fp32_bytes", "compression", "evaluations",
                                                   "seconds", "ne_increase", "auc_drop", "table_bytes", "layer_bytes")},
        "plan": plan_json,
        "artifacts": {k: {kk: vv for kk, vv in v.items() if kk != "runtime"} for k, v in arts.items()},
        "batch": args.batch, "times": times,
        "samples_per_s": {k: bc.spread([args.batch / t for t in v]) for k, v in times.items()},
        "vs_float": {k: bc.speedup(times["float"], v) for k, v in times.items()},
        "max_abs_logit_diff_vs_float": diffs,
        "latency_model": latency_check,
        "latency_search": {"rounds": built["latency_rounds"],
                           **{k: built["latency_search"][k] for k in ("ne_increase", "auc_drop", "evaluations")}},
        "quality_windows_5_6": {k: {m: q[m] for m in ("ne", "auc", "logloss", "calibration") if m in q}
                                for k, q in quality.items()},
    })
    for k in VARIANTS:
        print(f"  {k:14s} {bc.fmt_spread(result['samples_per_s'][k], 1e-3, 1)}k samples/s  "
              f"vs float {bc.fmt_ratio(result['vs_float'][k])}", file=sys.stderr)
    bc.write_json(args.out, result)
    return result


def check_latency_model(args: argparse.Namespace, built: dict[str, Any],
                        plans: dict[str, torch.nn.Module]) -> dict[str, Any]:
    """Both plans timed whole on batches of SEARCH_BATCH rows, beside the latency plan's prediction."""
    from lowprec.data.batches import iter_batches

    batches = []
    for b in iter_batches(built["ds"], [5], SEARCH_BATCH, feature_ids=True):
        if len(b) == SEARCH_BATCH:
            batches.append((b.dense, b.ids))
        if len(batches) == args.batches:
            break
    if not batches:
        return {}

    def cycling(m):
        return bc.cycling(lambda k: m(*batches[k]), len(batches))
    times = bc.interleaved({k: cycling(m) for k, m in plans.items()}, args.repeats, args.warmup,
                           args.min_seconds, args.block_seconds)
    ops = self_time_by_op(cycling(plans["latency plan"]), max(4, args.batches))
    predicted = json.loads(built["latency_plan"].read_text())["predicted_latency_us"]
    return {"batch": SEARCH_BATCH, "predicted_us": predicted,
            "measured_us": {k: bc.spread([1e6 * t for t in v]) for k, v in times.items()},
            "measured_over_predicted": bc.spread([1e6 * t / predicted for t in times["latency plan"]]),
            "latency_plan_speedup": bc.speedup(times["searched plan"], times["latency plan"]),
            "latency_plan_ops_ms": ops}


def self_time_by_op(call, calls: int) -> dict[str, float]:
    """Milliseconds per call by op, self CPU time under torch.profiler, largest first."""
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            call()
    ops = {e.key: e.self_cpu_time_total / 1e3 / calls for e in prof.key_averages()}
    return dict(sorted(ops.items(), key=lambda kv: -kv[1]))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=0.05)
    p.add_argument("--rows-per-window", type=int, default=60_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--bottom-mlp", type=_ints, default=[512, 256, 64], help="hidden widths (then dim)")
    p.add_argument("--top-mlp", type=_ints, default=[512, 256], help="hidden widths (then 1)")
    p.add_argument("--epochs", type=int, default=1)
    # Stricter than the recipe default (0.1%, 0.001), under which this briefly trained model's
    # search puts every table at int2; at 0.02% the plan mixes int8, int4 and int2 across tables.
    # The search accepts a plan when its 95% upper bounds fit the budget: on 20,000 validation rows
    # those bounds (~+0.04% NE) exceeded it and the plan stayed near float (1.18x); 60,000 rows let
    # it certify the int8 layers (2.7x, 2026-12-01).
    p.add_argument("--max-ne-increase", default="0.02%")
    p.add_argument("--max-auc-drop", default="0.0002")
    p.add_argument("--search-rows", type=int, default=60_000)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-seconds", type=float, default=0.3, help="per variant per repeat")
    p.add_argument("--block-seconds", type=float, default=0.03, help="back-to-back calls of one variant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plan-out", default=str(bc.REPORTS / "bench_e2e_plan.json"))
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=str(bc.REPORTS / "bench_e2e.json"))
    args = p.parse_args(argv)
    if args.tiny:
        args.scale, args.rows_per_window, args.bottom_mlp, args.top_mlp = 0.0005, 600, [16], [16]
        args.search_rows, args.batch, args.batches, args.repeats, args.warmup, args.min_seconds = 600, 128, 2, 2, 1, 0.001
        args.block_seconds = 0.0005
    return args


if __name__ == "__main__":
    main()
