"""Which TorchRec table serves each dataset feature, and TorchRec's feature order (both imports).

A state dict names tables, not features: each dataset feature takes `t_{feature}` or `{feature}`
unless a table map says otherwise. The dot interaction's columns follow TorchRec's feature order
(`model.sparse_arch.sparse_feature_names`), which lowprec permutes into dataset order.
"""

from __future__ import annotations

import json

import torch

from lowprec.errors import InputError


def listed(items, limit: int = 8) -> str:
    """`['a', 'b', 'c'] and 5 more`: the first `limit` of `items` (sorted), for an error message."""
    items = sorted(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{items[:limit]}{more}"


def match_tables(features: list[str], tables: list[str], table_map: dict[str, str] | None,
                 where: str) -> list[str]:
    """The TorchRec table serving each dataset feature, by name (`t_{f}` or `{f}`) or `table_map`."""
    table_map = dict(table_map or {})
    unknown = sorted(set(table_map) - set(features))
    if unknown:
        raise InputError(f"table map names features the dataset lacks: {unknown} (dataset features: "
                         f"{features[:30]})")
    absent = sorted({t for t in table_map.values() if t not in tables})
    if absent:
        raise InputError(f"{where}: table map names tables the state dict lacks: {absent} "
                         f"(tables: {sorted(tables)[:30]})")
    chosen, implicit = [], {}
    for f in features:
        if f in table_map:
            chosen.append(table_map[f])
            continue
        candidates = [c for c in (f"t_{f}", f) if c in tables]
        if not candidates:
            raise InputError(f"{where}: dataset feature {f!r} has no table named 't_{f}' or '{f}' "
                             f"(tables: {sorted(tables)[:30]}); map it with --table-map {f}=TABLE")
        if len(candidates) > 1:
            raise InputError(f"{where}: dataset feature {f!r} matches both tables {candidates}; "
                             f"choose one with --table-map {f}=TABLE")
        chosen.append(candidates[0])
        implicit[f] = candidates[0]
    for f, t in implicit.items():
        users = [g for g, u in zip(features, chosen) if u == t]
        if len(users) > 1:
            raise InputError(f"{where}: table {t!r} matches features {users} by name; say which "
                             f"feature uses it with --table-map FEATURE={t}")
    unused = sorted(set(tables) - set(chosen))
    if unused:
        raise InputError(f"{where}: tables {listed(unused)} serve no dataset feature (dataset features: "
                         f"{features[:30]}); map them with --table-map FEATURE=TABLE")
    return chosen


def resolve_feature_order(features: list[str], feature_order: list[str] | None,
                          metadata: dict[str, str], where: str) -> tuple[list[str], str]:
    """TorchRec's sparse feature order in dataset names, and where it came from."""
    source = "argument"
    if feature_order is None and "sparse_feature_names" in metadata:
        try:
            feature_order = [str(x) for x in json.loads(metadata["sparse_feature_names"])]
        except (ValueError, TypeError, RecursionError) as exc:
            raise InputError(f"{where}: metadata sparse_feature_names is not a JSON list ({exc})") from exc
        source = "safetensors metadata"
    if feature_order is None:
        return list(features), "dataset"
    if sorted(feature_order) != sorted(features):
        raise InputError(f"{where}: feature order ({source}) {feature_order[:30]} is not a "
                         f"permutation of the dataset's features {features[:30]}")
    return list(feature_order), source


def interaction_permutation(dim: int, lowprec_order: list[str], torchrec_order: list[str]) -> torch.Tensor:
    """Column c of lowprec's interaction output = column perm[c] of TorchRec's, for the same inputs.

    Both are [z0 (dim columns), dot(u, v) for u < v over (z0, e_...)] with the e's in each one's order.
    """
    pos = {name: i + 1 for i, name in enumerate(torchrec_order)}
    idx = [0] + [pos[name] for name in lowprec_order]  # lowprec slot -> TorchRec slot
    f = len(idx)
    tr_pairs = {(int(a), int(b)): k for k, (a, b) in enumerate(torch.triu_indices(f, f, 1).t().tolist())}
    cols = list(range(dim))
    for a, b in torch.triu_indices(f, f, 1).t().tolist():
        u, v = sorted((idx[a], idx[b]))
        cols.append(dim + tr_pairs[(u, v)])
    return torch.tensor(cols)
