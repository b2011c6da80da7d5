"""Tests for lowprec.quant.fbgemm_minmax: FBGEMM's ops rearranged, against the reference path.

Widths where FBGEMM's rows are not multiples of 8 bytes (int8 at dim 4/12/20: the fp32 (scale,
bias) pair is read unaligned), several blocks with a ragged last one, and NaN/Inf at every column
of a row (FBGEMM's min/max loop drops NaN differently by position: see the last test).
"""

from __future__ import annotations

import pytest
import torch

from lowprec.quant import fbgemm_minmax, rowwise


def _reference_rows(x: torch.Tensor, bits: int) -> torch.Tensor:
    enc = rowwise._encode_minmax(x, bits)
    ref = torch.empty(x.shape[0], rowwise.fused_row_bytes(x.shape[1], bits), dtype=torch.uint8)
    rowwise._packed_codes(x, bits, enc, ref[:, 4:])
    ref[:, :4] = torch.cat((enc.scale, enc.bias), 1).half().view(torch.uint8)
    return ref


@pytest.mark.parametrize(("bits", "dim"), [(8, 4), (8, 12), (8, 20), (4, 8), (4, 24), (2, 16), (2, 48)])
def test_odd_widths_equal_reference_path(monkeypatch, bits, dim):
    monkeypatch.setattr(fbgemm_minmax, "_FBGEMM_BLOCK", dim * 13)  # 13-row blocks, ragged last
    g = torch.Generator().manual_seed(dim * bits)
    x = torch.randn(100, dim, generator=g) * torch.rand(100, 1, generator=g) * 50
    x[5] = -3.0  # a constant row
    assert torch.equal(fbgemm_minmax.fbgemm_minmax_rows(x, bits), _reference_rows(x, bits))


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_at_every_column_is_refused(monkeypatch, bits, bad):
    """Every column of a 32-wide row (4 AVX2 vectors): first, middle and last rows of a block."""
    monkeypatch.setattr(fbgemm_minmax, "_FBGEMM_BLOCK", 32 * 10)
    base = torch.rand(30, 32, generator=torch.Generator().manual_seed(bits)) - 0.5
    assert fbgemm_minmax.fbgemm_minmax_rows(base, bits) is not None
    for row in (0, 14, 29):
        for col in range(32):
            x = base.clone()
            x[row, col] = bad
            assert fbgemm_minmax.fbgemm_minmax_rows(x, bits) is None, (row, col)


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
