"""The latency objective's guard against its own cost model: the accepted plan timed as served.

The solver prices a plan as the sum of its options' times, each table a module built in memory and
timed alone (lowprec/search/latency.py). What is served is the converted artifact, all tables in
one call, read in place from the file mapping, and the two can disagree: a table's time depends on
what the other tables do to the cache, and at full scale the artifacts' fp16 tables ran 1.35x
slower than the same rows in memory, because the file put them off cache lines (fixed since,
reports/tiered.md), which no per-table timing could see. So the accepted plan is converted in full
and timed beside every uniform plan that fits the budgets by prediction; one that is WHOLE_MARGIN
faster and validates replaces it, as one more validation round.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

from lowprec import distributed as dist
from lowprec.errors import warn
from lowprec.model.dlrm import DLRM
from lowprec.plan import Plan, Validation
from lowprec.search.latency import time_plans
from lowprec.search.sensitivity import FloatCache
from lowprec.search.solver import Budget, Sensitivity, predicted
from lowprec.search.space import Option, SearchSpace, plan_from_options, total_bytes

WHOLE_MARGIN = 0.03  # a uniform plan replaces the searched one only if timed whole >= 3% faster


def uniform_alternatives(items: dict[str, list[Option]], chosen: dict[str, Option], sens: dict[str, Sensitivity],
                         budget: Budget, space: SearchSpace) -> dict[str, dict[str, Option]]:
    """Each uniform table precision of the search space (plain tables; layers as `chosen`) that fits
    the memory budget and whose predicted loss fits the accuracy budget, unless it is `chosen`."""
    out = {}
    for p in space.table_precisions:
        alt = dict(chosen)
        for item, opts in items.items():
            if item.startswith("table:"):
                alt[item] = next((o for o in opts if o.precision is p and o.sharing is None), None)
        if any(o is None for o in alt.values()) or alt == chosen:
            continue
        loss = predicted(alt, sens)
        if budget.memory_bytes is not None and total_bytes(alt) > budget.memory_bytes:
            continue
        if loss.d_ne <= budget.max_ne_increase and loss.d_auc <= budget.max_auc_drop:
            out[f"uniform {p.value}"] = alt
    return out


def timed_whole(model_dir: Path, model: DLRM, items: dict[str, list[Option]], sens: dict[str, Sensitivity],
                budget: Budget, space: SearchSpace, calibration: dict[str, Any] | None, cache: FloatCache,
                best: tuple[dict[str, Option], Validation],
                one_more_round: Callable[..., tuple[Validation, bool]],
                scratch: Path | None) -> tuple[tuple[dict[str, Option], Validation], dict[str, float] | None,
                                              dict[str, float] | None]:
    """`best` timed whole beside `uniform_alternatives`; the fastest >= WHOLE_MARGIN faster (paired per
    repeat) that validates replaces it. `one_more_round(chosen, **note)` validates a plan as the
    search's next round (lowprec.search.run.validation_round). Timing runs on rank 0, like the option
    costs. Returns (best, median us a call of every timed plan, each uniform plan's speed over the
    searched one as the median of the paired per-repeat ratios: the number the margin is applied to),
    or (best, None, None) when nothing was timed."""
    chosen = best[0]
    alts = uniform_alternatives(items, chosen, sens, budget, space)
    if not alts:
        return best, None, None
    rm = space.range_method
    plans = {"searched": plan_from_options(chosen, rm), **{n: plan_from_options(a, rm) for n, a in alts.items()}}
    need = total_bytes(chosen) + sum(total_bytes(a) for a in alts.values())
    # rank 0 decides and times; every rank takes its answer (None: not timed), so all validate alike
    times = dist.broadcast_json(_time_on_disk(model_dir, plans, calibration, cache, model.hotness, scratch, need)
                                if dist.is_main() else None, "whole-plan timings")
    if times is None:
        return best, None, None
    ratio = {n: statistics.median(s / t for s, t in zip(times["searched"], times[n])) for n in alts}
    for name in sorted((n for n in alts if ratio[n] >= 1 + WHOLE_MARGIN), key=lambda n: -ratio[n]):
        val, fits = one_more_round(alts[name],
                                   timed_whole=f"{name}: {ratio[name]:.2f}x the searched plan's speed, timed whole")
        if fits:
            best = (alts[name], val)
            break
    return (best, {n: round(statistics.median(t), 1) for n, t in times.items()},
            {n: round(r, 4) for n, r in ratio.items()})


def _time_on_disk(model_dir: Path, plans: dict[str, Plan], calibration: dict[str, Any] | None, cache: FloatCache,
                  hotness: list[int], scratch: Path | None, need: int) -> dict[str, list[float]] | None:
    """time_plans, unless converting every plan in full would take over 80% of the free disk."""
    where = scratch.parent if scratch is not None else Path(tempfile.gettempdir())
    free = shutil.disk_usage(where).free
    if need > 0.8 * free:
        warn(f"plans not timed whole: converting them needs ~{need / 1e9:.1f} GB, {free / 1e9:.1f} GB free "
             f"in {where} (--no-time-whole skips this check)")
        return None
    return time_plans(model_dir, plans, calibration, cache.batches, hotness, scratch)
