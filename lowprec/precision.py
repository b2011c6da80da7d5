"""`Precision`: the one place that knows each precision's facts.

Every fact about a precision (bits per element, FBGEMM `SparseType`, whether it needs row-wise
scale/bias, whether layers may use it) lives in the `_FACTS` table below, not in if/elif chains
spread around the code (FBGEMM's SparseType does the same); the bytes a row takes in the inference
TBE come from FBGEMM's own `unpadded_row_size_in_bytes`. Integer rows carry an fp16 scale and fp16
bias (4 bytes) beside the packed codes; FP8 rows are FBGEMM's HFP8 codes (1 sign, 4 exponent, 3
mantissa bits, exponent bias 7) with no per-row scale; FBGEMM requires the embedding dim to be a
multiple of 4 for every precision. How each precision encodes and serves a table or a layer is its
handler in `lowprec.serve`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import unpadded_row_size_in_bytes

from lowprec.errors import InputError

DIM_ALIGNMENT = 4  # FBGEMM's inference TBE takes only dims that are multiples of 4


@dataclass(frozen=True)
class _Facts:
    bits: int
    sparse_type: SparseType
    integer: bool  # row-wise affine codes with scale/bias
    for_layers: bool


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"
    INT2 = "int2"

    @property
    def facts(self) -> _Facts:
        return _FACTS[self]

    @property
    def bits(self) -> int:
        return self.facts.bits

    @property
    def sparse_type(self) -> SparseType:
        return self.facts.sparse_type

    @property
    def is_integer(self) -> bool:
        return self.facts.integer

    def bytes_per_row(self, dim: int) -> int:
        """Unpadded bytes one row takes in the inference TBE (FBGEMM's own count): data plus fp16
        scale/bias if integer."""
        check_dim(dim, "row")
        return unpadded_row_size_in_bytes(dim, self.sparse_type)

    def table_bytes(self, rows: int, dim: int) -> int:
        return rows * self.bytes_per_row(dim)

    @classmethod
    def parse(cls, text: str, where: str = "precision") -> "Precision":
        try:
            return cls(str(text).lower())
        except ValueError:
            raise InputError(f"{where}: unknown precision {text!r} "
                             f"(choose from {', '.join(p.value for p in cls)})") from None

    @classmethod
    def for_layers(cls) -> list["Precision"]:
        return [p for p in cls if p.facts.for_layers]


_FACTS = {
    Precision.FP32: _Facts(32, SparseType.FP32, False, True),
    Precision.FP16: _Facts(16, SparseType.FP16, False, True),
    Precision.FP8: _Facts(8, SparseType.FP8, False, False),
    Precision.INT8: _Facts(8, SparseType.INT8, True, True),
    Precision.INT4: _Facts(4, SparseType.INT4, True, False),
    Precision.INT2: _Facts(2, SparseType.INT2, True, False),
}


# Table precisions whose lookups cost far more than their bytes suggest: worth a warning wherever a
# plan or an artifact puts a table there (reports/fp8_lookup.md).
SLOW_LOOKUP = {
    Precision.FP8: "FBGEMM's CPU fp8 table lookup runs ~20-30x slower than fp32 (fbgemm-gpu 1.8: 4.7 vs 0.23 ms "
                   "a call with one id a bag, 75 vs 2.5 ms with twenty; reports/fp8_lookup.md)",
}


def slow_lookup_warnings(tables: dict[str, "Precision"]) -> list[str]:
    """One warning per SLOW_LOOKUP precision that `tables` (name -> precision) use."""
    out = []
    for p, why in SLOW_LOOKUP.items():
        names = sorted(n for n, q in tables.items() if q is p)
        if names:
            out.append(f"{len(names)} table(s) at {p.value} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}): "
                       f"{why}")
    return out


def check_dim(dim: int, where: str) -> None:
    if dim <= 0 or dim % DIM_ALIGNMENT:
        raise InputError(f"{where}: dim {dim} is not a positive multiple of {DIM_ALIGNMENT}, "
                         f"which FBGEMM's inference kernels require")
