"""The quantized runtime: one FBGEMM inference TBE for every table, FBGEMM int8 linears for the MLPs.

`QuantizedDLRM` needs only torch and fbgemm_gpu plus the tensors of an artifact: it holds one
`IntNBitTableBatchedEmbeddingBagsCodegen` with every physical table at its own precision, and per
MLP layer an fp32 Linear (for fp32 and fp16-stored layers) or an int8 layer on FBGEMM's kernels
(per-output-channel weights; dynamic activation quantization, or static with calibrated ranges).
The graph is the float DLRM's: same `interact`, same layer order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
    IntNBitTableBatchedEmbeddingBagsCodegen,
)
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.tbe.config.embedding_config import BoundsCheckMode, EmbeddingLocation
from torch import nn

from lowprec.data.dataset import PAD_ID
from lowprec.data.ids import FeatureIds
from lowprec.model.config import DLRMConfig
from lowprec.model.deploy import Feature, apply_transform
from lowprec.model.dlrm import Record, dlrm_forward, named_layers
from lowprec.precision import Precision

torch.backends.quantized.engine = "fbgemm"


class Int8Linear(nn.Module):
    """y = x W^T + b on FBGEMM's int8 GEMM; static input qparams when calibrated, else dynamic."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                 input_qparams: tuple[float, int] | None = None):
        super().__init__()
        with warnings.catch_warnings():  # quantized tensor creation is deprecated; the kernels are not
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(
                codes.float() * scale[:, None], scale.double(),
                torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, bias.float())
        self.input_qparams = input_qparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_qparams is None:
            return torch.ops.quantized.linear_dynamic(x, self.packed)
        scale, zero_point = self.input_qparams
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            x, scale, zero_point, self.packed)


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


def _slices(features: list[Feature], tables: dict[str, PhysicalTable]) -> list[tuple[int, int]]:
    out, start = [], 0
    for f in features:
        d = tables[f.table].dim
        out.append((start, start + d))
        start += d
    return out


class QuantizedEmbeddings(nn.Module):
    """Every logical table served by one TBE: ids -> pooled (B, T, D)."""

    def __init__(self, dim: int, tables: list[PhysicalTable], features: list[Feature],
                 serving: list[TableServing], buffers: dict[str, torch.Tensor] | None = None,
                 allocate: bool = True):
        super().__init__()
        self.dim, self.physical, self.features, self.serving = dim, tables, features, serving
        self.id_buffers = dict(buffers or {})
        index = {t.key: i for i, t in enumerate(tables)}
        self.tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
            [(t.key, t.rows, t.dim, t.precision.sparse_type, EmbeddingLocation.HOST) for t in tables],
            feature_table_map=[index[f.table] for f in features],
            output_dtype=SparseType.FP32, device="cpu", bounds_check_mode=BoundsCheckMode.NONE)
        if allocate:  # else the caller serves the TBE from existing bytes (`serve_from`)
            self.tbe.initialize_weights()
        by_key = {t.key: t for t in tables}
        self._slices = _slices(features, by_key)
        self.hotness = tuple(s.hotness for s in serving)
        # Fast path: every table is one identity feature of width D in table order, so the ids in
        # FBGEMM's layout (FeatureIds, pads included) are already the TBE's input.
        self._simple = all(
            len(s.groups) == 1 and len(s.groups[0]) == 1
            and features[s.groups[0][0]].transform.get("kind") == "identity"
            and by_key[features[s.groups[0][0]].table].dim == dim
            for s in serving) and [s.groups[0][0] for s in serving] == list(range(len(features)))

    def table_weights(self) -> list[torch.Tensor]:
        """The TBE's storage per physical table (uint8 rows, FBGEMM layout): write-through views."""
        return [w for w, _ in self.tbe.split_embedding_weights(split_scale_shifts=False)]

    def load_rows(self, get_rows: Callable[[str], torch.Tensor]) -> None:
        """Copy each physical table's FBGEMM-layout rows (fetched one table at a time) into the TBE."""
        for table, dst in zip(self.physical, self.table_weights()):
            rows = get_rows(table.key)
            if rows.shape[0] != table.rows or rows.shape[1] > dst.shape[1]:
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

    def feature_ids(self, sparse: torch.Tensor | FeatureIds) -> FeatureIds:
        """The ids as FeatureIds (an id matrix is converted here: the data loader can do it instead,
        `iter_batches(..., feature_ids=True)`, which keeps that work off the serving path)."""
        if isinstance(sparse, FeatureIds):
            if sparse.hotness != self.hotness:
                raise ValueError(f"ids hold {len(sparse.hotness)} tables with hotness {list(sparse.hotness)}; "
                                 f"this model serves {len(self.hotness)} with {list(self.hotness)}")
            return sparse
        if sparse.dim() != 2 or sparse.shape[1] != sum(self.hotness):
            raise ValueError(f"id matrix of shape {tuple(sparse.shape)}; this model reads "
                             f"(batch, {sum(self.hotness)}) ids")
        return FeatureIds.from_matrix(sparse, self.hotness)

    def tbe_inputs(self, ids: FeatureIds):
        """(indices, offsets, per-sample weights or None) of the TBE call for these ids."""
        if self._simple:
            return ids.indices, ids.offsets, None
        idx, lens, wts, any_w = [], [], [], False
        for t, serving in enumerate(self.serving):
            table_ids = ids.table(t).long()
            valid = table_ids != PAD_ID
            lengths = valid.sum(1)
            safe = torch.where(valid, table_ids, torch.zeros_like(table_ids))
            for group in serving.groups:
                for f in group:
                    mapped, w = apply_transform(self.features[f].transform, safe, self.id_buffers)
                    idx.append(mapped[valid])
                    lens.append(lengths)
                    any_w |= w is not None
                    wts.append(w[valid] if w is not None else torch.ones(int(valid.sum())))
        offsets = torch.zeros(sum(len(x) for x in lens) + 1, dtype=torch.int32)
        torch.cumsum(torch.cat(lens), 0, out=offsets[1:])
        return torch.cat(idx).int(), offsets, (torch.cat(wts).float() if any_w else None)

    def forward(self, sparse: torch.Tensor | FeatureIds) -> torch.Tensor:
        """ids -> pooled (B, T, D); `sparse` is FeatureIds or a (B, slots) id matrix."""
        ids = self.feature_ids(sparse)
        out = self.tbe(*self.tbe_inputs(ids))
        if self._simple:
            return out.view(ids.batch, len(self.serving), self.dim)
        per_table = []
        for serving in self.serving:
            acc = None
            for group in serving.groups:
                cols = torch.cat([out[:, a:b] for a, b in (self._slices[f] for f in group)], dim=1)
                acc = cols if acc is None else acc + cols
            per_table.append(acc[:, : self.dim])
        return torch.stack(per_table, dim=1)


class QuantizedDLRM(nn.Module):
    """The DLRM graph over `QuantizedEmbeddings` and per-layer (possibly int8) linears.

    `sparse` may be the (B, slots) id matrix or, faster, the same ids as FeatureIds."""

    reads_feature_ids = True  # Batch.ids_for hands this model the loader's FeatureIds

    def __init__(self, config: DLRMConfig, embeddings: QuantizedEmbeddings, layers: dict[str, nn.Module]):
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.bottom = nn.ModuleList(layers[f"bottom.{i}"] for i in range(len(config.bottom_mlp)))
        self.top = nn.ModuleList(layers[f"top.{i}"] for i in range(len(config.top_mlp) + 1))

    def pooled(self, sparse: torch.Tensor | FeatureIds) -> torch.Tensor:
        return self.embeddings(sparse)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor | FeatureIds, record: Record = None) -> torch.Tensor:
        return dlrm_forward(self.bottom, self.top, self.pooled(sparse), dense,
                            self.config.table_names, record)

    def linear_layers(self) -> dict[str, nn.Module]:
        return named_layers(self.bottom, self.top)
