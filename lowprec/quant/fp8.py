"""FP8 table rows as FBGEMM's inference TBE stores them (SparseType.FP8, "HFP8").

Each element is one byte: 1 sign bit, 4 exponent bits, 3 mantissa bits, exponent bias 7, no
infinities or NaN; a code with exponent field e and mantissa m is
    (-1)^s * 2^(e - 7) * (1 + m / 8)   for e > 0,   (-1)^s * 2^(-6) * (m / 8)   for e = 0 (subnormal),
and encoding rounds to the nearest code after clamping to +-240 (FBGEMM's max_pos for this format).
There is no per-row scale: values below 2^-9 round to zero, so tables with small weights lose
more than at int8 (reports/quantize.md). Encoding and decoding call FBGEMM's own ops
(`FloatToHFP8Quantized`, `HFP8QuantizedToFloat`) with the TBE's default FP8 config.
"""

from __future__ import annotations

import torch

EXPONENT_BITS = 4
EXPONENT_BIAS = 7
MAX_POS = 240.0


def fp8_rows(x: torch.Tensor) -> torch.Tensor:
    """float [rows, dim] -> uint8 [rows, dim] HFP8 codes."""
    x = x.detach().float().contiguous()
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=torch.uint8)
    return torch.ops.fbgemm.FloatToHFP8Quantized(x, EXPONENT_BITS, EXPONENT_BIAS, MAX_POS).view(torch.uint8)


def fp8_to_float(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [rows, dim] HFP8 codes -> float32 [rows, dim]."""
    if codes.numel() == 0:
        return torch.empty(codes.shape, dtype=torch.float32)
    return torch.ops.fbgemm.HFP8QuantizedToFloat(codes.contiguous(), EXPONENT_BITS, EXPONENT_BIAS)
