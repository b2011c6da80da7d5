"""Frequency-tiered tables: hot rows at a high precision packed in their own table, cold rows small.

Post-training sharing kind "tiered" (one handler in lowprec.serve.sharing.SHARING_KINDS):

    {"kind": "tiered", "tiers": [[0.02, "fp16"], [0.1, "int8"]]}

ranks a dense table's rows by access count (calibration's row counts; ties by id), puts the top
2% of rows in tier 0 (fp16), the next 10% in tier 1 (int8) and every other row in the cold tier at
the plan's table precision (e.g. int4 or int2). Each tier is one physical TBE table holding its rows
in id order, contiguously (`<table>.tier<j>`, `<table>.cold`), so the hot rows that take most
lookups share cache lines instead of sitting one per line among cold rows. Every id is in exactly
one tier; the table serves as one feature group per tier and the runtime sums the groups, which is
exact because lowprec pools by sum (its graph, its trainer and its importers take sum-pooled tables
only; there is no other pooling mode to refuse). The form is exact: each row keeps its own value,
quantized at its tier's precision.

The id -> (tier, row) map is a *rank directory* per upper tier j (buffer `<table>.tier<j>.dir`,
int64, one word per 32 ids): bits 0-31 mark which of the block's ids are in tier j, bits 32+ count
tier j's ids below the block. For an id x in block b = x >> 5 with bit i = x & 31:

    in tier j       word_j[b] bit i set
    row in tier j   cum_j[b] + popcount(word_j[b] & (2^i - 1))
    row in cold     x - sum_j (cum_j[b] + popcount(word_j[b] & (2^i - 1)))

One gather per tier and id: 0.25 bytes per original row per upper tier, against 4 (FBGEMM's
index_remapping, or the `remap` transform) and without binary search (the `hot_hash` transform's
searchsorted costs more than the lookup on Zipf traffic). With raw ids every id of the table reads
its word at random, so the directory's size is its cost: in the serving pipeline the TBE's rows push
it out of the cache. The transform spec records the block ("block": 32); artifacts written before it
existed have 16-id words (bits 0-15 members, 16+ counts, no "block" key) and serve as they are
(`widen_directory` makes the native split's 32-id words from them). The transform of tier j returns
-1 for ids not in tier j, which the runtime drops like a pad.

Row order "rank" ({"kind": "tiered", "tiers": [...], "order": "rank"}) stores the rows by rank
instead: tier j holds ranks [bound_j, bound_{j+1}) hottest first, so a rank IS a row of the tiers
laid end to end, and the id map is one int32 rank map (buffer `<table>.rank`, id -> rank, 4 bytes a
row) followed by compares. A feature pipeline that issues ranks instead of ids (its dictionary
renumbered through the published rank map, once per calibration) serves the table without the map:
`QuantizedEmbeddings.lookup_ids(ids, ranked=True)`, the fused split's compares-only mode
(lowprec.serve.tier_native). Hot rows are then packed by popularity inside every tier too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lowprec.errors import InputError
from lowprec.precision import Precision
from lowprec.serve.forms import Feature, ServingForm
from lowprec.serve.tables import TableCodec, table_codec

BLOCK = 32  # ids per directory word (16 in artifacts written before the "block" key)
COLD = "cold"
ORDERS = ("id", "rank")  # rows of each tier in id order (rank directories) or in rank order (rank map)


@dataclass(frozen=True)
class TierSpec:
    """Upper tiers (share of the table's rows, precision), hottest first; the rest is the cold tier."""

    tiers: tuple[tuple[float, Precision], ...]
    order: str = "id"

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise InputError(f"tier row order {self.order!r} is not one of {list(ORDERS)}")
        if not self.tiers:
            raise InputError("a tiered table needs at least one upper tier, e.g. [[0.02, 'fp16']]")
        if any(not 0 < share <= 1 for share, _ in self.tiers) or sum(s for s, _ in self.tiers) > 1 + 1e-9:
            raise InputError(f"tier shares {[s for s, _ in self.tiers]} must each be in (0, 1] and sum to <= 1")

    @classmethod
    def from_json(cls, spec: dict[str, Any], table: str) -> "TierSpec":
        unknown = sorted(set(spec) - {"kind", "tiers", "order"})
        tiers = spec.get("tiers")
        if unknown or not isinstance(tiers, (list, tuple)):
            raise InputError(f"table {table!r}: bad sharing {spec}: 'tiered' takes only "
                             f"tiers=[[share, precision], ...] and order 'id' or 'rank'" + (f"; unknown {unknown}" if unknown else ""))
        out = []
        for t in tiers:
            if not (isinstance(t, (list, tuple)) and len(t) == 2 and isinstance(t[0], (int, float))
                    and not isinstance(t[0], bool)):
                raise InputError(f"table {table!r}: tier {t!r} is not [share, precision]")
            out.append((float(t[0]), Precision.parse(t[1], f"table {table!r} tier precision")))
        try:
            return cls(tuple(out), str(spec.get("order", "id")))
        except InputError as exc:
            raise InputError(f"table {table!r}: {exc}") from None

    def sizes(self, n: int) -> list[int]:
        """Rows of each upper tier then the cold tier (cumulative boundaries rounded, so sizes sum to n)."""
        bounds, acc = [0], 0.0
        for share, _ in self.tiers:
            acc += share
            bounds.append(min(n, int(math.floor(acc * n + 0.5))))
        bounds.append(n)
        return [b - a for a, b in zip(bounds, bounds[1:])]

    def leaves_empty(self, n: int) -> bool:
        """Whether an n-row table would have an empty tier under this layout: an upper tier whose
        share rounds to 0 rows, or the cold tier when the tiers take every row (search does not
        offer such a layout on that table: it stores what a simpler table stores, plus an id map)."""
        return 0 in self.sizes(n)

    def empty_upper(self, n: int) -> list[int]:
        """The upper tiers that hold none of an n-row table's rows (a share under about 1/n rounds
        to 0): each stores nothing and still costs the table its id map."""
        return [j for j, k in enumerate(self.sizes(n)[:-1]) if k == 0]


def empty_tiers_note(table: str, spec: dict[str, Any], n: int, cold: Precision) -> str | None:
    """What a tier layout leaves empty on an n-row table, said once (convert warns it): upper tiers
    whose share rounds to 0 rows (they pay a rank directory, 0.25 bytes a row each, or the rank map
    for nothing), or a cold tier the tiers leave no row (every row at its tier's precision)."""
    tiers = TierSpec.from_json(spec, table)
    sizes, notes = tiers.sizes(n), []
    empty = tiers.empty_upper(n)
    if empty:
        which = ", ".join(f"tier {j} (share {tiers.tiers[j][0]:g}, {tiers.tiers[j][1].value})" for j in empty)
        every = len(empty) == len(tiers.tiers)
        if tiers.order == "id":
            cost = ("; its rank directory (0.25 bytes a row) is stored for nothing" if len(empty) == 1 else
                    "; their rank directories (0.25 bytes a row each) are stored for nothing")
        else:
            cost = "; the table pays its rank map (4 bytes a row) for nothing" if every else ""
        fix = f"store the table as a plain {cold.value} table" if every else "drop the empty tier(s)"
        notes.append(f"{which} hold{'s' if len(empty) == 1 else ''} none of its {n} rows (the share rounds to "
                     f"0 rows){cost}: {fix}, or give each tier a share of at least 1/{n}")
    if sizes[-1] == 0:
        notes.append(f"its tiers take all {n} rows, so its cold tier ({cold.value}) is empty: every row is "
                     f"served at its tier's precision")
    return f"table {table!r}: " + "; ".join(notes) if notes else None


def directory(members: torch.Tensor, n: int, block: int = BLOCK) -> torch.Tensor:
    """The rank directory of a set of ids in [0, n): int64 (ceil(n / block),), see the module
    docstring (`block` 16: the older artifacts' words)."""
    blocks = -(-n // block)
    bits = torch.zeros(blocks * block, dtype=torch.int64)
    bits[members.long()] = 1
    bits = bits.view(blocks, block)
    word = (bits << torch.arange(block, dtype=torch.int64)).sum(1)
    cum = torch.cumsum(bits.sum(1), 0) - bits.sum(1)
    return (cum << block) | word


def widen_directory(words16: torch.Tensor) -> torch.Tensor:
    """A 16-id directory (older artifacts) as the 32-id one of the same members: each pair of words
    one, the first's count and both masks."""
    d = words16.to(torch.int64)
    if d.numel() % 2:
        d = torch.cat([d, d.new_zeros(1)])  # a block of no members
    lo, hi = d[0::2], d[1::2]
    return ((lo >> 16) << 32) | (lo & 0xFFFF) | ((hi & 0xFFFF) << 16)


def rank_tiers(counts: torch.Tensor, sizes: list[int], by_rank: bool = False) -> list[torch.Tensor]:
    """Each tier's ids: rows by count descending (ties by lower id), cut into `sizes`; each tier
    sorted by id, or kept in rank order (`by_rank`)."""
    order = torch.sort(counts, descending=True, stable=True).indices
    parts = torch.split(order, sizes)
    return list(parts) if by_rank else [torch.sort(part).values for part in parts]


def rank_map(parts: list[torch.Tensor], n: int) -> torch.Tensor:
    """id -> rank (int32) of tiers laid end to end in rank order (`parts`: each tier's ids by rank)."""
    ranks = torch.empty(n, dtype=torch.int32 if n < 2**31 else torch.int64)
    ranks[torch.cat(parts).long()] = torch.arange(n, dtype=ranks.dtype)
    return ranks


def _id_maps(parts: list[torch.Tensor], n: int, table: str, order: str) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The buffers and each tier's transform spec: rank directories (order "id") or a rank map."""
    if order == "rank":
        name = f"{table}.rank"
        bounds = [0]
        for ids in parts:
            bounds.append(bounds[-1] + len(ids))
        specs = [{"kind": "tier", "rank": name, "bounds": bounds, "tier": j} for j in range(len(parts))]
        return {name: rank_map(parts, n)}, specs
    dirs = {f"{table}.tier{j}.dir": directory(ids, n) for j, ids in enumerate(parts[:-1])}
    return dirs, [{"kind": "tier", "buffers": list(dirs), "block": BLOCK, "tier": j} for j in range(len(parts))]


def tier_of(counts: torch.Tensor, spec: TierSpec) -> torch.Tensor:
    """Each row's tier index (upper tiers 0.., cold = len(spec.tiers)), by rank."""
    n = len(counts)
    out = torch.empty(n, dtype=torch.int64)
    for j, ids in enumerate(rank_tiers(counts, spec.sizes(n))):
        out[ids] = j
    return out


def tiered_form(form: ServingForm, spec: dict[str, Any], counts: torch.Tensor | None, table: str,
                parts: list[torch.Tensor] | None = None) -> ServingForm:
    """Dense form -> one physical table per tier (the cold tier at the plan's table precision);
    `counts`: the table's checked row access counts, ranked into tiers unless `parts` gives each
    tier's rows (sorted; the search's subset forms: lowprec.search.subset; order "rank" then lays
    each tier out in that order)."""
    tiers = TierSpec.from_json(spec, table)
    if not form.rows_are_ids:
        raise InputError(f"table {table!r}: tiered tables apply to dense tables, not this table's form")
    key = form.groups[0][0].table
    weight = form.tables[key]
    n = weight.shape[0]
    if parts is None:
        parts = rank_tiers(counts.double(), tiers.sizes(n), by_rank=tiers.order == "rank")
    buffers, specs = _id_maps(parts, n, table, tiers.order)
    tables, groups, precisions = {}, [], {}
    for j, ids in enumerate(parts):
        if len(ids) == 0:
            continue
        phys = f"{key}.{COLD}" if j == len(tiers.tiers) else f"{key}.tier{j}"
        tables[phys] = weight[ids]
        if j < len(tiers.tiers):
            precisions[phys] = tiers.tiers[j][1]
        groups.append([Feature(phys, specs[j])])
    return ServingForm(tables, groups, buffers, exact=True, precisions=precisions)


def tiered_bytes(n: int, dim: int, cold: TableCodec, spec: dict[str, Any], table: str) -> int:
    """Bytes of a tiered table of n rows: every tier's rows at its precision plus the directories
    (order "id") or the rank map (order "rank", which a server fed ranks never reads)."""
    tiers = TierSpec.from_json(spec, table)
    sizes = tiers.sizes(n)
    rows = sum(table_codec(p).table_bytes(k, dim) for k, (_, p) in zip(sizes, tiers.tiers))
    maps = (4 if n < 2**31 else 8) * n if tiers.order == "rank" else 8 * (-(-n // BLOCK)) * len(tiers.tiers)
    return rows + cold.table_bytes(sizes[-1], dim) + maps


def traffic_shares(tier_ids: list[torch.Tensor], counts: torch.Tensor) -> list[float]:
    """Each tier's share of a window's lookups (`counts`: the window's row access counts): how much
    traffic the hot tier serves, which drops when popularity moves to ids ranked cold."""
    total = float(counts.sum())
    return [float(counts[ids.long()].sum()) / total if total > 0 else 0.0 for ids in tier_ids]


def parse_layout(text: str, where: str = "tier layout") -> tuple[dict[str, Any], Precision]:
    """'0.02:fp16,0.1:int8/int4' -> ({"kind": "tiered", "tiers": [[0.02, "fp16"], [0.1, "int8"]]}, INT4):
    upper tiers hottest first, then the cold tier's precision (the table's plan precision);
    '.../int4/rank' lays the rows out in rank order ("order": "rank")."""
    upper, sep, cold = str(text).partition("/")
    cold, _, order = cold.partition("/")
    tiers = []
    for part in upper.split(","):
        share, colon, p = part.strip().partition(":")
        try:
            if not colon:
                raise ValueError
            tiers.append([float(share), Precision.parse(p, where).value])
        except ValueError:
            raise InputError(f"{where}: {text!r} is not SHARE:PRECISION[,...]/COLD, e.g. 0.02:fp16/int4") from None
    if not sep:
        raise InputError(f"{where}: {text!r} names no cold precision (…/int4)")
    spec: dict[str, Any] = {"kind": "tiered", "tiers": tiers}
    if order.strip():
        spec["order"] = order.strip()
    try:  # the layout belongs to no table yet: its errors name `where`
        TierSpec(tuple((s, Precision.parse(p)) for s, p in tiers), spec.get("order", "id"))
    except InputError as exc:
        raise InputError(f"{where}: {text!r}: {exc}") from None
    cold_p = Precision.parse(cold.strip(), where)
    check_tier_order([Precision.parse(p) for _, p in tiers], cold_p, f"{where}: {text!r}")
    return spec, cold_p


def check_tier_order(upper: list[Precision], cold: Precision, where: str) -> None:
    """Each tier more precise than the next colder one (or as many bits in another format): a hot
    tier at int2 over an fp32 cold tier, or fp32 over fp32, pays an id map for nothing."""
    chain = [*upper, cold]  # hottest first, the cold tier last
    for j, (hot, colder) in enumerate(zip(chain, chain[1:])):
        if hot is colder or hot.bits < colder.bits:
            next_one = "the cold tier" if j + 1 == len(upper) else f"tier {j + 1}"
            raise InputError(f"{where}: tier {j} ({hot.value}) is {'as precise as' if hot is colder else 'less precise than'} "
                             f"{next_one} ({colder.value}), which serves colder rows; tiers keep hotter rows more precise "
                             f"(e.g. 0.02:fp16/int4), else the table pays an id map for nothing")
