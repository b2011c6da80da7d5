"""Sensitivity: the effect of each option on NE and AUC, everything else in float.

`FloatCache` runs the float model once over the calibration rows and keeps, per batch, the inputs
and every intermediate the options can change from: the bottom MLP's output z0, the pooled
embeddings of every table, and every layer's input. An option then costs only the part of the
forward pass downstream of what it changes:
- a table option swaps one table's pooled column (looked up in a real FBGEMM TBE holding that
  table at the option's precision/sharing) and reruns the interaction and top MLP;
- a layer option reruns from that layer's cached input with the quantized layer (FBGEMM int8).
`Emulator.run` evaluates any combination the same way, which validation and the exhaustive
comparison reuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from lowprec.checkpoint.convert import QuantizedForm, embeddings_from_forms, quantize_form, rows_are_ids
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.metrics import BinaryStats
from lowprec.model.deploy import dense_form, post_training_form
from lowprec.model.dlrm import DLRM, dlrm_forward, interact, split_sparse
from lowprec.model.quantized import Int8Linear
from lowprec.plan import TableChoice
from lowprec.precision import Precision
from lowprec.quant.linear import activation_qparams, quantize_weight_per_channel
from lowprec.search.space import Option


@dataclass
class CachedBatch:
    dense: torch.Tensor
    sparse: list[torch.Tensor]  # per table (B, hotness)
    labels: torch.Tensor
    z0: torch.Tensor
    pooled: torch.Tensor  # (B, T, D)
    layer_in: dict[str, torch.Tensor]


class FloatCache:
    """Float activations of `max_rows` rows of the given windows (memory ~ rows x activations)."""

    @torch.inference_mode()
    def __init__(self, model: DLRM, ds: Dataset, windows: list[int], max_rows: int = 50_000,
                 batch_size: int = 4096):
        self.batches: list[CachedBatch] = []
        layers = model.linear_layers()
        rows = 0
        for batch in iter_batches(ds, windows, batch_size):
            taps: dict[str, torch.Tensor] = {}
            hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: taps.__setitem__(n, a[0]))
                     for n, m in layers.items()]
            try:
                pooled = model.pooled(batch.sparse)  # looked up once, reused by the forward
                dlrm_forward(model.bottom, model.top, pooled, batch.dense, model.config.table_names)
            finally:
                for h in hooks:
                    h.remove()
            z0 = taps["top.0"][:, : model.config.embedding_dim]
            self.batches.append(CachedBatch(batch.dense, split_sparse(batch.sparse, model.hotness),
                                            batch.labels, z0, pooled, taps))
            rows += len(batch)
            if rows >= max_rows:
                break
        self.rows = rows


def quantized_layer(layer: nn.Linear, precision: Precision, calib: dict[str, Any] | None) -> nn.Module:
    """The runtime's module for a layer at `precision` (same math as the artifact loader)."""
    if precision is Precision.FP32:
        return layer
    if precision is Precision.FP16:
        out = nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            out.weight.copy_(layer.weight.half().float())
            out.bias.copy_(layer.bias)
        return out
    codes, scale = quantize_weight_per_channel(layer.weight)
    qp = activation_qparams(calib["min"], calib["max"]) if calib else None
    return Int8Linear(codes, scale, layer.bias.detach(), qp)


class Emulator:
    """Scores combinations of options on a FloatCache, reusing everything they do not change."""

    def __init__(self, model: DLRM, cache: FloatCache, calibration: dict[str, Any] | None = None):
        self.model, self.cache = model, cache
        self.calibration = calibration or {}
        self.names = model.config.table_names
        self._forms: dict[tuple[str, bool], QuantizedForm] = {}
        self._rows: dict[int, torch.Tensor] = {}  # table -> ids the cached batches look up
        self._subset: set[str] = set()  # option keys whose form holds only those rows
        self._pooled: dict[str, list[torch.Tensor]] = {}
        self._layers: dict[str, nn.Module] = {}
        self.evaluations = 0

    def table_form(self, option: Option, range_method: str, looked_up: bool = False) -> QuantizedForm:
        """The option's quantized table; with `looked_up`, a dense table keeps only the rows the
        cached batches look up (rows quantize one by one, so their lookups are the same, and no
        quantized copy of a whole table is held: models larger than memory)."""
        key = (option.key, looked_up)
        if key not in self._forms:
            t = self.names.index(option.name)
            weight = self.model.embeddings[t].deploy_form(option.name)
            counts = self.calibration.get("row_counts", {}).get(option.name)
            if option.sharing is not None:
                weight = post_training_form(weight, option.sharing_dict(), counts, option.name)
            elif looked_up and rows_are_ids(weight):
                rows, name = self._touched(t), next(iter(weight.tables))
                weight = dense_form(name, weight.tables[name].index_select(0, rows))
                counts = torch.as_tensor(counts)[rows] if counts is not None else None
                self._subset.add(option.key)
            choice = TableChoice(option.precision, option.sharing_dict(), range_method)
            self._forms[key] = quantize_form(weight, choice, counts)
        return self._forms[key]

    def _touched(self, t: int) -> torch.Tensor:
        if t not in self._rows:
            ids = torch.cat([b.sparse[t].reshape(-1) for b in self.cache.batches]).long()
            self._rows[t] = torch.unique(ids[ids >= 0])
        return self._rows[t]

    def table_module(self, option: Option, range_method: str, looked_up: bool = False) -> nn.Module:
        """A one-table FBGEMM runtime serving this option (ids (B, hotness) -> (B, 1, D)); with
        `looked_up`, over the looked-up rows only (ids must be mapped to their positions)."""
        t = self.names.index(option.name)
        hot = self.model.config.tables[t].hotness
        return embeddings_from_forms(self.model.config.embedding_dim, [(option.name, hot)],
                                     [self.table_form(option, range_method, looked_up)])

    @torch.inference_mode()
    def table_pooled(self, option: Option, range_method: str) -> list[torch.Tensor]:
        if option.key not in self._pooled:
            t = self.names.index(option.name)
            emb = self.table_module(option, range_method, looked_up=True)
            ids = [b.sparse[t] for b in self.cache.batches]
            if option.key in self._subset:  # ids -> positions among the looked-up rows
                ids = [torch.where(i >= 0, torch.searchsorted(self._touched(t), i.clamp(min=0)), i) for i in ids]
            self._pooled[option.key] = [emb(i)[:, 0] for i in ids]
        return self._pooled[option.key]

    def layer_module(self, option: Option) -> nn.Module:
        if option.key not in self._layers:
            layer = self.model.linear_layers()[option.name]
            calib = self.calibration.get("layers", {}).get(option.name)
            self._layers[option.key] = quantized_layer(layer, option.precision, calib)
        return self._layers[option.key]

    @torch.inference_mode()
    def run(self, options: list[Option], range_method: str = "l2") -> BinaryStats:
        """Stats of the float model with `options` applied (others float) on the cached rows."""
        self.evaluations += 1
        tables = {self.names.index(o.name): self.table_pooled(o, range_method)
                  for o in options if o.kind == "table" and not o.is_float_baseline}
        layers = {o.name: self.layer_module(o) for o in options
                  if o.kind == "layer" and not o.is_float_baseline}
        stats = BinaryStats()
        for i, b in enumerate(self.cache.batches):
            pooled = None
            if tables:
                pooled = b.pooled.clone()
                for t, outs in tables.items():
                    pooled[:, t] = outs[i]
            logits = self._forward(b, pooled, layers)
            stats.update(torch.sigmoid(logits).numpy(), b.labels.numpy())
        return stats

    def _forward(self, b: CachedBatch, pooled: torch.Tensor | None,
                 layers: dict[str, nn.Module]) -> torch.Tensor:
        """Rerun only downstream of the earliest change (pooled=None: tables unchanged)."""
        m = self.model
        bottom = [f"bottom.{i}" for i in range(len(m.bottom))]
        top = [f"top.{i}" for i in range(len(m.top))]
        first_bottom = next((i for i, n in enumerate(bottom) if n in layers), None)
        if first_bottom is None and pooled is None:
            start = next((i for i, n in enumerate(top) if n in layers), len(top) - 1)
            x = b.layer_in[top[start]]
        else:
            z0 = b.z0
            if first_bottom is not None:
                z0 = b.layer_in[bottom[first_bottom]]
                for i in range(first_bottom, len(bottom)):
                    z0 = torch.relu(layers.get(bottom[i], m.bottom[i])(z0))
            start, x = 0, interact(z0, b.pooled if pooled is None else pooled)
        for i in range(start, len(top)):
            x = layers.get(top[i], m.top[i])(x)
            if i < len(top) - 1:
                x = torch.relu(x)
        return x.squeeze(1)


def measure(emulator: Emulator, options: list[Option], range_method: str,
            progress: Callable[[int], Any] | None = None) -> dict[str, BinaryStats]:
    """Stats of each option alone (the float baseline under the key 'float')."""
    out = {"float": emulator.run([], range_method)}
    for o in options:
        if not o.is_float_baseline:
            out[o.key] = emulator.run([o], range_method)
        if progress is not None:
            progress(1)
    return out
