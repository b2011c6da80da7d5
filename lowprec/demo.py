"""`lowprec demo`: the whole pipeline on built-in synthetic data, in a few minutes on 2 cores.

synthetic data with planted drift (dense features rescaled from window 8) -> train on 0-3 ->
calibrate on 4 -> search (sensitivity on 4, validation on 5-7) -> convert -> drift over 5-13 ->
OUT/index.html linking the search and drift reports with a summary: bytes saved, accuracy kept,
alarms. Every stage is a library call the CLI also makes; nothing here is demo-only logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowprec.fileio import MARKER, atomic_dir, atomic_write_text, claim_output
from lowprec.jsonsafe import dumps
from lowprec.progress import Stages, stage
from lowprec.report import Doc


@dataclass(frozen=True)
class DemoConfig:
    windows: int = 14
    rows_per_window: int = 20_000
    drift: str = "dense-scale"
    drift_start: int = 8
    seed: int = 0
    max_ne_increase: str = "0.1%"
    max_auc_drop: str = "0.001"


def run_demo(out: str | Path, cfg: DemoConfig = DemoConfig(), stages: Stages | None = None) -> dict[str, Any]:
    from lowprec.calibrate import CalibConfig, calibrate, load_calibration, save_calibration
    from lowprec.checkpoint.convert import convert
    from lowprec.checkpoint.float_model import save_float_model
    from lowprec.data.dataset import Dataset
    from lowprec.data.synth import SynthConfig, generate
    from lowprec.drift import job as drift_job
    from lowprec.fileio import sha256_file
    from lowprec.search.driver import SearchRequest, run_search
    from lowprec.train import TrainConfig, total_steps_rows, train

    out = claim_output(out, "demo")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("demo\n")
    for own in ("drift.sqlite", "drift.sqlite.lock"):  # a previous demo's history: of another pair
        (out / own).unlink(missing_ok=True)  # (every run trains and converts anew)
    data = out / "data"
    with atomic_dir(data, "dataset") as tmp:
        generate(SynthConfig(cfg.windows, cfg.rows_per_window, cfg.seed, 0.001, cfg.drift, cfg.drift_start),
                 tmp, progress=stages)
    ds = Dataset(data)
    train_cfg = TrainConfig(windows=(0, 1, 2, 3), seed=cfg.seed)
    model, info = train(ds, train_cfg, progress=stage(stages, "train", total_steps_rows(ds, train_cfg)))
    save_float_model(model, out / "model", info)
    ccfg = CalibConfig((4,))
    calib = calibrate(model, ds, ccfg, stage(stages, "calibrate", ccfg.rows_read(ds)))
    save_calibration(calib, out / "calib.json", sha256_file(out / "model" / "model.safetensors"))
    result, summary = run_search(SearchRequest(
        model_dir=out / "model", data_dir=data, out=out / "plan.json", calib_windows="4", eval_windows="5-7",
        max_ne_increase=cfg.max_ne_increase, max_auc_drop=cfg.max_auc_drop, sharing_ratios="16",
        calib_path=str(out / "calib.json"), report_dir=str(out / "search")), stages)
    manifest = convert(out / "model", result.plan, out / "artifact", load_calibration(out / "calib.json"),
                       progress=stage(stages, "convert", len(model.config.tables), "tables"))
    outcome = drift_job.run(drift_job.DriftJob(
        reference=out / "model", candidate=out / "artifact", data=data, windows=f"5-{cfg.windows - 1}",
        db=out / "drift.sqlite", report=out / "drift", calibration=out / "calib.json"), stages)
    facts = {"search": summary, "artifact": {k: manifest[k] for k in
                                             ("embedding_bytes", "fp32_embedding_bytes", "compression", "layer_bytes")},
             "drift": outcome.to_json(), "config": cfg.__dict__}
    atomic_write_text(out / "summary.json", dumps(facts, indent=2) + "\n")
    _index(facts, cfg).write(out, kind="demo")
    return facts


def _index(facts: dict[str, Any], cfg: DemoConfig) -> Doc:
    s, a, d = facts["search"], facts["artifact"], facts["drift"]
    v = s["validated"]
    doc = Doc("lowprec demo")
    doc.para(f"Synthetic Criteo-shaped data: {cfg.windows} daily windows of {cfg.rows_per_window:,} rows, "
             f"drift `{cfg.drift}` from window {cfg.drift_start}. Float DLRM trained on windows 0-3, "
             f"calibrated on 4; plan searched on 4 and validated on 5-7; monitored over 5-{cfg.windows - 1}.")
    doc.heading("Bytes saved")
    doc.table(["", "bytes"], [
        ["tables, fp32", a["fp32_embedding_bytes"]], ["tables, searched plan", a["embedding_bytes"]],
        ["table compression", f"{a['compression']:.1f}x"], ["MLP layers, plan", a["layer_bytes"]]])
    doc.heading("Accuracy kept (evaluation windows 5-7)")
    if v:
        doc.table(["metric", "float", "plan", "change", "budget"], [
            ["NE", v["float_ne"], v["plan_ne"], f"{100 * v['ne_increase']:+.4f}%", f"<= +{cfg.max_ne_increase}"],
            ["AUC", v["float_auc"], v["plan_auc"], f"{-v['auc_drop']:+.5f}", f">= -{cfg.max_auc_drop}"]])
    else:
        doc.para("No quantized plan fit the budget; the plan keeps fp32.")
    doc.heading("Drift monitoring")
    alarms = d["alarms"]
    doc.para(f"{len(d['windows'])} windows monitored; " + (
        f"alarms at windows {alarms} (first at {d['first_alarm']}); the job would exit 1."
        if alarms else "no alarm; the job would exit 0."))
    doc.table(["window", "alarm", "reason"], [[w["window"], "ALARM" if w["alarm"] else "ok",
                                               w.get("reason", "")] for w in d["windows"]])
    doc.heading("Reports")
    doc.para("Search report: `search/index.html`; drift report: `drift/index.html`; "
             "the plan: `plan.json`; the artifact: `artifact/manifest.json`.")
    doc.blocks.append(("html", '<p><a href="search/index.html">search report</a> | '
                               '<a href="drift/index.html">drift report</a></p>'))
    return doc
