"""Worker side of the sweep: one job = one model. Train it (or take the seed's dense model for
post-training hot sharing), evaluate the float model, convert it at each precision (uniform or the
job's plan), evaluate every artifact. Each call is the in-process twin of one CLI command, and the
commands are recorded beside the numbers."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sharing_sweep.common import calib_path, cmd, probs_path, worker_init
from sharing_sweep.projection import weighted_projection_model
from sharing_sweep.scoring import compare_preds, saved_float, score


def plan_json(plan: dict[str, Any], prec: str) -> dict[str, Any]:
    """A plan {"sharing": {...}, "tables": [names] or "*"} at one precision -> the plan file."""
    tables: dict[str, Any] = {}
    names = plan["tables"]
    if names == "*":
        tables["*"] = {"precision": prec, "sharing": plan["sharing"]}
    else:
        for name in names:
            tables[name] = {"precision": prec, "sharing": plan["sharing"]}
        tables["*"] = {"precision": prec}
    return {"format": "lowprec-plan", "version": 1, "tables": tables}


def _plan_for(job: dict[str, Any], work: Path, model_dir: Path, art: Path, prec: str) -> tuple[Any, list[str]]:
    """The plan of one artifact (the job's plan file at `prec`, or uniform) and its convert command."""
    from lowprec.plan import Plan
    from lowprec.precision import Precision

    if job.get("plan"):
        plan_path = work / "plans" / f"{job['id']}-{prec}.json"
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(json.dumps(plan_json(job["plan"], prec), indent=1))
        return Plan.load(plan_path), [cmd("convert", "--model", model_dir, "--plan", plan_path,
                                          "--calibration", job["calib_path"], "--out", art)]
    plan = Plan.uniform(Precision.parse(prec, "precision"))
    return plan, [cmd("convert", "--model", model_dir, "--precision", prec, "--out", art)]


def _artifact_variants(job: dict[str, Any], ctx: dict[str, Any], ds: Any, windows: list[int],
                       model_dir: Path, p_float: np.ndarray, auc_float: float) -> dict[str, Any]:
    """Convert `model_dir` at each precision (uniform or the job's plan), evaluate each artifact."""
    from lowprec.calibrate import load_calibration
    from lowprec.checkpoint.convert import convert
    from lowprec.checkpoint.load import load_model

    work = Path(ctx["work"])
    out: dict[str, Any] = {}
    calib = load_calibration(job["calib_path"]) if job.get("calib_path") else None
    for prec in job["precisions"]:
        t0 = time.time()
        art = work / "artifacts" / f"{job['id']}-{prec}"
        plan, commands = _plan_for(job, work, model_dir, art, prec)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manifest = convert(model_dir, plan, art, calib)
        runtime, _, _ = load_model(art)
        metrics, p, _ = score(runtime, ds, windows)
        entry: dict[str, Any] = {**metrics, "embedding_bytes": int(manifest["embedding_bytes"]),
                                 "fp32_embedding_bytes": int(manifest["fp32_embedding_bytes"]),
                                 "compression": float(manifest["compression"]),
                                 "exact": all(t["exact"] for t in manifest["tables"])}
        compare_preds(entry, p, p_float, auc_float)
        np.save(probs_path(ctx, job["id"], prec), p)
        commands += [cmd("inspect", art, "--json"),
                     cmd("eval", "--model", art, "--data", ctx["data"], "--windows", ctx["eval"], "--json")]
        entry["commands"] = commands
        entry["warnings"] = sorted({str(w.message) for w in caught if not issubclass(w.category, FutureWarning)})
        entry["seconds"] = round(time.time() - t0, 2)
        out[prec] = entry
        del runtime
        if not job.get("keep"):
            shutil.rmtree(art, ignore_errors=True)
    return out


def _train(job: dict[str, Any], ctx: dict[str, Any], ds: Any, model_dir: Path, res: dict[str, Any]) -> Any:
    """Train the job's model (robe_realign: then realign and fine-tune one epoch), save it, return
    it reloaded from disk; records the train command, seconds and final training log-loss."""
    from lowprec.checkpoint.float_model import load_float_model, save_float_model
    from lowprec.data.windows import parse_windows
    from lowprec.train import TrainConfig, train

    from sharing_sweep.data import spec_options

    seed = job.get("seed", 0)
    flags, fields = spec_options(ctx, job["spec"])
    cfg = TrainConfig(windows=tuple(parse_windows(ctx["train"], ds.meta.window_indices)), seed=seed, **fields)
    ttrain = time.time()
    model, info = train(ds, cfg)
    train_cmd = cmd("train", "--data", ctx["data"], "--windows", ctx["train"], "--seed", seed, *flags,
                    "--out", model_dir)
    if job["method"] == "robe_realign":
        # the documented way to deploy an exact-ROBE model without the projection loss
        from dataclasses import replace

        from lowprec.model.realign import realign

        model, info = train(ds, replace(cfg, epochs=1), init=realign(model))
        train_cmd = (f"# python: m, _ = lowprec.train.train(Dataset({ctx['data']!r}), TrainConfig("
                     f"windows={ctx['train']}, seed={seed}, {fields})); m, info = lowprec.train.train("
                     f"ds, TrainConfig(..., epochs=1), init=lowprec.model.realign.realign(m)); "
                     f"save_float_model(m, {str(model_dir)!r}, info)")
    res["seconds_train"] = round(time.time() - ttrain, 2)
    res["train_logloss"] = float(info["final_epoch_logloss"])
    save_float_model(model, model_dir, info)
    model, _ = load_float_model(model_dir)
    res["parameters"] = int(sum(p.numel() for p in model.parameters()))
    res["commands"] += [train_cmd, cmd("eval", "--model", model_dir, "--data", ctx["data"],
                                       "--windows", ctx["eval"], "--json")]
    return model


def _trained_model(job: dict[str, Any], ctx: dict[str, Any], ds: Any, windows: list[int],
                   res: dict[str, Any]) -> tuple[Path, np.ndarray, float]:
    """Train and score the job's model; dense models also keep labels and calibrate."""
    model_dir = Path(ctx["work"]) / "models" / job["id"]
    model = _train(job, ctx, ds, model_dir, res)
    metrics, p_float, y = score(model, ds, windows)
    res["float"] = dict(metrics)
    np.save(probs_path(ctx, job["id"], "float"), p_float)
    if job["method"] == "dense":
        np.save(probs_path(ctx, f"labels-s{job.get('seed', 0)}", "y"), y)
        if job.get("calibrate"):
            res["calibrations"] = _calibrate(job, ctx, ds, model, model_dir)
    return model_dir, p_float, metrics["auc"]


def run_job(job: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """One model: train it (or take the dense model for hot sharing), evaluate float + artifacts."""
    worker_init()
    from lowprec.data.dataset import Dataset
    from lowprec.data.windows import parse_windows

    t0 = time.time()
    ds = Dataset(ctx["data"])
    windows = parse_windows(ctx["eval"], ds.meta.window_indices)
    seed = job.get("seed", 0)
    res: dict[str, Any] = {k: job[k] for k in ("id", "method", "ratio", "seed", "spec", "group")
                           if k in job}
    res["commands"] = []
    if job["method"] == "hot":
        model_dir = Path(ctx["work"]) / "models" / f"dense-s{seed}"
        p_float, auc_float = saved_float(ctx, f"dense-s{seed}", seed)
        res["plan_spec"] = job["plan"]
        res["plan"] = plan_json(job["plan"], "P")
        res["commands"].append(f"# plan file per precision P: {json.dumps(res['plan'])}")
    elif job["method"] == "robe_wproj":
        model_dir, p_float, auc_float = weighted_projection_model(job, ctx, ds, windows, res)
    else:
        model_dir, p_float, auc_float = _trained_model(job, ctx, ds, windows, res)
    res["variants"] = _artifact_variants(job, ctx, ds, windows, model_dir, p_float, auc_float)
    res["seconds"] = round(time.time() - t0, 2)
    if job.get("drop_model") and job["method"] != "dense":
        shutil.rmtree(model_dir, ignore_errors=True)
    return res


def _calibrate(job: dict[str, Any], ctx: dict[str, Any], ds: Any, model: Any, model_dir: Path) -> dict[str, str]:
    """Row access counts for hot sharing: on the training windows (and ctx's extra window)."""
    from lowprec.calibrate import CalibConfig, calibrate, save_calibration
    from lowprec.data.windows import parse_windows
    from lowprec.fileio import sha256_file

    out = {}
    specs = (ctx["calib"], ctx.get("calib_extra")) if job.get("seed", 0) == 0 else (ctx["calib"],)
    for spec in filter(None, specs):
        path = Path(calib_path(ctx, job.get("seed", 0), spec))
        calib = calibrate(model, ds, CalibConfig(tuple(parse_windows(spec, ds.meta.window_indices))))
        save_calibration(calib, path, sha256_file(model_dir / "model.safetensors"))
        out[spec] = cmd("calibrate", "--model", model_dir, "--data", ctx["data"], "--windows", spec,
                        "--out", path)
    return out
