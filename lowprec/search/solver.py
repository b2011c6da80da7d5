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


def solve(items: dict[str, list[Option]], sens: dict[str, Sensitivity], budget: Budget,
          cost: dict[str, float] | None = None, forbidden: set[str] = frozenset(),
          margin: float = 1.0) -> dict[str, Option]:
    """The cheapest option per item whose predicted loss fits `margin` x the budget."""
    flat = [o for opts in items.values() for o in opts]
    n = len(flat)
    c = np.array([price(o, cost) for o in flat], dtype=np.float64)
    # Break ties toward the more precise option (then fewer bytes) with a vanishing penalty.
    c = c + 1e-9 * np.array([ne_price(sens[o.key]) for o in flat]) * (abs(c).max() + 1)
    rows, lo, hi = [], [], []
    start = 0
    for opts in items.values():
        row = np.zeros(n)
        row[start:start + len(opts)] = 1
        rows.append(row), lo.append(1), hi.append(1)
        start += len(opts)
    # An option measured as *improving* NE or AUC (often noise, or a lucky regularisation) earns
    # no budget for the others and is not free either: see ne_price / auc_price.
    rows.append(np.array([ne_price(sens[o.key]) for o in flat]))
    lo.append(-np.inf), hi.append(budget.max_ne_increase * margin)
    rows.append(np.array([auc_price(sens[o.key]) for o in flat]))
    lo.append(-np.inf), hi.append(budget.max_auc_drop * margin)
    if budget.memory_bytes is not None:
        rows.append(np.array([o.bytes for o in flat], dtype=np.float64))
        lo.append(-np.inf), hi.append(budget.memory_bytes)
    upper = np.array([0.0 if o.key in forbidden else 1.0 for o in flat])
    with highs_debug_line_dropped():
        res = milp(c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=np.ones(n),
                   bounds=Bounds(np.zeros(n), upper))
    if res.status != 0 or res.x is None:
        raise InputError(
            "no plan meets the budgets"
            + (f" within --memory-budget {budget.memory_bytes} bytes" if budget.memory_bytes is not None else "")
            + f" (solver: {res.message})")
    chosen = [o for o, x in zip(flat, res.x) if x > 0.5]
    return {o.item: o for o in chosen}


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
