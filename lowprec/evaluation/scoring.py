"""Scoring a model (float or quantized) over windows into per-window and overall BinaryStats.

`worse_than_base_rate` flags NE >= 1: the model predicts worse than the constant base rate of
the data it is scored on (train and eval print a warning and set `worse_than_base_rate` in --json).

Any scorer works: a module mapping (dense (B, F), sparse (B, slots)) to logits (B,); the quantized
runtime gets its ids from the loader in FBGEMM's layout (`Batch.ids_for`). Windows are
streamed batch by batch; each window's statistics are merged into the overall ones by addition.
Under torchrun each rank scores its batch-aligned share of every window and the shares merge
exactly (`lowprec.distributed.merge_stats`); one process is the one-rank case of the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lowprec import distributed as dist
from lowprec.data.batches import count_batches, iter_batches, reads_feature_ids
from lowprec.data.dataset import Dataset
from lowprec.evaluation.metrics import BinaryStats, check_finite
from lowprec.progress import Update


@dataclass
class EvalResult:
    per_window: dict[int, dict[str, float]]
    overall: BinaryStats

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.overall.summary())
        out["worse_than_base_rate"] = worse_than_base_rate(self.overall.ne)
        out["windows"] = [{"window": w, **m} for w, m in sorted(self.per_window.items())]
        return out


def worse_than_base_rate(ne: float | None) -> bool:
    """NE >= 1: no better than always predicting the data's click rate (NaN: not flagged)."""
    return ne is not None and bool(ne >= 1.0)


def base_rate_warning(ne: float, what: str) -> str:
    return (f"NE {ne:.3f} >= 1 on {what}: the model predicts worse than the constant base rate "
            f"(always the average click rate); check the training setup (epochs, learning rates, "
            f"class balance) before using it")


@torch.inference_mode()
def predict(model: torch.nn.Module, dense: torch.Tensor, sparse: torch.Tensor,
            what: str = "the model") -> np.ndarray:
    """Click probabilities; NonFinitePredictions naming `what` if any is NaN or Inf."""
    p = torch.sigmoid(model(dense, sparse).float()).numpy()
    check_finite(p, what)
    return p


def evaluate(model: torch.nn.Module, ds: Dataset, windows: list[int], batch_size: int = 4096,
             progress: Update | None = None, name: str = "the model") -> EvalResult:
    """Per-window and overall statistics of `model` (`name` in errors: the CLI passes its path)."""
    model.eval()
    overall = BinaryStats()
    per_window: dict[int, dict[str, float]] = {}
    for w, n_batches in zip(windows, count_batches(ds, windows, batch_size)):
        stats, sums = BinaryStats(), []
        for batch in iter_batches(ds, [w], batch_size, feature_ids=reads_feature_ids(model),
                                  span=dist.span(n_batches)):
            p = predict(model, batch.dense, batch.ids_for(model), f"{name} on window {w}")
            b = BinaryStats().update(p, batch.labels.numpy())
            sums.append((b.weight, b.positives, b.pred_sum, b.logloss_sum))
            stats.hist_pos += b.hist_pos
            stats.hist_neg += b.hist_neg
            if progress is not None:
                progress(len(batch))
        stats = dist.merge_stats(stats, sums, f"eval window {w}")
        per_window[w] = stats.summary()
        overall = overall + stats
    return EvalResult(per_window, overall)
