"""Post-training sharing of a trained dense table ("hot"), and the id transforms that serve it.

Post-training sharing "hot" ({"kind": "hot", "ratio": R, "hot": F, "lookup": ..., "seed": S}) turns
a trained dense table into K + B = ceil(n/R) rows: the K = round(F * budget) (at most budget - 1)
most accessed rows kept exactly, every other row hashed into one of B buckets initialised to the
count-weighted mean of its rows (the plain mean where none of them was accessed).
lookup="search" (default) stores only the sorted hot ids (4 bytes each, 8 past 2^31 rows) and
finds hot ids by binary search, hashing the rest (`hot_hash` transform); lookup="remap" stores an
old id -> new row int32 array: 4 bytes for every original row, which at high ratios costs more than
the rows it saves (an int8 row of D=16 is 20 bytes, so at R=8 the shared rows take 2.5 bytes per
original row and the remap 4). Both lookups give the same rows; neither is exact
(DeployForm.exact=False): cold ids serve their bucket's mean.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lowprec.errors import InputError
from lowprec.model.deploy import POST_TRAINING, TRANSFORMS, DeployForm, Feature
from lowprec.quant.hashing import DEFAULT_SEED, FAMILY, hash_rows, table_id


def _hot_options(spec: dict[str, Any], table: str) -> tuple[float, float, str, int]:
    unknown = sorted(set(spec) - {"kind", "ratio", "hot", "lookup", "seed"})
    try:
        ratio, hot = float(spec["ratio"]), float(spec.get("hot", 0.5))
        lookup, seed = str(spec.get("lookup", "search")), int(spec.get("seed", DEFAULT_SEED))
    except (KeyError, TypeError, ValueError):
        raise InputError(f"table {table!r}: sharing {spec} needs a numeric ratio (and numeric "
                         f"hot/seed if given)") from None
    if unknown or not ratio >= 1 or not 0 <= hot <= 1 or lookup not in ("search", "remap"):
        raise InputError(f"table {table!r}: bad sharing {spec}: takes ratio >= 1, hot in [0, 1], "
                         f"lookup 'search' or 'remap', seed" + (f"; unknown {unknown}" if unknown else ""))
    return ratio, hot, lookup, seed


def _check_counts(row_counts: torch.Tensor | None, n: int, table: str) -> torch.Tensor:
    if row_counts is None:
        raise InputError(f"table {table!r}: hot sharing needs row access counts from calibration "
                         f"(run `lowprec calibrate` and pass --calibration)")
    counts = torch.as_tensor(row_counts).double().reshape(-1)
    if len(counts) != n:
        raise InputError(f"table {table!r}: {len(counts)} row counts for a table of {n} rows")
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise InputError(f"table {table!r}: row counts must be finite and >= 0")
    return counts


def hot_split(n: int, ratio: float, hot: float) -> tuple[int, int]:
    """(K hot rows, B buckets) with K + B = ceil(n / ratio) and at least one bucket if rows go cold."""
    budget = math.ceil(n / ratio)
    if budget >= n:
        return n, 0
    k = min(budget - 1, int(math.floor(hot * budget + 0.5)))
    return k, budget - k


def hot_sharing(form: DeployForm, spec: dict[str, Any], row_counts: torch.Tensor | None,
                table: str) -> DeployForm:
    """Dense form -> K exact hot rows + B hashed buckets of cold rows (see the module docstring)."""
    ratio, hot, lookup, seed = _hot_options(spec, table)
    simple = len(form.groups) == 1 and len(form.groups[0]) == 1
    if not simple or form.groups[0][0].transform.get("kind") != "identity":
        raise InputError(f"table {table!r}: hot sharing applies to dense tables, not this table's form")
    key = form.groups[0][0].table
    weight = form.tables[key]
    n = weight.shape[0]
    counts = _check_counts(row_counts, n, table)
    k, b = hot_split(n, ratio, hot)
    if b == 0:
        return form
    order = torch.sort(counts, descending=True, stable=True).indices
    hot_ids = torch.sort(order[:k]).values
    is_hot = torch.zeros(n, dtype=torch.bool)
    is_hot[hot_ids] = True
    cold = torch.nonzero(~is_hot).squeeze(1)
    tid = table_id(table)
    bucket = hash_rows(cold, tid, b, 0, seed)
    w = weight[cold].double()
    c = counts[cold]
    num = torch.zeros(b, weight.shape[1], dtype=torch.float64).index_add_(0, bucket, w * c[:, None])
    den = torch.zeros(b, dtype=torch.float64).index_add_(0, bucket, c)
    plain = torch.zeros_like(num).index_add_(0, bucket, w)
    size = torch.zeros(b, dtype=torch.float64).index_add_(0, bucket, torch.ones_like(c))
    buckets = torch.where(den[:, None] > 0, num / den.clamp(min=1e-300)[:, None],
                          plain / size.clamp(min=1)[:, None])
    shared = torch.cat([weight[hot_ids], buckets.to(weight.dtype)])
    if k == 0:
        spec_t = {"kind": "hash", "family": FAMILY, "table": tid, "seed": seed, "rows": b}
        return DeployForm({key: shared}, [[Feature(key, spec_t)]], exact=False)
    if lookup == "remap":
        remap = torch.empty(n, dtype=torch.int32)
        remap[hot_ids] = torch.arange(k, dtype=torch.int32)
        remap[cold] = (k + bucket).to(torch.int32)
        name = f"{table}.remap"
        return DeployForm({key: shared}, [[Feature(key, {"kind": "remap", "buffer": name})]],
                          {name: remap}, exact=False)
    name = f"{table}.hot_ids"
    ids = hot_ids.to(torch.int32 if n <= 2**31 - 1 else torch.int64)
    spec_t = {"kind": "hot_hash", "family": FAMILY, "buffer": name, "hot": k, "buckets": b,
              "table": tid, "seed": seed}
    return DeployForm({key: shared}, [[Feature(key, spec_t)]], {name: ids}, exact=False)


def _t_remap(ids, spec, buffers):
    return buffers[spec["buffer"]][ids].to(torch.int64), None


def _t_hot_hash(ids, spec, buffers):
    hot = buffers[spec["buffer"]].to(torch.int64)
    k = int(spec["hot"])
    pos = torch.searchsorted(hot, ids.to(torch.int64))
    is_hot = (pos < k) & (hot[pos.clamp(max=k - 1)] == ids)
    cold = k + hash_rows(ids, int(spec["table"]), int(spec["buckets"]), 0, int(spec["seed"]))
    return torch.where(is_hot, pos, cold), None


TRANSFORMS.update(remap=_t_remap, hot_hash=_t_hot_hash)
POST_TRAINING["hot"] = hot_sharing
