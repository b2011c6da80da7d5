"""Model-parallel serving: an artifact's tables spread over the ranks of a gloo/NCCL process group.

The shard plan (`plan_shards`, saved beside the artifact as shard-plan.json and shown by
`lowprec inspect`) assigns every physical table to one rank; a table bigger than a rank's share of
the bytes (total / N) is first split by id range into pieces of at most that share. Pieces are
placed largest first on the rank with the least load, load = share of bytes + share of expected
lookups (row access counts from calibration when given, each tier of a tiered table with its own
rows' counts; else rows), so each rank holds about 1/N of the table bytes and serves about 1/N of
the lookups.

`ShardedEmbeddings` holds one FBGEMM inference TBE over this rank's pieces only (rows read from
weights.safetensors by slice: other ranks' tables are never loaded). A forward, on every rank with
its own batch of rows (sizes may differ; every rank must call it the same number of times):
ids -> id transform (lowprec.serve.transforms) -> routed by (table, id range) to the owning rank ->
all_to_all_single (lengths, ids, weights) -> the owner's TBE pools its bags for every source ->
all_to_all_single back -> partial pools of a split table summed -> per logical table as the
unsharded runtime combines features. Table-wise pieces give the unsharded runtime's numbers
exactly; a table split by id range adds its partial sums in another order (fp32 rounding).

Inputs are checked as the unsharded runtime checks them (lowprec.serve.checks), before any
collective: an id matrix of another shape or a float dtype, dense features of another shape or
batch or holding NaN/Inf, and ids outside their table (which routing used to drop like pads) raise
on the rank that was handed them, naming the place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen
from fbgemm_gpu.tbe.config.embedding_config import BoundsCheckMode
from torch import nn

from lowprec.errors import InputError
from lowprec.fileio import read_json, sha256_file, write_json
from lowprec.graph import DLRMGraph
from lowprec.precision import Precision
from lowprec.serve.checks import check_dense, check_id_matrix, check_matrix_bounds, column_names
from lowprec.serve.tables import table_codec
from lowprec.serve.tiers import TierSpec, rank_tiers
from lowprec.serve.transforms import build_transform

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

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError("world_size must be >= 1")
        for s in self.shards:
            if not 0 <= s.rank < self.world_size or not 0 <= s.first < s.stop:
                raise ValueError(f"shard {s} is outside ranks 0..{self.world_size - 1} or empty")

    def of_table(self, key: str) -> list[Shard]:
        return sorted((s for s in self.shards if s.table == key), key=lambda s: s.first)

    def rank_bytes(self) -> list[int]:
        return [sum(s.bytes for s in self.shards if s.rank == r) for r in range(self.world_size)]

    def rank_lookups(self) -> list[float]:
        return [sum(s.lookups for s in self.shards if s.rank == r) for r in range(self.world_size)]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "world_size": self.world_size,
                "manifest_sha256": self.manifest_sha256, "rank_bytes": self.rank_bytes(),
                "rank_lookups": self.rank_lookups(),
                "shards": [s.__dict__ for s in self.shards]}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "ShardPlan":
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != 1:
            raise InputError(f"{where}: not a lowprec shard plan (format {FORMAT}, version 1)")
        try:
            world = _whole(obj["world_size"], "world_size")
            shards = tuple(Shard(_text(s["table"], "table"), _whole(s["first"], "first"), _whole(s["stop"], "stop"),
                                 _whole(s["rank"], "rank"), _whole(s["bytes"], "bytes"), float(s["lookups"]))
                           for s in obj["shards"])
            sha = _text(obj["manifest_sha256"], "manifest_sha256")
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed shard plan ({exc})") from exc
        if world < 1:
            raise InputError(f"{where}: world_size {world} must be >= 1")
        for s in shards:
            if not 0 <= s.rank < world or not 0 <= s.first < s.stop:
                raise InputError(f"{where}: table {s.table!r}: shard [{s.first}, {s.stop}) on rank {s.rank} is "
                                 f"empty or outside ranks 0..{world - 1} (world_size {world})")
        return cls(world, shards, sha)

    def check_covers(self, manifest: dict[str, Any], where: str) -> None:
        """Every physical table of `manifest` tiled exactly by its shards: [0, rows) with no gap, overlap
        or row past its end, and no shard of a table the manifest lacks (a gap would drop ids silently)."""
        rows = {t["key"]: int(t["rows"]) for t in manifest["physical_tables"]}
        unknown = sorted({s.table for s in self.shards} - set(rows))
        if unknown:
            raise InputError(f"{where}: names table(s) {unknown} the artifact's manifest.json lacks; "
                             f"run `lowprec shard` again")
        for key, n in rows.items():
            at = 0
            for s in self.of_table(key):
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


def _whole(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
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
    load = [0.0] * world_size
    shards = []
    for key, a, b, nbytes, exp in sorted(pieces, key=lambda p: (-p[3], -p[4], p[0], p[1])):
        r = min(range(world_size), key=lambda i: (load[i], i))
        load[r] += nbytes / max(total_bytes, 1) + exp / total_lookups
        shards.append(Shard(key, a, b, r, nbytes, exp))
    return ShardPlan(world_size, tuple(sorted(shards, key=lambda s: (s.table, s.first))), manifest_sha256)


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
    plan = ShardPlan.from_json(read_json(path, "shard plan"), str(path))
    if plan.manifest_sha256 != sha256_file(Path(artifact) / "manifest.json"):
        raise InputError(f"{path}: made for another manifest.json (sha256 differs); run `lowprec shard` again")
    if manifest is None:
        from lowprec.checkpoint.artifact import read_manifest

        manifest = read_manifest(artifact, verify=False)
    plan.check_covers(manifest, str(path))
    return plan


def _a2a(send: torch.Tensor, send_splits: list[int], recv_splits: list[int]) -> torch.Tensor:
    out = torch.empty(sum(recv_splits), dtype=send.dtype)
    tdist.all_to_all_single(out, send.contiguous(), recv_splits, send_splits)
    return out


class ShardedEmbeddings(nn.Module):
    """This rank's pieces in one TBE; ids and pooled embeddings exchanged with all_to_all_single."""

    def __init__(self, dim: int, manifest: dict[str, Any], plan: ShardPlan, rank: int, get_rows: Any,
                 buffers: dict[str, torch.Tensor]):
        super().__init__()
        self.dim, self.rank, self.world = dim, rank, plan.world_size
        phys = {t["key"]: t for t in manifest["physical_tables"]}
        self.features = [(f["table"], f["transform"]) for f in manifest["features"]]
        self.hotness = [int(s["hotness"]) for s in manifest["serving"]]
        self.names = [s["name"] for s in manifest["serving"]]
        rows = [int(t["num_embeddings"]) for t in manifest["model"]["tables"]]
        self.slot_table = [t for t, h in enumerate(self.hotness) for _ in range(h)]
        self.slot_rows = torch.tensor([rows[t] for t in self.slot_table], dtype=torch.int64)
        self.groups = [[list(g) for g in s["groups"]] for s in manifest["serving"]]
        owner = {f: t for t, s in enumerate(manifest["serving"]) for g in s["groups"] for f in g}
        self.feature_table = [owner[f] for f in range(len(self.features))]
        self.fdim = [int(phys[k]["dim"]) for k, _ in self.features]
        # owned[r]: (feature, shard) pairs rank r serves, in its TBE's feature order (same on every rank)
        self.owned = [[(f, s) for f, (key, _) in enumerate(self.features) for s in plan.of_table(key) if s.rank == r]
                      for r in range(self.world)]
        mine = sorted({(s.table, s.first) for _, s in self.owned[rank]})
        shard_of = {(s.table, s.first): s for s in plan.shards}
        specs, index = [], {}
        for key, first in mine:
            s, t = shard_of[(key, first)], phys[key]
            index[(key, first)] = len(specs)
            specs.append(table_codec(Precision.parse(t["precision"])).tbe_spec(f"{key}@{first}", s.stop - first, int(t["dim"])))
        self.local_bytes = 0
        self.tbe = None
        if specs:
            self.tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
                specs, feature_table_map=[index[(s.table, s.first)] for _, s in self.owned[rank]],
                output_dtype=SparseType.FP32, device="cpu", bounds_check_mode=BoundsCheckMode.NONE)
            self.tbe.initialize_weights()
            for (key, first), (dst, _) in zip(mine, self.tbe.split_embedding_weights(split_scale_shifts=False)):
                rows = get_rows(key, first, shard_of[(key, first)].stop)
                dst[:, : rows.shape[1]].copy_(rows)
                self.local_bytes += dst.numel() * dst.element_size()
        self.id_maps = nn.ModuleList(build_transform(tr, buffers, f"feature {i}") for i, (_, tr) in enumerate(self.features))

    def _route(self, sparse: torch.Tensor) -> list[tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]]:
        """Per destination rank: lengths (B,), ids and weights of each (feature, shard) it owns."""
        tables = torch.split(sparse, self.hotness, dim=1)
        mapped = []
        for f, id_map in enumerate(self.id_maps):
            ids = tables[self.feature_table[f]].long()
            valid = ids != -1
            m, w = id_map(torch.where(valid, ids, torch.zeros_like(ids)))
            mapped.append((m, valid, w if w is not None else torch.ones(m.shape)))
        out = []
        for r in range(self.world):
            lens, idx, wts = [], [], []
            for f, s in self.owned[r]:
                m, valid, w = mapped[f]
                keep = valid & (m >= s.first) & (m < s.stop)
                lens.append(keep.sum(1))
                idx.append(m[keep] - s.first)
                wts.append(w[keep].float())
            out.append((lens, idx, wts))
        return out

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        """(B, slots) ids of this rank's rows -> pooled (B, T, D); a collective: call on every rank."""
        b = check_id_matrix(sparse, len(self.slot_table))
        check_matrix_bounds(sparse, self.slot_rows, self.slot_table, self.names)
        routed = self._route(sparse)
        counts = torch.tensor([[b, int(sum(i.numel() for i in idx))] for _, idx, _ in routed], dtype=torch.int64)
        got = _a2a(counts.reshape(-1), [2] * self.world, [2] * self.world).view(self.world, 2)
        n_mine = len(self.owned[self.rank])
        src_b, src_n = got[:, 0].tolist(), got[:, 1].tolist()
        lens = _a2a(torch.cat([torch.cat(l) if l else torch.zeros(0, dtype=torch.int64) for l, _, _ in routed]),
                    [b * len(self.owned[r]) for r in range(self.world)], [x * n_mine for x in src_b])
        ids = _a2a(torch.cat([torch.cat(i) if i else torch.zeros(0, dtype=torch.int64) for _, i, _ in routed]),
                   counts[:, 1].tolist(), src_n)
        wts = _a2a(torch.cat([torch.cat(w) if w else torch.zeros(0) for _, _, w in routed]),
                   counts[:, 1].tolist(), src_n)
        pooled = self._pool(lens, ids, wts, src_b, src_n)
        widths = [sum(self.fdim[f] for f, _ in self.owned[r]) for r in range(self.world)]
        back = _a2a(pooled, [x * widths[self.rank] for x in src_b], [b * w for w in widths])
        return self._combine(back, b, widths)

    def _pool(self, lens, ids, wts, src_b: list[int], src_n: list[int]) -> torch.Tensor:
        """Every source's bags of this rank's features through the local TBE, rows source-major."""
        n_mine, total_b = len(self.owned[self.rank]), sum(src_b)
        if n_mine == 0 or total_b == 0:
            return torch.zeros(0)
        lens_s = torch.split(lens, [x * n_mine for x in src_b])
        ids_s, wts_s = torch.split(ids, src_n), torch.split(wts, src_n)
        f_lens, f_ids, f_wts = [], [], []
        per_src = [(ls.view(n_mine, -1), list(torch.split(i, ls.view(n_mine, -1).sum(1).tolist())),
                    list(torch.split(w, ls.view(n_mine, -1).sum(1).tolist())))
                   for ls, i, w in zip(lens_s, ids_s, wts_s)]
        for j in range(n_mine):  # feature-major, sources concatenated along the batch
            for ls, i, w in per_src:
                f_lens.append(ls[j])
                f_ids.append(i[j])
                f_wts.append(w[j])
        offsets = torch.zeros(n_mine * total_b + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.cat(f_lens), 0)
        out = self.tbe(torch.cat(f_ids).int(), offsets.int(), torch.cat(f_wts))  # (total_b, width)
        return torch.cat([part.reshape(-1) for part in torch.split(out, src_b)])

    def _combine(self, back: torch.Tensor, b: int, widths: list[int]) -> torch.Tensor:
        pooled = {}  # feature -> (B, fdim) summed over its shards
        for r, part in enumerate(torch.split(back, [b * w for w in widths])):
            cols = part.view(b, widths[r]) if widths[r] else None
            start = 0
            for f, _ in self.owned[r]:
                x = cols[:, start: start + self.fdim[f]]
                pooled[f] = x if f not in pooled else pooled[f] + x
                start += self.fdim[f]
        per_table = []
        for groups in self.groups:
            acc = torch.zeros(b, self.dim)
            for group in groups:
                acc = acc + torch.cat([pooled[f] for f in group], dim=1)[:, : self.dim]
            per_table.append(acc)
        return torch.stack(per_table, dim=1)


class ShardedDLRM(DLRMGraph):
    """The DLRM graph over `ShardedEmbeddings` (MLPs replicated on every rank)."""

    reads_feature_ids = False

    def __init__(self, config: Any, embeddings: ShardedEmbeddings, layers: dict[str, nn.Module]):
        super().__init__([layers[f"bottom.{i}"] for i in range(len(config.bottom_mlp))],
                         [layers[f"top.{i}"] for i in range(len(config.top_mlp) + 1)], len(config.tables))
        self.config = config
        self.embeddings = embeddings
        self.dense_names = column_names(list(config.dense_names), config.dense_in)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        dense = check_dense(dense, check_id_matrix(sparse, len(self.embeddings.slot_table)), self.dense_names)
        return self.logits(dense, self.embeddings(sparse))


def load_sharded(artifact: str | Path, plan: ShardPlan | None = None) -> ShardedDLRM:
    """This rank's part of a sharded artifact (the process group must be up, world size = the plan's)."""
    from safetensors import safe_open

    from lowprec.checkpoint.artifact import MANIFEST, WEIGHTS, read_manifest
    from lowprec.model.config import DLRMConfig
    from lowprec.serve.layers import layer_codec

    root = Path(artifact)
    manifest = read_manifest(root)
    if plan is None:
        plan = load_shard_plan(root, manifest)
    else:  # a plan built in code: the same checks as one read from the artifact
        plan.check_covers(manifest, "shard plan")
    if plan is None:
        raise InputError(f"{root}: no {PLAN_FILE}; run `lowprec shard {root} --ranks N` first")
    world = tdist.get_world_size() if tdist.is_initialized() else 1
    if plan.world_size != world:
        raise InputError(f"{root / PLAN_FILE}: planned for {plan.world_size} ranks, this job has {world}")
    config = DLRMConfig.from_json(manifest["model"], str(root / MANIFEST))
    with safe_open(str(root / WEIGHTS), framework="pt") as src:
        layers = {n: layer_codec(Precision.parse(spec["precision"], f"layer {n}"), f"layer {n!r}").build(
            lambda suffix, n=n: src.get_tensor(f"layers.{n}.{suffix}"), spec) for n, spec in manifest["layers"].items()}
        buffers = {n: src.get_tensor(f"buffers.{n}") for n in manifest.get("buffers", [])}
        emb = ShardedEmbeddings(config.embedding_dim, manifest, plan, tdist.get_rank() if tdist.is_initialized() else 0,
                                lambda key, a, b: src.get_slice(f"tables.{key}")[a:b], buffers)
    model = ShardedDLRM(config, emb, layers)
    model.eval()
    return model
