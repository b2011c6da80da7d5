"""Tests for lowprec.quant.range_guard: the L2 search's min/max guard, in torch and in the C kernel.

The reference is the guarantee itself, row by row in numpy: keep FBGEMM's min/max encoding where
the search chose min/max's own (scale, bias) (int4/int2) or where min/max's exact float64 error is
not larger than that of the search's choice; else keep the search's. Both guards (torch, kernel)
must decide as it does on the search's raw output, and the kernel must write the bytes the torch
guard writes: (scale, bias), codes, fp16 header, and the count of rows min/max would reject.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from quant.test_rowwise import F32, ref_minmax, tables

from lowprec.quant import range_search_native
from lowprec.quant.range_guard import guard, guarded_search
from lowprec.quant.range_search import RangeSearchConfig, backend_for, search_ranges
from lowprec.quant.rowwise import fused_rows, unpack_codes

needs_kernel = pytest.mark.skipif(range_search_native.kernel() is None, reason="the C kernel does not build here")


def ref_guard(x: np.ndarray, bits: int, scale: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, ...]:
    """(keep min/max per row, scale, bias, codes) of the guarantee, one row at a time."""
    L = (1 << bits) - 1
    mm_codes, mm_s, mm_b = ref_minmax(x, bits)
    keep = np.zeros(x.shape[0], dtype=bool)
    codes = np.zeros(x.shape, dtype=np.uint8)
    for r, row in enumerate(x.astype(F32)):
        s, b = F32(scale[r]), F32(bias[r])
        q = np.clip(np.rint((row - b) * (F32(1) / s)), 0, L)
        e_found = ((q * s + b).astype(np.float64) - row) ** 2
        e_mm = ((mm_codes[r].astype(F32) * F32(mm_s[r]) + F32(mm_b[r])).astype(np.float64) - row) ** 2
        same = bits != 8 and s == F32(mm_s[r]) and b == F32(mm_b[r])
        keep[r] = same or e_mm.sum() <= e_found.sum()
        codes[r] = mm_codes[r] if keep[r] else q.astype(np.uint8)
    out_s = np.where(keep, mm_s.astype(F32), scale.astype(F32))
    return keep, out_s, np.where(keep, mm_b.astype(F32), bias.astype(F32)), codes


def offset_rows(rows: int, dim: int, seed: int) -> torch.Tensor:
    """Rows far from 0 against their spread (|bias| > 200 scale: every row is re-scored exactly),
    Gaussian rows of varied spread, and rows of a few integers (ties, equal codes)."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.rand(rows, 1, generator=g)
    x = torch.randn(rows, dim, generator=g) * spread
    x[: rows // 3] = 3000.0 + x[: rows // 3] * 0.01  # fp32 scores are coarse here: min/max often wins
    x[rows // 3 : rows // 2] = torch.randint(-3, 4, (rows // 2 - rows // 3, dim), generator=g).float()
    return x


def _check_against_reference(x: torch.Tensor, bits: int, res) -> None:
    keep, s, b, codes = ref_guard(x.numpy(), bits, res.scale[:, 0].numpy(), res.bias[:, 0].numpy())
    guarded = guard(x, bits, res._replace(packed=res.packed.clone()))
    np.testing.assert_array_equal(guarded.scale[:, 0].numpy(), s)
    np.testing.assert_array_equal(guarded.bias[:, 0].numpy(), b)
    np.testing.assert_array_equal(unpack_codes(guarded.packed, bits).numpy(), codes)


@needs_kernel
@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("dim", [12, 20, 64, 132])
def test_kernel_guard_is_the_torch_guard(bits, dim):
    """On the kernel's own search, the guard inside the kernel keeps what the torch guard keeps (and
    what the reference keeps), bit for bit: (scale, bias), codes and the fp16 header; rows of
    NaN / Inf / beyond fp16 are counted alike. Dims with a tail, a row count not a multiple of 8."""
    x = offset_rows(1003, dim, seed=dim + bits)
    x[5, 1], x[6, 0], x[7] = float("nan"), float("inf"), 7e4  # rejected rows: counted, not compared
    x[8, 2] = 1e6  # int4/int2 scale beyond fp16, int8 fine
    cfg = RangeSearchConfig(RangeSearchConfig.for_bits(bits, dim).candidates, backend="native")
    raw = search_ranges(x, bits, cfg)
    assert not raw.guarded
    by_torch = guard(x, bits, raw._replace(packed=raw.packed.clone()))
    head = torch.zeros(x.shape[0], 4, dtype=torch.uint8)
    by_kernel = guarded_search(x, bits, cfg, head=head)
    assert by_kernel.guarded and by_torch.guarded
    assert by_kernel.flagged == by_torch.flagged == (4 if bits != 8 else 3)
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    ok[5:9] = False
    for a, b in [(by_kernel.scale, by_torch.scale), (by_kernel.bias, by_torch.bias),
                 (by_kernel.packed, by_torch.packed)]:
        assert torch.equal(a[ok], b[ok])
    assert torch.equal(head[ok], torch.cat((by_torch.scale, by_torch.bias), 1).half().view(torch.uint8)[ok])
    reverted = ((by_kernel.scale != raw.scale) | (by_kernel.bias != raw.bias))[ok].sum()
    assert reverted > 0  # the exact re-scoring puts min/max back on some rows
    _check_against_reference(x[ok], bits, search_ranges(x[ok], bits, cfg))


@settings(max_examples=60, deadline=None)
@given(x=tables(max_rows=20), bits=st.sampled_from([8, 4, 2]), backend=st.sampled_from(["native", "eager"]))
def test_guard_keeps_min_max_exactly_where_it_is_not_worse(x, bits, backend):
    """Both guards, on any table, keep what the reference keeps from the same raw search."""
    xt = torch.from_numpy(x)
    if backend_for(backend, xt.numel()) != backend:
        pytest.skip("the C kernel does not build here")
    cfg = RangeSearchConfig(RangeSearchConfig.for_bits(bits, max(x.shape[1], 1)).candidates, backend=backend)
    raw = search_ranges(xt, bits, cfg)
    _check_against_reference(xt, bits, raw)
    if backend == "native":
        mine = guarded_search(xt, bits, cfg)
        keep, s, b, codes = ref_guard(x, bits, raw.scale[:, 0].numpy(), raw.bias[:, 0].numpy())
        np.testing.assert_array_equal(mine.scale[:, 0].numpy(), s)
        np.testing.assert_array_equal(mine.bias[:, 0].numpy(), b)
        np.testing.assert_array_equal(unpack_codes(mine.packed, bits).numpy(), codes)


@needs_kernel
def test_fused_rows_names_rows_the_kernel_flags():
    """fused_rows(l2) names the first row the kernel counted, with min/max's messages."""
    x = torch.randn(40, 16)
    x[21, 3] = 1e6  # scale (1e6 - min) / 15 beyond fp16
    with pytest.raises(ValueError, match="row 21 .*fp16"):
        fused_rows(x, 4, "l2")
    x[13, 0] = float("nan")
    with pytest.raises(ValueError, match="row 13 contains NaN or Inf"):
        fused_rows(x, 4, "l2")


def test_one_backend_rule():
    """backend_for is the rule search_ranges runs and search subsets ask (auto_backend)."""
    built = range_search_native.kernel() is not None
    assert backend_for("native", 10) == ("native" if built else "eager")
    assert backend_for("auto", 10) == ("native" if built else "eager")
    assert backend_for("eager", 1 << 30) == "eager"
    res = search_ranges(torch.randn(9, 8), 4, RangeSearchConfig.for_bits(4, 8), guard=True)
    assert res.guarded == built


@needs_kernel
def test_kernel_writes_through_strided_codes_and_headers():
    """Codes with a non-unit stride and a header whose row stride differs from the codes' go through
    a buffer: the same bytes as fused rows written in place."""
    x = offset_rows(203, 24, seed=3)
    cfg = RangeSearchConfig(RangeSearchConfig.for_bits(4, 24).candidates, backend="native")
    fused = torch.zeros(203, 16, dtype=torch.uint8)
    guarded_search(x, 4, cfg, packed=fused[:, 4:], head=fused[:, :4])
    assert torch.equal(fused, fused_rows(x, 4, "l2", config=cfg))
    codes = torch.zeros(12, 203, dtype=torch.uint8).t()  # stride (1, 203): not unit along a row
    head = torch.zeros(203, 8, dtype=torch.uint8)[:, 2:6]
    guarded_search(x, 4, cfg, packed=codes, head=head)
    assert torch.equal(codes, fused[:, 4:]) and torch.equal(head, fused[:, :4])


@needs_kernel
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_kernel_on_threads_gives_the_one_thread_bytes(bits):
    """Above PARALLEL_FROM_ROWS rows the kernel runs on torch's threads, on row ranges split at
    multiples of 8: the same fused rows, ranges and flagged count as one thread, NaN rows included."""
    rows = 2 * range_search_native.PARALLEL_FROM_ROWS + 13
    x = offset_rows(rows, 20, seed=bits)
    x[rows // 2 + 3, 1] = float("nan")  # in the second part
    cfg = RangeSearchConfig(RangeSearchConfig.for_bits(bits, 20).candidates, backend="native")
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3):
            torch.set_num_threads(n)
            assert len(range_search_native._parts(rows)) == min(n, 2)
            fused = torch.zeros(rows, 4 + 20 * bits // 8, dtype=torch.uint8)
            results.append((guarded_search(x, bits, cfg, packed=fused[:, 4:], head=fused[:, :4]), fused))
    finally:
        torch.set_num_threads(threads)
    (r1, f1), (r2, f2) = results
    assert r1.flagged == r2.flagged >= 1 and torch.isnan(r1.lo[rows // 2 + 3])
    for a, b in zip(r1[:7], r2[:7]):  # scale, bias, errors, codes, ranges
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) if a.is_floating_point() else torch.equal(a, b)
    assert torch.equal(f1, f2)
