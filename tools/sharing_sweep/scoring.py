"""Scoring as `lowprec eval --json` does it (same batches, same merge order), the paired DeLong test
against the dense model, and a model's predictions against its own float model's."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sharing_sweep.common import EVAL_BATCH, probs_path


def score(model: Any, ds: Any, windows: list[int]) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """What `lowprec eval --json` computes (same batches, same merge order), plus the predictions."""
    from lowprec.data.batches import iter_batches
    from lowprec.evaluation.scoring import predict
    from lowprec.evaluation.metrics import BinaryStats

    model.eval()
    overall, probs, labels = BinaryStats(), [], []
    for w in windows:
        stats = BinaryStats()
        for batch in iter_batches(ds, [w], EVAL_BATCH):
            p = predict(model, batch.dense, batch.sparse)
            stats.update(p, batch.labels.numpy())
            probs.append(p)
            labels.append(batch.labels.numpy())
        overall = overall + stats
    s = overall.summary()
    return {k: float(s[k]) for k in ("rows", "auc", "ne", "logloss", "calibration")}, \
        np.concatenate(probs), np.concatenate(labels)


def delong(p_ref: np.ndarray, p_cand: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Paired DeLong test of AUC(cand) - AUC(ref) on the same rows (lowprec.evaluation.stats)."""
    from lowprec.evaluation.stats import DeLongAccumulator
    from lowprec.evaluation.metrics import BinaryStats, score_bins

    r, c = BinaryStats().update(p_ref, y), BinaryStats().update(p_cand, y)
    acc = DeLongAccumulator((r.hist_pos, r.hist_neg), (c.hist_pos, c.hist_neg), r.auc, c.auc)
    acc.update(score_bins(p_ref), score_bins(p_cand), y)
    res = acc.result()
    return {"diff": float(res.diff), "se": float(math.sqrt(res.var)) if res.var == res.var else float("nan"),
            "p": float(res.p_two_sided)}


def compare_preds(entry: dict[str, Any], p: np.ndarray, p_float: np.ndarray, auc_float: float) -> None:
    d = np.abs(p.astype(np.float64) - p_float.astype(np.float64))
    entry["max_abs_dprob_vs_float"] = float(d.max())
    entry["mean_abs_dprob_vs_float"] = float(d.mean())
    entry["dauc_vs_float"] = entry["auc"] - auc_float


def saved_float(ctx: dict[str, Any], rid: str, seed: int) -> tuple[np.ndarray, float]:
    """A finished job's float predictions and their AUC."""
    from lowprec.evaluation.metrics import BinaryStats

    p = np.load(probs_path(ctx, rid, "float"))
    y = np.load(probs_path(ctx, f"labels-s{seed}", "y"))
    return p, BinaryStats().update(p, y).auc
