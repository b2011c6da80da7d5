"""End-to-end inference benchmark: samples/s of the float DLRM vs its quantized artifacts.

    python tools/bench_e2e.py [--scale 0.05] [--rows-per-window 20000] [--batch 2048]

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
VARIANTS = ("float", "artifact fp32", "int8 dynamic", "int8 static", "searched plan", "latency plan")
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
    p.add_argument("--rows-per-window", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--bottom-mlp", type=_ints, default=[512, 256, 64], help="hidden widths (then dim)")
    p.add_argument("--top-mlp", type=_ints, default=[512, 256], help="hidden widths (then 1)")
    p.add_argument("--epochs", type=int, default=1)
    # Stricter than the recipe default (0.1%, 0.001), under which this briefly trained model's
    # search puts every table at int2; at 0.02% the plan mixes int8, int4 and int2 across tables.
    p.add_argument("--max-ne-increase", default="0.02%")
    p.add_argument("--max-auc-drop", default="0.0002")
    p.add_argument("--search-rows", type=int, default=20_000)
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


# ---------------------------------------------------------------------------------------------
# report


def figures(result: dict[str, Any], out_dir: Path) -> list[str]:
    plt = bc.plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = [v for v in VARIANTS if v in result["samples_per_s"]]
    med = [result["samples_per_s"][n]["median"] / 1e3 for n in names]
    err = [[m - result["samples_per_s"][n]["min"] / 1e3 for m, n in zip(med, names)],
           [result["samples_per_s"][n]["max"] / 1e3 - m for m, n in zip(med, names)]]
    ax.bar(range(len(names)), med, yerr=err, capsize=3, color=["C7", "C0", "C1", "C2", "C3", "C4"][: len(names)])
    for i, n in enumerate(names):
        ax.text(i, med[i], f"{result['vs_float'][n]['median']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("k samples/s (median, min-max)")
    ax.set_title(f"End-to-end inference, batch {result['batch']}")
    fig.tight_layout()
    fig.savefig(out_dir / "bench_e2e.png", dpi=110)
    plt.close(fig)
    return ["bench_e2e.png"]


def render(result: dict[str, Any], out_dir: Path) -> list[str]:
    figs = figures(result, out_dir)
    s, srch = result["settings"], result["search"]
    arts = result["artifacts"]
    m = result["machine"]
    md = ["## c. End-to-end inference: float DLRM vs quantized artifacts", "",
          f"Run {m.get('date_utc', '?')} at commit {m.get('git_commit', '?')} (1-min load "
          f"{m.get('loadavg_1min', '?')}). Synthetic Criteo-shaped data (`lowprec data synth`, tables x {s['scale']}, "
          f"{s['rows_per_window']:,} rows per window); DLRM dim {s['dim']}, bottom MLP 13-"
          f"{'-'.join(map(str, s['bottom_mlp']))}-{s['dim']}, top MLP {'-'.join(map(str, s['top_mlp']))}-1, "
          f"trained {s['epochs']} epoch on windows 0-2 ({result['train']['rows_seen']:,} rows). "
          f"Search: budgets NE +{s['max_ne_increase']}, AUC -{s['max_auc_drop']}, sensitivity on window 3, "
          f"validation on window 4: {srch['evaluations']} evaluations in {srch['seconds']:.0f} s, "
          f"{srch['compression']:.1f}x smaller than fp32 (validated NE {100 * srch['ne_increase']:+.3f}%, "
          f"AUC drop {srch['auc_drop']:+.4f}). Timed on {s['batches']} batches of {result['batch']} from "
          f"window 5, {s['repeats']} interleaved repeats; ratios paired per repeat, median [min-max]. Each model "
          "gets the batch as `lowprec eval` and the drift job hand it over: the float model the id matrix, the "
          "artifacts the loader's FeatureIds (section a).", ""]
    rows = []
    for n in VARIANTS:
        a = arts.get(n, {})
        q = result["quality_windows_5_6"][n]
        layers = sorted(set(a.get("layers", {}).values())) if a else ["fp32 (torch)"]
        tables = sorted(set(a.get("tables", {}).values())) if a else ["fp32 (EmbeddingBag)"]
        emb_mb = a["embedding_bytes"] / 2**20 if a else arts["artifact fp32"]["fp32_embedding_bytes"] / 2**20
        rows.append([n, ", ".join(tables), ", ".join(layers), f"{emb_mb:.1f}",
                     bc.fmt_spread(result["samples_per_s"][n], 1e-3, 1), bc.fmt_ratio(result["vs_float"][n]),
                     f"{q['ne']:.5f}", f"{q['auc']:.5f}"])
    md += bc.md_table(["variant", "tables", "layers", "table MB", "k samples/s", "vs float", "NE (w5-6)", "AUC (w5-6)"], rows)
    plan_tables = arts["searched plan"]["tables"]
    counts: dict[str, int] = {}
    for p in plan_tables.values():
        counts[p] = counts.get(p, 0) + 1
    md += [f"Searched plan: tables {', '.join(f'{v} x {k}' for k, v in sorted(counts.items()))}; layers "
           f"{', '.join(f'{k} {v}' for k, v in arts['searched plan']['layers'].items())}. "
           f"Pipeline stage times (s): {', '.join(f'{k} {v:.1f}' for k, v in result['stages_seconds'].items())}.", "",
           f"![e2e]({figs[0]})", ""]
    v = result["vs_float"]
    layers = arts["searched plan"]["layers"]
    int8_layers = sum(1 for p in layers.values() if p.startswith("int8"))
    fp8 = sum(1 for p in arts["searched plan"]["tables"].values() if p == "fp8")
    st = result["settings"]
    md += ["**What it means.** The int8 layers carry the speedup: FBGEMM's int8 GEMMs on the 512- and 256-wide "
           f"layers make the model {v['int8 dynamic']['median']:.1f}x (dynamic) to {v['int8 static']['median']:.1f}x "
           "(static, no per-batch range computation) faster than fp32 at one thread (DESIGN.md measured 1.7x for one "
           "2048x512x512 layer with default threads). The searched plan (bytes objective, budget NE "
           f"+{st['max_ne_increase']}, AUC drop {st['max_auc_drop']}) runs at {v['searched plan']['median']:.2f}x: "
           f"the budget left {int8_layers} of its {len(layers)} layers at int8"
           + (" (accepted by the interval rule: the upper ends of the 95% intervals within the budget, which on "
              f"{result['plan']['validated']['rows']:,} validation rows leaves little room)"
              if result.get("plan", {}).get("accept") == "interval" and result["plan"].get("validated") else "")
           + (f", and its {fp8} fp8 table(s) look up 20-30x slower than fp32 (reports/fp8_lookup.md)" if fp8 else "")
           + ". Table precision alone moves samples/s little here "
           f"(fp32 artifact {v['artifact fp32']['median']:.2f}x vs float): at dim 16 and one id per table the "
           "lookups are a small share of the forward pass. What the plan buys is memory (table MB column) within the "
           "accuracy budget (NE and AUC columns, windows 5-6, which neither search nor calibration saw).", ""]
    md += latency_section(result)
    return md


def latency_section(result: dict[str, Any]) -> list[str]:
    lm = result.get("latency_model")
    if not lm:
        return []
    arts = result["artifacts"]

    def mix(name: str) -> str:
        counts: dict[str, int] = {}
        for p in arts[name]["tables"].values():
            counts[p] = counts.get(p, 0) + 1
        return ", ".join(f"{v} x {k}" for k, v in sorted(counts.items()))
    rows = [[name, mix(name), f"{arts[name]['embedding_bytes'] / 2**20:.1f}",
             f"{lm['predicted_us'] / 1e3:.2f}" if name == "latency plan" else "",
             bc.fmt_spread(lm["measured_us"][name], 1e-3, 2)] for name in ("searched plan", "latency plan")]
    ratio, speed = lm["measured_over_predicted"]["median"], lm["latency_plan_speedup"]["median"]
    md = ["**The latency objective, checked.** `lowprec search --objective latency` minimises a predicted time "
          "per batch: the sum of its options' times, each measured alone on this machine (a table as a one-table "
          "TBE lookup, a layer as its forward); savings under 0.5% of the float model's time count as none. Both "
          f"plans timed whole, interleaved, on batches of {lm['batch']:,} rows (the search's batch size), ms per "
          "batch, median [min-max]:", ""]
    md += bc.md_table(["plan", "tables", "table MB", "predicted", "measured"], rows)
    differ = [k for k, v in arts["latency plan"]["layers"].items() if v != arts["searched plan"]["layers"][k]]
    gap_ms = (lm["measured_us"]["latency plan"]["median"] - lm["predicted_us"]) / 1e3
    if ratio > 1.1:
        ops = lm.get("latency_plan_ops_ms", {})
        top = ", ".join(f"`{k}` {v:.2f}" for k, v in list(ops.items())[:6])
        fit = (f"The additive model under-predicts the whole plan: measured {ratio:.2f}x its prediction, "
               f"{gap_ms:.1f} ms per batch it does not see: what lies between the options (the interaction's "
               "batched matmul and gather, the ReLUs, the concatenations). torch.profiler on the latency plan's "
               f"forward, self time in ms per batch: {top}. The solver needs only the options' relative times, "
               "which the gap does not change.")
    elif ratio < 0.9:
        fit = (f"The additive model over-predicts the whole plan: measured {ratio:.2f}x its prediction "
               "(per-option fixed costs that one TBE call and one forward pay once).")
    else:
        fit = f"The additive model predicted the whole plan to {100 * abs(ratio - 1):.0f}%."
    md.append(fit + f" The latency plan ran at {bc.fmt_ratio(lm['latency_plan_speedup'])} the speed of the bytes plan.")
    tried = [r for r in result.get("latency_search", {}).get("rounds", [])
             if not r["fits"] and any(r["layers"].get(f"layer:{k}") == "int8" for k in differ)]
    if speed < 1 and differ:
        text = (f" It is slower because it keeps {', '.join(differ)} above int8, where the bytes plan has int8")
        if tried:
            text += (": the latency search tried int8 there (" + "; ".join(
                f"multiplier {r['multiplier']:.1f}: validated NE {100 * r['ne_increase']:+.3f}%" for r in tried)
                + f", budget +{result['settings']['max_ne_increase']}) and it failed validation")
        text += (". The bytes plan validates with those layers at int8 because its int2 tables lower the NE "
                 f"on this data (validated NE {100 * result['search']['ne_increase']:+.3f}% overall): compensating "
                 "errors, not a property of the layers. The latency search has no reason to take int2 tables (on "
                 "this CPU they save no lookup time, section a), so it does not find that offset. The objective does "
                 "what it says; on this model the fastest plan within budget is the one the bytes search found by "
                 "accident.")
        md[-1] += text
    return md + [""]


if __name__ == "__main__":
    main()
