"""The DLRM graph, written once (Naumov et al. 2019), for every form of the model.

    z0 = bottom(dense)                       (B, D), ReLU after every bottom layer
    e_t = pooled embedding of table t         (B, D) per table, stacked (B, T, D)
    x = [z0, dot(u, v) for u < v over (z0, e_1..e_T)]
    logit = top(x)                            ReLU after every top layer but the last

`DLRMGraph` owns the MLPs and the interaction; a subclass says how ids become pooled embeddings
(the float DLRM's per-table modules, the FBGEMM runtime's one TBE). The float model, the quantized
runtime, the search's emulator (which reruns the graph from any layer) and the TorchScript export
all call these methods, so they compute the same function by construction. Everything here is
TorchScript-compatible.

Taps for the numeric debugger come from forward hooks, not from arguments: every layer is a
module, and `pooled_tap` (an identity) sees the pooled embeddings; `trace` collects them.
"""


import functools
from typing import List

import numpy as np
import torch
from torch import nn


@functools.lru_cache(maxsize=8)
def _upper_pairs(f: int) -> np.ndarray:
    rows, cols = np.triu_indices(f, k=1)
    return rows * f + cols


def upper_pairs(f: int) -> torch.Tensor:
    """Flat positions in an f x f matrix of its upper triangle (offset 1), row by row.

    The cache holds numpy, not a tensor: a tensor first made under inference_mode is an inference
    tensor, and training's index_select could not save it for backward."""
    return torch.from_numpy(_upper_pairs(f)).clone()


def layer_names(n_bottom: int, n_top: int) -> List[str]:
    """Layer names in forward order, as DLRMConfig.layer_shapes() names them."""
    return [f"bottom.{i}" for i in range(n_bottom)] + [f"top.{i}" for i in range(n_top)]


class DLRMGraph(nn.Module):
    """Bottom MLP, dot interaction and top MLP over layers given in forward order."""

    def __init__(self, bottom: List[nn.Module], top: List[nn.Module], n_tables: int):
        super().__init__()
        self.bottom = nn.ModuleList(bottom)
        self.top = nn.ModuleList(top)
        self.pooled_tap = nn.Identity()
        self.n_top = len(top)
        # not in the state dict: the checkpoint formats hold weights only
        self.register_buffer("pairs", upper_pairs(n_tables + 1), persistent=False)

    def bottom_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Bottom layers start.. over x (the input of layer `start`) -> z0."""
        for i, layer in enumerate(self.bottom):
            if i >= start:
                x = torch.relu(layer(x))
        return x

    def interact(self, z0: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """z0 (B, D), pooled (B, T, D) -> (B, D + F(F-1)/2) with F = T + 1."""
        pooled = self.pooled_tap(pooled)
        feats = torch.cat([z0.unsqueeze(1), pooled], dim=1)
        dots = torch.bmm(feats, feats.transpose(1, 2))
        # one index_select over the flattened matrices: 7x faster than dots[:, rows, cols] here
        return torch.cat([z0, dots.flatten(1).index_select(1, self.pairs)], dim=1)

    def top_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Top layers start.. over x (the input of layer `start`) -> logits (B,)."""
        for i, layer in enumerate(self.top):
            if i >= start:
                x = layer(x)
                if i < self.n_top - 1:
                    x = torch.relu(x)
        return x.squeeze(1)

    def logits(self, dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.top_from(self.interact(self.bottom_from(dense.float()), pooled))

    def linear_layers(self) -> dict[str, nn.Module]:
        """Name -> layer module, names as in DLRMConfig.layer_shapes() (bottom.i, then top.i)."""
        out = {f"bottom.{i}": m for i, m in enumerate(self.bottom)}
        out.update({f"top.{i}": m for i, m in enumerate(self.top)})
        return out


def trace(model: DLRMGraph, dense: torch.Tensor, sparse) -> dict[str, torch.Tensor]:
    """Every layer's output before its ReLU (`layer:bottom.i`, `layer:top.i`), every table's pooled
    output (`table:NAME`) and the logits (`output`), in forward order."""
    taps: dict[str, torch.Tensor] = {}
    names = model.config.table_names

    def on_layer(name):
        return lambda mod, args, out: taps.__setitem__(f"layer:{name}", out.detach().clone())

    def on_pooled(mod, args, out):
        for t, name in enumerate(names):
            taps[f"table:{name}"] = out[:, t].detach().clone()

    hooks = [m.register_forward_hook(on_layer(n)) for n, m in model.linear_layers().items()]
    hooks.append(model.pooled_tap.register_forward_hook(on_pooled))
    try:
        logits = model(dense, sparse)
    finally:
        for h in hooks:
            h.remove()
    # forward order: bottom layers, tables, top layers
    order = [k for k in taps if k.startswith("layer:bottom")]
    order += [f"table:{n}" for n in names] + [k for k in taps if k.startswith("layer:top")]
    out = {k: taps[k] for k in order}
    out["output"] = logits.detach()
    return out
