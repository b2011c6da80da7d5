"""The data sets of the sweep, written with the CLI (`lowprec data prepare` / `data synth`), and per
data set the context its jobs need: windows, tables, which tables are compressed, id coverage."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from sharing_sweep.common import cli, cmd, window_ints


def prepare_data(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """Write the data sets with the CLI; return per data set the context the jobs need."""
    out: dict[str, dict[str, Any]] = {}
    if "movielens" in args.datasets:
        d = work / "movielens" / "data"
        c = ["data", "prepare", "--format", "movielens", "--input", str(args.ml_input), "--out", str(d),
             "--window", "year"]
        cli(c)
        out["movielens"] = {"name": "movielens", "data": str(d), "prepare": cmd(*c), "train": "0-18",
                            "eval": "20-22", "calib": "0-18", "calib_extra": "19", "big": None,
                            "work": str(work / "movielens")}
    if "synth" in args.datasets:
        d = work / "synth" / "data"
        w = args.synth_windows
        c = ["data", "synth", "--out", str(d), "--windows", w, "--rows-per-window", args.synth_rows,
             "--scale", args.synth_scale, "--seed", 0]
        cli([str(x) for x in c])
        from lowprec.data.dataset import Dataset

        meta = Dataset(d).meta
        big = [f.name for f in meta.sparse if f.num_embeddings >= args.big_rows]
        out["synth"] = {"name": "synth", "data": str(d), "prepare": cmd(*c), "train": f"0-{w - 2}",
                        "eval": str(w - 1), "calib": f"0-{w - 2}", "calib_extra": None, "big": big,
                        "work": str(work / "synth")}
    for ctx in out.values():
        from lowprec.data.dataset import Dataset

        meta = Dataset(ctx["data"]).meta
        ctx["tables"] = {f.name: f.num_embeddings for f in meta.sparse}
        ctx["id_stats"] = id_stats(Dataset(ctx["data"]), ctx)
        ctx["windows"] = [{"index": x.index, "label": x.label, "rows": x.rows} for x in meta.windows]
    return out


def id_stats(ds: Any, ctx: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per single-id table: how well the training windows cover the ids the evaluation rows use."""
    meta = ds.meta
    train, evalw = window_ints(ctx["train"]), window_ints(ctx["eval"])
    out = {}
    for t, f in enumerate(meta.sparse):
        if f.hotness != 1 or (ctx["big"] is not None and f.name not in ctx["big"]):
            continue
        col = meta.slot_offsets[t]
        counts = np.zeros(f.num_embeddings, dtype=np.int64)
        for w in train:
            counts += np.bincount(np.asarray(ds.arrays(w)[1][:, col]), minlength=f.num_embeddings)
        ev = np.concatenate([np.asarray(ds.arrays(w)[1][:, col]) for w in evalw])
        seen = counts[ev]
        out[f.name] = {"rows": f.num_embeddings, "distinct_train_ids": int((counts > 0).sum()),
                       "train_rows_per_distinct_id": float(counts.sum() / max((counts > 0).sum(), 1)),
                       "eval_rows_id_unseen": float((seen == 0).mean()),
                       "eval_rows_id_seen_lt10": float((seen < 10).mean())}
    return out


def spec_options(ctx: dict[str, Any], spec: str) -> tuple[list[str], dict[str, Any]]:
    """CLI flags and TrainConfig fields that give the compressed tables of `ctx` the SPEC."""
    if ctx["big"] is None:
        return (["--embedding", spec], {"embedding": spec}) if spec != "dense" else ([], {})
    if spec == "dense":
        return [], {}
    flags: list[str] = []
    for name in ctx["big"]:
        flags += ["--table-embedding", f"{name}={spec}"]
    return flags, {"table_embedding": {name: spec for name in ctx["big"]}}
