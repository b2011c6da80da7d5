"""`lowprec search` orchestration: sensitivity -> MILP -> validation -> back-off, resumable.

1. Float activations of the calibration windows are cached (`FloatCache`); each candidate option is
   measured alone on them (`Emulator`), and every measurement is appended to a JSON cache file
   (lowprec.search.cache) keyed by a fingerprint of (model, data, windows, calibration, settings),
   so an interrupted search resumes where it stopped.
2. The MILP picks the cheapest plan whose summed (predicted) loss fits the budget.
3. The plan is converted for real (the rows the eval windows look up: `lowprec.search.rows_subset`)
   and validated on the eval windows (`refine`): the budget
   multiplier handed to the solver moves up while plans validate (spending slack the additive
   model did not see) and down when they fail, where failures also forbid the choice with the
   largest *validated contribution*: leave-one-out on an emulator over the eval windows (the
   joint plan's loss minus the loss without that choice). Stop rule: the multiplier interval
   closes, nothing cheaper exists, or `max_rounds` validations are spent; the cheapest validated
   plan wins. None: all fp32, and `SearchResult.message` says why and what to try (never silent).
   A plan validates when `SearchConfig.accept`'s rule says so (lowprec.search.accept): by default
   the upper ends of its 95% intervals fit the budget, so the multiplier rises only on slack the
   validation rows vouch for; each round logs both checks, the rule and why.
4. With test windows (never used to select), the chosen plan is validated once more there, and
   both validations report whether the budget holds for the interval, not only the point estimate.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from lowprec import distributed as dist
from lowprec.data.batches import count_rows
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError, warn
from lowprec.model.dlrm import DLRM
from lowprec.model.sharing import unaligned_robe_warning
from lowprec.plan import Plan, PlanInfo, Predicted, SearchWindows, Validation
from lowprec.progress import Stages, Update, stage
from lowprec.search.accept import DEFAULT_RULE, check_rule, judge
from lowprec.search.cache import MeasurementCache, measurement
from lowprec.search.explain import (check_memory, no_compression_message, unmet_memory_message, warn_ranked_timing,
                                    warn_unused_sharing)
from lowprec.search.latency import measure_costs, significant_costs
from lowprec.search.sensitivity import Emulator, FloatCache
from lowprec.search.solver import (Budget, Infeasible, Sensitivity, auc_price, least_margin, ne_price, predicted,
                                   price, solve)
from lowprec.search.space import Option, SearchSpace, options_for, plan_from_options, total_bytes
from lowprec.search.whole import timed_whole
from lowprec.search import rows_subset
from lowprec.search.validate import validate


@dataclass(frozen=True)
class SearchConfig:
    calib_windows: tuple[int, ...]
    eval_windows: tuple[int, ...]
    budget: Budget
    space: SearchSpace = field(default_factory=SearchSpace)
    objective: str = "bytes"
    max_rows: int = 50_000
    max_rounds: int = 8
    margin: float = 0.9  # solve for this share of the budget; validation checks the rest
    test_windows: tuple[int, ...] = ()  # never seen by selection; the chosen plan is reported there
    accept: str = DEFAULT_RULE  # when a validated plan fits: "interval" (upper bounds) or "point"
    time_whole: bool = True  # latency objective: time the plan whole beside uniform plans (timed_whole)

    def __post_init__(self) -> None:
        check_rule(self.accept, "accept")
        if self.objective not in ("bytes", "latency"):
            raise InputError(f"objective must be bytes or latency, not {self.objective!r}")
        if not 0 < self.margin <= 1:
            raise InputError("margin must be in (0, 1]")
        b = self.budget
        if not all(math.isfinite(x) and x >= 0 for x in (b.max_ne_increase, b.max_auc_drop)):
            raise InputError(f"budgets must be finite and >= 0, got NE increase {b.max_ne_increase!r}, "
                             f"AUC drop {b.max_auc_drop!r}")
        if b.memory_bytes is not None and not (isinstance(b.memory_bytes, int) and b.memory_bytes >= 0):
            raise InputError(f"the memory budget must be a whole number of bytes >= 0, not {b.memory_bytes!r}")
        if self.max_rows < 1 or self.max_rounds < 1:
            raise InputError(f"max_rows ({self.max_rows}) and max_rounds ({self.max_rounds}) must be >= 1")


@dataclass
class SearchResult:
    plan: Plan
    chosen: dict[str, Option]
    validation: Validation | None
    items: dict[str, list[Option]]
    sensitivity: dict[str, Sensitivity]
    rounds: list[dict[str, Any]]
    evaluations: int
    seconds: float
    float_stats: dict[str, float]
    message: str | None = None  # why the plan compresses nothing, and what to try
    test: Validation | None = None  # the chosen plan on the test windows
    cost: dict[str, float] | None = None  # latency objective: each option's measured marginal us


def fingerprint(model_dir: Path, ds: Dataset, cfg: SearchConfig, calib_sha: str | None) -> str:
    """What the cached measurements were made from: the model, the space, the calibration and the
    measured windows' contents (their data and labels: a dataset replaced at the same path with the
    same dataset.json windows must not reuse the old data's numbers)."""
    from lowprec.checkpoint.float_model import weights_sha256  # recorded, verified on load
    from lowprec.data.dataset import window_files
    from lowprec.data.windows import window_fingerprint
    from lowprec.fileio import file_fingerprint

    contents = [f"{window_fingerprint(ds, w)} {file_fingerprint(window_files(ds.root, w)['labels'])}"
                for w in cfg.calib_windows]
    parts = [weights_sha256(model_dir), str(ds.root.resolve()),
             json.dumps(ds.meta.to_json()["windows"]), str(cfg.calib_windows), str(cfg.max_rows),
             json.dumps(cfg.space.to_json()), str(calib_sha),
             "held-out counts", *contents]  # measurements since table options read held-out counts (sensitivity.py)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def measure_sensitivity(emulator: Emulator, items: dict[str, list[Option]], cache: MeasurementCache,
                        range_method: str, progress: Update | None) -> dict[str, Sensitivity]:
    """Every option measured alone (and the float model); the measurements not in `cache` are
    dealt over the ranks of a data-parallel job (`dist.map_rounds`: each is measured once, on the
    whole cached rows, so the numbers do not depend on the rank count) and cached after each round."""
    options = {"float": []} | {o.key: [o] for opts in items.values() for o in opts if not o.is_float_baseline}
    todo = [k for k in options if cache.get(k) is None]
    done = len(options) - len(todo)

    def measure(key: str) -> dict[str, float]:
        return measurement(*emulator.run_paired(options[key], range_method))

    def record(results: dict[str, dict[str, float]]) -> None:
        cache.record(results)
        if progress is not None:
            progress(len(results))

    if progress is not None and done:
        progress(done)
    dist.map_rounds(todo, measure, "sensitivity", record)
    base = cache.get("float")
    sens = {}
    for opts in items.values():
        for o in opts:
            m = base if o.is_float_baseline else cache.get(o.key)
            sens[o.key] = Sensitivity(m["ne"] / base["ne"] - 1.0, base["auc"] - m["auc"], m["ne_se"])
    return sens


@dataclass
class _Bounds:
    """Budget multipliers known to validate (lo) and to fail (hi); the next one to try."""

    lo: float | None = None
    hi: float | None = None

    def next(self, m: float) -> float | None:
        if self.hi is None:
            return m * 4 if m < 1e4 else None
        if self.lo is None:
            return m / 4
        return None if self.hi / self.lo < 1.25 else math.sqrt(self.lo * self.hi)


Contribution = Callable[[dict[str, Option]], dict[str, Sensitivity]]


def refine(items: dict[str, list[Option]], sens: dict[str, Sensitivity], cfg: SearchConfig,
           cost: dict[str, float] | None, check: Callable[[dict[str, Option], int], Validation],
           contribution: Contribution | None = None):
    """Validation-guided search over the budget multiplier m given to the solver.

    The additive model mispredicts the joint loss in both directions. Starting at m = margin, a plan
    that validates within budget by `cfg.accept`'s rule raises m (x4, then bisection), so slack the
    model did not see is spent; a plan the rule rejects lowers m and, while nothing has validated
    yet, also forbids the choice contributing most to the validated loss (`contribution`, else the
    largest price) and its cheaper alternatives. Plans already validated are not re-run.
    An m at which no plan fits (the memory budget leaves only plans priced above m x the accuracy
    budget) is too small, not the end: m moves up to the least multiplier that holds a plan
    (`least_margin`); only when none does is it an InputError saying why (`unmet_memory_message`).
    Returns the cheapest validated plan (or None) and the validation rounds. Cheapest is by the
    objective: bytes, or with `cost` (the latency objective) the plan's predicted time.
    """
    def plan_price(chosen: dict[str, Option]) -> float:
        return sum(price(o, cost) for o in chosen.values())

    bounds, forbidden, seen = _Bounds(), set(), {}
    best: tuple[dict[str, Option], Validation] | None = None
    rounds: list[dict[str, Any]] = []
    m: float | None = cfg.margin
    for _ in range(4 * cfg.max_rounds):
        if m is None or len(rounds) >= cfg.max_rounds:
            break
        try:
            chosen = solve(items, sens, cfg.budget, cost, forbidden, m)
        except Infeasible:
            least = least_margin(items, sens, cfg.budget, forbidden)
            if least is None and best is None:
                raise InputError(unmet_memory_message(items, rounds, cfg, exhausted=False)) from None
            if least is None:
                break
            if bounds.hi is not None and bounds.hi <= least:
                bounds.hi = None  # failed where no plan fits now (its choices were forbidden): bounds nothing
            m = max(least, m) * (1 + 1e-6)
            continue
        key = tuple(sorted(o.key for o in chosen.values()))
        if key not in seen:
            val, seen[key] = validation_round(chosen, sens, cfg, check, rounds, m)
            if seen[key] and (best is None or plan_price(chosen) < plan_price(best[0])):
                best = (chosen, val)
        if seen[key]:
            bounds.lo = max(bounds.lo or 0.0, m)
            if all(price(o, cost) == min(price(x, cost) for x in items[o.item]) for o in chosen.values()):
                break  # nothing cheaper exists
        else:
            bounds.hi = min(bounds.hi or math.inf, m)
            if bounds.lo is None:
                forbidden |= back_off(chosen, items, sens, cfg.budget,
                                      contribution(chosen) if contribution else None)
        m = bounds.next(m)
    return best, rounds


def validation_round(chosen: dict[str, Option], sens: dict[str, Sensitivity], cfg: SearchConfig,
                     check: Callable[[dict[str, Option], int], Validation], rounds: list[dict[str, Any]],
                     multiplier: float | None, **extra: Any) -> tuple[Validation, bool]:
    """Validate `chosen` as round len(rounds) + 1, judge it by `cfg.accept` and record it (with
    `extra`) in `rounds`; returns the validation and whether the plan fits."""
    val = check(chosen, len(rounds) + 1)
    verdict = judge(val, cfg.budget, cfg.accept)
    rounds.append({"round": len(rounds) + 1, "multiplier": multiplier, "bytes": total_bytes(chosen),
                   "predicted": asdict(predicted(chosen, sens)), "validated": val.to_json(),
                   "fits": verdict.accepted, "verdict": verdict.to_json(),
                   "choices": {o.item: o.key.split("|", 1)[1] for o in chosen.values()}, **extra})
    return val, verdict.accepted


def back_off(chosen: dict[str, Option], items: dict[str, list[Option]], sens: dict[str, Sensitivity],
             budget: Budget, validated: dict[str, Sensitivity] | None = None) -> set[str]:
    """Forbid the chosen option with the largest share of the budget, and its cheaper alternatives:
    by validated contribution (leave-one-out, option key -> loss it adds) when one is positive,
    else by price (loss floored at 0 plus noise, so a lucky "improvement" is not exempt)."""
    def share(s: Sensitivity, priced: bool) -> float:
        ne, auc = (ne_price(s), auc_price(s)) if priced else (s.d_ne, s.d_auc)
        return max(ne / max(budget.max_ne_increase, 1e-12), auc / max(budget.max_auc_drop, 1e-12))

    candidates = [o for o in chosen.values() if not o.is_float_baseline]
    if not candidates:
        return set()
    worst = max(candidates, key=lambda o: share(sens[o.key], True))
    if validated:
        top = max(candidates, key=lambda o: share(validated[o.key], False))
        if share(validated[top.key], False) > 0:
            worst = top
    return {o.key for o in items[worst.item] if o.bytes <= worst.bytes and not o.is_float_baseline}


def search(model_dir: str | Path, model: DLRM, ds: Dataset, cfg: SearchConfig,
           calibration: dict[str, Any] | None, calib_sha: str | None = None,
           cache_path: Path | None = None, cost: dict[str, float] | None = None,
           stages: Stages | None = None, scratch: Path | None = None) -> SearchResult:
    """Run the whole search, one progress stage for the sensitivity and one per validation round;
    validation converts into `scratch` (lowprec.search.validate.scratch_dir; None: $TMPDIR)."""
    started = time.time()
    model_dir = Path(model_dir)
    rm = cfg.space.range_method
    counted = bool((calibration or {}).get("row_counts"))
    items = options_for(model.config, cfg.space, sharing=counted)
    warn_unused_sharing(model.config, cfg.space, items, counted)
    warn_ranked_timing(cfg)
    if (robe := unaligned_robe_warning(model.config)) is not None:  # (else the budget would take the blame)
        warn(robe)
    check_memory(items, cfg.budget)  # before anything is measured
    cache = FloatCache(model, ds, list(cfg.calib_windows), cfg.max_rows)
    if cache.rows == 0:
        raise InputError(f"calibration windows {list(cfg.calib_windows)} hold no rows")
    emulator = Emulator(model, cache, calibration)
    measurements = MeasurementCache(cache_path, fingerprint(model_dir, ds, cfg, calib_sha))
    n_options = 1 + sum(1 for opts in items.values() for o in opts if not o.is_float_baseline)
    update = stage(stages, "sensitivity", n_options, "options")
    sens = measure_sensitivity(emulator, items, measurements, rm, update)
    float_stats = measurements.get("float") or {}
    evaluations = sum(1 for opts in items.values() for o in opts if not o.is_float_baseline)

    touched = rows_subset.TouchedRows(model, ds, list(cfg.eval_windows))  # one pass for every round

    def check(chosen: dict[str, Option], round_no: int) -> Validation:
        update = stage(stages, f"validate round {round_no}", count_rows(ds, list(cfg.eval_windows)))
        plan = plan_from_options(chosen, rm)
        return validate(model_dir, model, plan, ds, list(cfg.eval_windows), calibration, update, scratch,
                        touched=touched)

    if cfg.objective == "latency" and cost is None:  # timed on rank 0 alone, the same costs on every rank
        cost = dist.broadcast_json(measure_costs(emulator, items, rm) if dist.is_main() else None, "latency costs")
    contribution = _leave_one_out(model, ds, cfg, calibration, rm)
    best, rounds = refine(items, sens, cfg, significant_costs(cost, items) if cost is not None else None,
                          check, contribution)
    whole = whole_speedup = None
    if cost is not None and best is not None and cfg.time_whole:
        def one_more_round(chosen: dict[str, Option], **extra: Any) -> tuple[Validation, bool]:
            return validation_round(chosen, sens, cfg, check, rounds, None, **extra)
        best, whole, whole_speedup = timed_whole(model_dir, model, items, sens, cfg.budget, cfg.space, calibration, cache, best,
                                  one_more_round, scratch)
    evaluations += len(rounds)
    if best is None:  # nothing validated within budget: serve float
        best = (float_fallback(items, rounds, cfg), None)
    chosen, val = best
    message = None
    if all(o.is_float_baseline for o in chosen.values()):
        message = no_compression_message(rounds, cfg)
    test = None
    if cfg.test_windows and message is None:
        test = validate(model_dir, model, plan_from_options(chosen, rm), ds, list(cfg.test_windows),
                        calibration, stage(stages, "test windows", count_rows(ds, list(cfg.test_windows))), scratch)
    info = PlanInfo(
        kind="search",
        budgets=cfg.budget,
        predicted=Predicted(predicted(chosen, sens).d_ne, predicted(chosen, sens).d_auc), validated=val,
        tested=test, notes=message,
        total_bytes=total_bytes(chosen), table_bytes=total_bytes(chosen, "table"),
        layer_bytes=total_bytes(chosen, "layer"),
        windows=SearchWindows(tuple(cfg.calib_windows), tuple(cfg.eval_windows), tuple(cfg.test_windows)),
        objective=cfg.objective, accept=cfg.accept,
        predicted_latency_us=sum(cost[o.key] for o in chosen.values()) if cost else None,
        measured_latency_us=whole, whole_speedup=whole_speedup,
        evaluations=evaluations, rounds=len(rounds))
    plan = plan_from_options(chosen, rm, info)
    return SearchResult(plan, chosen, val, items, sens, rounds, evaluations, time.time() - started, float_stats,
                        message, test, cost)


def float_fallback(items: dict[str, list[Option]], rounds: list[dict[str, Any]], cfg: SearchConfig
                   ) -> dict[str, Option]:
    """The all-fp32 plan a search returns when no plan validated; an InputError saying why when it
    does not fit the memory budget (a plan over it is no answer)."""
    chosen = {item: opts[0] for item, opts in items.items()}
    if cfg.budget.memory_bytes is not None and total_bytes(chosen) > cfg.budget.memory_bytes:
        raise InputError(unmet_memory_message(items, rounds, cfg, exhausted=True))
    return chosen


def _leave_one_out(model: DLRM, ds: Dataset, cfg: SearchConfig, calibration: dict[str, Any] | None,
                   rm: str) -> Contribution:
    """Per chosen option, the loss it adds to the joint plan on the eval windows: the emulated plan
    minus the plan without it (the eval rows are cached on first use, i.e. the first failure)."""
    emu: list[Emulator] = []

    def contribution(chosen: dict[str, Option]) -> dict[str, Sensitivity]:
        if not emu:
            emu.append(Emulator(model, FloatCache(model, ds, list(cfg.eval_windows), cfg.max_rows), calibration))
        opts = {o.key: o for o in chosen.values() if not o.is_float_baseline}
        joint = emu[0].run(list(opts.values()), rm)

        def without(key: str) -> dict[str, float]:
            s = emu[0].run([x for k, x in opts.items() if k != key], rm)
            return {"ne": s.ne, "auc": s.auc}
        runs = dist.map_rounds(list(opts), without, "leave-one-out")  # dealt over ranks
        return {k: Sensitivity(joint.ne / w["ne"] - 1.0, w["auc"] - joint.auc) for k, w in runs.items()}
    return contribution
