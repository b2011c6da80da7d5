"""The native id split of tiered tables: building, loading and calling tier_split.c.

A tiered table (lowprec.serve.tiers) serves as one TBE feature per tier. The stock-op path maps every
id once per tier (`TierLookup`, ~20 torch passes over the ids) and hands FBGEMM bags padded with -1
for the other tiers' ids, which its CPU kernel walks slowly. `split` does the same map in one C pass
over the batch and writes the TBE's input directly: each tier's compacted bags (pads and other
tiers' ids dropped) and their offsets, every untiered identity table's ids copied beside them.
`pool` sums each table's tiers in the TBE's output in one more pass. Lookups are bit-identical to
the stock path (the TBE sums the same rows in the same order, and the tiers are added in the
stock path's order; tests/serve/test_tier_native.py).

`SplitPlan.of(embeddings)` says whether a runtime can take this path: every feature an identity or
a `tier` transform, features table-major with each tiered table's tiers consecutive and in order
(what `embeddings_from_forms` and the artifact loader build); otherwise None and the runtime keeps
its stock ops. Ranked ids (`ranked=True`: a rank-ordered tiered table's ids already mapped to ranks
upstream, lowprec.serve.tiers "order": "rank") skip the rank-map gather: the split is compares only.

Built on first use by `lowprec.native` (system C compiler, cached); where it cannot be built
`kernel()` returns None once with a warning and the runtime runs its torch ops. A ctypes call cannot
be scripted: the TorchScript export keeps the stock path.
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowprec import native
from lowprec.errors import InputError
from lowprec.serve.tiers import BLOCK, widen_directory

SOURCE = Path(__file__).with_name("tier_split.c")
COPY, DIRECTORY, RANGE, RANK_GATHER = 0, 1, 2, 3
MAX_TIERS = 16
_PLANS: "weakref.WeakKeyDictionary[Any, SplitPlan | None]" = weakref.WeakKeyDictionary()


class BadIds(InputError):
    """An id the kernel refused (not -1 and not in [0, rows)); the runtime names it (check_flat)."""


def _declare(dll: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    dll.lowprec_tier_split.argtypes = [p, i64, i32, p, p, p, p, p, p, p, p]
    dll.lowprec_tier_split.restype = i32
    dll.lowprec_tier_pool.argtypes = [p, i64, i32, p, i64, p]
    dll.lowprec_tier_pool.restype = None


def kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, built on first use; None (warned once) where it cannot be."""
    return native.load(SOURCE, _declare, "native tiered id split")


def _i32(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


@dataclass
class SplitPlan:
    """Per logical table: how the kernel splits it, and the tensors it reads (kept alive here)."""

    kinds: torch.Tensor        # int32 per table: COPY, DIRECTORY or RANK_GATHER (raw ids)
    ranked_kinds: torch.Tensor  # the same with RANK_GATHER -> RANGE (ids already ranks)
    tiers: torch.Tensor        # int32 per table: its number of TBE features
    rows: torch.Tensor         # int64 per table: ids (ranks too) must be -1 or in [0, rows)
    hotness: torch.Tensor      # int32 per table
    params: torch.Tensor       # uint64 per table: address of its parameter pointer array (or 0)
    keep: list[torch.Tensor]   # every tensor an address above points into
    features: int              # TBE features
    slots: int                 # ids a sample (sum of hotness)
    scratch_slots: int         # the kernel's scratch a sample: max over tiered tables of tiers x hotness

    @classmethod
    def of(cls, emb: Any) -> "SplitPlan | None":
        """The plan of a QuantizedEmbeddings, or None where its features are not all identity/tier
        features in table-major, tier order."""
        by_table: list[list[int]] = [[] for _ in emb.serving]
        for f, t in enumerate(emb.feature_table):
            by_table[t].append(f)
        order = [f for fs in by_table for f in fs]
        if order != list(range(len(emb.features))):
            return None
        kinds, ranked, tiers, params, keep = [], [], [], [], []
        phys_rows = {t.key: t.rows for t in emb.physical}
        rows = emb.table_rows.clone()
        for t, fs in enumerate(by_table):
            specs = [emb.features[f].transform for f in fs]
            maps = [emb.id_maps[f] for f in fs]
            if len(fs) == 1 and specs[0].get("kind") == "identity":
                kinds.append(COPY), ranked.append(COPY), tiers.append(1), params.append(0)
                continue
            if any(s.get("kind") != "tier" for s in specs) or len(fs) > MAX_TIERS:
                return None
            if [m.tier for m in maps] != list(range(len(fs))) or maps[-1].tier != maps[-1].upper:
                return None
            cold = maps[-1]
            # the tiers hold every id once: no id past them, whatever rows the runtime was given
            rows[t] = min(int(rows[t]), sum(phys_rows[emb.features[f].table] for f in fs))
            if cold.ranked_layout:
                ptrs = torch.tensor([cold.bounds.data_ptr(), cold.rank.data_ptr()], dtype=torch.int64)
                keep += [cold.bounds, cold.rank]
                kinds.append(RANK_GATHER), ranked.append(RANGE)
            else:
                dirs = [d if cold.block == BLOCK else widen_directory(d) for d in cold.dirs]
                ptrs = torch.tensor([d.data_ptr() for d in dirs] or [0], dtype=torch.int64)
                keep += dirs
                kinds.append(DIRECTORY), ranked.append(DIRECTORY)
            keep.append(ptrs)
            tiers.append(len(fs))
            params.append(ptrs.data_ptr())
        scratch = max([k * h for k, h, kd in zip(tiers, emb.hotness, kinds) if kd != COPY] or [0])
        return cls(_i32(kinds), _i32(ranked), _i32(tiers), rows, _i32(list(emb.hotness)),
                   torch.tensor(params, dtype=torch.int64), keep, len(emb.features), sum(emb.hotness), scratch)


VECTOR_SLACK = 8  # int32 slots past the kernel's outputs: its AVX2 loop stores whole 8-lane vectors


def split(plan: SplitPlan, ids: torch.Tensor, batch: int, ranked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Table-major ids (int32, batch x hotness[t] per table, -1 pads) -> the TBE's (indices,
    offsets), int32; `ranked`: rank-ordered tiered tables' ids are ranks already."""
    lib = kernel()
    if lib is None:
        raise RuntimeError("the native tiered id split is unavailable")
    ids = ids.to(torch.int32).contiguous()
    if ids.numel() != batch * plan.slots:
        raise ValueError(f"{ids.numel()} ids for batch {batch} and hotness {plan.hotness.tolist()}")
    out_idx = torch.empty(ids.numel() + VECTOR_SLACK, dtype=torch.int32)
    out_off = torch.empty(plan.features * batch + 1, dtype=torch.int32)
    scratch = torch.empty(batch * plan.scratch_slots + VECTOR_SLACK, dtype=torch.int32)
    kinds = plan.ranked_kinds if ranked else plan.kinds
    rc = lib.lowprec_tier_split(ids.data_ptr(), batch, len(plan.hotness), plan.hotness.data_ptr(),
                                kinds.data_ptr(), plan.tiers.data_ptr(), plan.rows.data_ptr(),
                                plan.params.data_ptr(), out_idx.data_ptr(), out_off.data_ptr(),
                                scratch.data_ptr())
    if rc:
        if rc > 0:
            raise BadIds(f"tiered id split: table {rc - 1} holds an id that is neither -1 nor in [0, "
                         f"{int(plan.rows[rc - 1])})")
        raise ValueError("tiered id split: bad table descriptors")
    return out_idx[: int(out_off[-1])], out_off


def pool(tiers: torch.Tensor, out: torch.Tensor, batch: int, dim: int) -> torch.Tensor:
    """The TBE's (batch, features x dim) float output -> pooled (batch, tables, dim), table t's
    `tiers[t]` (int32) features summed in one pass; equal bit for bit to `pooled_from_tbe`, which
    takes two gathers and an index_add, ~2x the time at full scale (reports/tiered.md)."""
    lib = kernel()
    if lib is None:
        raise RuntimeError("the native tiered id split is unavailable")
    out, tiers = out.contiguous(), tiers.to(torch.int32).contiguous()
    features = int(tiers.sum())
    if out.dtype != torch.float32 or out.numel() != batch * features * dim or bool((tiers < 1).any()):
        raise ValueError(f"a TBE output of {out.numel()} {out.dtype} for batch {batch}, "
                         f"tables of {tiers.tolist()} features of width {dim}")
    pooled = torch.empty(batch, len(tiers), dim)
    lib.lowprec_tier_pool(out.data_ptr(), batch, len(tiers), tiers.data_ptr(), dim, pooled.data_ptr())
    return pooled


def plan_of(emb: Any) -> SplitPlan | None:
    """`emb`'s plan, made once per module (its buffers are read where they are at that time)."""
    if emb not in _PLANS:
        _PLANS[emb] = SplitPlan.of(emb) if any(f.transform.get("kind") == "tier" for f in emb.features) else None
    return _PLANS[emb]


def lookup(emb: Any, flat: torch.Tensor, batch: int, ranked: bool = False) -> torch.Tensor | None:
    """The runtime's native path: table-major ids -> pooled (batch, tables, D) through the split, the
    module's TBE and the native pooling (where every feature is D wide, else the module's own); None
    where the module has no tiered table, its features do not fit the kernel, or the kernel cannot
    be built."""
    plan = plan_of(emb)
    if plan is None or kernel() is None:
        return None
    return lookup_split(emb, plan, *split(plan, flat, batch, ranked), batch)


def lookup_split(emb: Any, plan: SplitPlan, indices: torch.Tensor, offsets: torch.Tensor, batch: int) -> torch.Tensor:
    """The native path after the split: `emb`'s TBE on `split`'s (indices, offsets), pooled to (batch,
    tables, D) by `pool` where every feature is D wide, else by the module's own torch ops. (The
    benchmarks time it on ids split beforehand: the layout's cost without the split.)"""
    out = emb.tbe(indices, offsets)
    if emb.one_gather_pool:
        return pool(plan.tiers, out, batch, emb.dim)
    return emb.pooled_from_tbe(out, batch)


def ranked_inputs(emb: Any, tables: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The stock-op path for ranked ids (where the kernel does not apply): the runtime's
    `tbe_inputs`, with rank-ordered tiers mapped from the ranks directly (`TierLookup.from_ranks`)."""
    b = tables[0].shape[0] if tables else 0
    idx, lens, wts, any_weight = [], [], [], False
    for f, id_map in enumerate(emb.id_maps):
        ids = tables[emb.feature_table[f]].long()
        valid = ids != -1
        x = torch.where(valid, ids, torch.zeros_like(ids))
        if getattr(id_map, "ranked_layout", False):
            mapped, w = id_map.from_ranks(x), None
        else:
            mapped, w = id_map(x)
        valid = valid & (mapped >= 0)
        idx.append(mapped[valid])
        lens.append(valid.sum(1))
        any_weight = any_weight or w is not None
        wts.append(w[valid] if w is not None else torch.ones(idx[-1].shape[0]))
    offsets = torch.zeros(b * len(lens) + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(torch.cat(lens), 0)
    return torch.cat(idx).int(), offsets, torch.cat(wts).float() if any_weight else None
