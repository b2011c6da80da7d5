"""Sharing-kind handlers: the serving form of each embedding kind, and its bytes.

One handler per kind in the literal `SHARING_KINDS`:
- trained kinds (the table's backend, lowprec.model): `dense`, `hash`, `qr`, `robe`. `form(module,
  key)` reads the trained module's tensors into a `ServingForm` (see lowprec.serve.forms);
- the post-training kinds `hot` (below) and `tiered` (lowprec.serve.tiers: frequency tiers, each
  at its own precision): `share(form, spec, row_counts, table)` turns a dense form into another.
Every handler prices itself with `bytes(table, dim, codec, spec)` without building anything (the
search's byte model), counting physical rows at the precision's row size plus id buffers.

Post-training sharing "hot" ({"kind": "hot", "ratio": R, "hot": F, "lookup": ..., "seed": S}) turns
a trained dense table into K + B = ceil(n/R) rows: the K = round(F * budget) (at most budget - 1)
most accessed rows kept exactly, every other row hashed into one of B buckets initialised to the
count-weighted mean of its rows (the plain mean where none of them was accessed).
lookup="search" (default) stores only the sorted hot ids (4 bytes each, 8 past 2^31 rows) and
finds hot ids by binary search, hashing the rest (`hot_hash` transform); lookup="remap" stores an
old id -> new row int32 array: 4 bytes for every original row, which at high ratios costs more than
the rows it saves. Both lookups give the same rows; neither is exact (cold ids serve their bucket's
mean).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lowprec.errors import InputError
from lowprec.model.config import TableConfig
from lowprec.model.embedding import parse_spec
from lowprec.model.sharing import ROBE_KEY, qr_collisions, robe_size
from lowprec.quant.hashing import DEFAULT_SEED, FAMILY, hash_rows, table_id
from lowprec.serve.forms import Feature, ServingForm, dense_form
from lowprec.serve.tables import TableCodec
from lowprec.serve.tiers import tiered_bytes, tiered_form

ROBE_DEFAULT_Z = 32


class Dense:
    def form(self, module: nn.Module, key: str) -> ServingForm:
        return dense_form(key, module.weight.detach())

    def bytes(self, table: TableConfig, dim: int, codec: TableCodec, spec: dict[str, Any]) -> int:
        return codec.table_bytes(table.num_embeddings, dim)


class Hash:
    def form(self, module: nn.Module, key: str) -> ServingForm:
        spec = {"kind": "hash", "family": FAMILY, "table": module.table, "seed": module.seed,
                "rows": module.rows}
        return ServingForm({key: module.bag.weight.detach()}, [[Feature(key, spec)]])

    def bytes(self, table: TableConfig, dim: int, codec: TableCodec, spec: dict[str, Any]) -> int:
        return codec.table_bytes(math.ceil(table.num_embeddings / float(spec["ratio"])), dim)


class QR:
    def form(self, module: nn.Module, key: str) -> ServingForm:
        q, r = f"{key}.q", f"{key}.r"
        return ServingForm({q: module.q.weight.detach(), r: module.r.weight.detach()},
                           [[Feature(q, {"kind": "qr_q", "c": module.c})],
                            [Feature(r, {"kind": "qr_r", "c": module.c})]])

    def bytes(self, table: TableConfig, dim: int, codec: TableCodec, spec: dict[str, Any]) -> int:
        c = qr_collisions(table.num_embeddings, float(spec["ratio"]))
        return codec.table_bytes(-(-table.num_embeddings // c) + c, dim)


class Robe:
    def form(self, module: nn.Module, key: str) -> ServingForm:
        m, a, z = module.member, module.array, module.z
        if z % 4:
            raise InputError(f"table {m.name!r}: ROBE z={z} is not a multiple of 4, which the "
                             f"FBGEMM TBE needs for the shared table; train with z a multiple of 4")
        exact = all(x.align for x in a.members)  # (else its aligned projection: convert says so, once)
        feats = [Feature(ROBE_KEY, {"kind": "robe", "family": FAMILY, "table": m.table, "chunk": c,
                                    "rows": a.size // z, "seed": module.seed, "sign": m.sign})
                 for c in range(m.dim // z)]
        return ServingForm({ROBE_KEY: a.aligned_array()}, [feats], exact=exact)

    def bytes(self, table: TableConfig, dim: int, codec: TableCodec, spec: dict[str, Any]) -> int:
        """This table's share of the one array (the array is stored once for all robe tables)."""
        z = int(spec.get("z", min(ROBE_DEFAULT_Z, dim)))
        rows = robe_size(table.num_embeddings * dim / float(spec["ratio"]), z) // z
        return codec.table_bytes(rows, z)


def hot_options(spec: dict[str, Any], table: str) -> tuple[float, float, str, int]:
    """A hot-sharing spec's (ratio, hot share, lookup, seed), checked (plans, the search and convert)."""
    unknown = sorted(set(spec) - {"kind", "ratio", "hot", "lookup", "seed"})
    raw_ratio, raw_hot, seed = spec.get("ratio"), spec.get("hot", 0.5), spec.get("seed", DEFAULT_SEED)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (raw_ratio, raw_hot)):
        raise InputError(f"table {table!r}: sharing {spec} needs a numeric ratio (and a numeric hot share if "
                         f"given)")
    # the seed is the serving hash's: an artifact with seed -1 (or 1.7, recorded as given and used as 1)
    # was written and then refused by every loader
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise InputError(f"table {table!r}: sharing {spec}: seed must be an integer in [0, 2**63), got {seed!r}")
    ratio, hot, lookup = float(raw_ratio), float(raw_hot), spec.get("lookup", "search")
    if unknown or not 1 <= ratio < math.inf or not 0 <= hot <= 1 or lookup not in ("search", "remap"):
        raise InputError(f"table {table!r}: bad sharing {spec}: takes a finite ratio >= 1, hot in [0, 1], "
                         f"lookup 'search' or 'remap', seed" + (f"; unknown {unknown}" if unknown else ""))
    return ratio, hot, lookup, seed


def check_counts(row_counts: torch.Tensor | None, n: int, table: str,
                 what: str = "hot sharing needs") -> torch.Tensor:
    if row_counts is None:
        raise InputError(f"table {table!r}: {what} row access counts from calibration "
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


def bucket_means(weight: torch.Tensor, cold: torch.Tensor, bucket: torch.Tensor,
                 counts: torch.Tensor, b: int) -> torch.Tensor:
    """Each bucket's count-weighted mean of its cold rows (the plain mean where none was accessed)."""
    w, c = weight[cold].double(), counts[cold]
    num = torch.zeros(b, weight.shape[1], dtype=torch.float64).index_add_(0, bucket, w * c[:, None])
    den = torch.zeros(b, dtype=torch.float64).index_add_(0, bucket, c)
    plain = torch.zeros_like(num).index_add_(0, bucket, w)
    size = torch.zeros(b, dtype=torch.float64).index_add_(0, bucket, torch.ones_like(c))
    return torch.where(den[:, None] > 0, num / den.clamp(min=1e-300)[:, None],
                       plain / size.clamp(min=1)[:, None])


class Hot:
    def share(self, form: ServingForm, spec: dict[str, Any], row_counts: torch.Tensor | None,
              table: str) -> ServingForm:
        """Dense form -> K exact hot rows + B hashed buckets of cold rows (see the module docstring)."""
        ratio, hot, lookup, seed = hot_options(spec, table)
        if not form.rows_are_ids:
            raise InputError(f"table {table!r}: hot sharing applies to dense tables, not this table's form")
        key = form.groups[0][0].table
        weight = form.tables[key]
        n = weight.shape[0]
        counts = check_counts(row_counts, n, table)
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
        shared = torch.cat([weight[hot_ids], bucket_means(weight, cold, bucket, counts, b).to(weight.dtype)])
        if k == 0:
            spec_t = {"kind": "hash", "family": FAMILY, "table": tid, "seed": seed, "rows": b}
            return ServingForm({key: shared}, [[Feature(key, spec_t)]], exact=False)
        if lookup == "remap":
            remap = torch.empty(n, dtype=torch.int32)
            remap[hot_ids] = torch.arange(k, dtype=torch.int32)
            remap[cold] = (k + bucket).to(torch.int32)
            name = f"{table}.remap"
            return ServingForm({key: shared}, [[Feature(key, {"kind": "remap", "buffer": name})]],
                               {name: remap}, exact=False)
        name = f"{table}.hot_ids"
        ids = hot_ids.to(torch.int32 if n <= 2**31 - 1 else torch.int64)
        spec_t = {"kind": "hot_hash", "family": FAMILY, "buffer": name, "hot": k, "buckets": b,
                  "table": tid, "seed": seed}
        return ServingForm({key: shared}, [[Feature(key, spec_t)]], {name: ids}, exact=False)

    def bytes(self, table: TableConfig, dim: int, codec: TableCodec, spec: dict[str, Any]) -> int:
        n = table.num_embeddings
        ratio, hot, lookup, _ = hot_options(spec, table.name)
        k, b = hot_split(n, ratio, hot)
        if b == 0:
            return codec.table_bytes(n, dim)
        rows = codec.table_bytes(k + b, dim)
        if k == 0:
            return rows
        return rows + (4 * n if lookup == "remap" else k * (4 if n <= 2**31 - 1 else 8))


class Tiered:
    """Frequency tiers, each at its own precision (lowprec.serve.tiers)."""

    def share(self, form: ServingForm, spec: dict[str, Any], row_counts: torch.Tensor | None,
              table: str) -> ServingForm:
        if not form.rows_are_ids:
            raise InputError(f"table {table!r}: tiered tables apply to dense tables, not this table's form")
        n = next(iter(form.tables.values())).shape[0]
        return tiered_form(form, spec, check_counts(row_counts, n, table, "tiered tables need"), table)

    def bytes(self, table: TableConfig, dim: int, codec: TableCodec, spec: dict[str, Any]) -> int:
        return tiered_bytes(table.num_embeddings, dim, codec, spec, table.name)


SHARING_KINDS = {"dense": Dense(), "hash": Hash(), "qr": QR(), "robe": Robe(), "hot": Hot(), "tiered": Tiered()}
TRAINED = ("dense", "hash", "qr", "robe")
POST_TRAINING = ("hot", "tiered")


def trained_form(module: nn.Module, table: TableConfig) -> ServingForm:
    """The serving form of a trained table module (its kind from the table's embedding SPEC)."""
    return SHARING_KINDS[parse_spec(table.embedding)[0]].form(module, table.name)


def post_training_form(form: ServingForm, spec: dict[str, Any], row_counts: torch.Tensor | None,
                       table: str) -> ServingForm:
    kind = spec.get("kind", "") if isinstance(spec, dict) else None
    if kind not in POST_TRAINING:
        raise InputError(f"table {table!r}: unknown sharing kind {kind!r} (known: {list(POST_TRAINING)})")
    return SHARING_KINDS[kind].share(form, spec, row_counts, table)


def serving_bytes(table: TableConfig, dim: int, codec: TableCodec, sharing: dict[str, Any] | None) -> int:
    """Bytes the artifact stores for a table served at `codec` with optional post-training sharing."""
    if sharing is not None:
        return SHARING_KINDS[sharing["kind"]].bytes(table, dim, codec, sharing)
    kind, options = parse_spec(table.embedding)
    return SHARING_KINDS[kind].bytes(table, dim, codec, options)
