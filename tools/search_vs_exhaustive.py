"""Search vs exhaustive enumeration on a small synthetic model; writes reports/search_vs_exhaustive.md.

    python tools/search_vs_exhaustive.py [--precisions fp16,int4,int2] [--seed 0]

A 6-table model is trained on Criteo-shaped synthetic data (six tables of `lowprec data synth` at
scale 0.05 that its hidden model ties together in pairwise interactions; the other 20 features
are dropped). Layers stay fp32, so the
space is precisions^tables plans. Exhaustive: every plan is scored on the evaluation windows with
the search's own emulator (real FBGEMM TBE lookups per table, the float MLP), and the cheapest plan
meeting the budget wins. lowprec's search runs as users run it (sensitivity on the calibration
window, MILP, real conversion and validation on the evaluation windows). The report compares the
bytes both find and the number of evaluations each needed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lowprec.checkpoint.float_model import save_float_model
from lowprec.data.dataset import Dataset, DatasetWriter
from lowprec.data.synth import SynthConfig, generate
from lowprec.fileio import atomic_dir
from lowprec.precision import Precision
from lowprec.report import Doc
from lowprec.search.run import SearchConfig, search
from lowprec.search.sensitivity import Emulator, FloatCache
from lowprec.search.solver import Budget
from lowprec.search.space import SearchSpace
from lowprec.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def subset_dataset(src: Dataset, keep: list[str], out: Path) -> Dataset:
    """A copy of `src` with only the sparse features in `keep` (public dataset API only)."""
    names = src.meta.sparse_names
    cols = [names.index(k) for k in keep]
    with atomic_dir(out) as tmp:
        w = DatasetWriter(tmp, list(src.meta.dense_names), [src.meta.sparse[c] for c in cols],
                          {"derived_from": str(src.root), "kept": keep})
        for info in src.meta.windows:
            dense, sparse, labels = src.arrays(info.index)
            ww = w.window(info.label, info.start, info.end)
            ww.append(np.asarray(dense), np.asarray(sparse)[:, cols], np.asarray(labels))
            w.add_window(ww)
        w.finish()
    return Dataset(out)


def small_synthetic(tmp: Path, rows_per_window: int, seed: int, scale: float, tables: str) -> Dataset:
    """8 synthetic windows, keeping only the sparse features named in `tables` (comma-separated)."""
    with atomic_dir(tmp / "full") as d:
        generate(SynthConfig(8, rows_per_window, seed, scale), d)
    full = Dataset(tmp / "full")
    keep = tables.split(",")
    return subset_dataset(full, [f.name for f in full.meta.sparse if f.name in keep], tmp / "small")


def score_all(model, ds, eval_windows, items, range_method):
    """(bytes, choices, NE increase, AUC drop) of every combination, scored on the eval windows."""
    cache = FloatCache(model, ds, eval_windows, max_rows=10**9)
    emu = Emulator(model, cache, None)
    base = emu.run([], range_method)
    tables = [opts for item, opts in items.items() if item.startswith("table:")]
    scored = []
    for combo in itertools.product(*tables):
        s = emu.run(list(combo), range_method)
        scored.append((sum(o.bytes for o in combo), combo, s.ne / base.ne - 1, base.auc - s.auc))
    return scored


def cheapest_within(scored, budget: Budget):
    fits = [x for x in scored if x[2] <= budget.max_ne_increase and x[3] <= budget.max_auc_drop]
    return min(fits, key=lambda x: x[0]) if fits else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Tables the hidden model ties together in pairwise interactions (see lowprec.data.synth), so
    # a 6-table DLRM learns real signal and quantizing them costs real NE.
    ap.add_argument("--tables", default="cat_0,cat_4,cat_6,cat_14,cat_9,cat_17")
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--precisions", default="fp16,int4,int2")
    ap.add_argument("--rows-per-window", type=int, default=30_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", default="0.001,0.0003,0.0001,0.00003",
                    help="NE-increase budgets to compare at (the AUC-drop budget is set equal)")
    ap.add_argument("--out", default=str(REPO / "reports"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    precisions = tuple(Precision.parse(p) for p in args.precisions.split(","))
    with tempfile.TemporaryDirectory(prefix="lowprec-svx-") as tmp:
        tmp = Path(tmp)
        ds = small_synthetic(tmp, args.rows_per_window, args.seed, args.scale, args.tables)
        largest = list(ds.meta.sparse)
        model, info = train(ds, TrainConfig(windows=(0, 1, 2, 3), seed=args.seed))
        save_float_model(model, tmp / "model", info)
        space = SearchSpace(table_precisions=precisions, layer_precisions=(Precision.FP32,))
        runs = []
        for b in (float(x) for x in args.budgets.split(",")):
            t0 = time.time()
            result = search(tmp / "model", model, ds, SearchConfig((4,), (5, 6, 7), Budget(b, b), space), None)
            runs.append((b, result, time.time() - t0))
        items = {k: [o for o in v if not o.is_float_baseline] for k, v in runs[0][1].items.items()
                 if k.startswith("table:")}
        t0 = time.time()
        scored = score_all(model, ds, [5, 6, 7], items, space.range_method)
        exhaustive_s = time.time() - t0
    facts = {
        "tables": [f.name for f in largest], "rows": [f.num_embeddings for f in largest],
        "precisions": [p.value for p in precisions], "args": vars(args),
        "exhaustive": {"evaluations": len(scored), "seconds": round(exhaustive_s, 1)},
        "evaluation_limit": 2 * len(largest) * len(precisions), "budgets": [],
    }
    for b, result, secs in runs:
        best = cheapest_within(scored, Budget(b, b))
        found = result.plan.info.table_bytes
        facts["budgets"].append({
            "budget": b,
            "search": {"table_bytes": found, "evaluations": result.evaluations, "seconds": round(secs, 1),
                       "validated": result.validation.to_json() if result.validation else None,
                       "choices": {o.name: o.precision.value for o in result.chosen.values() if o.kind == "table"}},
            "exhaustive": {"table_bytes": best[0] if best else None,
                           "choices": {o.name: o.precision.value for o in best[1]} if best else None,
                           "ne_increase": best[2] if best else None, "auc_drop": best[3] if best else None},
            "bytes_ratio": found / best[0] if best else None,
        })
    write_report(facts, Path(args.out), " ".join(["python tools/search_vs_exhaustive.py", *(argv or sys.argv[1:])]))
    return facts


def write_report(f: dict, out: Path, command: str) -> None:
    doc = Doc("Search vs exhaustive enumeration")
    doc.code(command)
    doc.para(f"Model: {len(f['tables'])} tables ({', '.join(f'{n} ({r:,} rows)' for n, r in zip(f['tables'], f['rows']))}), "
             f"dim 16, layers fp32; table precisions {f['precisions']} (plus fp32); calibration window 4, "
             f"evaluation windows 5-7 of `lowprec data synth --scale {f['args']['scale']}` "
             f"({f['args']['rows_per_window']:,} rows per window, seed {f['args']['seed']}). At each budget "
             f"(NE increase and AUC drop both <= the value), exhaustive enumeration scores all "
             f"{f['exhaustive']['evaluations']} plans on the evaluation windows ({f['exhaustive']['seconds']} s); "
             f"lowprec search measures sensitivity on the calibration window and validates on the evaluation windows.")
    rows = []
    for r in f["budgets"]:
        s, e = r["search"], r["exhaustive"]
        rows.append([f"{100 * r['budget']:.3f}%", s["table_bytes"], e["table_bytes"],
                     f"{r['bytes_ratio']:.3f}" if r["bytes_ratio"] else "-", s["evaluations"], s["seconds"],
                     json.dumps(s["choices"]), json.dumps(e["choices"])])
    doc.table(["budget", "search bytes", "exhaustive bytes", "ratio", "search evals", "search s",
               "search choices", "exhaustive choices"], rows)
    doc.para(f"Targets: ratio <= 1.05 at every budget; search evaluations <= 2 x tables x precisions = "
             f"{f['evaluation_limit']} (an evaluation is one sensitivity measurement or one validation "
             f"of a converted plan).")
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_vs_exhaustive.json").write_text(json.dumps(f, indent=2, default=float) + "\n")
    (out / "search_vs_exhaustive.md").write_text(doc.markdown())


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=float))
