"""The drift job on a rank > 0 of a data-parallel run: score its share of the windows rank 0 picks.

Rank 0 (lowprec.drift.job) checks the inputs, holds the database, decides which windows are new and
broadcasts them, or that it stopped; every rank then runs the paired pass of each window, whose
collectives merge the shares (lowprec.evaluation.paired, with the label-free observer of
lowprec.drift.delayed.score, so the collectives match rank 0's). This rank writes nothing.

Bad input is rank 0's to report, once: the other ranks open no input before rank 0's word (one that
failed first left rank 0's broadcast without a peer, and its RankFailure replaced the InputError),
and when rank 0 stopped they end without an error of their own (their "rank 0 refused the job" was
a second `Error:` line saying nothing new). Rank 0's error and exit code are the job's."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, TypeVar

from lowprec import distributed as dist
from lowprec.data.dataset import Dataset
from lowprec.drift.delayed import score
from lowprec.evaluation.paired import PairedConfig, TableError
from lowprec.progress import Stages

T = TypeVar("T")


def rank0_windows() -> list[int] | None:
    """The windows rank 0 announced (`lead`), or None when it stopped before any (it reports why)."""
    plan = dist.broadcast_json(None, "drift plan")
    return plan.get("todo")


def follow(cfg: PairedConfig, lf: Any, spill_prefix: Any, ds: Dataset, models: Any, todo: list[int],
           stages: Stages | None) -> None:
    """This rank's share of each window in `todo` (rank 0's list), in the collectives rank 0 runs."""
    stages = stages or (lambda name, total, unit: None)
    table_err = TableError.from_models(models.reference, models.candidate)
    for w in todo:
        score(cfg, lf, spill_prefix, ds, models.reference, models.candidate, w, table_err,
              stages(f"drift window {w}", ds.meta.window(w).rows, "rows"))


def lead(run: Callable[[Callable[[list[int]], None]], T]) -> T:
    """Rank 0: `run(announce)`, where announce(todo) tells the other ranks which windows to score.
    An error raised before that tells them to stop instead and is raised as it was (a peer that can
    no longer hear it does not turn bad input into a RankFailure)."""
    announced: list[bool] = []

    def announce(todo: list[int]) -> None:
        announced.append(dist.broadcast_json({"todo": todo}, "drift plan") is not None)

    try:
        return run(announce)
    except Exception:
        if dist.active() and not announced:
            with contextlib.suppress(dist.DistributedError):
                dist.broadcast_json({"stopped": True}, "drift plan")
        raise
