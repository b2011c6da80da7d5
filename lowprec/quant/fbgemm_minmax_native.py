"""The min/max path's native (C) parts: building and calling fbgemm_minmax_kernel.c.

Two entry points. `first_non_finite_row(x)`: the first row of x holding NaN or +-Inf (or -1), one
AVX2 pass (FBGEMM's quantize ops drop NaN silently, so the path must look for it itself).
`nbit_rows(x, bits, out)`: int4/int2 rows through FBGEMM's own quantize routine, the one
torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf calls (looked up by its symbol in
FBGEMM's library, fbgemm_gpu/fbgemm.so), block by block straight into the artifact's row layout,
each block checked for NaN/Inf and its stored (scale, bias) for fp16 range while it is in cache:
no per-block op dispatch, output tensor or copy (reports/out_of_core.md, "Min/max conversion").

Built on first use by `lowprec.native` (system C compiler, cached in ~/.cache/lowprec). Where the
kernel cannot be built, or FBGEMM's library does not export the routine under the name it has in
fbgemm-gpu 1.8 (the name spells its parameter types, so another signature is not called), these
return None (warned once) and the caller runs FBGEMM's torch ops with its numpy check instead.
"""

from __future__ import annotations

import ctypes
import warnings
from pathlib import Path

from torch import Tensor

from lowprec import native

SOURCE = Path(__file__).with_name("fbgemm_minmax_kernel.c")
# fbgemm::FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf<float>(int bit_rate, const float* input,
#     size_t rows, int cols, uint8_t* output, const float* rowwise_min_max)
NBIT_SYMBOL = "_ZN6fbgemm44FloatOrHalfToFusedNBitRowwiseQuantizedSBHalfIfEEviPKT_miPhS3_"
BLOCK_VALUES = 1 << 12  # values per FBGEMM call: 16 KB of fp32, half of L1 (4-64 KB: same within noise)
_routine: list[int | None] = []  # the looked-up address, once


def _declare(dll: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    dll.lowprec_first_non_finite_row.argtypes = [p, i64, i64]
    dll.lowprec_first_non_finite_row.restype = i64
    dll.lowprec_fbgemm_minmax_nbit.argtypes = [p, ctypes.c_int, p, i64, i64, p, i64]
    dll.lowprec_fbgemm_minmax_nbit.restype = i64


def kernel() -> ctypes.CDLL | None:
    """The loaded kernel library, built on first use; None (warned once) where it cannot be."""
    return native.load(SOURCE, _declare, "native min/max check")


def fbgemm_routine() -> int | None:
    """The address of FBGEMM's int4/int2 quantize routine, once checked to give the torch op's
    bytes on a small block; None (warned once) where the kernel, the routine or that check fails.
    Looked up once per process (`_routine`)."""
    if not _routine:
        lib = kernel()
        if lib is None:  # `kernel` has warned
            _routine.append(None)
            return None
        try:
            import fbgemm_gpu

            fbgemm = ctypes.CDLL(str(Path(fbgemm_gpu.__file__).with_name("fbgemm.so")))
            address = ctypes.cast(getattr(fbgemm, NBIT_SYMBOL), ctypes.c_void_p).value
            if not _same_as_torch_op(lib, address):
                raise RuntimeError("its bytes differ from torch.ops.fbgemm's")
            _routine.append(address)
        except (OSError, AttributeError, RuntimeError) as exc:
            _routine.append(None)
            warnings.warn(f"FBGEMM's quantize routine not called directly, using its torch ops: {exc}",
                          stacklevel=2)
    return _routine[0]


def _same_as_torch_op(lib: ctypes.CDLL, address: int | None) -> bool:
    """Whether the routine at `address`, through the kernel, gives FloatToFusedNBitRowwiseQuantizedSBHalf's
    bytes (rearranged) on 67 rows of 32 values (ragged 16-row blocks, one constant row)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(67, 32, generator=g) * torch.rand(67, 1, generator=g) * 10
    x[3] = 1.5
    for bits in (4, 2):
        out = torch.empty(67 * (4 + 4 * bits) + 4, dtype=torch.uint8)
        rc = lib.lowprec_fbgemm_minmax_nbit(address, bits, x.data_ptr(), 67, 32, out.data_ptr(), 16)
        q = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(x, bits)
        if rc != -1 or not torch.equal(out[:-4].view(67, -1), torch.cat((q[:, -4:], q[:, :-4]), 1)):
            return False
    return True


def _rows_ok(x: Tensor) -> bool:
    import torch

    return x.dim() == 2 and x.dtype == torch.float32 and x.is_contiguous()


def first_non_finite_row(x: Tensor) -> int | None:
    """The first row of x [rows, dim] (contiguous float32) holding NaN or +-Inf, -1 if none; None
    where the kernel is unavailable."""
    lib = kernel()
    if lib is None or not _rows_ok(x):
        return None
    return int(lib.lowprec_first_non_finite_row(x.data_ptr(), x.shape[0], x.shape[1]))


def nbit_rows(x: Tensor, bits: int, out: Tensor, block_rows: int | None = None) -> int | None:
    """Fill out (uint8, rows * (4 + dim * bits / 8) + 4 bytes, contiguous) with x's rows at bits
    (4 or 2) as [fp16 scale | fp16 bias | codes], FBGEMM's bytes; returns -1 when every value and
    stored scale and bias is finite, else the first row where one is not (out then unfinished);
    None where the kernel or FBGEMM's routine is unavailable or x is not contiguous float32."""
    rows, dim = x.shape
    if not _rows_ok(x) or bits not in (4, 2) or (dim * bits) % 32:
        return None
    if out.numel() < rows * (4 + dim * bits // 8) + 4 or not out.is_contiguous():
        raise ValueError("nbit_rows needs a contiguous output with 4 spare bytes")
    routine = fbgemm_routine()
    if routine is None:
        return None
    lib = kernel()
    step = block_rows or max(1, BLOCK_VALUES // dim)
    rc = lib.lowprec_fbgemm_minmax_nbit(routine, bits, x.data_ptr(), rows, dim, out.data_ptr(), step)
    if rc < -1:
        raise ValueError(f"native min/max rejected its arguments (dim {dim}, {bits} bits, code {rc})")
    return int(rc)
