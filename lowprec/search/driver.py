"""From CLI-level requests (flags + recipe) to a search run, a PLAN.json and a report.

Kept apart from the click layer so `lowprec demo` and the benchmarks call the same code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lowprec import distributed as dist
from lowprec.calibrate import CalibConfig, calibrate, check_calibration_fits, load_calibration
from lowprec.checkpoint.convert import check_calibration_model
from lowprec.checkpoint.float_model import load_float_model, weights_sha256
from lowprec.data.dataset import Dataset
from lowprec.data.windows import format_windows
from lowprec.errors import InputError
from lowprec.fileio import atomic_write_text, sha256_file
from lowprec.jsonsafe import dumps
from lowprec.evaluation.metrics import MIN_CLASS_LABELS, scarce_class
from lowprec.evaluation.scoring import worse_than_base_rate
from lowprec.plan import RANGE_METHODS, Validation
from lowprec.precision import Precision, slow_lookup_warnings
from lowprec.progress import Stages, stage
from lowprec.recipe import calib_config, load_recipe, parse_fraction, pick_where, pick_windows
from lowprec.search.accept import DEFAULT_RULE, check_rule, fits_summary
from lowprec.search.explain import check_memory
from lowprec.search.run import SearchConfig, SearchResult, search
from lowprec.search.solver import Budget
from lowprec.search.space import (DEFAULT_LAYER_PRECISIONS, DEFAULT_SHARING_PRECISIONS, DEFAULT_TABLE_PRECISIONS,
                                  SearchSpace, options_for)
from lowprec.serve.tiers import parse_layout
from lowprec.train import check_compatible, positive_rate, seen_in_training


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


def _list(value: Any, where: str, default: tuple[str, ...] = (), sep: str = ",",
          empty: str = "names nothing; give at least one value, or leave it out for the default") -> tuple[str, ...]:
    """A `sep`-separated string or a list; an explicitly empty one is refused (it would silently
    search nothing), saying `empty`."""
    if value is None:
        return default
    items = (tuple(v.strip() for v in value.split(sep) if v.strip()) if isinstance(value, str)
             else tuple(str(v).strip() for v in value))
    if not items or not all(items):
        raise InputError(f"{where}: {value!r} {empty}")
    return items


def _precisions(value: Any, where: str, default: tuple[str, ...]) -> tuple[Precision, ...]:
    return tuple(Precision.parse(p, where) for p in _list(value, where, default))


def _ratios(value: Any, where: str) -> tuple[float, ...]:
    values = _list(value, where)
    try:
        ratios = tuple(float(x) for x in values)
    except ValueError:
        raise InputError(f"{where}: sharing ratios must be numbers, got {list(values)}") from None
    if not all(math.isfinite(r) and r > 1 for r in ratios):
        raise InputError(f"{where}: sharing ratios must be finite numbers > 1, got {list(values)}")
    return ratios


def _sharing_precisions(given: tuple[Any, str], tables: tuple[Precision, ...], tables_where: str,
                        ratios: tuple[Any, str]) -> tuple[Precision, ...]:
    """The precisions hot-shared tables may take: the recipe's [candidates] sharing_precisions, else
    DEFAULT_SHARING_PRECISIONS, and only ones the table precisions (--precisions) allow (fp32 always),
    so a space restricted to fp16,int8 holds no int4 shared table. A recipe's sharing precision they
    leave out is refused naming both; so are sharing ratios that no default precision is left for."""
    value, where = given
    allowed = (Precision.FP32,) + tables
    names = ",".join(p.value for p in tables)
    named = f"{tables_where} {names}" if tables_where.startswith("--") else f"{tables_where} = [{names}]"
    if value is not None:
        chosen = _precisions(value, where, ())
        outside = [p.value for p in chosen if p not in allowed]
        if outside:
            raise InputError(f"{where}: {outside} not among the table precisions ({named}); shared tables take "
                             f"only precisions tables may take: add them there or leave them out here")
        return chosen
    chosen = tuple(Precision(p) for p in DEFAULT_SHARING_PRECISIONS if Precision(p) in allowed)
    if ratios[0] is not None and not chosen:
        raise InputError(f"{ratios[1]}: hot-shared tables take {' or '.join(DEFAULT_SHARING_PRECISIONS)} unless a "
                         f"recipe's [candidates] sharing_precisions names others, and the table precisions "
                         f"({named}) allow none of them: add one there, name the shared tables' precisions in "
                         f"a recipe, or leave the sharing ratios out")
    return chosen


def _layouts(value: Any, where: str) -> tuple[str, ...]:
    """Tier layouts: a list, or one string with layouts separated by ';' (each holds commas)."""
    items = _list(value, where, sep=";",
                  empty="names no tier layout; give one such as '0.02:fp16/int4', or leave it out")
    for layout in items:
        parse_layout(layout, where)
    return items


def _budget(value: Any, where: str) -> float:
    x = parse_fraction(value, where)
    if x < 0:
        raise InputError(f"{where}: {value!r} is negative; budgets must be >= 0")
    return x


def _whole(value: Any, where: str, minimum: int) -> int | None:
    """An integer option (>= minimum), or None when not given."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{where}: {value!r} is not a whole number >= {minimum}")
    return value


def _choice(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InputError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def build_config(req: SearchRequest, ds: Dataset) -> tuple[SearchConfig, dict[str, Any]]:
    """The search's config from flags and recipe; every value checked here, before anything is
    loaded or measured, and a bad one refused naming its flag or its recipe file and key."""
    r = load_recipe(req.recipe)

    def get(explicit: Any, section: str, key: str, flag: str, default: Any = None) -> tuple[Any, str]:
        return pick_where(explicit, r, req.recipe, section, key, flag, default)

    calib, calib_from = pick_windows(req.calib_windows, r, req.recipe, "calibrate", "--calib-windows", ds.meta)
    evaluate, eval_from = pick_windows(req.eval_windows, r, req.recipe, "evaluate", "--eval-windows", ds.meta)
    test, test_from = pick_windows(req.test_windows, r, req.recipe, "test", "--test-windows", ds.meta, optional=True)
    # NE and AUC need both label classes: each option's NE increase is measured on the calibration
    # windows (a one-class window made every one NaN and the solver failed), the plan judged on the others
    for where, windows in ((calib_from, calib), (eval_from, evaluate), (test_from, test)):
        if windows:
            positive_rate(ds, tuple(windows), where, "NE and AUC are undefined on one class")
    budget = Budget(_budget(*get(req.max_ne_increase, "budgets", "max_ne_increase", "--max-ne-increase", "0.1%")),
                    _budget(*get(req.max_auc_drop, "budgets", "max_auc_drop", "--max-auc-drop", 0.001)),
                    _whole(*get(req.memory_budget, "budgets", "memory_budget", "--memory-budget"), 0))
    tables = get(req.precisions, "candidates", "table_precisions", "--precisions")
    layers = get(req.layer_precisions, "candidates", "layer_precisions", "--layer-precisions")
    layer_precisions = _precisions(*layers, DEFAULT_LAYER_PRECISIONS)
    bad = [p.value for p in layer_precisions if p not in Precision.for_layers()]
    if bad:
        raise InputError(f"{layers[1]}: layers cannot take {bad} (they take "
                         f"{', '.join(p.value for p in Precision.for_layers())})")
    table_precisions = _precisions(*tables, DEFAULT_TABLE_PRECISIONS)
    ratios = get(req.sharing_ratios, "candidates", "sharing_ratios", "--sharing-ratios")
    space = SearchSpace(
        table_precisions=table_precisions, layer_precisions=layer_precisions, sharing_ratios=_ratios(*ratios),
        sharing_precisions=_sharing_precisions(get(None, "candidates", "sharing_precisions", "sharing precisions"),
                                               table_precisions, tables[1], ratios),
        range_method=_choice(*get(None, "search", "range_method", "range method", "l2"), RANGE_METHODS),
        tier_layouts=_layouts(*get(req.tier_layouts, "candidates", "tier_layouts", "--tier-layouts")),
    )
    if not space.has_choices():
        raise InputError(f"{tables[1]} and {layers[1]} leave nothing to search (every table and layer fp32, no "
                         f"sharing or tier layouts); add a lower precision such as fp16,int8,int4")
    margin, margin_where = get(None, "search", "margin", "margin", 0.9)
    if not 0 < margin <= 1:
        raise InputError(f"{margin_where}: {margin!r} must be in (0, 1]")
    cfg = SearchConfig(tuple(calib), tuple(evaluate), budget, space,
                       objective=_choice(*get(req.objective, "search", "objective", "--objective", "bytes"),
                                         ("bytes", "latency")),
                       max_rows=_whole(*get(req.max_rows, "search", "max_rows", "--max-rows", 50_000), 1),
                       max_rounds=_whole(*get(None, "search", "max_rounds", "max rounds", 6), 1),
                       margin=float(margin), test_windows=tuple(test), time_whole=req.time_whole,
                       accept=check_rule(*get(req.accept, "search", "accept", "--accept", DEFAULT_RULE)))
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
    model, info = load_float_model(req.model_dir)
    check_compatible(model.config, ds.meta, str(req.model_dir))
    for what, windows in (("evaluation", cfg.eval_windows), ("test", cfg.test_windows)):
        learned = seen_in_training(info, ds, windows)
        if learned:
            raise InputError(
                f"{what} windows {sorted(learned)} hold data --model {req.model_dir} learned from "
                f"({', '.join(f'window {w}: its {k} data' for w, k in sorted(learned.items()))}); the budget must "
                f"be checked on held-out windows: choose windows whose rows it did not learn from (after its training "
                f"and validation windows, and not copies of them)")
    check_memory(options_for(model.config, cfg.space, sharing=True), cfg.budget)  # before calibrating
    if req.calib_path:
        calibration, calib_sha = load_calibration(req.calib_path), sha256_file(req.calib_path)
        if "model_sha256" in calibration:  # now, not after the sensitivity pass when validation converts
            check_calibration_model(calibration, weights_sha256(req.model_dir), req.model_dir, override=None)
        check_calibration_fits(calibration, model.config, req.calib_path)
        # counts from the windows the plan is judged on rank their rows with the very lookups validation
        # scores: hot sharing validated as nearly free (a plan went 6x -> 196x on such a calibration)
        judged = sorted(set(calibration.get("windows", [])) & set(cfg.eval_windows + cfg.test_windows))
        if judged:
            raise InputError(f"--calibration {req.calib_path} was measured on windows {judged}, which the search "
                             f"judges the plan on (--eval-windows / --test-windows): its row counts would rank "
                             f"rows with the lookups being scored; calibrate on other windows (e.g. "
                             f"--calib-windows {format_windows(list(cfg.calib_windows))})")
    else:
        ccfg = calib_config(recipe, req.recipe, cfg.calib_windows)  # its values checked by load_recipe
        calibration = calibrate(model, ds, ccfg, stage(stages, "calibrate", ccfg.rows_read(ds)))
        counts = calibration["row_counts"]
        for k in list(counts):  # one table's int32 and float32 copies at a time, not all of them
            counts[k] = torch.as_tensor(counts.pop(k), dtype=torch.float32)
        calib_sha = inline_calibration_key(ccfg)
    cache_path = req.out.with_name(req.out.stem + ".cache.json")
    scratch = req.out.with_name(req.out.name + ".validate")  # (each process makes its own temporary of it)
    result = search(req.model_dir, model, ds, cfg, calibration, calib_sha, cache_path, None, stages, scratch)
    summary = summarize(result, model)
    if not dist.is_main():  # under torchrun only rank 0 writes
        return result, summary
    if req.report_dir:  # the report first: a report that cannot be written leaves no plan behind
        from lowprec.search.report import write_report

        write_report(result, summary, Path(req.report_dir))
    atomic_write_text(req.out, dumps(result.plan.to_json(), indent=2) + "\n", kind="plan")
    return result, summary


def inline_calibration_key(ccfg: CalibConfig) -> str:
    """What the measurement cache's fingerprint records of a calibration the search runs itself:
    every CalibConfig field (windows, method, percentile, batch size, max_rows: each changes the
    ranges or the row counts it produces), so a cache measured under other [calibrate] settings is
    measured again, never reused."""
    return "inline:" + json.dumps(asdict(ccfg), sort_keys=True)


def few_labels(v: Validation | None, what: str) -> list[str]:
    """A warning when the rows `v` was measured on (`what`: "evaluation" or "test") hold fewer than
    MIN_CLASS_LABELS of a label class: the AUC drop's interval (DeLong's variance) then rests on a
    handful of rows and the AUC budget is judged on almost nothing, however narrow the paired interval
    looks. Validation and test score every row of their windows (--max-rows caps only the calibration
    rows of the sensitivity pass), so more labels come only from more or longer windows."""
    scarce = None if v is None or v.positives is None else scarce_class(v.positives, v.rows)
    if scarce is None:
        return []
    flag = {"evaluation": "--eval-windows", "test": "--test-windows"}[what]
    return [f"the {what} windows hold only {scarce} label(s) in {v.rows:,} rows: the AUC drop and its "
            f"interval rest on fewer than {MIN_CLASS_LABELS}, so the AUC budget was judged on almost nothing; "
            f"judge it on more or longer {what} windows ({flag}) before trusting it"]


def weak_reference(v: Validation | None, what: str) -> list[str]:
    """A warning when the float model itself scores NE >= 1 on the rows `v` was measured on: it
    predicts worse than the constant base rate there, so budgets relative to it (a plan "within
    0.1% of it") say nothing about serving quality."""
    if v is None or not worse_than_base_rate(v.float_ne):
        return []
    return [f"the float model scores NE {v.float_ne:.4f} >= 1 on the {what} windows (AUC {v.float_auc:.4f}): it "
            f"predicts worse than the constant base rate there, so a budget relative to it says little about "
            f"the plan; check the model (training, class balance) and the windows before serving it"]


def plan_warnings(result: SearchResult) -> list[str]:
    """What a user should know about the chosen plan before serving it: a float model no better than
    the base rate on the evaluation or test windows, windows with too few labels of a class to judge
    the AUC budget, and tables at a precision whose lookups are slow (the latency objective timed
    them already, so it does not warn of those)."""
    out = weak_reference(result.validation, "evaluation") + weak_reference(result.test, "test")
    out += few_labels(result.validation, "evaluation") + few_labels(result.test, "test")
    if result.plan.info.objective == "latency":
        return out
    tables = {o.name: o.precision for o in result.chosen.values() if o.kind == "table"}
    return out + [w + "; leave it out of --precisions if lookup time matters, or use --objective latency"
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
        # `compression` is the tables' ratio, as `inspect` and the manifest define it (against dense
        # fp32 tables, also for hash/QR/ROBE tables: the model's own fp32 bytes are fp32_table_bytes);
        # the whole model's (tables + layers, against the model at fp32) is `total_compression`
        "compression": model.config.dense_fp32_bytes() / info.table_bytes if info.table_bytes else float("nan"),
        "total_compression": fp32 / total if total else float("nan"),
        "validated": v.to_json() if v else None, "predicted": info.to_json()["predicted"],
        "evaluations": result.evaluations, "rounds": result.rounds, "seconds": result.seconds,
        "ne_increase": v.ne_increase if v else 0.0, "auc_drop": v.auc_drop if v else 0.0,
    }
