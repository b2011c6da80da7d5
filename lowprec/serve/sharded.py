"""Model-parallel serving: an artifact's tables spread over the ranks of a gloo/NCCL process group.

The shard plan (lowprec.serve.shard_plan, saved beside the artifact as shard-plan.json and shown
by `lowprec inspect`) assigns every physical table, or id range of one, to a rank, so each rank holds
about 1/N of the table bytes and serves about 1/N of the lookups.

`ShardedEmbeddings` holds one FBGEMM inference TBE over this rank's pieces only (rows read from
weights.safetensors by slice: other ranks' tables are never loaded). A forward, on every rank with
its own batch of rows (sizes may differ; every rank must call it the same number of times):
ids -> id transform (lowprec.serve.transforms) -> routed by (table, id range) to the owning rank ->
all_to_all_single (lengths, ids, weights) -> the owner's TBE pools its bags for every source ->
all_to_all_single back -> partial pools of a split table summed -> per logical table as the
unsharded runtime combines features. Table-wise pieces give the unsharded runtime's numbers
exactly; a table split by id range adds its partial sums in another order (fp32 rounding).

Inputs are checked as the unsharded runtime checks them (lowprec.serve.checks), before any
data moves: an id matrix of another shape or a float dtype, dense features of another shape or
batch or holding NaN/Inf, and ids outside their table (which routing used to drop like pads) raise
on the rank that was handed them, naming the place. The ranks agree on it in the forward's first
exchange (each rank's batch and id counts carry a refused flag), so the other ranks raise
`PeerRefused` at once rather than wait in a collective until the process group's timeout, and every
rank stays in step for the next call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen
from fbgemm_gpu.tbe.config.embedding_config import BoundsCheckMode
from torch import nn

from lowprec.errors import InputError
from lowprec.graph import DLRMGraph
from lowprec.precision import Precision
from lowprec.serve.shard_plan import PLAN_FILE, ShardPlan, load_shard_plan
from lowprec.serve.checks import check_dense, check_id_matrix, check_matrix_bounds, column_names
from lowprec.serve.tables import table_codec
from lowprec.serve.transforms import build_transform

class PeerRefused(InputError):
    """Another rank refused its input, so this call served no rank (every rank may call again)."""


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
        by_table = plan.by_table()
        self.owned = [[(f, s) for f, (key, _) in enumerate(self.features) for s in by_table.get(key, []) if s.rank == r]
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

    def forward(self, sparse: torch.Tensor, refused: InputError | None = None) -> torch.Tensor:
        """(B, slots) ids of this rank's rows -> pooled (B, T, D); a collective: call on every rank.
        `refused`: the caller's own check of this rank's other inputs failed (ShardedDLRM's dense)."""
        try:
            if refused is not None:
                raise refused
            b = check_id_matrix(sparse, len(self.slot_table))
            check_matrix_bounds(sparse, self.slot_rows, self.slot_table, self.names)
            routed = self._route(sparse)
            counts = torch.tensor([[b, int(sum(i.numel() for i in idx)), 0] for _, idx, _ in routed],
                                  dtype=torch.int64)
        except InputError as exc:  # tell the other ranks before raising, so none waits for this one
            if self.world == 1:  # (no peer: a one-rank plan needs no process group to refuse)
                raise
            refused = exc
            counts = torch.tensor([[0, 0, 1]] * self.world, dtype=torch.int64)
        got = _a2a(counts.reshape(-1), [3] * self.world, [3] * self.world).view(self.world, 3)
        if refused is not None:
            raise refused
        peers = [r for r in range(self.world) if int(got[r, 2])]
        if peers:
            raise PeerRefused(f"rank{'s' * (len(peers) > 1)} {', '.join(map(str, peers))} refused "
                              f"{'their' if len(peers) > 1 else 'its'} input (see that rank's error): this call "
                              f"served no rank")
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
        refused = None
        try:
            dense = check_dense(dense, check_id_matrix(sparse, len(self.embeddings.slot_table)), self.dense_names)
        except InputError as exc:  # said to the other ranks in the embeddings' first exchange
            refused = exc
        return self.logits(dense, self.embeddings(sparse, refused))


def load_sharded(artifact: str | Path, plan: ShardPlan | None = None) -> ShardedDLRM:
    """This rank's part of a sharded artifact (the process group must be up, world size = the plan's)."""
    from lowprec.checkpoint.artifact import MANIFEST, WEIGHTS, read_manifest
    from lowprec.checkpoint.mapped import open_tensors
    from lowprec.checkpoint.validate_serving import check_buffers
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
    # read-only shared mappings, as load_artifact's: each rank copies its shards' rows into its own
    # TBE, so it needs memory for its share only (safe_open maps the whole file private and writable)
    src = open_tensors(root / WEIGHTS)
    layers = {n: layer_codec(Precision.parse(spec["precision"], f"layer {n}"), f"layer {n!r}").build(
        lambda suffix, n=n: src.get_tensor(f"layers.{n}.{suffix}"), spec) for n, spec in manifest["layers"].items()}
    buffers = {n: src.get_tensor(f"buffers.{n}") for n in manifest.get("buffers", [])}
    check_buffers(manifest, config, buffers, str(root / MANIFEST))  # as load_artifact: transforms in range
    emb = ShardedEmbeddings(config.embedding_dim, manifest, plan, tdist.get_rank() if tdist.is_initialized() else 0,
                            lambda key, a, b: src.table(f"tables.{key}")[a:b], buffers)
    model = ShardedDLRM(config, emb, layers)
    model.eval()
    return model
