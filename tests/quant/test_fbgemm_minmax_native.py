"""Tests for lowprec.quant.fbgemm_minmax_native (fbgemm_minmax_kernel.c): the NaN/Inf check against
a slow per-value reference (every position of a row, dims with vector tails, NaN payloads, the
largest finite floats), the first bad row the int4/int2 loop reports (input or fp16 scale/bias),
and the fallbacks: no compiler, FBGEMM's routine not found. Same bytes as the torch-op path:
tests/quant/test_fbgemm_minmax.py.
"""

from __future__ import annotations

import math
import struct

import pytest
import torch

from lowprec import native
from lowprec.quant import fbgemm_minmax, fbgemm_minmax_native, rowwise

FLOAT_MAX = struct.unpack("<f", struct.pack("<I", 0x7F7FFFFF))[0]
NEG_NAN = struct.unpack("<f", struct.pack("<I", 0xFFC00001))[0]  # sign set, a payload


def _first_bad_row(x: torch.Tensor) -> int:
    """Slow reference: the first row holding a value that is not finite, -1 if none."""
    for r, row in enumerate(x.tolist()):
        if not all(math.isfinite(v) for v in row):
            return r
    return -1


@pytest.mark.parametrize("dim", [1, 7, 8, 45, 64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), NEG_NAN])
def test_check_finds_first_non_finite_row(dim, bad):
    """dim 45: one 32-value vector group, one 8-value vector and 5 scalars per row, so a bad value
    is met by every part of the loop somewhere; row 9 is bad too, row 5 must be reported."""
    base = torch.randn(11, dim, generator=torch.Generator().manual_seed(dim))
    base[0, 0], base[1, -1], base[2, 0] = FLOAT_MAX, -FLOAT_MAX, 1e-45  # finite extremes, subnormal
    assert fbgemm_minmax_native.first_non_finite_row(base) == _first_bad_row(base) == -1
    for col in range(dim):
        x = base.clone()
        x[5, col] = bad
        x[9, (col * 7) % dim] = float("nan")
        assert fbgemm_minmax_native.first_non_finite_row(x) == _first_bad_row(x) == 5, col
        assert fbgemm_minmax_native.first_non_finite_row(x[9:]) == 0  # a view's rows count from it
        assert fbgemm_minmax_native.first_non_finite_row(x[6:9]) == -1


def test_check_is_exact_where_sums_overflow():
    """The vector pass sums values; where huge finite values overflow a sum, the exact per-value
    test decides (nothing refused), and a NaN among them is still found."""
    huge = torch.full((16, 64), 3e38)
    assert torch.isinf(huge.sum(0)).all()  # every running sum overflows
    assert fbgemm_minmax_native.first_non_finite_row(huge) == -1
    huge[9, 63] = float("nan")
    huge[12, 0] = float("inf")
    assert fbgemm_minmax_native.first_non_finite_row(huge) == _first_bad_row(huge) == 9


def _first_refused_row(x: torch.Tensor, bits: int) -> int:
    """Slow reference of what the loop reports: the first row the reference path refuses
    (a value not finite, or a scale or bias not finite in fp16)."""
    for r in range(x.shape[0]):
        try:
            rowwise.fused_rows(x[r : r + 1].clone(), bits)  # one row: the reference path's check
        except ValueError:
            return r
    return -1


@pytest.mark.parametrize("bits", [4, 2])
def test_nbit_rows_reports_the_first_refused_row(bits):
    """Input NaN/Inf and fp16 overflow of the stored scale/bias, in either order, in one 8-row
    block or across blocks: the kernel reports the first refused row, as the reference does."""
    base = torch.rand(40, 16, generator=torch.Generator().manual_seed(bits)) - 0.5
    out = torch.empty(40 * (4 + 2 * bits) + 4, dtype=torch.uint8)
    assert fbgemm_minmax_native.nbit_rows(base, bits, out, block_rows=8) == -1
    for nan_row, big_row in [(3, 5), (5, 3), (17, 30), (30, 17), (8, 9), (39, 39), (0, 38)]:
        x = base.clone()
        x[big_row, 1] = 1e6  # (1e6 - min) / L beyond fp16
        x[nan_row, 2] = float("nan")
        want = _first_refused_row(x, bits)
        assert want == min(nan_row, big_row)
        assert fbgemm_minmax_native.nbit_rows(x, bits, out, block_rows=8) == want, (nan_row, big_row)


def test_nbit_rows_takes_only_what_it_can():
    out = torch.empty(1024, dtype=torch.uint8)
    assert fbgemm_minmax_native.nbit_rows(torch.randn(4, 16).double(), 4, out) is None
    assert fbgemm_minmax_native.nbit_rows(torch.randn(16, 4).t(), 4, out) is None  # not contiguous
    assert fbgemm_minmax_native.nbit_rows(torch.randn(4, 12), 2, out) is None  # 3-byte codes
    with pytest.raises(ValueError, match="4 spare bytes"):
        fbgemm_minmax_native.nbit_rows(torch.randn(4, 16), 4, torch.empty(48, dtype=torch.uint8))


def test_without_compiler_falls_back_to_torch_ops(monkeypatch, tmp_path):
    """No compiler: warned once, FBGEMM's torch ops with numpy's check run instead, same bytes,
    and a NaN row is still refused and named by the reference path."""
    y = torch.randn(300, 32)
    expected = {bits: fbgemm_minmax.fbgemm_minmax_rows(y, bits).clone() for bits in (4, 2)}
    native.forget(fbgemm_minmax_native.SOURCE)
    monkeypatch.setattr(fbgemm_minmax_native, "_routine", [])
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("LOWPREC_CACHE_DIR", str(tmp_path / "cache"))
    try:
        with pytest.warns(UserWarning, match="native min/max check unavailable"):
            assert torch.equal(fbgemm_minmax.fbgemm_minmax_rows(y, 4), expected[4])
        assert fbgemm_minmax_native.kernel() is None and fbgemm_minmax_native.fbgemm_routine() is None
        assert fbgemm_minmax_native.first_non_finite_row(y) is None
        assert torch.equal(fbgemm_minmax.fbgemm_minmax_rows(y, 2), expected[2])
        y[123, 31] = float("nan")
        with pytest.raises(ValueError, match="row 123 contains NaN or Inf"):
            rowwise.fused_rows(y, 2)
    finally:
        native.forget(fbgemm_minmax_native.SOURCE)  # the next test builds (or finds) the kernel again


def test_routine_not_found_falls_back_to_torch_ops(monkeypatch):
    """An FBGEMM whose library lacks the routine under this signature: warned, the torch ops run
    (with the native check), same bytes."""
    y = torch.randn(300, 32)
    expected = fbgemm_minmax.fbgemm_minmax_rows(y, 2).clone()
    monkeypatch.setattr(fbgemm_minmax_native, "_routine", [])
    monkeypatch.setattr(fbgemm_minmax_native, "NBIT_SYMBOL", "no_such_fbgemm_symbol")
    with pytest.warns(UserWarning, match="not called directly"):
        assert torch.equal(fbgemm_minmax.fbgemm_minmax_rows(y, 2), expected)
    assert fbgemm_minmax_native.fbgemm_routine() is None
    assert fbgemm_minmax_native.first_non_finite_row(y) == -1
