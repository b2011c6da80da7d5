"""What a caller hands the serving runtime, checked once at its entry: the dense features and the ids.

The eager runtime (`QuantizedDLRM`) and its TorchScript export (`ServingDLRM`) call these same
functions (they are scriptable), so both refuse the same inputs with the same message, naming the
place: the expected shape (batch, n_dense) or (batch, slots), both batch sizes, the dense column and
batch row of a NaN/Inf. Without them a wrong dense width reached FBGEMM's packed GEMM ("The number
of rows in the packB should be equal to K"), a batch mismatch torch.cat, float ids were truncated
(-1.5 became a pad) and a NaN dense feature became a finite logit through an int8 layer's
quantization. Every check is O(1) on shapes and dtypes except one sum over the (batch, n_dense)
features (a NaN/Inf makes it non-finite); none loops over ids (the id bounds are
`QuantizedEmbeddings.check_flat`).

Eager calls raise `BadServingInput` (an InputError: exit 2 from the CLI); TorchScript raises the same
message as a RuntimeError (torch.jit.Error to the caller).
"""

from typing import List

import torch

from lowprec.data.ids import IdOutOfRange
from lowprec.errors import InputError


class BadServingInput(InputError, ValueError):
    """Dense features or ids the runtime cannot read (shape, dtype, batch size, NaN/Inf); a ValueError
    too, as the id-matrix shape error was before."""


def refuse(msg: str) -> None:
    if torch.jit.is_scripting():
        raise RuntimeError(msg)
    raise BadServingInput(msg)


def shape_of(x: torch.Tensor) -> str:
    dims = [str(int(s)) for s in x.shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _kind(x: torch.Tensor) -> str:
    """'floating-point (torch.float32)' (TorchScript: without the dtype, which it prints as a number)."""
    kind = "of an unsupported dtype"
    if x.dtype == torch.bool:
        kind = "bool"
    elif x.is_floating_point():
        kind = "floating-point"
    elif x.is_complex():
        kind = "complex"
    if torch.jit.is_scripting():
        return kind
    return kind + " (" + str(x.dtype) + ")"


def is_int_ids(x: torch.Tensor) -> bool:
    d = x.dtype
    return d == torch.int64 or d == torch.int32 or d == torch.int16 or d == torch.int8 or d == torch.uint8


def check_id_matrix(sparse: torch.Tensor, slots: int) -> int:
    """The (B, slots) integer id matrix; returns B."""
    if sparse.dim() != 2 or sparse.shape[1] != slots:
        refuse("id matrix of shape " + shape_of(sparse) + "; this model reads (batch, " + str(slots) + ") ids")
    if not is_int_ids(sparse):
        refuse("ids are " + _kind(sparse) + "; this model reads integer ids "
               "(int64 or int32; -1 pads), never floats, which would be truncated")
    return int(sparse.shape[0])


def column_names(names: List[str], n: int) -> List[str]:
    """The dense columns' names for messages: the model's, else dense_0, dense_1, ..."""
    return list(names) if len(names) == n else ["dense_" + str(i) for i in range(n)]


def check_dense(dense: torch.Tensor, batch: int, names: List[str]) -> torch.Tensor:
    """The (batch, n_dense) finite dense features as float32 (n_dense = len(names)); `batch` is the
    ids' batch size. One sum; the first NaN/Inf is located only when it is not finite."""
    n = len(names)
    if dense.dim() != 2 or dense.shape[0] != batch or dense.shape[1] != n:
        why = "; the ids hold " + str(batch) + " rows" if dense.dim() == 2 and dense.shape[0] != batch else ""
        refuse("dense features of shape " + shape_of(dense) + "; this model reads (batch, " + str(n)
               + ") = (" + str(batch) + ", " + str(n) + ") float features, one row per id row" + why)
    if not (dense.is_floating_point() or is_int_ids(dense)):
        refuse("dense features are " + _kind(dense) + "; this model reads float32")
    x = dense.float()  # (a float64 beyond float32's range becomes Inf here: checked below)
    # A NaN or Inf makes the sum non-finite; a finite sum proves every value finite. One sum is ~6x
    # cheaper than isfinite(x).all() here; only a non-finite sum (or one overflowing) looks further.
    if not bool(torch.isfinite(x.sum())):
        bad = (~torch.isfinite(x)).nonzero()
        if bad.shape[0] == 0:  # finite values whose sum overflowed
            return x
        row, col = int(bad[0, 0]), int(bad[0, 1])
        refuse("dense feature '" + names[col] + "' (column " + str(col) + "), batch row " + str(row) + ", is "
               + str(float(dense[row, col])) + " (non-finite values in the batch: " + str(int(bad.shape[0]))
               + "); the model reads finite dense features: impute NaN/Inf before serving")
    return x


def out_of_range(name: str, value: int, row: int, rows: int) -> str:
    """The message of an id outside its table (the runtime, its export and `kjt_from_ids` say it alike)."""
    return ("table '" + name + "': id " + str(value) + " (batch row " + str(row) + ") is out of range; the "
            "table has " + str(rows) + " rows (ids 0.." + str(rows - 1) + ", -1 pads)")


def check_matrix_bounds(sparse: torch.Tensor, slot_rows: torch.Tensor, slot_table: List[int],
                        names: List[str]) -> None:
    """Every id of the (B, slots) matrix is -1 or below its slot's table rows (`slot_rows`, (slots,)):
    two compares over the matrix, located only on failure (the sharded runtime's check; the
    unsharded one checks its table-major ids in `QuantizedEmbeddings.check_flat`)."""
    bad = (sparse >= slot_rows) | (sparse < -1)
    if bool(bad.any()):
        b, j = (int(x) for x in bad.nonzero()[0])
        raise IdOutOfRange(out_of_range(names[slot_table[j]], int(sparse[b, j]), b, int(slot_rows[j])))
