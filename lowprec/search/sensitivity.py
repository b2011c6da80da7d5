"""Sensitivity: the effect of each option on NE and AUC, everything else in float.

`FloatCache` runs the float model once over the calibration rows and keeps, per batch, the inputs
and every intermediate the options can change from: the bottom MLP's output z0, the pooled
embeddings of every table, and every layer's input. An option then costs only the part of the
forward pass downstream of what it changes:
- a table option swaps one table's pooled column (looked up in a real FBGEMM TBE holding that
  table at the option's precision/sharing: only the physical rows the cached batches reach, each
  as the whole-table build makes it, lowprec.search.subset) and reruns the interaction and top MLP;
- a layer option reruns from that layer's cached input with the quantized layer (FBGEMM int8).
`Emulator.run` evaluates any combination the same way, which validation and the exhaustive
comparison reuse. Tables and layers are built by the serving handlers (lowprec.serve) exactly as
conversion builds them, and the graph is lowprec.graph's, rerun from the earliest change.

Held-out counts. Access counts decide which rows a hot-sharing or tiered option keeps exact (and
which rows the L2 range search fits at all). When the cached rows are among the rows calibration
counted (the usual `--calib-windows` = calibration's windows), every id they look up has a count,
so an option looks as if the next window would reuse only ids calibration saw: on the Criteo-scale
study a 64x hot-shared 10M-row table measured as almost free and cost ~+0.1% NE on the next window.
The emulator therefore builds table options from the counts minus the cached rows' own lookups
(`held_out_counts`): an id only those rows look up is cold, as an id calibration never saw will be.
Conversion and validation use the full counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.graph import DLRMGraph
from lowprec.errors import InputWarning
from lowprec.evaluation.metrics import BinaryStats
from lowprec.model.dlrm import DLRM, split_sparse
from lowprec.plan import TableChoice
from lowprec.search.rows_subset import positions_in
from lowprec.search.space import Option
from lowprec.search.subset import SubsetForms
from lowprec.serve.layers import layer_codec
from lowprec.serve.quantize import QuantizedForm, embeddings_from_forms, quantize_form, table_form
from lowprec.serve.sharing import trained_form


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
        self.windows, self.meta = list(windows), ds.meta  # what counted_in_calibration compares
        layers = model.linear_layers()
        rows = 0
        for batch in iter_batches(ds, windows, batch_size):
            taps: dict[str, torch.Tensor] = {}
            hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: taps.__setitem__(n, a[0]))
                     for n, m in layers.items()]
            try:
                pooled = model.pooled(batch.sparse)  # looked up once, reused by the forward
                model.logits(batch.dense, pooled)
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


def counted_in_calibration(calibration: dict[str, Any] | None, cache: FloatCache) -> bool:
    """Whether calibration's row counts include the lookups of `cache`'s rows. Both read their
    windows' rows in the same order and stop after whole batches, so the cached rows are counted when
    they are a prefix of the counted ones, or when calibration counted every row of windows that
    hold them. Where the windows overlap otherwise, it cannot be told: a warning, and False."""
    calib = calibration or {}
    windows = [int(w) for w in calib.get("windows", [])]
    if not calib.get("row_counts") or not set(windows) & set(cache.windows):
        return False
    counted = int(calib.get("rows", 0))
    if windows[:len(cache.windows)] == cache.windows and counted >= cache.rows:
        return True
    if set(cache.windows) <= set(windows) and counted == sum(cache.meta.window(w).rows for w in windows):
        return True
    warnings.warn(f"calibration counted part of windows {sorted(set(windows) & set(cache.windows))}, which the "
                  "search also measures on: sharing and tier options are measured with counts that may include "
                  "the measured rows (optimistic); calibrate on other windows, or on all of these", InputWarning, stacklevel=2)
    return False


class Emulator:
    """Scores combinations of options on a FloatCache, reusing everything they do not change.
    `held_out`: table options read the counts without the cached rows' lookups (see the module
    docstring); by default where calibration counted those rows (`counted_in_calibration`)."""

    def __init__(self, model: DLRM, cache: FloatCache, calibration: dict[str, Any] | None = None,
                 held_out: bool | None = None):
        self.model, self.cache = model, cache
        self.calibration = calibration or {}
        self.held_out = counted_in_calibration(calibration, cache) if held_out is None else held_out
        self._counts: dict[int, Any] = {}
        self.names = model.config.table_names
        self._forms: dict[str, QuantizedForm] = {}
        self._ids: dict[int, torch.Tensor] = {}  # table -> ids the cached batches look up
        self._subsets = SubsetForms()
        self._rows: dict[str, torch.Tensor | None] = {}  # option key -> its subset form's rows
        self._pooled: dict[str, list[torch.Tensor]] = {}
        self._layers: dict[str, nn.Module] = {}
        self.evaluations = 0
        self._graph_key: tuple | None = None
        self._float_logits: list[torch.Tensor] | None = None
        self._graph_cache: DLRMGraph | None = None

    def table_form(self, option: Option, range_method: str, full: bool = False) -> QuantizedForm:
        """The option's quantized table: by default only the physical rows the cached batches reach
        (lowprec.search.subset: the same rows, bit for bit), `full` the whole table (for timing)."""
        if full or option.key not in self._forms:
            t = self.names.index(option.name)
            counts = self.counts(t)
            choice = TableChoice(option.precision, option.sharing_dict(), range_method)
            module, config = self.model.embeddings[t], self.model.config.tables[t]
            sub = None if full else self._subsets.subset(t, option.name, trained_form(module, config),
                                                          option.sharing_dict(), counts, self._touched(t))
            if sub is None:
                # the model's weights were checked finite when it was loaded or trained
                form = quantize_form(table_form(module, config, choice, counts, check=False), choice, counts)
                if full:
                    return form
                self._forms[option.key] = form
            else:
                self._rows[option.key] = sub.rows
                self._forms[option.key] = quantize_form(sub.form, choice, sub.counts, backends=sub.backends())
        return self._forms[option.key]

    def counts(self, t: int) -> Any:
        """Table t's access counts as the table options read them: calibration's, or with
        `held_out` those minus the cached rows' own lookups."""
        counts = self.calibration.get("row_counts", {}).get(self.names[t])
        if counts is None or not self.held_out:
            return counts
        if t not in self._counts:
            self._counts[t] = held_out_counts(counts, self._lookups(t))
        return self._counts[t]

    def _lookups(self, t: int) -> torch.Tensor:
        """Every valid id the cached batches look up in table t, repeats included."""
        ids = torch.cat([b.sparse[t].reshape(-1) for b in self.cache.batches]).long()
        return ids[ids >= 0]

    def _touched(self, t: int) -> torch.Tensor:
        if t not in self._ids:
            self._ids[t] = torch.unique(self._lookups(t))
        return self._ids[t]

    def option_ids(self, option: Option, ids: torch.Tensor) -> torch.Tensor:
        """A cached batch's ids of the option's table as its `table_module` reads them (the rows of
        its subset form, where it has one)."""
        if option.key not in self._rows:
            return ids
        t = self.names.index(option.name)
        pos, rows = positions_in(self._touched(t), ids), self._rows[option.key]
        return pos if rows is None else torch.where(ids >= 0, rows[pos.clamp(min=0)], ids)

    def table_module(self, option: Option, range_method: str, full: bool = False) -> nn.Module:
        """A one-table FBGEMM runtime serving this option (ids (B, hotness) -> (B, 1, D)); it reads
        `option_ids` unless `full`, when it holds the whole table and reads the logical ids."""
        t = self.names.index(option.name)
        hot = self.model.config.tables[t].hotness
        return embeddings_from_forms(self.model.config.embedding_dim, [(option.name, hot)],
                                     [self.table_form(option, range_method, full)])

    @torch.inference_mode()
    def table_pooled(self, option: Option, range_method: str) -> list[torch.Tensor]:
        if option.key not in self._pooled:
            t = self.names.index(option.name)
            emb = self.table_module(option, range_method)
            self._pooled[option.key] = [emb(self.option_ids(option, b.sparse[t]))[:, 0]
                                        for b in self.cache.batches]
        return self._pooled[option.key]

    def layer_module(self, option: Option) -> nn.Module:
        if option.key not in self._layers:
            layer = self.model.linear_layers()[option.name]
            calib = self.calibration.get("layers", {}).get(option.name)
            self._layers[option.key] = layer_codec(option.precision).module(layer, calib)
        return self._layers[option.key]

    @torch.inference_mode()
    def run(self, options: list[Option], range_method: str = "l2") -> BinaryStats:
        """Stats of the float model with `options` applied (others float) on the cached rows."""
        return self._scores(options, range_method, False)[0]

    @torch.inference_mode()
    def run_paired(self, options: list[Option], range_method: str = "l2") -> tuple[BinaryStats, float]:
        """`run`'s stats plus the standard error of the relative NE change against the float model,
        from the per-row variance of the paired log-loss difference d_i = l_i - l_float_i:
        se = sqrt(N var(d)) / Σ l_float (the relative change is Σd / Σ l_float)."""
        return self._scores(options, range_method, True)

    def _scores(self, options: list[Option], range_method: str, paired: bool) -> tuple[BinaryStats, float]:
        self.evaluations += 1
        if paired and self._float_logits is None:
            self._float_logits = [self._forward(b, None, {}) for b in self.cache.batches]
        tables = {self.names.index(o.name): self.table_pooled(o, range_method)
                  for o in options if o.kind == "table" and not o.is_float_baseline}
        layers = {o.name: self.layer_module(o) for o in options
                  if o.kind == "layer" and not o.is_float_baseline}
        stats = BinaryStats()
        n = s1 = s2 = base = 0.0
        for i, b in enumerate(self.cache.batches):
            pooled = None
            if tables:
                pooled = b.pooled.clone()
                for t, outs in tables.items():
                    pooled[:, t] = outs[i]
            logits = self._forward(b, pooled, layers)
            stats.update(torch.sigmoid(logits).numpy(), b.labels.numpy())
            if not paired:
                continue
            lf = F.binary_cross_entropy_with_logits(self._float_logits[i].double(), b.labels.double(), reduction="none")
            d = F.binary_cross_entropy_with_logits(logits.double(), b.labels.double(), reduction="none") - lf
            n, s1, s2, base = n + d.numel(), s1 + float(d.sum()), s2 + float((d * d).sum()), base + float(lf.sum())
        var = max(s2 / n - (s1 / n) ** 2, 0.0) if n else 0.0
        return stats, (math.sqrt(n * var) / base if base > 0 else 0.0)

    def _graph(self, layers: dict[str, nn.Module]) -> DLRMGraph:
        """The float model's graph with `layers` swapped in (built once per set of layers)."""
        key = tuple(sorted((n, id(m)) for n, m in layers.items()))
        if self._graph_key != key:
            m = self.model
            self._graph_cache = DLRMGraph(
                [layers.get(f"bottom.{i}", layer) for i, layer in enumerate(m.bottom)],
                [layers.get(f"top.{i}", layer) for i, layer in enumerate(m.top)], len(m.embeddings))
            self._graph_key = key
        return self._graph_cache

    def _forward(self, b: CachedBatch, pooled: torch.Tensor | None,
                 layers: dict[str, nn.Module]) -> torch.Tensor:
        """Rerun the graph only downstream of the earliest change (pooled=None: tables unchanged)."""
        m, graph = self.model, self._graph(layers)
        first_bottom = next((i for i in range(len(m.bottom)) if f"bottom.{i}" in layers), None)
        if first_bottom is None and pooled is None:
            start = next((i for i in range(len(m.top)) if f"top.{i}" in layers), len(m.top) - 1)
            return graph.top_from(b.layer_in[f"top.{start}"], start)
        z0 = b.z0 if first_bottom is None else graph.bottom_from(b.layer_in[f"bottom.{first_bottom}"], first_bottom)
        return graph.top_from(graph.interact(z0, b.pooled if pooled is None else pooled))


def held_out_counts(counts: Any, ids: torch.Tensor) -> torch.Tensor:
    """`counts` (one table's, as calibration made them) minus one for every id in `ids` (the valid
    ids the emulator's rows look up, repeats included), floored at 0 (a count can only be short if
    calibration counted fewer rows than it says)."""
    out = torch.as_tensor(counts).clone()
    out.index_add_(0, ids, torch.full((len(ids),), -1, dtype=out.dtype))
    return out.clamp_(min=0)
