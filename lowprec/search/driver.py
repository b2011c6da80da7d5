"""From CLI-level requests (flags + recipe) to a search run, a PLAN.json and a report.

Kept apart from the click layer so `lowprec demo` and the benchmarks call the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowprec import distributed as dist
from lowprec.calibrate import CalibConfig, calibrate, load_calibration
from lowprec.checkpoint.convert import check_calibration_model
from lowprec.checkpoint.float_model import load_float_model, weights_sha256
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError
from lowprec.fileio import atomic_write_text, sha256_file
from lowprec.precision import Precision, slow_lookup_warnings
from lowprec.progress import Stages, stage
from lowprec.recipe import load_recipe, parse_fraction, pick, resolve_windows
from lowprec.search.accept import DEFAULT_RULE, check_rule, fits_summary
from lowprec.search.run import SearchConfig, SearchResult, search
from lowprec.search.solver import Budget
from lowprec.search.space import DEFAULT_LAYER_PRECISIONS, DEFAULT_TABLE_PRECISIONS, SearchSpace
from lowprec.train import check_compatible


@dataclass
class SearchRequest:
    model_dir: Path
    data_dir: Path
    out: Path
    recipe: str | None = None
    calib_windows: str | None = None
    eval_windows: str | None = None
    test_windows: str | None = None
    max_ne_increase: str | None = None
    max_auc_drop: str | None = None
    memory_budget: int | None = None
    objective: str | None = None
    precisions: str | None = None
    layer_precisions: str | None = None
    sharing_ratios: str | None = None
    tier_layouts: str | None = None
    calib_path: str | None = None
    max_rows: int | None = None
    report_dir: str | None = None
    accept: str | None = None  # "interval" | "point" (lowprec.search.accept); recipe [search] accept
    time_whole: bool = True  # latency objective: time the plan whole beside uniform plans


def _list(value: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


def _ratios(values: tuple[str, ...]) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in values)
    except ValueError:
        raise InputError(f"sharing ratios must be numbers, got {list(values)}") from None


def _layouts(value: Any) -> tuple[str, ...]:
    """Tier layouts: a list, or one string with layouts separated by ';' (each holds commas)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(";") if v.strip())
    return tuple(str(v) for v in value)


def build_config(req: SearchRequest, ds: Dataset) -> tuple[SearchConfig, dict[str, Any]]:
    r = load_recipe(req.recipe)
    calib = resolve_windows(pick(req.calib_windows, r, "windows", "calibrate"), ds.meta, "calibrate")
    evaluate = resolve_windows(pick(req.eval_windows, r, "windows", "evaluate"), ds.meta, "evaluate")
    test_spec = pick(req.test_windows, r, "windows", "test")
    test = resolve_windows(test_spec, ds.meta, "test") if test_spec is not None else []
    memory = pick(req.memory_budget, r, "budgets", "memory_budget")
    budget = Budget(parse_fraction(pick(req.max_ne_increase, r, "budgets", "max_ne_increase", "0.1%"),
                                   "--max-ne-increase"),
                    parse_fraction(pick(req.max_auc_drop, r, "budgets", "max_auc_drop", 0.001), "--max-auc-drop"),
                    int(memory) if memory else None)
    space = SearchSpace(
        table_precisions=tuple(Precision.parse(p, "--precisions") for p in
                               _list(pick(req.precisions, r, "candidates", "table_precisions"), DEFAULT_TABLE_PRECISIONS)),
        layer_precisions=tuple(Precision.parse(p, "--layer-precisions") for p in
                               _list(pick(req.layer_precisions, r, "candidates", "layer_precisions"), DEFAULT_LAYER_PRECISIONS)),
        sharing_ratios=_ratios(_list(pick(req.sharing_ratios, r, "candidates", "sharing_ratios"), ())),
        sharing_precisions=tuple(Precision.parse(p, "[candidates] sharing_precisions") for p in
                                 _list(r.get("candidates", {}).get("sharing_precisions"), ("int8", "int4"))),
        range_method=r.get("search", {}).get("range_method", "l2"),
        tier_layouts=_layouts(pick(req.tier_layouts, r, "candidates", "tier_layouts")),
    )
    s = r.get("search", {})
    cfg = SearchConfig(tuple(calib), tuple(evaluate), budget, space,
                       objective=pick(req.objective, r, "search", "objective", "bytes"),
                       max_rows=int(pick(req.max_rows, r, "search", "max_rows", 50_000)),
                       max_rounds=int(s.get("max_rounds", 6)), margin=float(s.get("margin", 0.9)),
                       test_windows=tuple(test), time_whole=req.time_whole,
                       accept=check_rule(str(pick(req.accept, r, "search", "accept", DEFAULT_RULE)),
                                         "--accept" if req.accept else f"{req.recipe}: [search] accept"))
    return cfg, r


def run_search(req: SearchRequest, stages: Stages | None = None
               ) -> tuple[SearchResult, dict[str, Any]]:
    """Search per `req`, one progress stage per step (lowprec.progress). Data-parallel under
    torchrun: the inline calibration, the sensitivity measurements and every validation are spread
    over the ranks (same plan as one process); rank 0 writes the plan, cache and report."""
    ds = Dataset(req.data_dir)
    cfg, recipe = build_config(req, ds)
    overlap = set(cfg.calib_windows) & set(cfg.eval_windows)
    if overlap:
        raise InputError(f"calibration and evaluation windows overlap at {sorted(overlap)}; the "
                         f"budget must be checked on held-out windows")
    seen = set(cfg.test_windows) & (set(cfg.calib_windows) | set(cfg.eval_windows))
    if seen:
        raise InputError(f"test windows {sorted(seen)} are also calibration or evaluation windows; the "
                         f"test windows must be ones the search never sees")
    model, _ = load_float_model(req.model_dir)
    check_compatible(model.config, ds.meta, str(req.model_dir))
    if req.calib_path:
        calibration, calib_sha = load_calibration(req.calib_path), sha256_file(req.calib_path)
        if "model_sha256" in calibration:  # now, not after the sensitivity pass when validation converts
            check_calibration_model(calibration, weights_sha256(req.model_dir), req.model_dir, override=None)
    else:
        c = recipe.get("calibrate", {})
        ccfg = CalibConfig(cfg.calib_windows, c.get("method", "minmax"), float(c.get("percentile", 99.99)),
                           max_rows=c.get("max_rows"))
        calibration = calibrate(model, ds, ccfg, stage(stages, "calibrate", None))
        counts = calibration["row_counts"]
        for k in list(counts):  # one table's int32 and float32 copies at a time, not all of them
            counts[k] = torch.as_tensor(counts.pop(k), dtype=torch.float32)
        calib_sha = f"inline:{ccfg.method}:{list(ccfg.windows)}"
    cache_path = req.out.with_name(req.out.stem + ".cache.json")
    scratch = req.out.with_name(req.out.name + ".validate-tmp" + (f"-rank{dist.rank()}" if dist.active() else ""))
    result = search(req.model_dir, model, ds, cfg, calibration, calib_sha, cache_path, None, stages, scratch)
    summary = summarize(result, model)
    if not dist.is_main():  # under torchrun only rank 0 writes
        return result, summary
    atomic_write_text(req.out, json.dumps(result.plan.to_json(), indent=2) + "\n", kind="plan")
    if req.report_dir:
        from lowprec.search.report import write_report

        write_report(result, summary, Path(req.report_dir))
    return result, summary


def plan_warnings(result: SearchResult) -> list[str]:
    """What a user should know about the chosen plan before serving it: tables at a precision whose
    lookups are slow (the latency objective timed them already, so it does not warn)."""
    if result.plan.info.objective == "latency":
        return []
    tables = {o.name: o.precision for o in result.chosen.values() if o.kind == "table"}
    return [w + "; leave it out of --precisions if lookup time matters, or use --objective latency"
            for w in slow_lookup_warnings(tables)]


def summarize(result: SearchResult, model) -> dict[str, Any]:
    info = result.plan.info
    fp32 = sum(o[0].bytes for o in result.items.values())
    fp32_tables = sum(opts[0].bytes for item, opts in result.items.items() if item.startswith("table:"))
    total = info.total_bytes
    v, t, b = result.validation, result.test, info.budgets
    return {
        "message": result.message,
        "warnings": plan_warnings(result),
        "accept": info.accept,
        "validated_fits": fits_summary(v, b), "tested": t.to_json() if t else None, "tested_fits": fits_summary(t, b),
        "plan": result.plan.to_json(),
        "table_bytes": info.table_bytes, "layer_bytes": info.layer_bytes,
        "total_bytes": total, "fp32_bytes": fp32, "fp32_table_bytes": fp32_tables,
        # `compression` is the tables' ratio, as `inspect` and the manifest define it; the whole
        # model's (tables + layers) is `total_compression`
        "compression": fp32_tables / info.table_bytes if info.table_bytes else float("nan"),
        "total_compression": fp32 / total if total else float("nan"),
        "validated": v.to_json() if v else None, "predicted": info.to_json()["predicted"],
        "evaluations": result.evaluations, "rounds": result.rounds, "seconds": result.seconds,
        "ne_increase": v.ne_increase if v else 0.0, "auc_drop": v.auc_drop if v else 0.0,
    }
