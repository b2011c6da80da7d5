"""Row-wise quantization of embedding tables, in the byte layout of FBGEMM's inference TBE.

Owns codes, packing, fused rows and their inverse for FP32/FP16/INT8/INT4/INT2 tables as
`fbgemm_gpu.split_table_batched_embeddings_ops_inference.IntNBitTableBatchedEmbeddingBagsCodegen`
consumes them. Pure functions, tensor in / tensor out, CPU.

Row layout the TBE expects (verified on fbgemm-gpu-cpu 1.8.0 by filling a TBE and looking up):
  INT8/INT4/INT2  [scale fp16 | bias fp16 | codes]: 4 + dim * bits / 8 bytes; x_hat = q * scale + bias
  FP16 / FP32     the plain values: 2 * dim / 4 * dim bytes
  Sub-byte codes are packed low bits first: element i of a row sits in byte i // (8 / bits) at bit
  offset (i % (8 / bits)) * bits (int4: even elements in the low nibble).
  On CPU the TBE does not pad rows (row_alignment = 1); on CUDA rows are padded to 16 bytes
  (`pad_rows`). FBGEMM's quantize ops put (scale, bias) at the END of each row instead; the TBE's
  default (reverse_qparam=False) wants them first, which is what `fused_rows` writes.

Min/max rows are made by FBGEMM's own ops (`fbgemm_minmax.fbgemm_minmax_rows`; the reference path below is used
for rows they cannot take and to name bad rows), bit-exact with (L = 2**bits - 1, fp16() rounds
to nearest even):
  int4/int2 (FloatToFusedNBitRowwiseQuantizedSBHalf): b = fp16(min); s = fp16((max - b) / L)
      (1 if that range or s is 0); q = clamp(rint((x - b) * (1 / s)), 0, L).
  int8 (FBGEMM's TBE recipe `fbgemm_gpu.tbe.utils.quantize.quantize_embs`): codes of
      FloatToFused8BitRowwiseQuantized, q = rint((x - min) * (255 / (max - min + 1e-8))), from the
      fp32 values; stored s = fp16((max - min) / 255), b = fp16(min).
The L2 method (`range_search`, guarded by `range_guard`) stores fp16 (s, b) and the nearest codes for them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from lowprec.errors import InputError
from lowprec.quant.fbgemm_minmax import fbgemm_minmax_rows
from lowprec.quant.range_guard import guarded_search
from lowprec.quant.range_search import FP16_MAX, RangeSearchConfig, codes_into, levels, minmax_qparams, pack_float_codes

SUPPORTED_BITS = (32, 16, 8, 4, 2)
INT_BITS = (8, 4, 2)
METHODS = ("minmax", "l2")
_CHUNK_ELEMS = 1 << 19
_SB_BYTES = 4  # fp16 scale + fp16 bias
_FP16_INF_FROM = 65520.0  # the smallest magnitude that rounds to fp16 infinity


class QuantInputError(InputError, ValueError):
    """A table row-wise quantization cannot encode (bad shape, NaN/Inf, beyond fp16 range)."""


@dataclass(frozen=True)
class _Encoding:
    """Per-row stored (scale, bias) and the (sub, mul) codes are computed with; all [rows, 1]."""

    scale: Tensor
    bias: Tensor
    sub: Tensor
    mul: Tensor

    def take(self, idx: Tensor) -> _Encoding:
        return _Encoding(*(t[idx] for t in (self.scale, self.bias, self.sub, self.mul)))


def fused_row_bytes(dim: int, bits: int) -> int:
    """Unpadded bytes per row in the TBE for `dim` values at `bits` (32, 16, 8, 4 or 2)."""
    _check_bits(bits, SUPPORTED_BITS)
    _check_dim(dim)
    return dim * bits // 8 + (_SB_BYTES if bits in INT_BITS else 0)


def pad_rows(fused: Tensor, alignment: int) -> Tensor:
    """Zero-pad each row to a multiple of `alignment` bytes (the CUDA TBE uses 16; CPU uses 1)."""
    if alignment < 1:
        raise QuantInputError(f"row alignment must be >= 1, got {alignment}")
    width = -(-fused.shape[1] // alignment) * alignment
    out = fused.new_zeros(fused.shape[0], width)
    out[:, : fused.shape[1]] = fused
    return out


def rowwise_qparams_minmax(x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """FBGEMM's min/max (scale, bias) per row, as float16 [rows] tensors (see module docstring).

    For int8 these are FBGEMM's fp32 values cast to fp16; FBGEMM computes the int8 codes from the
    fp32 values, so use `fused_rows(x, 8)` for its exact bytes.
    """
    _check_bits(bits, INT_BITS)
    enc = _encode_minmax(_as_rows(x), bits)
    return enc.scale[:, 0].half(), enc.bias[:, 0].half()


def rowwise_qparams_l2(
    x: Tensor, bits: int, weights: Tensor | None = None, config: RangeSearchConfig | None = None
) -> tuple[Tensor, Tensor]:
    """(scale, bias) float16 [rows] minimising each row's L2 error; see `fused_rows` for weights."""
    _check_bits(bits, INT_BITS)
    x = _as_rows(x)
    scale, bias = _encode_l2(x, bits, weights, config, torch.empty(x.shape[0], fused_row_bytes(x.shape[1], bits),
                                                                   dtype=torch.uint8))
    return scale[:, 0].half(), bias[:, 0].half()


def quantize_rows(x: Tensor, bits: int, scale: Tensor, bias: Tensor) -> Tensor:
    """Codes q = clamp(rint((x - bias) * (1 / scale)), 0, 2**bits - 1): uint8 [rows, dim], unpacked."""
    _check_bits(bits, INT_BITS)
    x = _as_rows(x)
    bad = ~torch.isfinite(x).all(1)
    _raise_first_bad(bad, "contains NaN or Inf")
    s, b = _column(scale, x.shape[0], "scale"), _column(bias, x.shape[0], "bias")
    return _codes(x, bits, _Encoding(s, b, b, torch.reciprocal(s)))


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Pack uint8 codes [rows, dim] into [rows, dim * bits / 8] bytes, low bits first."""
    _check_bits(bits, INT_BITS)
    if codes.dim() != 2 or codes.dtype != torch.uint8:
        raise QuantInputError(f"codes must be a 2-D uint8 tensor, got {codes.dtype} {tuple(codes.shape)}")
    per = 8 // bits
    if codes.shape[1] % per:
        raise QuantInputError(f"dim {codes.shape[1]} is not a multiple of {per} for {bits}-bit codes")
    if bits < 8 and bool((codes >> bits).any()):
        raise QuantInputError(f"codes exceed {levels(bits)}, the largest {bits}-bit code")
    return _pack(_dense(codes), bits)


def _pack(codes: Tensor, bits: int) -> Tensor:
    """`pack_codes` without checks, for row-major codes known to be < 2**bits."""
    per = 8 // bits
    if per == 1:
        return codes
    if sys.byteorder == "little":  # read `per` codes as one integer, element 0 in its low byte
        wide = codes.view(torch.int16 if per == 2 else torch.int32)
        out = torch.empty(wide.shape, dtype=torch.uint8)
        step = max(1, _CHUNK_ELEMS // max(wide.shape[1], 1))
        for r in range(0, wide.shape[0], step):
            w = wide[r : r + step]
            acc = w >> (8 - bits)  # element i moves from bit 8 i to bit i * bits
            for i in range(2, per):
                acc |= w >> (i * (8 - bits))
            out[r : r + step] = acc.bitwise_or_(w)  # the copy keeps the low byte
        return out
    grouped = codes.reshape(codes.shape[0], codes.shape[1] // per, per)
    out = grouped[..., 0].clone()
    for i in range(1, per):
        out |= grouped[..., i] << (bits * i)
    return out


def unpack_codes(packed: Tensor, bits: int) -> Tensor:
    """Inverse of `pack_codes`: uint8 [rows, bytes] -> uint8 codes [rows, bytes * 8 / bits]."""
    _check_bits(bits, INT_BITS)
    per = 8 // bits
    if per == 1:
        return packed.clone()
    parts = [(packed >> (bits * i)) & levels(bits) for i in range(per)]
    return torch.stack(parts, -1).reshape(packed.shape[0], packed.shape[1] * per)


def dequantize_rows(codes: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """x_hat = q * scale + bias in float32, [rows, dim] (what the TBE computes per element)."""
    rows = codes.shape[0]
    return codes.float() * _column(scale, rows, "scale") + _column(bias, rows, "bias")


def fused_rows(
    x: Tensor,
    bits: int,
    method: str = "minmax",
    weights: Tensor | None = None,
    config: RangeSearchConfig | None = None,
) -> Tensor:
    """The bytes FBGEMM's inference TBE consumes for `x` [rows, dim] at `bits`: uint8 [rows, B].

    method 'minmax' reproduces FBGEMM's own quantizers; 'l2' searches each row's clipping range to
    minimise its squared error (`range_search`) and is never worse than 'minmax' on any row.
    `weights` [rows] (access counts, >= 0; 'l2' only) do not change any row's optimum, since each
    row's range affects only that row; rows with weight 0 skip the search and use min/max.
    """
    _check_bits(bits, SUPPORTED_BITS)
    if method not in METHODS:
        raise QuantInputError(f"method must be one of {METHODS}, got {method!r}")
    x = _as_rows(x)
    if bits in (32, 16):
        return _fused_float(x, bits)
    if method == "minmax" and (out := fbgemm_minmax_rows(x, bits)) is not None:
        return out
    out = torch.empty(x.shape[0], fused_row_bytes(x.shape[1], bits), dtype=torch.uint8)
    if method == "l2":
        _encode_l2(x, bits, weights, config, out)
        return out
    enc = _encode_minmax(x, bits)
    _packed_codes(x, bits, enc, out[:, _SB_BYTES:])  # packed codes are written straight into the rows
    out[:, :_SB_BYTES] = torch.cat((enc.scale, enc.bias), 1).half().view(torch.uint8)
    return out


def fused_to_float(fused: Tensor, bits: int, dim: int) -> Tensor:
    """Decode TBE rows (padding after the row ignored) to float32 [rows, dim]."""
    need = fused_row_bytes(dim, bits)
    if fused.dim() != 2 or fused.dtype != torch.uint8 or fused.shape[1] < need:
        raise QuantInputError(
            f"fused rows must be uint8 [rows, >= {need}] for dim {dim} at {bits} bits, "
            f"got {fused.dtype} {tuple(fused.shape)}"
        )
    rows = _dense(fused[:, :need])
    if bits == 32:
        return rows.view(torch.float32)
    if bits == 16:
        return rows.view(torch.float16).float()
    sb = _dense(rows[:, :_SB_BYTES]).view(torch.float16).float()
    return dequantize_rows(unpack_codes(rows[:, _SB_BYTES:], bits), sb[:, 0], sb[:, 1])


# ----------------------------------------------------------------------------- internals


def _check_bits(bits: int, allowed: tuple[int, ...]) -> None:
    if bits not in allowed:
        raise QuantInputError(f"bits must be one of {allowed}, got {bits!r}")


def _check_dim(dim: int) -> None:
    if dim <= 0 or dim % 4:
        raise QuantInputError(
            f"embedding dim must be a positive multiple of 4 (FBGEMM's TBE requires D % 4 == 0), got {dim}"
        )


def _as_rows(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise QuantInputError(f"expected a 2-D tensor [rows, dim], got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise QuantInputError(f"expected a floating-point table, got {x.dtype}")
    _check_dim(x.shape[1])
    return x.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _dense(t: Tensor) -> Tensor:
    """A fresh row-major copy (slices of 0 rows keep odd strides that block dtype views)."""
    return torch.empty(t.shape, dtype=t.dtype).copy_(t)


def _column(v: Tensor, rows: int, name: str) -> Tensor:
    v = torch.as_tensor(v).detach().to(torch.float32).reshape(-1, 1)
    if v.shape[0] != rows:
        raise QuantInputError(f"{name} must have one value per row ({rows}), got {v.shape[0]}")
    return v


def _raise_first_bad(bad: Tensor, what: str) -> None:
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise QuantInputError(f"row {row} {what} (first bad row; {int(bad.sum())} bad rows in total)")


def _row_ranges(x: Tensor) -> tuple[Tensor, Tensor]:
    return _checked_ranges(x.amin(1, keepdim=True), x.amax(1, keepdim=True))


def _checked_ranges(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    _raise_first_bad(~(torch.isfinite(lo) & torch.isfinite(hi))[:, 0], "contains NaN or Inf")
    return lo, hi


def _check_fp16(enc: _Encoding) -> _Encoding:
    big = (enc.scale.abs() > FP16_MAX) | (enc.bias.abs() > FP16_MAX)
    _raise_first_bad(big[:, 0], f"has a scale or bias beyond fp16 range (|v| > {FP16_MAX:g})")
    return enc


def _encode_minmax(x: Tensor, bits: int, ranges: tuple[Tensor, Tensor] | None = None) -> _Encoding:
    lo, hi = ranges if ranges is not None else _row_ranges(x)
    return _check_fp16(_Encoding(*minmax_qparams(lo, hi, bits)))


def _encode_l2(x: Tensor, bits: int, weights: Tensor | None, cfg: RangeSearchConfig | None,
               out: Tensor) -> tuple[Tensor, Tensor]:
    """(scale, bias) [rows, 1] of the guarded L2 search (`range_guard`; min/max on rows with zero
    weight), written with the codes into the fused rows `out`. Without weights the search takes the
    row ranges itself (the native kernel in its one read) and counts rows min/max would reject."""
    active = _active_rows(weights, x.shape[0])
    if active is None:
        res = guarded_search(x, bits, cfg, packed=out[:, _SB_BYTES:], head=out[:, :_SB_BYTES])
        if res.flagged:  # the same checks as min/max's, which name the first bad row
            _encode_minmax(x, bits, _checked_ranges(res.lo, res.hi))
        return res.scale, res.bias
    minmax = _encode_minmax(x, bits, ranges := _row_ranges(x))
    _packed_codes(x, bits, minmax, out[:, _SB_BYTES:])
    scale, bias = minmax.scale, minmax.bias
    if active.numel():
        res = guarded_search(x.index_select(0, active), bits, cfg, ranges[0][active], ranges[1][active])
        out[active, _SB_BYTES:] = res.packed
        scale, bias = scale.index_put((active,), res.scale), bias.index_put((active,), res.bias)
    out[:, :_SB_BYTES] = torch.cat((scale, bias), 1).half().view(torch.uint8)
    return scale, bias


def _active_rows(weights: Tensor | None, rows: int) -> Tensor | None:
    """Indices of rows with weight > 0, or None for all rows."""
    if weights is None:
        return None
    w = torch.as_tensor(weights).detach().to(torch.float64).reshape(-1)
    if w.shape[0] != rows:
        raise QuantInputError(f"weights must have one value per row ({rows}), got {w.shape[0]}")
    _raise_first_bad(~torch.isfinite(w) | (w < 0), "has a negative or non-finite weight")
    return (w > 0).nonzero()[:, 0]


def _codes(x: Tensor, bits: int, enc: _Encoding) -> Tensor:
    out = torch.empty(x.shape, dtype=torch.uint8)
    buf = torch.empty(0)
    step = max(1, _CHUNK_ELEMS // x.shape[1])
    for i in range(0, x.shape[0], step):
        xc = x[i : i + step]
        t = buf.resize_(xc.shape)
        codes_into(xc, enc.sub[i : i + step], enc.mul[i : i + step], bits, t)
        out[i : i + step] = t.to(torch.int32)  # float -> int32 -> uint8 is ~2x faster
    return out


def _packed_codes(x: Tensor, bits: int, enc: _Encoding, out: Tensor | None = None) -> Tensor:
    """Codes of `enc` for x, packed as the TBE stores them, into `out` [rows, dim * bits / 8]."""
    if out is None:
        out = torch.empty(x.shape[0], x.shape[1] * bits // 8, dtype=torch.uint8)
    step = max(1, _CHUNK_ELEMS // x.shape[1])
    buf = torch.empty(min(step, x.shape[0]), x.shape[1])
    for i in range(0, x.shape[0], step):
        xc, part = x[i : i + step], enc.take(slice(i, i + step))
        out[i : i + step] = pack_float_codes(codes_into(xc, part.sub, part.mul, bits, buf[: xc.shape[0]]), bits)
    return out


def _fused_float(x: Tensor, bits: int) -> Tensor:
    lo, hi = _row_ranges(x)
    if bits == 32:
        return x.clone().view(torch.uint8)
    big = (lo <= -_FP16_INF_FROM) | (hi >= _FP16_INF_FROM)  # values that round to fp16 inf
    _raise_first_bad(big[:, 0], f"has values beyond fp16 range (|v| > {FP16_MAX:g})")
    return x.half().view(torch.uint8)
