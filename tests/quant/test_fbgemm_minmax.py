"""Tests for lowprec.quant.fbgemm_minmax: FBGEMM's ops rearranged, against the reference path.

Widths where FBGEMM's rows are not multiples of 8 bytes (int8 at dim 4/12/20: the fp32 (scale,
bias) pair is read unaligned), several blocks with a ragged last one, and NaN/Inf at every column
of a row (FBGEMM's min/max loop drops NaN differently by position: see the last test), each through
both paths: int4/int2 by the native kernel calling FBGEMM's routine ("native") and through the
torch ops on blocks ("torch", int8's path and the fallback). tests/quant/test_fbgemm_minmax_native.py
tests the kernel's check itself.
"""

from __future__ import annotations

import pytest
import torch

from lowprec.quant import fbgemm_minmax, fbgemm_minmax_native, rowwise


def _reference_rows(x: torch.Tensor, bits: int) -> torch.Tensor:
    enc = rowwise._encode_minmax(x, bits)
    ref = torch.empty(x.shape[0], rowwise.fused_row_bytes(x.shape[1], bits), dtype=torch.uint8)
    rowwise._packed_codes(x, bits, enc, ref[:, 4:])
    ref[:, :4] = torch.cat((enc.scale, enc.bias), 1).half().view(torch.uint8)
    return ref


def _paths(monkeypatch, block_rows: int, dim: int) -> dict:
    """fbgemm_minmax_rows (native for int4/int2) and the torch-op path, both on block_rows-row blocks."""
    monkeypatch.setattr(fbgemm_minmax, "_FBGEMM_BLOCK", dim * block_rows)
    monkeypatch.setattr(fbgemm_minmax_native, "BLOCK_VALUES", dim * block_rows)
    assert fbgemm_minmax_native.fbgemm_routine() is not None  # this machine builds the kernel
    return {"native": fbgemm_minmax.fbgemm_minmax_rows, "torch": fbgemm_minmax.torch_op_rows}


@pytest.mark.parametrize("path", ["native", "torch"])
@pytest.mark.parametrize(("bits", "dim"), [(8, 4), (8, 12), (8, 20), (4, 8), (4, 24), (2, 16), (2, 48)])
def test_odd_widths_equal_reference_path(monkeypatch, bits, dim, path):
    rows = _paths(monkeypatch, 13, dim)[path]  # 13-row blocks, ragged last
    g = torch.Generator().manual_seed(dim * bits)
    x = torch.randn(100, dim, generator=g) * torch.rand(100, 1, generator=g) * 50
    x[5] = -3.0  # a constant row
    x[7] = 0.0
    x[9, ::2] = 1e-30  # a range below fp16's smallest subnormal
    assert torch.equal(rows(x, bits), _reference_rows(x, bits))


@pytest.mark.parametrize("path", ["native", "torch"])
@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_at_every_column_is_refused(monkeypatch, bits, bad, path):
    """Every column of a 32-wide row (4 AVX2 vectors): first, middle and last rows of a block."""
    rows = _paths(monkeypatch, 10, 32)[path]
    base = torch.rand(30, 32, generator=torch.Generator().manual_seed(bits)) - 0.5
    assert rows(base, bits) is not None
    for row in (0, 14, 29):
        for col in range(32):
            x = base.clone()
            x[row, col] = bad
            assert rows(x, bits) is None, (row, col)


@pytest.mark.parametrize("path", ["native", "torch"])
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_scale_or_bias_beyond_fp16_is_refused(monkeypatch, bits, path):
    """Finite values whose stored scale or bias is not finite in fp16 (the reference path names the
    row: tests/quant/test_rowwise.py::test_values_beyond_fp16_raise), in every block position."""
    rows = _paths(monkeypatch, 10, 32)[path]
    base = torch.rand(30, 32, generator=torch.Generator().manual_seed(bits)) - 0.5
    for row in (0, 9, 10, 29):
        for big in (-1e6, 1e6, 3e38):  # bias beyond fp16; scale beyond fp16 (1e6: not at int8)
            x = base.clone()
            x[row, 3] = big
            assert (rows(x, bits) is None) == (bits != 8 or big != 1e6), (row, big)
    x[row, 3] = 1e6
    if bits == 8:  # 1e6 / 255 is within fp16: the same bytes as the reference path
        assert torch.equal(rows(x, bits), _reference_rows(x, bits))
    else:  # and the reference path names the row, as before
        with pytest.raises(ValueError, match=f"row {row} .*fp16"):
            rowwise.fused_rows(x, bits)


@pytest.mark.parametrize("bits", [4, 2])
def test_fbgemm_op_itself_gives_no_nan_signal(bits):
    """Why the path reads each block once more: FBGEMM's op drops NaN from a row's min/max and
    codes it 0, leaving a finite (scale, bias) for every NaN position. If this ever fails, FBGEMM
    signals NaN itself and that read could go."""
    x = torch.rand(24, 24, generator=torch.Generator().manual_seed(0)) - 0.5
    for col in range(24):
        x[col, col] = float("nan")
    q = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(x, bits)
    sb = q[:, -4:].contiguous().view(torch.float16).float()
    assert bool(torch.isfinite(sb).all())
