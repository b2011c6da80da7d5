"""Tiered tables under drift: each window's share of lookups served by each tier.

A tiered table (lowprec.serve.tiers) is fast because its hot tier, ranked by calibration's access
counts, serves most lookups. When popularity moves to ids ranked cold, the hot tier's share falls
window by window (lookups get slower and, with int2/int4 cold tiers, coarser) before any accuracy
alarm need fire. The drift job records these shares per window and table (`tier_share` rows);
recalibration re-ranks the tiers because `convert` ranks them from the new calibration's counts.
"""

from __future__ import annotations

from typing import Any

import torch

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


def tier_shares(candidate: Any, ds: Dataset, window: int, batch_size: int = 8192) -> list[dict[str, Any]]:
    """Rows {window, table_name, tier, lookups, share} for every tier of every tiered table: the share
    of the window's (non-pad) lookups into the table that land in that tier."""
    tiered = tiered_features(candidate)
    if not tiered:
        return []
    hotness = candidate.embeddings.hotness
    starts = [sum(hotness[:t]) for t in range(len(hotness))]
    hits = {(t, j): 0 for t, maps in tiered.items() for j, _ in maps}
    total = dict.fromkeys(tiered, 0)
    with torch.no_grad():
        for batch in iter_batches(ds, [window], batch_size):
            for t, maps in tiered.items():
                ids = batch.sparse[:, starts[t]:starts[t] + hotness[t]].reshape(-1).long()
                total[t] += int((ids >= 0).sum())
                for j, id_map in maps:
                    hits[(t, j)] += int((id_map(ids)[0] >= 0).sum())
    names = candidate.embeddings.names
    return [{"window": window, "table_name": names[t], "tier": j, "lookups": hits[(t, j)],
             "share": hits[(t, j)] / total[t] if total[t] else None}
            for (t, j) in sorted(hits)]


def hot_share(rows: list[dict[str, Any]]) -> float | None:
    """The hot tiers' (tier 0) share of all lookups into tiered tables, from `tier_shares` rows."""
    hot = sum(r["lookups"] for r in rows if r["tier"] == 0)
    total = sum(r["lookups"] for r in rows)
    return hot / total if total else None
