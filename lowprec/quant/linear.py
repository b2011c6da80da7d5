"""Linear-layer quantization math (pure tensor functions).

Weights: symmetric per-output-channel int8, scale_c = max_j |W_cj| / 127, q = clamp(round(W/scale), -127, 127)
(zero point 0, the form FBGEMM's int8 GEMM takes for per-channel weights).
Activations (static): an asymmetric uint8 range [lo, hi] widened to contain 0,
scale = (hi - lo) / 255, zero_point = clamp(round(-lo / scale), 0, 255).
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


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """uint8 (scale, zero_point) covering [lo, hi] (widened to include 0, as FBGEMM requires)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zero_point = int(min(max(round(-lo / scale), 0), 255))
    return scale, zero_point
