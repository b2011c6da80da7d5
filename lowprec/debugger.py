"""The numeric debugger: float vs quantized, tap by tap, on real batches.

For every table's pooled output and every layer's output (see `lowprec.graph.trace`) it accumulates
SQNR = 10 log10(Σ ref² / Σ (ref - cand)²) over the batches and reports the first tap, in forward
order, whose SQNR falls below a threshold: the place where accuracy broke (Deng et al. 2021 describe
this layer-by-layer comparison as the core of Meta's low-precision debugging).

A candidate tap with NaN or Inf outputs has SQNR -inf (it is where accuracy broke); a reference tap
with them is an InputError naming --reference (its weights overflow: nothing to compare against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lowprec import distributed as dist
from lowprec.data.batches import batch_sizes, iter_batches
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError
from lowprec.graph import trace
from lowprec.progress import Update


def sqnr_db(signal: float, noise: float) -> float:
    if not math.isfinite(noise):  # the candidate's output holds NaN or Inf
        return -math.inf
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass
class CompareResult:
    taps: list[dict[str, Any]]  # forward order: name, sqnr_db, max_abs_err
    first_below: str | None
    threshold_db: float
    rows: int

    def to_json(self) -> dict[str, Any]:
        """Strict JSON has no infinities: an infinite SQNR is null beside `exact` (+inf: the outputs
        are equal) or `non_finite` (-inf: the candidate's outputs hold NaN or Inf)."""
        taps = [{**t, "sqnr_db": t["sqnr_db"] if math.isfinite(t["sqnr_db"]) else None,
                 "exact": t["sqnr_db"] == math.inf, "non_finite": t["sqnr_db"] == -math.inf} for t in self.taps]
        return {"taps": taps, "first_below": self.first_below, "threshold_db": self.threshold_db, "rows": self.rows}


@torch.inference_mode()
def compare(reference: torch.nn.Module, candidate: torch.nn.Module, ds: Dataset, windows: list[int],
            threshold_db: float = 20.0, max_rows: int = 50_000, batch_size: int = 4096,
            progress: Update | None = None) -> CompareResult:
    """Whole batches until max_rows rows are seen. Data-parallel under torchrun: each rank traces
    its batch-aligned share and the per-batch sums are folded in batch order (`dist.fold_rows`),
    so every number equals the one-process run's."""
    n = len(batch_sizes(ds, windows, batch_size, max_rows))
    names: list[str] = []
    sums: list[np.ndarray] = []  # per batch: Σ ref² per tap, then Σ (ref - cand)² per tap
    err: np.ndarray | None = None
    seen = 0
    for batch in iter_batches(ds, windows, batch_size, span=dist.span(n)):
        ref = trace(reference, batch.dense, batch.sparse)
        cand = trace(candidate, batch.dense, batch.sparse)
        names = list(ref)
        broken = [t for t in names if not bool(torch.isfinite(ref[t]).all())]
        if broken:
            raise InputError(f"--reference: its output {broken[0]!r} holds NaN or Inf on --windows "
                             f"{windows}: its weights overflow on these inputs; nothing to compare against")
        diffs = [ref[t].float() - cand[t].float() for t in names]
        sums.append(np.array([float((ref[t].float() ** 2).sum()) for t in names]
                             + [float((d ** 2).sum()) for d in diffs]))
        batch_err = np.array([float(d.abs().max()) if d.numel() else 0.0 for d in diffs])
        err = batch_err if err is None else np.maximum(err, batch_err)
        seen += len(batch)
        if progress is not None:
            progress(len(batch))
    if not names:  # this rank scored no batch (fewer batches than ranks): the taps of one row
        b = next(iter_batches(ds, windows, 1, span=(0, 1)), None)
        names = list(trace(reference, b.dense, b.sparse)) if b is not None else []
    width = 2 * len(names)
    folded = dist.fold_rows(dist.gather_rows(np.array(sums).reshape(len(sums), width), "compare sums"), width)
    err = dist.all_reduce_max(err if err is not None else np.zeros(len(names)), "compare max error")
    rows = int(dist.all_reduce_sum([float(seen)], "compare rows")[0])
    taps = [{"name": t, "sqnr_db": sqnr_db(folded[i], folded[len(names) + i]), "max_abs_err": float(err[i])}
            for i, t in enumerate(names)]
    first = next((t["name"] for t in taps if t["sqnr_db"] < threshold_db), None)
    return CompareResult(taps, first, threshold_db, rows)
