"""The shard plan of model-parallel serving (lowprec.serve.sharded): which rank holds which rows.

`plan_shards` assigns every physical table to one rank; a table bigger than a rank's share of the
bytes (total / N) is first split by id range into pieces of at most that share. Pieces are placed
largest first on the rank with the least load (a heap: O(pieces log N)), load = share of bytes +
share of expected lookups (row access counts from calibration when given, each tier of a tiered
table with its own rows' counts; else each table's hotness spread evenly over its rows, as if ids
were uniform: `lookups_counted` False, and `lowprec shard` says the lookups are unknown). Saved beside the artifact as shard-plan.json (`save_shard_plan`), read back
by `load_shard_plan`, which refuses a plan whose shards do not tile every table's rows exactly, whose
world_size exceeds the tables' rows in all (as `shard --ranks` does), or whose per-shard bytes are
not what the shard's rows hold (inspect shows their sums).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import torch

from lowprec.errors import InputError
from lowprec.fileio import read_json, sha256_file, write_json
from lowprec.jsonsafe import is_int
from lowprec.precision import Precision
from lowprec.serve.tiers import TierSpec, rank_tiers

PLAN_FILE = "shard-plan.json"
FORMAT = "lowprec-shard-plan"


@dataclass(frozen=True)
class Shard:
    table: str  # physical table key
    first: int  # rows [first, stop)
    stop: int
    rank: int
    bytes: int
    lookups: float


@dataclass(frozen=True)
class ShardPlan:
    world_size: int
    shards: tuple[Shard, ...]
    manifest_sha256: str
    # lookups from calibration's row counts (True), or each table's hotness spread over its rows as if
    # ids were uniform (False: no counts; None: a plan written before lowprec recorded which)
    lookups_counted: bool | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError("world_size must be >= 1")
        for s in self.shards:
            if not 0 <= s.rank < self.world_size or not 0 <= s.first < s.stop:
                raise ValueError(f"shard {s} is outside ranks 0..{self.world_size - 1} or empty")

    def of_table(self, key: str) -> list[Shard]:
        """One table's shards by first row (for many tables, one by_table() is one pass)."""
        return self.by_table().get(key, [])

    def by_table(self) -> dict[str, list[Shard]]:
        """Table -> its shards by first row (one pass: plans of many ranks hold many shards)."""
        out: dict[str, list[Shard]] = {}
        for s in self.shards:
            out.setdefault(s.table, []).append(s)
        return {k: sorted(v, key=lambda s: s.first) for k, v in out.items()}

    def by_rank(self) -> list[list[Shard]]:
        out: list[list[Shard]] = [[] for _ in range(self.world_size)]
        for s in self.shards:
            out[s.rank].append(s)
        return out

    def rank_bytes(self) -> list[int]:
        return [sum(s.bytes for s in shards) for shards in self.by_rank()]

    def rank_lookups(self) -> list[float]:
        return [sum(s.lookups for s in shards) for shards in self.by_rank()]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "world_size": self.world_size,
                "manifest_sha256": self.manifest_sha256, "rank_bytes": self.rank_bytes(),
                "rank_lookups": self.rank_lookups(), "lookups_counted": self.lookups_counted,
                "shards": [s.__dict__ for s in self.shards]}

    @classmethod
    def from_json(cls, obj: Any, where: str, max_ranks: int | None = None) -> "ShardPlan":
        """The plan in `obj`; `max_ranks` (the artifact's rows in all, `total_rows`) bounds world_size
        before anything is built per rank."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != 1:
            raise InputError(f"{where}: not a lowprec shard plan (format {FORMAT}, version 1)")
        try:
            world = _whole(obj["world_size"], "world_size")
            shards = tuple(Shard(_text(s["table"], "table"), _whole(s["first"], "first"), _whole(s["stop"], "stop"),
                                 _whole(s["rank"], "rank"), _whole(s["bytes"], "bytes"), float(s["lookups"]))
                           for s in obj["shards"])
            sha = _text(obj["manifest_sha256"], "manifest_sha256")
            counted = obj.get("lookups_counted")
            if counted is not None and not isinstance(counted, bool):
                raise ValueError(f"lookups_counted must be true, false or null, got {counted!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed shard plan ({exc})") from exc
        if world < 1:
            raise InputError(f"{where}: world_size {world} must be >= 1")
        if max_ranks is not None:
            _check_world(world, max_ranks, where)
        for s in shards:
            if not 0 <= s.rank < world or not 0 <= s.first < s.stop:
                raise InputError(f"{where}: table {s.table!r}: shard [{s.first}, {s.stop}) on rank {s.rank} is "
                                 f"empty or outside ranks 0..{world - 1} (world_size {world})")
        return cls(world, shards, sha, counted)

    def check_covers(self, manifest: dict[str, Any], where: str) -> None:
        """Every physical table of `manifest` tiled exactly by its shards: [0, rows) with no gap, overlap
        or row past its end, and no shard of a table the manifest lacks (a gap would drop ids silently)."""
        rows = {t["key"]: int(t["rows"]) for t in manifest["physical_tables"]}
        _check_world(self.world_size, sum(rows.values()), where)
        unknown = sorted({s.table for s in self.shards} - set(rows))
        if unknown:
            raise InputError(f"{where}: names table(s) {unknown} the artifact's manifest.json lacks; "
                             f"run `lowprec shard` again")
        tables = self.by_table()
        for key, n in rows.items():
            at = 0
            for s in tables.get(key, []):
                if s.first != at or s.stop > n:
                    what = (f"rows {at}..{s.first - 1} are in no shard" if s.first > at else
                            f"shards overlap at rows {s.first}..{min(at, s.stop) - 1}" if s.first < at else
                            f"a shard ends at row {s.stop}, past the table's {n} rows")
                    raise InputError(f"{where}: table {key!r}: {what}; its shards must cover rows 0..{n - 1} "
                                     f"exactly once. Run `lowprec shard` again")
                at = s.stop
            if at != n:
                raise InputError(f"{where}: table {key!r}: rows {at}..{n - 1} are in no shard; its shards must "
                                 f"cover rows 0..{n - 1} exactly once. Run `lowprec shard` again")

    def check_bytes(self, manifest: dict[str, Any], where: str) -> None:
        """Each shard's `bytes` are what its rows hold (inspect shows their sums per rank; serving
        does not read them, so a plan built in code need not fill them in). After check_covers."""
        row_bytes = {t["key"]: Precision.parse(t["precision"]).bytes_per_row(int(t["dim"]))
                     for t in manifest["physical_tables"]}
        for s in self.shards:
            if s.bytes != row_bytes[s.table] * (s.stop - s.first):
                raise InputError(f"{where}: table {s.table!r}: shard [{s.first}, {s.stop}) says {s.bytes:,} bytes, "
                                 f"but its {s.stop - s.first:,} rows of {row_bytes[s.table]:,} bytes hold "
                                 f"{row_bytes[s.table] * (s.stop - s.first):,}. Run `lowprec shard` again")


def _check_world(world: int, rows: int, where: str) -> None:
    """As `shard --ranks`: more ranks than the tables hold rows cannot each hold a row (and a plan
    of 10**12 ranks would build a list per rank)."""
    if world > rows:
        raise InputError(f"{where}: world_size {world:,}: the artifact's tables hold {rows:,} rows in all, so at "
                         f"most {rows:,} ranks can hold a row each. Run `lowprec shard --ranks N` again")


def _whole(v: Any, what: str) -> int:
    if not is_int(v):
        raise ValueError(f"{what} must be an integer, got {v!r}")
    return v


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{what} must be a string, got {v!r}")
    return v


def _tier_counts(table: dict[str, Any], counts: Any) -> list[np.ndarray]:
    """Each tier's row access counts, its rows in the artifact's order: the tiers re-ranked from the
    calibration counts convert ranked them from (shard checks that it is the artifact's)."""
    spec = TierSpec.from_json(table["sharing"], table["name"])
    c = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    parts = rank_tiers(c, spec.sizes(len(c)), by_rank=spec.order == "rank")
    return [c[p].numpy() for p in parts]


def _table_lookups(manifest: dict[str, Any], row_counts: dict[str, Any] | None) -> dict[str, np.ndarray | float]:
    """Expected lookups per physical table: per row (identity-served tables and tiers, with counts),
    else a total."""
    out: dict[str, np.ndarray | float] = {t["key"]: 0.0 for t in manifest["physical_tables"]}
    phys_rows = {t["key"]: int(t["rows"]) for t in manifest["physical_tables"]}
    logical = {t["name"]: t for t in manifest.get("tables", [])}
    names = [s["name"] for s in manifest["serving"]]
    for t, s in enumerate(manifest["serving"]):
        counts = None if row_counts is None else row_counts.get(names[t])
        tiers = None
        for group in s["groups"]:
            for f in group:
                feat = manifest["features"][f]
                key, kind = feat["table"], feat["transform"].get("kind")
                if isinstance(out[key], np.ndarray):
                    continue
                if counts is not None and kind == "tier":
                    tiers = tiers or _tier_counts(logical[names[t]], counts)
                    rows = tiers[int(feat["transform"]["tier"])]
                    if len(rows) == phys_rows[key]:
                        out[key] = rows
                        continue
                if counts is not None and kind == "identity":
                    out[key] = np.asarray(counts, dtype=np.float64)
                else:
                    total = float(np.asarray(counts).sum()) if counts is not None else None
                    out[key] = float(out[key]) + (total if total is not None else float(s["hotness"]))
    return out


def plan_shards(manifest: dict[str, Any], manifest_sha256: str, world_size: int,
                row_counts: dict[str, Any] | None = None) -> ShardPlan:
    """Pieces of at most total/N bytes (id ranges of big tables), largest first onto the least loaded rank."""
    tables = manifest["physical_tables"]
    lookups = _table_lookups(manifest, row_counts)
    row_bytes = {t["key"]: Precision.parse(t["precision"]).bytes_per_row(int(t["dim"])) for t in tables}
    total_bytes = sum(row_bytes[t["key"]] * int(t["rows"]) for t in tables)
    share = max(1, -(-total_bytes // world_size))
    pieces = []
    for t in tables:
        key, rows = t["key"], int(t["rows"])
        n = max(1, -(-row_bytes[key] * rows // share))
        cuts = [rows * i // n for i in range(n + 1)]
        lk = lookups[key]
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b > a:
                exp = float(lk[a:b].sum()) if isinstance(lk, np.ndarray) else float(lk) * (b - a) / rows
                pieces.append((key, a, b, row_bytes[key] * (b - a), exp))
    total_lookups = sum(p[4] for p in pieces) or 1.0
    load = [(0.0, r) for r in range(world_size)]  # a heap: the least loaded rank (lowest first on ties)
    shards = []
    for key, a, b, nbytes, exp in sorted(pieces, key=lambda p: (-p[3], -p[4], p[0], p[1])):
        least, r = heapq.heappop(load)
        heapq.heappush(load, (least + nbytes / max(total_bytes, 1) + exp / total_lookups, r))
        shards.append(Shard(key, a, b, r, nbytes, exp))
    return ShardPlan(world_size, tuple(sorted(shards, key=lambda s: (s.table, s.first))), manifest_sha256,
                     row_counts is not None)


def total_rows(manifest: dict[str, Any]) -> int:
    """Rows of all physical tables: the most ranks a shard plan can give a row each."""
    return sum(int(t["rows"]) for t in manifest["physical_tables"])


def save_shard_plan(plan: ShardPlan, artifact: str | Path) -> Path:
    path = Path(artifact) / PLAN_FILE
    write_json(path, plan.to_json())
    return path


def load_shard_plan(artifact: str | Path, manifest: dict[str, Any] | None = None) -> ShardPlan | None:
    """The artifact's shard plan (None if there is none); refused if made for another manifest or if
    its shards do not tile every table of `manifest` (read from the artifact when not given)."""
    path = Path(artifact) / PLAN_FILE
    if not path.is_file():
        return None
    if manifest is None:
        from lowprec.checkpoint.artifact import read_manifest

        manifest = read_manifest(artifact, verify=False)
    plan = ShardPlan.from_json(read_json(path, "shard plan"), str(path), total_rows(manifest))
    if plan.manifest_sha256 != sha256_file(Path(artifact) / "manifest.json"):
        raise InputError(f"{path}: made for another manifest.json (sha256 differs); run `lowprec shard` again")
    plan.check_covers(manifest, str(path))
    plan.check_bytes(manifest, str(path))
    return plan
