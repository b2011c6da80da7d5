"""Plan selection as a 0/1 integer program (scipy.optimize.milp, HiGHS).

Variables x[i,o] = 1 when item i (a table or layer) takes option o.

    minimise   Σ cost[i,o] x[i,o]                        (bytes, or measured latency)
    subject to Σ_o x[i,o] = 1                  for every item i
               Σ ne_price[i,o]  x[i,o] <= NE budget       (relative NE increase, additive model)
               Σ auc_price[i,o] x[i,o] <= AUC budget      (AUC drop)
               Σ bytes[i,o] x[i,o] <= memory budget       (when given)
               x[i,o] = 0                                 for options backed off by validation

Sensitivities are measured one option at a time with everything else in float, so the sums are a
first-order (additive) model of the joint effect; validation measures the truth and backs off.

Prices carry the measurement's uncertainty, so no lossy option is ever free:
    ne_price  = max(dNE, 0) + NOISE_Z x max(se, -dNE)    se: the paired per-row standard error
    auc_price = max(dAUC, 0) + max(-dAUC, 0) = |dAUC|
An option that *improved* NE or AUC on the calibration rows (an int2 table by chance, say) is priced
at least at the size of that improvement: the improvement is treated as noise, not as budget.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from lowprec.errors import InputError
from lowprec.plan import Budget
from lowprec.search.accept import pct
from lowprec.search.space import Option


@dataclass(frozen=True)
class Sensitivity:
    d_ne: float  # relative NE change vs float (positive = worse)
    d_auc: float  # AUC drop vs float (positive = worse)
    ne_se: float = 0.0  # standard error of d_ne (paired, per-row variance on the calibration rows)


NOISE_Z = 1.0


def ne_price(s: Sensitivity) -> float:
    """What an option is charged against the NE budget: its loss floored at 0, plus its noise."""
    return max(s.d_ne, 0.0) + NOISE_Z * max(s.ne_se, -s.d_ne, 0.0)


def auc_price(s: Sensitivity) -> float:
    return abs(s.d_auc)


def price(o: Option, cost: dict[str, float] | None) -> float:
    """What the objective charges for an option: its bytes, or its time when `cost` is given."""
    return cost[o.key] if cost is not None else o.bytes


class Infeasible(InputError):
    """No plan fits the budgets at the multiplier given (`solve`); the search's refine loop then
    asks `least_margin` for one that holds a plan instead of ending."""


def _constraints(items: dict[str, list[Option]], sens: dict[str, Sensitivity], budget: Budget
                 ) -> tuple[list[Option], list[np.ndarray], list[float], list[float], np.ndarray, np.ndarray]:
    """The options flattened, the one-option-per-item and memory rows (with their bounds), and the
    NE and AUC price rows."""
    flat = [o for opts in items.values() for o in opts]
    n = len(flat)
    rows, lo, hi = [], [], []
    start = 0
    for opts in items.values():
        row = np.zeros(n)
        row[start:start + len(opts)] = 1
        rows.append(row), lo.append(1), hi.append(1)
        start += len(opts)
    if budget.memory_bytes is not None:
        rows.append(np.array([o.bytes for o in flat], dtype=np.float64))
        lo.append(-np.inf), hi.append(budget.memory_bytes)
    # An option measured as *improving* NE or AUC (often noise, or a lucky regularisation) earns
    # no budget for the others and is not free either: see ne_price / auc_price.
    ne = np.array([ne_price(sens[o.key]) for o in flat])
    auc = np.array([auc_price(sens[o.key]) for o in flat])
    return flat, rows, lo, hi, ne, auc


def solve(items: dict[str, list[Option]], sens: dict[str, Sensitivity], budget: Budget,
          cost: dict[str, float] | None = None, forbidden: set[str] = frozenset(),
          margin: float = 1.0) -> dict[str, Option]:
    """The cheapest option per item whose predicted loss fits `margin` x the budget (Infeasible,
    an InputError, when none does)."""
    flat, rows, lo, hi, ne, auc = _constraints(items, sens, budget)
    n = len(flat)
    c = np.array([price(o, cost) for o in flat], dtype=np.float64)
    # Break ties toward the more precise option (then fewer bytes) with a vanishing penalty.
    c = c + 1e-9 * ne * (abs(c).max() + 1)
    rows += [ne, auc]
    lo += [-np.inf, -np.inf]
    hi += [budget.max_ne_increase * margin, budget.max_auc_drop * margin]
    upper = np.array([0.0 if o.key in forbidden else 1.0 for o in flat])
    with highs_debug_line_dropped():
        res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=np.ones(n),
                   bounds=Bounds(np.zeros(n), upper))
    if res.status != 0 or res.x is None:
        within = (f" within --memory-budget {budget.memory_bytes:,} bytes" if budget.memory_bytes is not None
                  else "")
        raise Infeasible(f"no plan meets the budgets: none{within} fits {margin:.4g} x the accuracy budget "
                         f"(NE increase <= {pct(budget.max_ne_increase)}, AUC drop <= "
                         f"{budget.max_auc_drop:g}) by the measured options' prices (solver: {res.message})")
    chosen = [o for o, x in zip(flat, res.x) if x > 0.5]
    return {o.item: o for o in chosen}


def least_margin(items: dict[str, list[Option]], sens: dict[str, Sensitivity], budget: Budget,
                 forbidden: set[str] = frozenset()) -> float | None:
    """The least multiplier m at which `solve` finds a plan (within the memory budget, without
    `forbidden`): min t subject to each price sum <= t x its budget; None when no m holds one (the
    memory budget leaves only plans with a loss the budget does not allow at all: a budget of 0, or
    options ruled out). m is recomputed from the plan found, so `solve` at m holds that plan exactly."""
    flat, rows, lo, hi, ne, auc = _constraints(items, sens, budget)
    n = len(flat)
    rows = [np.append(r, 0.0) for r in rows] + [np.append(ne, -budget.max_ne_increase),
                                                 np.append(auc, -budget.max_auc_drop)]
    lo, hi = lo + [-np.inf, -np.inf], hi + [0.0, 0.0]
    upper = np.array([0.0 if o.key in forbidden else 1.0 for o in flat] + [np.inf])
    c = np.zeros(n + 1)
    c[-1] = 1.0
    with highs_debug_line_dropped():
        res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi),
                   integrality=np.append(np.ones(n), 0), bounds=Bounds(np.zeros(n + 1), upper))
    if res.status != 0 or res.x is None:
        return None
    x = res.x[:n] > 0.5
    need = [float(p[x].sum()) / b for p, b in ((ne, budget.max_ne_increase), (auc, budget.max_auc_drop)) if b > 0]
    return max(need, default=0.0)


HIGHS_DEBUG_LINE = b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();"


@contextmanager
def highs_debug_line_dropped() -> Iterator[None]:
    """Keep HiGHS's leftover debug line out of the user's terminal, pass everything else through.

    The HiGHS in scipy printf()s HIGHS_DEBUG_LINE to the C stdout whenever it repairs an integer
    solution (ERGO-Code/HiGHS#2783, fixed upstream): a full-scale latency search printed it among
    its results, before the `--json` line. During the solve, file descriptors 1 and 2 point at
    temporary files; afterwards what they got, less that line, is written back to each. HiGHS
    writes to the process's descriptors whatever Python's sys.stdout is, so those are the ones
    redirected; a descriptor that is not open is left alone."""
    with ExitStack() as stack:
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            stack.enter_context(_fd_filtered(fd, stream))
        yield


@contextmanager
def _fd_filtered(fd: int, stream: object) -> Iterator[None]:
    try:
        stream.flush()  # type: ignore[attr-defined]
        saved = os.dup(fd)
    except (AttributeError, OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            rest = [line for line in tmp.read().splitlines(keepends=True) if HIGHS_DEBUG_LINE not in line]
            if rest:
                os.write(fd, b"".join(rest))


def predicted(chosen: dict[str, Option], sens: dict[str, Sensitivity]) -> Sensitivity:
    """The loss the solver budgets for: each option's price (loss floored at 0 plus noise), summed."""
    return Sensitivity(sum(ne_price(sens[o.key]) for o in chosen.values()),
                       sum(auc_price(sens[o.key]) for o in chosen.values()))
