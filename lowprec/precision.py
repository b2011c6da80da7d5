"""`Precision`: the one place that knows each precision's facts.

Every fact about a precision (bits per element, FBGEMM `SparseType`, bytes a row takes in FBGEMM's
inference layout, whether it needs row-wise scale/bias, which layers may use it) lives in the
`_FACTS` table below, not in if/elif chains spread around the code (FBGEMM's SparseType does the
same). Integer rows in the inference TBE carry an fp16 scale and fp16 bias (4 bytes) beside the
packed codes; FBGEMM requires the embedding dim to be a multiple of 4 for every precision.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fbgemm_gpu.split_embedding_configs import SparseType

from lowprec.errors import InputError

DIM_ALIGNMENT = 4  # FBGEMM's inference TBE takes only dims that are multiples of 4
SCALE_BIAS_BYTES = 4  # fp16 scale + fp16 bias per integer row


@dataclass(frozen=True)
class _Facts:
    bits: int
    sparse_type: SparseType
    integer: bool  # row-wise affine codes with scale/bias
    for_tables: bool
    for_layers: bool


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
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

    def data_bytes_per_row(self, dim: int) -> int:
        """Bytes of codes or values for one row of `dim` elements (no scale/bias, no padding)."""
        check_dim(dim, "row")
        return dim * self.bits // 8

    def bytes_per_row(self, dim: int) -> int:
        """Unpadded bytes one row takes in the inference TBE: data plus fp16 scale/bias if integer."""
        return self.data_bytes_per_row(dim) + (SCALE_BIAS_BYTES if self.is_integer else 0)

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
    def for_tables(cls) -> list["Precision"]:
        return [p for p in cls if p.facts.for_tables]

    @classmethod
    def for_layers(cls) -> list["Precision"]:
        return [p for p in cls if p.facts.for_layers]


_FACTS = {
    Precision.FP32: _Facts(32, SparseType.FP32, False, True, True),
    Precision.FP16: _Facts(16, SparseType.FP16, False, True, True),
    Precision.INT8: _Facts(8, SparseType.INT8, True, True, True),
    Precision.INT4: _Facts(4, SparseType.INT4, True, True, False),
    Precision.INT2: _Facts(2, SparseType.INT2, True, True, False),
}


def check_dim(dim: int, where: str) -> None:
    if dim <= 0 or dim % DIM_ALIGNMENT:
        raise InputError(f"{where}: dim {dim} is not a positive multiple of {DIM_ALIGNMENT}, "
                         f"which FBGEMM's inference kernels require")
