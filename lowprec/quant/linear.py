"""Linear-layer quantization math (pure tensor functions).

Weights: symmetric per-output-channel int8, scale_c = max_j |W_cj| / 127, q = clamp(round(W/scale), -127, 127)
(zero point 0, the form FBGEMM's int8 GEMM takes for per-channel weights).
Activations (static): an asymmetric 7-bit range [lo, hi] widened to contain 0,
scale = (hi - lo) / ACT_QMAX, zero_point = clamp(round(-lo / scale), 0, ACT_QMAX), ACT_QMAX = 127.

Why 7 bits (128 levels) and not uint8's 256: FBGEMM's int8 GEMM on CPUs without AVX512-VNNI
multiplies uint8 activations by int8 weights with vpmaddubsw, which adds each pair of products into
a saturating int16. 255 * 127 * 2 = 64,770 overflows it: outputs then depend on the order of the
input columns and miss exact int8 arithmetic by whole units (a trained model's logits by up to 0.26).
With activations in 0..127 a pair sums to at most 127 * 127 * 2 = 32,258, so every host computes
the exact int8 product. This is PyTorch's `reduce_range` for the fbgemm engine. Artifacts record it
per layer (`input_qmax`); ones written before it carry 255 and are served as they were validated.
"""

from __future__ import annotations

import torch


def quantize_weight_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes (out, in), float32 scales (out,)); all-zero rows get scale 1."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1) if w.numel() else torch.zeros(w.shape[0])
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    codes = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return codes, scale.to(torch.float32)


ACT_QMAX = 127  # the largest activation code (module docstring: 7 bits, exact on every host)
LEGACY_ACT_QMAX = 255  # artifacts written before `input_qmax` was recorded


def activation_qparams(lo: float, hi: float, qmax: int = ACT_QMAX) -> tuple[float, int]:
    """(scale, zero_point) of codes 0..qmax covering [lo, hi] (widened to include 0, as FBGEMM requires)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        return 1.0, 0
    scale = (hi - lo) / qmax
    zero_point = int(min(max(round(-lo / scale), 0), qmax))
    return scale, zero_point


def representable_range(scale: float, zero_point: int, qmax: int = ACT_QMAX) -> tuple[float, float]:
    """The inputs codes 0..qmax stand for: anything outside is clipped to the nearest end."""
    return (0 - zero_point) * scale, (qmax - zero_point) * scale
