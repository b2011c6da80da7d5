"""Training defaults on a latent dataset: how much of the dense-only -> Bayes AUC gap a config closes.

Trains each CONFIG (TrainConfig overrides) for each seed on --train windows, with --val windows for
the epoch choice / early stopping when the config keeps them, scores the kept model on --report
windows, and appends one JSON line per run to --out. `--summary` reads the lines back and prints a
Markdown table: per config the validation and report AUC and the gap closed,
    (AUC - dense-only AUC) / (Bayes AUC - dense-only AUC)
against the run named `denseonly` of the same seed (train it: `denseonly@embedding=hash:ratio=1000000`).
Tune on the validation window only; the report windows are for the final numbers.

    python tools/train_grid.py --data D --train 0-3 --val 4 --report 5,6 --seeds 0,1 --out runs.jsonl \
        'default@' 'denseonly@embedding=hash:ratio=1000000' 'wd1e-4@table_weight_decay=1e-4;epochs=3'
    python tools/train_grid.py --data D --out runs.jsonl --summary
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from lowprec.data.dataset import Dataset
from lowprec.data.latent import window_bayes_auc
from lowprec.data.windows import parse_windows
from lowprec.evaluation.scoring import evaluate
from lowprec.train import TrainConfig, train


def parse_config(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition("@")
    out: dict = {}
    for part in filter(None, rest.split(";")):
        key, _, value = part.partition("=")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value, value)
    if "val_windows" in out:
        out["val_windows"] = tuple(int(w) for w in str(out["val_windows"]).split("+") if w)
    return name, out


def run_one(ds: Dataset, name: str, over: dict, seed: int, args) -> dict:
    kw = {"windows": tuple(args.train), "val_windows": tuple(args.val), "seed": seed} | over
    cfg = TrainConfig(**kw)
    t0 = time.time()
    model, info = train(ds, cfg)
    rep = evaluate(model, ds, args.report).per_window
    return {"name": name, "seed": seed, "config": over, "best_epoch": info["best_epoch"],
            "epochs_run": info["epochs_run"], "history": info["history"], "seconds": round(time.time() - t0, 1),
            "report": {str(w): {k: rep[w][k] for k in ("auc", "ne", "calibration")} for w in args.report},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def summary(ds: Dataset, lines: list[dict]) -> str:
    bayes = window_bayes_auc(ds.meta)
    base = {(r["seed"], w): m["auc"] for r in lines if r["name"] == "denseonly" for w, m in r["report"].items()}
    by = defaultdict(list)
    for r in lines:
        by[r["name"]].append(r)
    windows = sorted({w for r in lines for w in r["report"]}, key=int)
    head = ["config", "seeds", "epochs kept", "val AUC"] + [f"AUC w{w}" for w in windows] + \
        [f"gap closed w{w}" for w in windows] + ["calib w" + windows[0], "s/run"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in by.items():
        def cell(vals, fmt="{:.4f}"):
            vals = [v for v in vals if v is not None]
            if not vals:
                return ""
            m = fmt.format(float(np.mean(vals)))
            return m if len(vals) == 1 else f"{m} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"
        val = [r["history"][r["best_epoch"] - 1].get("validation", {}).get("auc") for r in runs]
        aucs = [cell([r["report"][w]["auc"] for r in runs]) for w in windows]
        gaps = []
        for w in windows:
            g = [(r["report"][w]["auc"] - base[(r["seed"], w)]) / (bayes[int(w)] - base[(r["seed"], w)])
                 for r in runs if (r["seed"], w) in base]
            gaps.append(cell([100 * x for x in g], "{:.1f}%") if g else "")
        rows.append("| " + " | ".join([name, ",".join(str(r["seed"]) for r in runs),
                                       ",".join(str(r["best_epoch"]) for r in runs), cell(val)] + aucs + gaps +
                                      [cell([r["report"][windows[0]]["calibration"] for r in runs], "{:.3f}"),
                                       f"{np.mean([r['seconds'] for r in runs]):.0f}"]) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--train", default="0-3")
    ap.add_argument("--val", default="4")
    ap.add_argument("--report", default="5")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("configs", nargs="*", help="NAME@key=value;key=value (TrainConfig fields)")
    args = ap.parse_args(argv)
    ds = Dataset(args.data)
    out = Path(args.out)
    if args.summary:
        print(summary(ds, [json.loads(x) for x in out.read_text().splitlines() if x.strip()]))
        return 0
    idx = ds.meta.window_indices
    args.train, args.report = parse_windows(args.train, idx), parse_windows(args.report, idx)
    args.val = parse_windows(args.val, idx) if args.val else []
    for text in args.configs:
        name, over = parse_config(text)
        for seed in (int(s) for s in args.seeds.split(",")):
            rec = run_one(ds, name, over, seed, args)
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps({k: rec[k] for k in ("name", "seed", "best_epoch", "report", "seconds")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
