"""The quantized runtime: one FBGEMM inference TBE for every table, FBGEMM int8 linears for the MLPs.

`QuantizedDLRM` is `lowprec.graph.DLRMGraph` over `QuantizedEmbeddings` and per-layer serving
modules (lowprec.serve.layers). `QuantizedEmbeddings` holds one
`IntNBitTableBatchedEmbeddingBagsCodegen` with every physical table at its own precision (declared
by its handler, lowprec.serve.tables) and one id-transform module per TBE feature
(lowprec.serve.transforms). It needs only torch and fbgemm_gpu plus the tensors of an artifact,
and it is TorchScript-compatible: the export scripts this very module.

Ids come either as the (B, slots) matrix (`forward`, scriptable) or, faster, as `FeatureIds`
built by the data loader in FBGEMM's own layout (`lookup_ids`). Pads (-1) are skipped by the TBE;
where every id transform keeps -1 (identity, tier) bags keep their slots (`padded_inputs`), else
pads and ids a transform maps to -1 are dropped (`tbe_inputs`). Eager calls on tables that are all
identity or tiered take the native fused split and pooling instead where they build (`native_lookup`,
lowprec.serve.tier_native: same lookups, bit for bit); the TorchScript export keeps the torch ops.

Bounds: every id must be -1 (a pad) or in [0, logical rows of its table) (the model config's
num_embeddings, passed in as `rows`). Both entry points check this on the logical ids, before any id
transform, with one max per table and one global min per call (the TBE itself runs with BoundsCheckMode.NONE: its
check sees physical ids after hashing, which wrap silently); a bad id raises `IdOutOfRange` naming
the table, the id, its batch row and the table's rows. The check is scripted with the module, so the
TorchScript export refuses bad ids with the same message.

Inputs: both entry points take only integer ids (`checks.check_id_matrix`: the (B, slots) matrix of
an integer dtype; `FeatureIds.check`: the fixed-slot int32 layout), and `QuantizedDLRM` the
(B, n_dense) finite dense features of the same batch (`checks.check_dense`), as the TorchScript
export does: a bad input raises `BadServingInput` naming the shape, batch sizes or column and row.
Serving modules hold no parameter that requires grad, so outputs carry no autograd graph.
"""


from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
    IntNBitTableBatchedEmbeddingBagsCodegen,
)
from fbgemm_gpu.tbe.config.embedding_config import BoundsCheckMode
from torch import nn

from lowprec.data.ids import FeatureIds, IdOutOfRange
from lowprec.errors import InputError
from lowprec.graph import DLRMGraph
from lowprec.model.config import DLRMConfig
from lowprec.precision import Precision
from lowprec.serve import tier_native
from lowprec.serve.checks import BadServingInput, check_dense, check_id_matrix, column_names, out_of_range
from lowprec.serve.forms import Feature
from lowprec.serve.tables import table_codec
from lowprec.serve.transforms import KEEPS_PADS, build_transform


@dataclass(frozen=True)
class PhysicalTable:
    key: str
    rows: int
    dim: int  # stored dim (a multiple of 4; >= the model's dim when padded)
    precision: Precision


@dataclass(frozen=True)
class TableServing:
    """How logical table t serves: feature groups (indices into the TBE's feature list)."""

    name: str
    hotness: int
    groups: tuple[tuple[int, ...], ...]


__all__ = ["IdOutOfRange", "BadServingInput", "QuantizedDLRM", "QuantizedEmbeddings"]


def default_rows(tables: list[PhysicalTable], features: list[Feature],
                 serving: list[TableServing]) -> list[int]:
    """Logical rows when none are given: a dense table's physical rows; else only pads/negatives
    are refused (a transformed table alone does not say how many logical ids it serves)."""
    rows = {t.key: t.rows for t in tables}
    out = []
    for s in serving:
        f = [features[i] for g in s.groups for i in g]
        dense = len(f) == 1 and f[0].transform.get("kind") == "identity"
        out.append(rows[f[0].table] if dense else 2**62)
    return out


class QuantizedEmbeddings(nn.Module):
    """Every logical table served by one TBE: ids -> pooled (B, T, D)."""

    hotness: List[int]
    feature_table: List[int]
    feature_hotness: List[int]
    group_slices: List[List[List[Tuple[int, int]]]]
    names: List[str]
    uniform_hotness: bool
    native_split: bool
    one_gather_pool: bool
    n_features: int
    n_slots: int

    def __init__(self, dim: int, tables: list[PhysicalTable], features: list[Feature],
                 serving: list[TableServing], buffers: dict[str, torch.Tensor] | None = None,
                 rows: list[int] | None = None, allocate: bool = True):
        super().__init__()
        self.dim, self.n_tables = dim, len(serving)
        rows = list(rows) if rows is not None else default_rows(tables, features, serving)
        if len(rows) != len(serving) or any(r < 1 for r in rows):
            raise InputError(f"logical rows {rows} do not match the {len(serving)} served tables")
        self.names = [s.name for s in serving]
        self.uniform_hotness = len({s.hotness for s in serving}) <= 1
        self.register_buffer("table_rows", torch.tensor(rows, dtype=torch.int64), persistent=False)
        self.register_buffer("slot_rows", torch.tensor(
            [r for r, s in zip(rows, serving) for _ in range(s.hotness)], dtype=torch.int64), persistent=False)
        self.physical, self.features, self.serving = tables, features, serving
        index = {t.key: i for i, t in enumerate(tables)}
        self.tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
            [table_codec(t.precision).tbe_spec(t.key, t.rows, t.dim) for t in tables],
            feature_table_map=[index[f.table] for f in features],
            output_dtype=SparseType.FP32, device="cpu", bounds_check_mode=BoundsCheckMode.NONE)
        if allocate:  # else the caller serves the TBE from existing bytes (`serve_from`)
            self.tbe.initialize_weights()
        self.id_maps = nn.ModuleList(build_transform(f.transform, buffers or {}, f"feature {i}")
                                     for i, f in enumerate(features))
        self.hotness = [s.hotness for s in serving]
        self.n_slots = sum(self.hotness)
        owner = {f: t for t, s in enumerate(serving) for g in s.groups for f in g}
        self.feature_table = [owner[f] for f in range(len(features))]
        # Padded path: every transform maps -1 (and ids not in its table, as a tier's) to -1 and
        # every kernel skips -1, so bags keep their slots: no masking, no lengths (tiered tables).
        self.padded = all(table_codec(t.precision).skips_pads for t in tables) and all(
            f.transform.get("kind") in KEEPS_PADS for f in features)
        self.feature_hotness = [self.hotness[t] for t in self.feature_table]
        dims, start, slices = {t.key: t.dim for t in tables}, 0, []
        for f in features:
            slices.append((start, start + dims[f.table]))
            start += dims[f.table]
        self.group_slices = [[[slices[f] for f in g] for g in s.groups] for s in serving]
        # Features D wide, one per group (dense and tiered tables): pooling is one gather of each
        # table's first feature plus one index_add of the others (a tier's), not a loop over tables.
        self.one_gather_pool = all(dims[f.table] == dim for f in features) and all(
            len(g) == 1 for s in serving for g in s.groups)
        self.n_features = len(features)
        firsts = [s.groups[0][0] for s in serving]
        extra = [g[0] for s in serving for g in s.groups[1:]]
        self.register_buffer("pool_first", torch.tensor(firsts, dtype=torch.int64), persistent=False)
        self.register_buffer("pool_extra", torch.tensor(extra, dtype=torch.int64), persistent=False)
        self.register_buffer("pool_extra_table", torch.tensor([self.feature_table[f] for f in extra],
                                                              dtype=torch.int64), persistent=False)
        # Fast path: every table is one identity feature of width D in table order, so the ids in
        # FBGEMM's layout (pads included: the kernels skip -1) are already the TBE's input.
        # With an FP8 table the kernels cannot take pads, but a call without any pad can (`dense_ids`).
        self.dense_ids = self.feature_table == list(range(len(serving))) and all(
            len(s.groups) == 1 and features[s.groups[0][0]].transform.get("kind") == "identity"
            and dims[features[s.groups[0][0]].table] == dim for s in serving)
        self.simple = self.dense_ids and all(table_codec(t.precision).skips_pads for t in tables)
        self.native_split = True  # eager lookups may take the native tiered split (False: torch ops only)

    def table_weights(self) -> list[torch.Tensor]:
        """The TBE's storage per physical table (uint8 rows, FBGEMM layout): write-through views."""
        return [w for w, _ in self.tbe.split_embedding_weights(split_scale_shifts=False)]

    def load_rows(self, get_rows: Callable[[str], torch.Tensor]) -> None:
        """Copy each physical table's FBGEMM-layout rows (fetched one table at a time) into the TBE."""
        for table, dst in zip(self.physical, self.table_weights()):
            rows = get_rows(table.key)
            if rows.dim() != 2 or rows.shape[0] != table.rows or rows.shape[1] > dst.shape[1]:
                raise ValueError(f"table {table.key!r}: rows of shape {tuple(rows.shape)} do not fit "
                                 f"{table.rows} rows of <= {dst.shape[1]} bytes")
            dst[:, : rows.shape[1]].copy_(rows)

    def serve_from(self, flat: torch.Tensor, offsets: list[int]) -> None:
        """Look rows up in place in `flat` (uint8, e.g. a read-only mapping of the artifact file),
        physical table t's rows starting at byte offsets[t]: no copy. Build with allocate=False."""
        self.tbe.weights_host = flat
        self.tbe.weights_physical_offsets = [int(o) for o in offsets]
        self.tbe.initialize_logical_weights_placements_and_offsets()
        self.tbe.weight_initialized = True

    def _refuse(self, t: int, ids: torch.Tensor) -> None:
        """Raise naming table t's first bad id (ids: (B, hotness[t]) of table t)."""
        rows = int(self.table_rows[t])
        bad = ((ids >= rows) | (ids < -1)).nonzero()
        b = int(bad[0, 0])
        value = int(ids[b, int(bad[0, 1])])
        msg = out_of_range(self.names[t], value, b, rows)
        if torch.jit.is_scripting():
            raise RuntimeError(msg)
        raise IdOutOfRange(msg)

    def check_flat(self, flat: torch.Tensor, batch: int) -> int:
        """Every id of the table-major ids (table t's batch x hotness[t] ids, then t+1's, ...) is a
        pad or < its table's logical rows: one amax per table and one global min (a fused
        aminmax along a dim is ~3x slower in torch 2.13 on CPU). Returns that min (-1: a pad)."""
        if flat.numel() == 0:
            return 0
        if self.uniform_hotness:
            over = bool((flat.view(self.n_tables, -1).amax(dim=1) >= self.table_rows).any())
        else:
            over, start = False, 0
            for t in range(self.n_tables):
                n = batch * self.hotness[t]
                over = over or (n > 0 and int(flat[start:start + n].max()) >= int(self.table_rows[t]))
                start += n
        low = int(flat.min())
        if over or low < -1:
            start = 0
            for t in range(self.n_tables):
                n = batch * self.hotness[t]
                seg = flat[start:start + n].view(batch, self.hotness[t])
                if bool(((seg >= self.table_rows[t]) | (seg < -1)).any()):
                    self._refuse(t, seg)
                start += n
        return low

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        """(B, slots) integer id matrix, -1 pads -> pooled (B, T, D)."""
        b = check_id_matrix(sparse, self.n_slots)
        tables = torch.split(sparse, self.hotness, dim=1)
        flat = torch.cat([t.reshape(-1) for t in tables])  # table-major, before any cast
        low = self.check_flat(flat, b)
        if self.simple or (self.dense_ids and low >= 0):
            indices = flat.int()
            lengths = torch.tensor(self.hotness, dtype=torch.int32).repeat_interleave(b)
            offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int32)
            offsets[1:] = torch.cumsum(lengths, 0)
            return self.tbe(indices, offsets).view(b, self.n_tables, self.dim)
        if not torch.jit.is_scripting():
            native = self.native_lookup(flat, b)
            if native is not None:
                return native
        return self.lookup_tables(list(tables))

    @torch.jit.unused
    def native_lookup(self, flat: torch.Tensor, b: int, ranked: bool = False) -> Optional[torch.Tensor]:
        """Pooled (B, T, D) from table-major ids through the native tiered split and pooling, or None
        where they do not apply or cannot be built (lowprec.serve.tier_native). The kernel checks
        every id; on a bad one `check_flat` names it."""
        if not self.native_split:
            return None
        try:
            return tier_native.lookup(self, flat, b, ranked)
        except tier_native.BadIds:
            self.check_flat(flat, b)
            raise

    def lookup_tables(self, tables: List[torch.Tensor]) -> torch.Tensor:
        """Per table a (B, hotness) id matrix -> pooled (B, T, D), through every id transform."""
        if self.padded:
            indices, offsets = self.padded_inputs(tables)
            return self.pooled_from_tbe(self.tbe(indices, offsets), tables[0].shape[0])
        indices, offsets, weights = self.tbe_inputs(tables)
        return self.pooled_from_tbe(self.tbe(indices, offsets, weights), tables[0].shape[0])

    def padded_inputs(self, tables: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The TBE's (indices, offsets) on the padded path: every feature's transform on all its
        table's slots, -1 kept, each bag its table's hotness slots."""
        b = tables[0].shape[0] if len(tables) > 0 else 0
        idx: List[torch.Tensor] = []
        for f, id_map in enumerate(self.id_maps):
            mapped, _ = id_map(tables[self.feature_table[f]].reshape(-1))
            idx.append(mapped.int())
        lengths = torch.tensor(self.feature_hotness, dtype=torch.int32).repeat_interleave(b)
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int32)
        offsets[1:] = torch.cumsum(lengths, 0)
        return torch.cat(idx), offsets

    def tbe_inputs(self, tables: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The TBE's (indices, offsets, per-sample weights or None): every feature's id transform on
        its table's valid ids, pads dropped, bags feature-major as FBGEMM reads them."""
        b = tables[0].shape[0] if len(tables) > 0 else 0
        idx: List[torch.Tensor] = []
        lens: List[torch.Tensor] = []
        wts: List[torch.Tensor] = []
        any_weight = False
        for f, id_map in enumerate(self.id_maps):
            ids = tables[self.feature_table[f]].long()
            valid = ids != -1
            mapped, w = id_map(torch.where(valid, ids, torch.zeros_like(ids)))
            valid = valid & (mapped >= 0)  # -1: this id is not in the feature's table (a tier)
            idx.append(mapped[valid])
            lens.append(valid.sum(1))
            if w is not None:
                any_weight = True
                wts.append(w[valid])
            else:
                wts.append(torch.ones(idx[-1].shape[0]))
        offsets = torch.zeros(b * len(lens) + 1, dtype=torch.int32)
        offsets[1:] = torch.cumsum(torch.cat(lens), 0)
        weights: Optional[torch.Tensor] = torch.cat(wts).float() if any_weight else None
        return torch.cat(idx).int(), offsets, weights

    def pooled_from_tbe(self, out: torch.Tensor, b: int) -> torch.Tensor:
        """The TBE's (B, sum of feature widths) output -> pooled (B, T, D): each table's groups summed."""
        if self.one_gather_pool:
            out3 = out.view(b, self.n_features, self.dim)
            pooled = out3.index_select(1, self.pool_first)
            if self.pool_extra.numel() > 0:
                pooled = pooled.index_add_(1, self.pool_extra_table, out3.index_select(1, self.pool_extra))
            return pooled
        per_table: List[torch.Tensor] = []
        for groups in self.group_slices:
            acc = torch.zeros(b, self.dim)
            for group in groups:
                cols = torch.cat([out[:, a:z] for a, z in group], dim=1)
                acc = acc + cols[:, : self.dim]
            per_table.append(acc)
        return torch.stack(per_table, dim=1)

    def rank_maps(self) -> dict[int, torch.Tensor]:
        """Table -> its published id -> rank map, for the tiered tables whose rows are in rank order."""
        return {t: self.id_maps[f].rank for f, t in enumerate(self.feature_table)
                if getattr(self.id_maps[f], "ranked_layout", False)}

    def ranked(self, ids: FeatureIds) -> FeatureIds:
        """`ids` as a feature pipeline renumbered through `rank_maps()` sends them, for
        `lookup_ids(..., ranked=True)`: rank-ordered tables' ids become ranks; pads and other tables stay."""
        maps, cols = self.rank_maps(), []
        for t in range(len(ids.hotness)):
            x = ids.table(t).long()
            cols.append(torch.where(x >= 0, maps[t].long()[x.clamp(min=0)], -1) if t in maps else x)
        return FeatureIds.from_matrix(torch.cat(cols, 1).numpy(), ids.hotness)

    @torch.jit.unused
    def check_ids(self, ids: FeatureIds) -> int:
        """A FeatureIds this model reads (its hotness, the fixed-slot int32 layout); returns its batch."""
        if list(ids.hotness) != self.hotness:
            raise BadServingInput(f"ids hold {len(ids.hotness)} tables with hotness {list(ids.hotness)}; "
                                  f"this model serves {len(self.hotness)} with {self.hotness}")
        ids.check()
        return ids.batch

    def lookup_ids(self, ids: FeatureIds, ranked: bool = False) -> torch.Tensor:
        """The same lookup from ids already in FBGEMM's layout (the data loader builds them);
        `ranked`: rank-ordered tiered tables get ranks, not ids (lowprec.serve.tiers)."""
        self.check_ids(ids)
        if self.dense_ids:  # every table one identity feature: the ids are the TBE's input as they are
            low = self.check_flat(ids.indices, ids.batch)
            if self.simple or low >= 0:  # (FP8 kernels cannot skip pads: only a call without any)
                return self.tbe(ids.indices, ids.offsets).view(ids.batch, self.n_tables, self.dim)
        native = self.native_lookup(ids.indices, ids.batch, ranked)  # checks the ids in its own pass
        if native is not None:
            return native
        if not self.dense_ids:  # (dense ids were checked above)
            self.check_flat(ids.indices, ids.batch)
        tables = [ids.table(t) for t in range(self.n_tables)]
        if ranked:
            idx, off, w = tier_native.ranked_inputs(self, tables)
            return self.pooled_from_tbe(self.tbe(idx, off, w), ids.batch)
        return self.lookup_tables(tables)


class QuantizedDLRM(DLRMGraph):
    """The DLRM graph over `QuantizedEmbeddings` and per-layer serving modules.

    `sparse` may be the (B, slots) id matrix or, faster, the same ids as FeatureIds."""

    reads_feature_ids = True  # Batch.ids_for hands this model the loader's FeatureIds

    def __init__(self, config: DLRMConfig, embeddings: QuantizedEmbeddings, layers: dict[str, nn.Module]):
        super().__init__([layers[f"bottom.{i}"] for i in range(len(config.bottom_mlp))],
                         [layers[f"top.{i}"] for i in range(len(config.top_mlp) + 1)],
                         len(config.tables))
        self.config = config
        self.embeddings = embeddings
        self.dense_names = column_names(list(config.dense_names), config.dense_in)
        for p in self.parameters():  # serving only: no autograd graph on the outputs
            p.requires_grad_(False)

    def pooled(self, sparse: torch.Tensor | FeatureIds) -> torch.Tensor:
        if isinstance(sparse, FeatureIds):
            return self.embeddings.lookup_ids(sparse)
        return self.embeddings(sparse)  # checks the matrix (shape, integer dtype, bounds)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor | FeatureIds) -> torch.Tensor:
        batch = (self.embeddings.check_ids(sparse) if isinstance(sparse, FeatureIds)
                 else check_id_matrix(sparse, self.embeddings.n_slots))
        return self.logits(check_dense(dense, batch, self.dense_names), self.pooled(sparse))

