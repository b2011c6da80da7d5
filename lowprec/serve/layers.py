"""MLP layer precision handlers: how each precision stores a Linear and which module serves it.

One handler per layer precision in the literal `LAYER_CODECS`:
  fp32  weight and bias as fp32; served by nn.Linear;
  fp16  weight stored fp16, computed in fp32 (fp16 compute is slower than fp32 on these CPUs);
  int8  symmetric per-output-channel int8 weights (lowprec.quant.linear) on FBGEMM's int8 GEMM,
        activations quantized dynamically per batch, or statically with a calibrated range, to
        codes 0..127 (`input_qmax`; 0..255 saturates FBGEMM's AVX2 kernel: lowprec.quant.linear).
`encode` gives the tensors an artifact stores and the manifest entry; `build` makes the serving
module from them. Conversion calls `encode`, the artifact loader `build`, the search's emulator
`build(encode(...))`, so all three serve a layer the same way; `bytes` prices it for the search.
All serving modules are TorchScript-compatible (the export scripts them as they are).
"""


import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from lowprec.errors import InputError, InputWarning
from lowprec.precision import Precision
from lowprec.quant.linear import (
    ACT_QMAX, LEGACY_ACT_QMAX, activation_qparams, quantize_weight_per_channel, representable_range,
)

torch.backends.quantized.engine = "fbgemm"

Tensors = dict[str, torch.Tensor]  # suffix ("weight", "bias", "scale") -> tensor


class Int8Linear(nn.Module):
    """y = x W^T + b on FBGEMM's int8 GEMM; static input qparams when calibrated, else dynamic.

    Activations take codes 0..`qmax`: ACT_QMAX (127) computes the exact int8 product on every host;
    LEGACY_ACT_QMAX (255) only serves artifacts written before it (lowprec.quant.linear)."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                 input_qparams: tuple[float, int] | None = None, qmax: int = ACT_QMAX):
        super().__init__()
        with warnings.catch_warnings():  # quantized tensor creation is deprecated; the kernels are not
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(
                codes.float() * scale[:, None], scale.double(),
                torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, bias.float())
        self.static = input_qparams is not None
        self.scale, self.zero_point = (float(input_qparams[0]), int(input_qparams[1])) if self.static else (1.0, 0)
        self.qmax = int(qmax)
        self.reduce_range = self.qmax == ACT_QMAX  # (the dynamic op's name for codes 0..127)
        # static inputs above the top code are clipped here: the op's own clamp is at 255
        self.top = representable_range(self.scale, self.zero_point, self.qmax)[1]

    @property
    def input_qparams(self) -> tuple[float, int] | None:
        return (self.scale, self.zero_point) if self.static else None

    @property
    def input_bounds(self) -> tuple[float, float] | None:
        """The static input range the codes stand for (None: dynamic)."""
        return representable_range(self.scale, self.zero_point, self.qmax) if self.static else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static:
            if self.reduce_range:
                x = torch.clamp(x, max=self.top)
            return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                x, self.scale, self.zero_point, self.packed)
        return torch.ops.quantized.linear_dynamic(x, self.packed, self.reduce_range)


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        layer.bias.copy_(bias.float())
    return layer


@dataclass(frozen=True)
class LayerCodec:
    """fp32 layers (the base) and fp16-stored layers: the weight in `storage`, computed in fp32."""

    precision: Precision
    storage: torch.dtype = torch.float32

    def encode(self, weight: torch.Tensor, bias: torch.Tensor,
               calib: dict[str, Any] | None = None) -> tuple[Tensors, dict[str, Any]]:
        """(tensors to store, manifest fields) for one Linear."""
        return ({"weight": weight.detach().to(self.storage), "bias": bias.detach().float()},
                {"input_qparams": None, "input_range": None})

    def build(self, tensor: Callable[[str], torch.Tensor], entry: dict[str, Any]) -> nn.Module:
        """The serving module from stored tensors (`tensor(suffix)`) and the manifest entry."""
        return _linear(tensor("weight"), tensor("bias"))

    def bytes(self, shape: tuple[int, int]) -> int:
        n_in, n_out = shape
        return n_in * n_out * torch.finfo(self.storage).bits // 8 + 4 * n_out

    def module(self, layer: nn.Linear, calib: dict[str, Any] | None = None) -> nn.Module:
        """The serving module of a float layer, as conversion then loading would make it."""
        tensors, entry = self.encode(layer.weight, layer.bias, calib)
        return self.build(tensors.__getitem__, entry)


def _input_range(calib: dict[str, Any] | None) -> tuple[float, float] | None:
    if calib is None:
        return None
    lo, hi = float(calib["min"]), float(calib["max"])
    limit = torch.finfo(torch.float32).max / 2  # beyond it the uint8 scale is not a float32
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and max(-lo, hi) <= limit):
        raise InputError(f"calibration range [{lo}, {hi}] is not a finite interval within float32's "
                         f"range (|bound| <= {limit:.3g})")
    return lo, hi


@dataclass(frozen=True)
class Int8Codec(LayerCodec):
    def encode(self, weight: torch.Tensor, bias: torch.Tensor,
               calib: dict[str, Any] | None = None) -> tuple[Tensors, dict[str, Any]]:
        codes, scale = quantize_weight_per_channel(weight)
        rng = _input_range(calib)
        if rng is not None and max(rng[1], 0.0) - min(rng[0], 0.0) < 1e-12:  # (activation_qparams would take scale 1)
            warnings.warn(f"a calibrated input range {list(rng)} is a single point (the layer's input did not vary "
                          f"on the calibration rows): that int8 layer quantizes its input per batch instead",
                          InputWarning, stacklevel=2)
            rng = None
        return ({"weight": codes, "scale": scale, "bias": bias.detach().float()},
                {"input_range": list(rng) if rng else None,
                 "input_qparams": list(activation_qparams(*rng)) if rng else None, "input_qmax": ACT_QMAX})

    def build(self, tensor: Callable[[str], torch.Tensor], entry: dict[str, Any]) -> nn.Module:
        qp = entry.get("input_qparams")
        return Int8Linear(tensor("weight"), tensor("scale").float(), tensor("bias").float(),
                          (float(qp[0]), int(qp[1])) if qp else None, input_qmax(entry))

    def bytes(self, shape: tuple[int, int]) -> int:
        n_in, n_out = shape
        return n_in * n_out + 4 * n_out + 4 * n_out  # codes, fp32 scales, fp32 bias


def input_qmax(entry: dict[str, Any]) -> int:
    """An int8 layer entry's top activation code; an entry without one (written before lowprec
    recorded it) is served at 255 as it was validated, with a warning once a process."""
    qmax = entry.get("input_qmax")
    if qmax is None:
        global _legacy_warned
        if not _legacy_warned:
            _legacy_warned = True
            warnings.warn("this artifact's int8 layers quantize activations to 256 levels (written by an older "
                          "lowprec): on CPUs without AVX512-VNNI FBGEMM's int8 GEMM saturates at that width and "
                          "misses exact int8 results; convert the model again to get 128 levels, exact on every "
                          "host", InputWarning, stacklevel=2)
        return LEGACY_ACT_QMAX
    return int(qmax)


_legacy_warned = False

LAYER_CODECS: dict[Precision, LayerCodec] = {
    Precision.FP32: LayerCodec(Precision.FP32, torch.float32),
    Precision.FP16: LayerCodec(Precision.FP16, torch.float16),
    Precision.INT8: Int8Codec(Precision.INT8, torch.int8),
}


def layer_codec(precision: Precision, where: str = "layer") -> LayerCodec:
    if precision not in LAYER_CODECS:
        raise InputError(f"{where}: layers take {[p.value for p in LAYER_CODECS]}, not {precision.value}")
    return LAYER_CODECS[precision]
