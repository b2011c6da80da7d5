"""The drift job on a rank > 0 of a data-parallel run: score its share of the windows rank 0 picks.

Rank 0 (lowprec.drift.job) holds the database, decides which windows are new and broadcasts them
(or the InputError that stopped it); every rank then runs the paired pass of each window, whose
collectives merge the shares (lowprec.evaluation.paired, with the label-free observer of
lowprec.drift.delayed.score, so the collectives match rank 0's). This rank writes nothing."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from lowprec import distributed as dist
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError
from lowprec.drift.delayed import score
from lowprec.evaluation.paired import PairedConfig, TableError
from lowprec.progress import Stages

T = TypeVar("T")


def follow(cfg: PairedConfig, lf: Any, spill_prefix: Any, ds: Dataset, reference: Any, candidate: Any,
           stages: Stages | None) -> list[int]:
    """The windows scored (rank 0's list); InputError when rank 0 refused the job."""
    stages = stages or (lambda name, total, unit: None)
    plan = dist.broadcast_json(None, "drift plan")
    if "error" in plan:
        raise InputError(f"rank 0 refused the job: {plan['error']}")
    table_err = TableError.from_models(reference, candidate) if plan["todo"] else None
    for w in plan["todo"]:
        score(cfg, lf, spill_prefix, ds, reference, candidate, w, table_err,
              stages(f"drift window {w}", ds.meta.window(w).rows, "rows"))
    return plan["todo"]


def lead(run: Callable[[Callable[[list[int]], None]], T]) -> T:
    """Rank 0: `run(announce)`, where announce(todo) tells the other ranks which windows to score;
    an InputError raised before that is broadcast instead, so the others stop with it."""
    announced: list[bool] = []

    def announce(todo: list[int]) -> None:
        announced.append(dist.broadcast_json({"todo": todo}, "drift plan") is not None)

    try:
        return run(announce)
    except InputError as exc:
        if dist.active() and not announced:
            dist.broadcast_json({"error": str(exc)}, "drift plan")
        raise
