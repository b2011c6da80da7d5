"""Tests for lowprec.quant.rowwise: numpy references, FBGEMM's own ops, and a real inference TBE.

The numpy reference below loops over rows and spells out FBGEMM's min/max rule in float32
(see the rowwise module docstring); codes must match exactly, scale/bias as fp16 values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lowprec import native
from lowprec.quant import range_search_native
from lowprec.quant.range_search import RangeSearchConfig, search_ranges
from lowprec.quant.rowwise import (
    dequantize_rows,
    fused_row_bytes,
    fused_rows,
    fused_to_float,
    pack_codes,
    pad_rows,
    quantize_rows,
    rowwise_qparams_l2,
    rowwise_qparams_minmax,
    unpack_codes,
)

F32 = np.float32


# ----------------------------------------------------------------------------- numpy reference


def ref_minmax(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slow, obviously correct min/max quantizer: (codes uint8 [R, D], scale f16 [R], bias f16 [R])."""
    levels = (1 << bits) - 1
    codes = np.zeros(x.shape, dtype=np.uint8)
    scales = np.zeros(x.shape[0], dtype=np.float16)
    biases = np.zeros(x.shape[0], dtype=np.float16)
    for r, row in enumerate(x.astype(F32)):
        lo, hi = row.min(), row.max()
        if bits == 8:  # FloatToFused8BitRowwiseQuantized codes; fp32 scale/bias cast to fp16
            rng = F32(hi - lo)
            scales[r], biases[r] = np.float16(rng / F32(255)), np.float16(lo)
            q = np.rint((row - lo) * (F32(255) / (rng + F32(1e-8))))
        else:  # FloatToFusedNBitRowwiseQuantizedSBHalf
            b = F32(np.float16(lo))
            rng = F32(hi - b)
            s = F32(1) if rng == 0 else F32(rng / F32(levels))
            s = F32(np.float16(s))
            s = F32(1) if s == 0 else s
            scales[r], biases[r] = np.float16(s), np.float16(b)
            q = np.clip(np.rint((row - b) * (F32(1) / s)), 0, levels)
        codes[r] = q.astype(np.uint8)
    return codes, scales, biases


def ref_unpack(fused: np.ndarray, bits: int, dim: int):
    """Decode TBE rows with explicit loops: [scale f16 | bias f16 | codes, low bits first]."""
    rows = fused.shape[0]
    sb = fused[:, :4].copy().view(np.float16).astype(F32)
    codes = np.zeros((rows, dim), dtype=np.uint8)
    per = 8 // bits
    for r in range(rows):
        for i in range(dim):
            byte = fused[r, 4 + i // per]
            codes[r, i] = (byte >> ((i % per) * bits)) & ((1 << bits) - 1)
    return codes, sb[:, 0], sb[:, 1]


def row_errors(fused: torch.Tensor, x: np.ndarray, bits: int) -> np.ndarray:
    x_hat = fused_to_float(fused, bits, x.shape[1]).numpy().astype(np.float64)
    return ((x_hat - x.astype(np.float64)) ** 2).sum(1)


# ----------------------------------------------------------------------------- strategies

dims = st.integers(1, 16).map(lambda k: 4 * k)


@st.composite
def tables(draw, max_rows: int = 12):
    rows, dim = draw(st.integers(0, max_rows)), draw(dims)
    kind = draw(st.sampled_from(["floats", "gauss", "ints"]))
    if kind == "floats":
        elems = st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False)
        return draw(arrays(F32, (rows, dim), elements=elems))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if kind == "ints":
        return rng.integers(-8, 8, (rows, dim)).astype(F32)
    scale = np.exp(rng.normal(0, 2, (rows, 1)))
    return (rng.standard_normal((rows, dim)) * scale + rng.normal(0, 1, (rows, 1))).astype(F32)


# ----------------------------------------------------------------------------- min/max


@settings(max_examples=60, deadline=None)
@given(x=tables(), bits=st.sampled_from([8, 4, 2]))
def test_minmax_matches_numpy_reference(x, bits):
    fused = fused_rows(torch.from_numpy(x), bits)
    assert fused.dtype == torch.uint8 and fused.shape == (x.shape[0], fused_row_bytes(x.shape[1], bits))
    codes, scale, bias = ref_unpack(fused.numpy(), bits, x.shape[1])
    ref_codes, ref_scale, ref_bias = ref_minmax(x, bits)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(scale, ref_scale.astype(F32))
    np.testing.assert_array_equal(bias, ref_bias.astype(F32))
    s, b = rowwise_qparams_minmax(torch.from_numpy(x), bits)
    assert s.dtype == b.dtype == torch.float16
    np.testing.assert_array_equal(s.numpy(), ref_scale)
    if bits != 8:  # int8 codes come from fp32 qparams (see rowwise docstring)
        np.testing.assert_array_equal(quantize_rows(torch.from_numpy(x), bits, s, b).numpy(), ref_codes)


def fbgemm_tbe_rows(x: torch.Tensor, bits: int) -> torch.Tensor:
    """FBGEMM's own ops, converted to the TBE layout the way fbgemm_gpu's quantize_embs does."""
    dim = x.shape[1]
    if bits == 8:
        out = torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(x)
        sb = out[:, dim:].contiguous().view(torch.float32).half().view(torch.uint8)
        return torch.cat([sb, out[:, :dim]], 1)
    out = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(x, bits)
    nbytes = dim * bits // 8
    return torch.cat([out[:, nbytes:], out[:, :nbytes]], 1)  # (scale, bias) moved to the front


def _fbgemm_cases():
    g = torch.Generator().manual_seed(0)
    yield torch.randn(3000, 64, generator=g) * torch.rand(3000, 1, generator=g) * 4 + 1
    yield torch.randn(2000, 4, generator=g)
    yield torch.randn(2000, 12, generator=g) * 1e-3
    yield torch.randint(-8, 8, (500, 16), generator=g).float()
    yield torch.randint(-30, 30, (500, 8), generator=g).float() / 4
    yield torch.tensor([[0.3] * 8, [1.0] * 8, [-2.5] * 8, [1e-9] * 8, [1.0008] * 8])
    yield 1.0 + torch.randn(500, 8, generator=g) * 1e-6
    yield torch.randn(500, 32, generator=g) * (torch.rand(500, 32, generator=g) < 0.1)
    yield torch.randn(200, 128, generator=g) * 300


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_minmax_bytes_equal_fbgemm_ops(bits):
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    for x in _fbgemm_cases():
        if bits == 2 and x.shape[1] % 8:
            continue  # FBGEMM's op needs an even byte count; the TBE itself takes D % 4 == 0
        assert torch.equal(fused_rows(x, bits), fbgemm_tbe_rows(x, bits)), tuple(x.shape)


# ----------------------------------------------------------------------------- the real TBE


def _tbe(specs):
    from fbgemm_gpu.split_embedding_configs import SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
        IntNBitTableBatchedEmbeddingBagsCodegen,
    )

    types = {32: SparseType.FP32, 16: SparseType.FP16, 8: SparseType.INT8, 4: SparseType.INT4, 2: SparseType.INT2}
    tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
        [(f"t{i}", rows, dim, types[bits], EmbeddingLocation.HOST) for i, (rows, dim, bits) in enumerate(specs)],
        device="cpu",
        output_dtype=SparseType.FP32,
    )
    tbe.initialize_weights()
    return tbe


@pytest.mark.parametrize("method", ["minmax", "l2"])
def test_tbe_lookups_equal_sums_of_dequantized_rows(method):
    g = torch.Generator().manual_seed(1)
    specs = [(50, 64, 4), (40, 12, 8), (30, 4, 2), (20, 8, 4), (25, 16, 16), (15, 8, 32), (33, 24, 2)]
    tables_ = [torch.randn(r, d, generator=g) * (1 + i) for i, (r, d, _) in enumerate(specs)]
    fused = [fused_rows(t, bits, method if bits < 16 else "minmax") for t, (_, _, bits) in zip(tables_, specs)]
    tbe = _tbe(specs)
    full = tbe.split_embedding_weights(split_scale_shifts=False)
    split = tbe.split_embedding_weights(split_scale_shifts=True)
    for (w, _), (codes, sb), f, (_, dim, bits) in zip(full, split, fused, specs):
        assert w.shape == f.shape  # CPU rows are unpadded: row_alignment == 1
        w.copy_(f)
        if bits < 16:  # the module's own split: (scale, bias) first, codes after
            assert torch.equal(sb, f[:, :4]) and torch.equal(codes, f[:, 4:])
    batch = 6
    lengths = torch.randint(0, 5, (len(specs) * batch,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    indices = torch.cat([torch.randint(0, specs[b // batch][0], (int(n),), generator=g) for b, n in enumerate(lengths)])
    weights = torch.rand(indices.shape[0], generator=g)
    for psw in (None, weights):
        out = tbe(indices.int(), offsets.int(), psw)
        dequant = [fused_to_float(f, bits, dim) for f, (_, dim, bits) in zip(fused, specs)]
        expect = torch.zeros(batch, sum(d for _, d, _ in specs), dtype=torch.float64)
        col = 0
        for t, (_, dim, _) in enumerate(specs):
            for b in range(batch):
                lo, hi = offsets[t * batch + b], offsets[t * batch + b + 1]
                w = torch.ones(int(hi - lo)) if psw is None else psw[lo:hi]
                expect[b, col : col + dim] = (dequant[t][indices[lo:hi]].double() * w.double()[:, None]).sum(0)
            col += dim
        scale = expect.abs().amax().clamp_min(1e-30)
        assert ((out.double() - expect).abs().amax() / scale).item() <= 1e-5


# ----------------------------------------------------------------------------- the L2 search


@settings(max_examples=60, deadline=None)
@given(x=tables(), bits=st.sampled_from([8, 4, 2]))
def test_l2_never_worse_than_minmax_and_round_trips(x, bits):
    xt = torch.from_numpy(x)
    l2, mm = fused_rows(xt, bits, "l2"), fused_rows(xt, bits, "minmax")
    err_l2, err_mm = row_errors(l2, x, bits), row_errors(mm, x, bits)
    assert np.all(err_l2 <= err_mm * (1 + 1e-12) + 1e-30), (err_l2 - err_mm).max()
    codes, scale, bias = ref_unpack(l2.numpy(), bits, x.shape[1])
    expect = codes.astype(F32) * scale[:, None] + bias[:, None]
    np.testing.assert_array_equal(fused_to_float(l2, bits, x.shape[1]).numpy(), expect)
    s, b = rowwise_qparams_l2(xt, bits)
    np.testing.assert_array_equal(s.float().numpy(), scale)
    np.testing.assert_array_equal(b.float().numpy(), bias)


def _gaussian_and_heavy(rows=4000, dim=64):
    g = torch.Generator().manual_seed(2)
    gauss = torch.randn(rows, dim, generator=g)
    chi2_3 = (torch.randn(rows, dim, 3, generator=g) ** 2).sum(-1)  # seeded: Chi2.sample reads the global RNG
    t = torch.randn(rows, dim, generator=g) / torch.sqrt(chi2_3 / 3)
    return gauss, t * torch.exp(0.5 * torch.randn(rows, 1, generator=g)) * 0.05


@pytest.mark.parametrize("bits, most", [(8, 0.99), (4, 0.87), (2, 0.7)])
def test_l2_reduces_error_on_realistic_tables(bits, most):
    for x in _gaussian_and_heavy():
        err_l2 = row_errors(fused_rows(x, bits, "l2"), x.numpy(), bits).sum()
        err_mm = row_errors(fused_rows(x, bits), x.numpy(), bits).sum()
        assert err_l2 < most * err_mm


def ref_l2(x: np.ndarray, bits: int, cfg: RangeSearchConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slow reference of the L2 search's definition (range_search docstring), one row at a time,
    errors exact in float64: (scale, bias, error) per row. Candidates, then `refine_steps`
    over-relaxed line fits from the best, each kept where it lowers the error; min/max wins ties."""
    L, w = (1 << bits) - 1, cfg.relaxation
    h = lambda v: F32(np.float16(F32(v)))  # noqa: E731  (fp16 round trip)

    def codes(row, s, b, recipe=False):
        if recipe:  # FBGEMM's int8 min/max codes come from the fp32 min and range
            return np.rint((row - row.min()) * (F32(255) / (F32(row.max() - row.min()) + F32(1e-8))))
        return np.clip(np.rint((row - b) * (F32(1) / s)), 0, L)

    def err(row, s, b, recipe=False):
        return float(((codes(row, s, b, recipe) * np.float64(s) + b - row.astype(np.float64)) ** 2).sum())

    def qp(lo, hi):
        b = h(lo)
        r = F32(hi - b)
        s = h(F32(1) if r == 0 else F32(r / F32(L)))
        return (F32(1) if s == 0 else s), b

    out = np.zeros((3, x.shape[0]))
    for i, row in enumerate(x.astype(F32)):
        lo, hi = row.min(), row.max()
        rng = F32(hi - lo)
        mm8 = (h(rng / F32(255)), h(lo)) if bits == 8 else None
        cands = [qp(F32(lo + F32(a) * rng), F32(hi - F32(c) * rng)) for a, c in cfg.candidates]
        best = min(cands, key=lambda sb: err(row, *sb))
        s, b = best
        for _ in range(cfg.refine_steps):
            q = codes(row, s, b).astype(np.float64)
            if q.var() <= 0:
                break
            alpha_s = ((q - q.mean()) * (row - row.mean())).mean() / q.var()  # the line fit's slope
            fit_b = row.mean() - alpha_s * q.mean()
            ns, nb = h(s + w * (alpha_s - s)), h(b + w * (fit_b - b))
            if ns == 0 or not np.isfinite(ns * nb):
                break
            s, b = ns, nb
            if err(row, s, b) < err(row, *best):
                best = (s, b)
        mm = mm8 or cands[0]
        if err(row, *mm, recipe=bits == 8) <= err(row, *best):
            best, e = mm, err(row, *mm, recipe=bits == 8)
        else:
            e = err(row, *best)
        out[:, i] = (*best, e)
    return out[0], out[1], out[2]


@pytest.mark.parametrize("backend, bits", [("eager", 8), ("eager", 4), ("eager", 2), ("compile", 4),
                                           ("native", 8), ("native", 4), ("native", 2)])
def test_l2_search_follows_its_definition(backend, bits):
    """Every backend chooses what the slow definition chooses: the same (scale, bias) on almost every
    row (the search scores and fits in fp32, so near-ties and fp16 rounding boundaries may go either
    way), an error within 1e-3 of the definition's on all but 1% of rows, the total no more than 1e-5
    above it (and under 1e-4 below it)."""
    gauss, heavy = _gaussian_and_heavy(rows=80)
    x = torch.cat((gauss, heavy))
    cfg = RangeSearchConfig.for_bits(bits, 64)
    fused = fused_rows(x, bits, "l2", config=RangeSearchConfig(cfg.candidates, backend=backend))
    _, scale, bias = ref_unpack(fused.numpy(), bits, 64)
    ref_s, ref_b, ref_e = ref_l2(x.numpy(), bits, cfg)
    same = (scale == ref_s.astype(F32)) & (bias == ref_b.astype(F32))
    assert same.mean() >= 0.98, same.mean()
    err = row_errors(fused, x.numpy(), bits)
    assert np.mean(err > ref_e * (1 + 1e-3) + 1e-30) <= 0.01
    # in total never worse than the definition; a near-tie scored in fp32 may land a little better
    assert 1 - 1e-4 < err.sum() / ref_e.sum() < 1 + 1e-5


def test_compiled_search_matches_eager_quality():
    """backend='compile' (torch.compile'd error passes) keeps every guarantee of the eager path."""
    x, heavy = _gaussian_and_heavy(rows=3000)
    for t in (x, heavy):
        base = RangeSearchConfig.for_bits(4, 64)
        eager = fused_rows(t, 4, "l2", config=RangeSearchConfig(base.candidates, backend="eager"))
        compiled = fused_rows(t, 4, "l2", config=RangeSearchConfig(base.candidates, backend="compile"))
        err_c, err_e = row_errors(compiled, t.numpy(), 4), row_errors(eager, t.numpy(), 4)
        assert np.all(err_c <= row_errors(fused_rows(t, 4), t.numpy(), 4) * (1 + 1e-12))
        assert abs(err_c.sum() / err_e.sum() - 1) < 1e-3  # only near-ties may differ
    with pytest.raises(ValueError, match="backend"):
        RangeSearchConfig(base.candidates, backend="jit")


@pytest.mark.parametrize("bits, dim", [(4, 64), (2, 20), (8, 12), (4, 132)])
def test_native_search_matches_eager(bits, dim):
    """The C kernel computes the eager search's definition: the same (scale, bias) on almost all rows,
    the same total error, the exact codes of what it chose, on dims with a tail (not a multiple of 8)
    and a row count that is not a multiple of 8; its own row ranges equal amin/amax."""
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(1003, dim, generator=g) * torch.rand(1003, 1, generator=g)
    cfg = RangeSearchConfig.for_bits(bits, dim)
    native = search_ranges(x, bits, RangeSearchConfig(cfg.candidates, backend="native"))
    eager = search_ranges(x, bits, RangeSearchConfig(cfg.candidates, backend="eager"))
    assert torch.equal(native.lo, x.amin(1, keepdim=True)) and torch.equal(native.hi, x.amax(1, keepdim=True))
    same = ((native.scale == eager.scale) & (native.bias == eager.bias)).double().mean()
    assert same >= 0.99, same
    assert abs(native.err.double().sum() / eager.err.double().sum() - 1) < 1e-5
    assert torch.allclose(native.err_minmax, eager.err_minmax, rtol=1e-4, atol=1e-6)
    s, b = native.scale[:, 0].double().numpy(), native.bias[:, 0].double().numpy()
    codes = np.clip(np.rint((x.numpy() - b[:, None].astype(F32)) * (F32(1) / s[:, None].astype(F32))), 0, (1 << bits) - 1)
    np.testing.assert_array_equal(unpack_codes(native.packed, bits).numpy(), codes.astype(np.uint8))


def test_native_search_marks_non_finite_rows_and_falls_back(monkeypatch, tmp_path):
    """Rows with NaN/Inf get NaN ranges from the kernel (fused_rows names the first one); with no
    compiler the search warns once and runs its torch ops, with the same result as eager."""
    x = torch.randn(20, 16)
    x[13, 3] = float("inf")
    x[17, 0] = float("nan")
    res = search_ranges(x, 4, RangeSearchConfig.for_bits(4, 16))
    assert torch.isnan(res.lo[:, 0]).nonzero()[:, 0].tolist() == [13, 17]
    with pytest.raises(ValueError, match="row 13"):
        fused_rows(x, 4, "l2")
    native.forget(range_search_native.SOURCE)
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("LOWPREC_CACHE_DIR", str(tmp_path / "cache"))
    y = torch.randn(300, 16)
    with pytest.warns(UserWarning, match="native L2 range search unavailable"):
        fallback = fused_rows(y, 4, "l2")
    assert range_search_native.kernel() is None
    native.forget(range_search_native.SOURCE)  # the next test builds (or finds) the real kernel again
    assert torch.equal(fallback, fused_rows(y, 4, "l2", config=RangeSearchConfig(
        RangeSearchConfig.for_bits(4, 16).candidates, backend="eager")))


def test_zero_weight_rows_use_minmax():
    x, _ = _gaussian_and_heavy(rows=200)
    weights = torch.zeros(200)
    weights[::3] = 5.0
    mixed, l2, mm = fused_rows(x, 4, "l2", weights=weights), fused_rows(x, 4, "l2"), fused_rows(x, 4)
    assert torch.equal(mixed[weights == 0], mm[weights == 0])
    assert torch.equal(mixed[weights > 0], l2[weights > 0])
    assert torch.equal(fused_rows(x, 4, "l2", weights=torch.zeros(200)), mm)
    with pytest.raises(ValueError, match="row 7"):
        fused_rows(x, 4, "l2", weights=torch.ones(200).index_fill(0, torch.tensor([7]), -1.0))
    with pytest.raises(ValueError, match="one value per row"):
        fused_rows(x, 4, "l2", weights=torch.ones(3))


def test_search_config_validates():
    with pytest.raises(ValueError, match="start with"):
        RangeSearchConfig(candidates=((0.1, 0.2),))
    with pytest.raises(ValueError):
        RangeSearchConfig(candidates=((0.0, 0.0), (0.6, 0.5)))
    x, _ = _gaussian_and_heavy(rows=300)
    cfg = RangeSearchConfig(candidates=((0.0, 0.0),), refine_steps=0)
    assert torch.equal(fused_rows(x, 4, "l2", config=cfg), fused_rows(x, 4))


# ----------------------------------------------------------------------------- packing, floats, errors


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([8, 4, 2]), rows=st.integers(0, 5), dim=dims, seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(bits, rows, dim, seed):
    codes = torch.from_numpy(np.random.default_rng(seed).integers(0, 1 << bits, (rows, dim)).astype(np.uint8))
    packed = pack_codes(codes, bits)
    assert packed.shape == (rows, dim * bits // 8)
    assert torch.equal(unpack_codes(packed, bits), codes)


def test_nibble_order_low_bits_first():
    assert pack_codes(torch.tensor([[1, 2, 3, 4]], dtype=torch.uint8), 4).tolist() == [[0x21, 0x43]]
    assert pack_codes(torch.tensor([[0, 1, 2, 3]], dtype=torch.uint8), 2).tolist() == [[0b11100100]]
    with pytest.raises(ValueError, match="exceed"):
        pack_codes(torch.tensor([[16, 0]], dtype=torch.uint8), 4)


def test_float_rows_are_plain_values():
    x = torch.randn(7, 12)
    assert torch.equal(fused_rows(x, 32), x.view(torch.uint8))
    assert torch.equal(fused_rows(x, 16), x.half().view(torch.uint8))
    assert torch.equal(fused_to_float(fused_rows(x, 16), 16, 12), x.half().float())
    assert torch.equal(fused_to_float(fused_rows(x, 32), 32, 12), x)
    with pytest.raises(ValueError, match="row 1 .*fp16"):
        fused_rows(torch.tensor([[1.0] * 4, [7e4, 0, 0, 0]]), 16)


def test_row_sizes_and_padding():
    assert [fused_row_bytes(64, b) for b in (32, 16, 8, 4, 2)] == [256, 128, 68, 36, 20]
    x = torch.randn(5, 8)
    padded = pad_rows(fused_rows(x, 4), 16)
    assert padded.shape == (5, 16) and not padded[:, 8:].any()
    assert torch.equal(fused_to_float(padded, 4, 8), fused_to_float(fused_rows(x, 4), 4, 8))


@pytest.mark.parametrize("bits", [32, 16, 8, 4, 2])
def test_empty_table(bits):
    out = fused_rows(torch.zeros(0, 16), bits, "l2")
    assert out.shape == (0, fused_row_bytes(16, bits)) and out.dtype == torch.uint8
    assert fused_to_float(out, bits, 16).shape == (0, 16)


@pytest.mark.parametrize("dim", [1, 6, 10, 66])
def test_dim_not_multiple_of_4_raises(dim):
    with pytest.raises(ValueError, match="multiple of 4"):
        fused_rows(torch.randn(3, dim), 4)


@pytest.mark.parametrize("method", ["minmax", "l2"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_raises_naming_first_bad_row(method, bad):
    x = torch.randn(8, 16)
    x[3, 5] = bad
    x[6, 0] = float("nan")
    with pytest.raises(ValueError, match="row 3 contains NaN or Inf"):
        fused_rows(x, 4, method)
    with pytest.raises(ValueError, match="row 3"):
        quantize_rows(x, 4, torch.ones(8), torch.zeros(8))


def test_values_beyond_fp16_raise():
    x = torch.randn(4, 8)
    x[2, 1] = -1e6
    with pytest.raises(ValueError, match="row 2 .*fp16"):
        fused_rows(x, 4)


def test_dequantize_rows_formula():
    codes = torch.tensor([[0, 1, 15]], dtype=torch.uint8)
    out = dequantize_rows(codes, torch.tensor([0.5], dtype=torch.float16), torch.tensor([-1.0], dtype=torch.float16))
    assert out.tolist() == [[-1.0, -0.5, 6.5]]
