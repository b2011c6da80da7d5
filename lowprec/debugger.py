"""The numeric debugger: float vs quantized, tap by tap, on real batches.

For every table's pooled output and every layer's output (see `lowprec.graph.trace`) it accumulates
SQNR = 10 log10(Σ ref² / Σ (ref - cand)²) over the batches and reports the first tap, in forward
order, whose SQNR falls below a threshold: the place where accuracy broke (Deng et al. 2021 describe
this layer-by-layer comparison as the core of Meta's low-precision debugging).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.graph import trace
from lowprec.progress import Update


def sqnr_db(signal: float, noise: float) -> float:
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
        return {"taps": self.taps, "first_below": self.first_below,
                "threshold_db": self.threshold_db, "rows": self.rows}


@torch.inference_mode()
def compare(reference: torch.nn.Module, candidate: torch.nn.Module, ds: Dataset, windows: list[int],
            threshold_db: float = 20.0, max_rows: int = 50_000, batch_size: int = 4096,
            progress: Update | None = None) -> CompareResult:
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    max_err: dict[str, float] = {}
    rows = 0
    for batch in iter_batches(ds, windows, batch_size):
        ref = trace(reference, batch.dense, batch.sparse)
        cand = trace(candidate, batch.dense, batch.sparse)
        for name, r in ref.items():
            diff = (r.float() - cand[name].float())
            signal[name] = signal.get(name, 0.0) + float((r.float() ** 2).sum())
            noise[name] = noise.get(name, 0.0) + float((diff ** 2).sum())
            max_err[name] = max(max_err.get(name, 0.0), float(diff.abs().max()) if diff.numel() else 0.0)
        rows += len(batch)
        if progress is not None:
            progress(len(batch))
        if rows >= max_rows:
            break
    taps = [{"name": n, "sqnr_db": sqnr_db(signal[n], noise[n]), "max_abs_err": max_err[n]}
            for n in signal]
    first = next((t["name"] for t in taps if t["sqnr_db"] < threshold_db), None)
    return CompareResult(taps, first, threshold_db, rows)
