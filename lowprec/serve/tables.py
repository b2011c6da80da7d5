"""Table precision handlers: how each precision encodes float rows, decodes them, sizes them, and
declares its table to FBGEMM's inference TBE.

One handler per `Precision`, listed in the literal `TABLE_CODECS` (FBGEMM's SparseType owns the same
facts for its kernels). Every consumer goes through it: conversion (`encode`), the runtime
(`tbe_spec`), the search's byte model and the emulator (`table_bytes`, `encode`), drift's per-row
error (`decode`). Rows are uint8 in the TBE's layout:
  fp32 / fp16   the plain values;
  fp8           HFP8 codes, one byte an element (lowprec.quant.fp8);
  int8/4/2      [fp16 scale | fp16 bias | packed codes] (lowprec.quant.rowwise), min/max or L2 ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from fbgemm_gpu.tbe.config.embedding_config import EmbeddingLocation

from lowprec.precision import DIM_ALIGNMENT, Precision
from lowprec.quant.fp8 import fp8_rows, fp8_to_float
from lowprec.quant.range_search import RangeSearchConfig
from lowprec.quant.rowwise import fused_rows, fused_to_float


def padded_dim(dim: int) -> int:
    """The stored dim: FBGEMM's kernels take multiples of 4 (padding columns are zeros)."""
    return dim + (-dim % DIM_ALIGNMENT)


@dataclass(frozen=True)
class TableCodec:
    """The handler of one table precision (the base serves fp32 and fp16: rows are the values)."""

    precision: Precision
    # FBGEMM's CPU kernels skip index -1 (a pad) in a bag, except FP8's (fbgemm-gpu-cpu 1.8.0: it
    # adds a wrong row), so the runtime masks pads itself when any table is FP8.
    skips_pads: bool = True
    # encode raises InputError on NaN/Inf rows (fused_rows does; FBGEMM's HFP8 op does not)
    rejects_non_finite: bool = True

    def encode(self, weight: torch.Tensor, range_method: str = "minmax",
               row_weights: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
        """Float rows (rows, dim % 4 == 0) -> uint8 rows exactly as the TBE stores them (`backend`:
        the L2 range search's, lowprec.quant.range_search; "auto": the C kernel where it builds, `range_search.backend_for`)."""
        return fused_rows(weight.float(), self.precision.bits)

    def decode(self, rows: torch.Tensor, dim: int) -> torch.Tensor:
        """uint8 TBE rows -> float32 (rows, dim): what a lookup of each row returns."""
        return fused_to_float(rows, self.precision.bits, dim)

    def table_bytes(self, rows: int, dim: int) -> int:
        """Bytes of a (rows, dim) table at this precision, dim padded as conversion pads it."""
        return rows * self.precision.bytes_per_row(padded_dim(dim))

    def tbe_spec(self, key: str, rows: int, dim: int) -> tuple:
        """This table's entry in IntNBitTableBatchedEmbeddingBagsCodegen's embedding_specs."""
        return (key, rows, dim, self.precision.sparse_type, EmbeddingLocation.HOST)


@dataclass(frozen=True)
class Fp8Codec(TableCodec):
    def encode(self, weight: torch.Tensor, range_method: str = "minmax",
               row_weights: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
        return fp8_rows(weight)

    def decode(self, rows: torch.Tensor, dim: int) -> torch.Tensor:
        return fp8_to_float(rows[:, :dim])


@dataclass(frozen=True)
class IntCodec(TableCodec):
    def encode(self, weight: torch.Tensor, range_method: str = "minmax",
               row_weights: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
        bits = self.precision.bits
        config = None if backend == "auto" or range_method != "l2" else \
            replace(RangeSearchConfig.for_bits(bits, weight.shape[1]), backend=backend)
        return fused_rows(weight.float(), bits, range_method, row_weights, config)


TABLE_CODECS: dict[Precision, TableCodec] = {
    Precision.FP32: TableCodec(Precision.FP32),
    Precision.FP16: TableCodec(Precision.FP16),
    Precision.FP8: Fp8Codec(Precision.FP8, skips_pads=False, rejects_non_finite=False),
    Precision.INT8: IntCodec(Precision.INT8),
    Precision.INT4: IntCodec(Precision.INT4),
    Precision.INT2: IntCodec(Precision.INT2),
}


def table_codec(precision: Precision) -> TableCodec:
    return TABLE_CODECS[precision]
