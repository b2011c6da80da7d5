"""Int8 layers (lowprec.serve.layers.Int8Linear on FBGEMM's int8 GEMM) against the integer product
written out: activation codes 0..127, int64 accumulation, one dequantization. With codes up to 255
FBGEMM's AVX2 kernel saturates pair sums in int16 (lowprec.quant.linear), and its outputs moved with
the order of the input columns; these tests fail on that path."""

from __future__ import annotations

import warnings

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from lowprec.errors import InputWarning
from lowprec.quant.linear import ACT_QMAX, activation_qparams, quantize_weight_per_channel
from lowprec.serve import layers
from lowprec.serve.layers import Int8Linear


def reference(x, codes, wscale, bias, scale, zp, qmax=ACT_QMAX):
    """y = scale * wscale * sum_j (q_j - zp) * c_j + bias, the sum exact in int64."""
    q = torch.clamp(torch.round(x.double() / scale) + zp, 0, qmax).long()
    acc = (q - zp) @ codes.long().T
    return acc.double() * scale * wscale.double() + bias.double()


def close(got, want, codes, wscale, scale):
    """Equal up to one activation code rounded the other way at a tie of float32 arithmetic: one
    output moves by at most scale * max |c * wscale| then. Saturation moves outputs by many codes."""
    step = scale * float((codes.abs().double().amax(dim=1) * wscale.double()).max())
    return float((got.double() - want).abs().max()) <= step + 1e-5 * (float(want.abs().max()) + 1)


def dynamic_qparams(x):
    """PyTorch's dynamic choice for codes 0..127: the batch's range widened to 0."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / ACT_QMAX
    return scale, int(min(max(round(-lo / scale), 0), ACT_QMAX))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_in=st.integers(1, 400), n_out=st.integers(1, 40),
       batch=st.integers(1, 64), big=st.floats(0.5, 50.0), shift=st.sampled_from([0.0, -0.3]))
def test_static_and_dynamic_layers_compute_the_exact_int8_product(seed, n_in, n_out, batch, big, shift):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g)
    codes, wscale = quantize_weight_per_channel(w)
    codes[:, : n_in // 2] = torch.where(codes[:, : n_in // 2] >= 0, 127, -127).to(torch.int8)  # worst case
    bias = torch.randn(n_out, generator=g)
    x = (torch.rand(batch, n_in, generator=g) + shift) * big
    qp = activation_qparams(float(x.min()) * 0.8, float(x.max()) * 0.8)  # some inputs clipped at both ends
    got = Int8Linear(codes, wscale, bias, qp)(x)
    assert close(got, reference(x, codes, wscale, bias, *qp), codes, wscale, qp[0])
    got, qp = Int8Linear(codes, wscale, bias)(x), dynamic_qparams(x)
    assert close(got, reference(x, codes, wscale, bias, *qp), codes, wscale, qp[0])


def test_outputs_do_not_depend_on_the_order_of_the_inputs():
    """The symptom of int16 saturation: the same sum in another column order gave another result."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-127, 128, (64, 341), generator=g, dtype=torch.int8)
    wscale, bias = torch.full((64,), 0.01), torch.zeros(64)
    x = torch.rand(512, 341, generator=g) * 12
    perm = torch.randperm(341, generator=g)
    for qp in (activation_qparams(0.0, 12.0), None):
        a = Int8Linear(codes, wscale, bias, qp)(x)
        b = Int8Linear(codes[:, perm].contiguous(), wscale, bias, qp)(x[:, perm].contiguous())
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


def test_the_codec_records_the_top_code_and_older_entries_are_served_at_255_with_a_warning(monkeypatch):
    layer = torch.nn.Linear(20, 3)
    codec = layers.LAYER_CODECS[layers.Precision.INT8]
    tensors, entry = codec.encode(layer.weight, layer.bias, {"min": -1.0, "max": 4.0})
    assert entry["input_qmax"] == ACT_QMAX and entry["input_qparams"][1] <= ACT_QMAX
    assert codec.build(tensors.__getitem__, entry).qmax == ACT_QMAX
    old = {k: v for k, v in entry.items() if k != "input_qmax"}
    old["input_qparams"] = list(activation_qparams(-1.0, 4.0, 255))
    monkeypatch.setattr(layers, "_legacy_warned", False)
    with pytest.warns(InputWarning, match="256 levels"):
        served = codec.build(tensors.__getitem__, old)
    assert served.qmax == 255 and not served.reduce_range
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codec.build(tensors.__getitem__, old)  # once a process
    small = dict(tensors, weight=torch.clamp(tensors["weight"], -60, 60))  # pair sums within int16 at 255
    served = codec.build(small.__getitem__, old)
    x = torch.rand(8, 20) * 4 - 1
    want = reference(x, small["weight"], small["scale"], small["bias"], *old["input_qparams"], qmax=255)
    torch.testing.assert_close(served(x).double(), want, rtol=0, atol=1e-4)  # codes up to 255, as validated


def test_a_calibrated_range_of_one_point_serves_the_layer_dynamically():
    """[0, 0] (an input that never varied on the calibration rows) made scale 1.0, one code per
    unit: a converted model then predicted a constant. The layer quantizes per batch instead."""
    layer = torch.nn.Linear(20, 3)
    codec = layers.LAYER_CODECS[layers.Precision.INT8]
    with pytest.warns(InputWarning, match="single point"):
        tensors, entry = codec.encode(layer.weight, layer.bias, {"min": 0.0, "max": 0.0})
    assert entry["input_qparams"] is None and not codec.build(tensors.__getitem__, entry).static
