"""Tiered tables under drift: each window's share of lookups served by each tier.

A tiered table (lowprec.serve.tiers) is fast because its hot tier, ranked by calibration's access
counts, serves most lookups. When popularity moves to ids ranked cold, the hot tier's share falls
window by window (lookups get slower and, with int2/int4 cold tiers, coarser) before any accuracy
alarm need fire. The drift job counts these shares inside its paired pass (`TierShareObserver`, one
of `evaluate_window`'s observers: no second read of the window) and records them per window and
table (`tier_share` rows); recalibration re-ranks the tiers because `convert` ranks them from the new
calibration's counts, and the recalibrated artifact's shares on the alarmed window are recorded too
(`recal_tier_share`). `tier_layout` describes each tier (rows, precision) for the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lowprec import distributed as dist
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset


def tiered_features(candidate: Any) -> dict[int, list[tuple[int, Any]]]:
    """Logical table -> [(tier, id-map module)] of a runtime's tiered tables (empty for other models)."""
    emb = getattr(candidate, "embeddings", None)
    features = getattr(emb, "features", None)
    if features is None or not hasattr(emb, "id_maps"):
        return {}
    out: dict[int, list[tuple[int, Any]]] = {}
    for f, (feature, id_map) in enumerate(zip(features, emb.id_maps)):
        if feature.transform.get("kind") == "tier":
            out.setdefault(emb.feature_table[f], []).append((int(feature.transform["tier"]), id_map))
    return out


def tier_layout(candidate: Any) -> dict[str, list[dict[str, Any]]]:
    """Table name -> [{tier, rows, precision}] of a runtime's tiered tables, hottest tier first."""
    emb = getattr(candidate, "embeddings", None)
    if not tiered_features(candidate):
        return {}
    phys = {t.key: t for t in emb.physical}
    out: dict[str, list[dict[str, Any]]] = {}
    for f, feature in enumerate(emb.features):
        if feature.transform.get("kind") == "tier":
            p = phys[feature.table]
            out.setdefault(emb.names[emb.feature_table[f]], []).append(
                {"tier": int(feature.transform["tier"]), "rows": p.rows, "precision": p.precision.value})
    return {name: sorted(tiers, key=lambda t: t["tier"]) for name, tiers in out.items()}


class TierShareObserver:
    """Counts every tier's lookups inside `evaluate_window`'s pass (an observer: a context manager
    fed each batch, merged over ranks by `merge`); `rows(window)` gives the `tier_share` rows."""

    def __init__(self, candidate: Any):
        self.tiered = tiered_features(candidate)
        emb = candidate.embeddings if self.tiered else None
        self.names = list(emb.names) if emb is not None else []
        hotness = list(emb.hotness) if emb is not None else []
        self.starts = [sum(hotness[:t]) for t in range(len(hotness))]
        self.hotness = hotness
        self.tables = sorted(self.tiered)
        self.maps = [sorted(self.tiered[t], key=lambda m: m[0]) for t in self.tables]
        self.keys = [(t, j) for t, maps in zip(self.tables, self.maps) for j, _ in maps]
        self._reset()

    def _reset(self) -> None:
        self.hits = np.zeros(len(self.keys), dtype=np.int64)
        self.total = np.zeros(len(self.tables), dtype=np.int64)

    def __enter__(self) -> "TierShareObserver":
        self._reset()
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    @torch.inference_mode()
    def update(self, p_ref: Any, p_cand: Any, dense: Any, row0: int, sparse: torch.Tensor) -> None:
        if not self.tiered:
            return
        k = 0
        for i, (t, maps) in enumerate(zip(self.tables, self.maps)):
            ids = sparse[:, self.starts[t]:self.starts[t] + self.hotness[t]].reshape(-1).long()
            self.total[i] += int((ids >= 0).sum())
            for _, id_map in maps:
                self.hits[k] += int((id_map(ids)[0] >= 0).sum())
                k += 1

    def merge(self) -> None:
        """Sum the counts over ranks (integers below 2^53: exact in the float64 all-reduce)."""
        if dist.active() and self.tiered:
            v = dist.all_reduce_sum(np.concatenate([self.hits, self.total]).astype(np.float64), "tier shares")
            self.hits = v[:len(self.keys)].round().astype(np.int64)
            self.total = v[len(self.keys):].round().astype(np.int64)

    def rows(self, window: int) -> list[dict[str, Any]]:
        """{window, table_name, tier, lookups, share} per tier of every tiered table: the share of the
        window's (non-pad) lookups into the table that land in that tier."""
        total = {t: int(n) for t, n in zip(self.tables, self.total)}
        return [{"window": window, "table_name": self.names[t], "tier": j, "lookups": int(h),
                 "share": int(h) / total[t] if total[t] else None}
                for (t, j), h in zip(self.keys, self.hits)]


def tier_shares(candidate: Any, ds: Dataset, window: int, batch_size: int = 8192) -> list[dict[str, Any]]:
    """`TierShareObserver.rows` of one window on its own (outside a paired pass)."""
    obs = TierShareObserver(candidate)
    with obs:
        for batch in iter_batches(ds, [window], batch_size):
            obs.update(None, None, batch.dense, batch.row0, batch.sparse)
    return obs.rows(window)


def hot_share(rows: list[dict[str, Any]]) -> float | None:
    """The hot tiers' (tier 0) share of all lookups into tiered tables, from `tier_shares` rows."""
    hot = sum(r["lookups"] for r in rows if r["tier"] == 0)
    total = sum(r["lookups"] for r in rows)
    return hot / total if total else None
