"""Validation on the rows the eval windows look up: a rows-subset float model, converted for real.

A dense table kept dense (no sharing, no hashed backend) encodes row by row: min/max and the L2
range search choose each row's (scale, bias) from that row alone (and, with row counts, that row's
count), so the artifact rows a window looks up are the same whether the whole table or only those
rows is converted. `touched_rows` makes one pass over the eval windows' ids (`TouchedRows` keeps its
result for every round of a search); `write_subset_model`
writes a float model (`lowprec.checkpoint.float_model.write_float_model`, streamed) whose dense
unshared tables hold only those rows, in id order, and whose other tables (sharing, hashed or QR/ROBE
backends, tiers: forms built from the whole table) and layers are copied whole; `convert` and
`load_artifact` then run on it unchanged, and `RowsSubset` serves the artifact with the logical ids,
replaced by their position among the kept rows. A validation round costs a pass over the eval
windows' rows (once a search), not a pass over the model (except for tables converted whole).

Min/max and L2 give bit-identical rows: the L2 search's C kernel searches each row alone. Only
where it cannot be built does "auto" pick by size (`lowprec.quant.range_search.backend_for`:
compiled passes for >= 2^25 values, eager below), and those sum the error in another order, so
on a few near-tie rows (0.1% measured) a subset may pick another, equally good range.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from lowprec.checkpoint.float_model import write_float_model
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.model.dlrm import DLRM, split_sparse
from lowprec.model.embedding import parse_spec
from lowprec.plan import Plan
from lowprec.precision import Precision
from lowprec.serve.tables import padded_dim

_BLOCK_ROWS = 1 << 16  # rows copied at a time (16 MB at dim 64)


def subset_tables(model: DLRM, plan: Plan) -> list[int]:
    """Tables whose rows encode independently under `plan`: dense and kept dense."""
    return [i for i, t in enumerate(model.config.tables)
            if parse_spec(t.embedding)[0] == "dense" and plan.table(t.name).sharing is None]


def touched_rows(model: DLRM, ds: Dataset, windows: list[int], tables: list[int],
                 batch_size: int = 4096) -> dict[int, torch.Tensor]:
    """Per table in `tables`, the sorted distinct ids the windows look up (at least one row:
    a model table cannot be empty)."""
    seen: dict[int, list[np.ndarray]] = {t: [] for t in tables}
    for batch in iter_batches(ds, windows, batch_size):
        parts = split_sparse(batch.sparse, model.hotness)
        for t in tables:
            ids = parts[t].reshape(-1)
            seen[t].append(np.unique(ids[ids >= 0].numpy()))
    out = {}
    for t, parts in seen.items():
        ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        out[t] = torch.from_numpy(ids.astype(np.int64) if len(ids) else np.zeros(1, np.int64))
    return out


class TouchedRows:
    """`touched_rows` of one model on one set of windows, computed once for every dense table: a
    search validates many plans on the same eval windows, and only which tables are subset changes."""

    def __init__(self, model: DLRM, ds: Dataset, windows: list[int]):
        self.model, self.ds, self.windows = model, ds, list(windows)
        self._rows: dict[int, torch.Tensor] | None = None

    def __call__(self, tables: list[int]) -> dict[int, torch.Tensor]:
        if self._rows is None:
            dense = [i for i, t in enumerate(self.model.config.tables) if parse_spec(t.embedding)[0] == "dense"]
            self._rows = touched_rows(self.model, self.ds, self.windows, dense)
        return {t: self._rows[t] for t in tables}


def write_subset_model(model: DLRM, rows: dict[int, torch.Tensor], out: Path) -> Path:
    """The float model with table t holding only rows[t] (in order); everything else as it is."""
    tables = tuple(replace(c, num_embeddings=len(rows[t])) if t in rows else c
                   for t, c in enumerate(model.config.tables))
    config = replace(model.config, tables=tables)
    state = model.state_dict()
    subset = {f"embeddings.{t}.bag.weight": r for t, r in rows.items()}

    def pieces(name: str, shape: tuple[int, ...]) -> Iterator[torch.Tensor]:
        src, ids = state[name].detach(), subset.get(name)
        n = shape[0] if shape else 1
        if not shape:
            yield src.reshape(1)
            return
        for a in range(0, n, _BLOCK_ROWS):
            yield src[a:a + _BLOCK_ROWS] if ids is None else src.index_select(0, ids[a:a + _BLOCK_ROWS])

    return write_float_model(out, config, pieces, {"source": "lowprec search validation (rows subset)"})


def subset_calibration(calibration: dict[str, Any] | None, model: DLRM,
                       rows: dict[int, torch.Tensor]) -> dict[str, Any] | None:
    """The calibration with the subset tables' row counts cut to the kept rows."""
    if not calibration or not calibration.get("row_counts"):
        return calibration
    names = model.config.table_names
    counts = dict(calibration["row_counts"])
    for t, r in rows.items():
        if names[t] in counts:
            counts[names[t]] = torch.as_tensor(counts[names[t]])[r]
    return {**calibration, "row_counts": counts}


def full_embedding_bytes(manifest: dict[str, Any], model: DLRM, rows: dict[int, torch.Tensor]) -> int:
    """The embedding bytes of the plan converted whole: the subset tables at their full row count
    (a dense table's bytes are rows x the precision's row size)."""
    total = int(manifest["embedding_bytes"])
    pdim = padded_dim(model.config.embedding_dim)
    by_name = {t["name"]: t for t in manifest["tables"]}
    for t, r in rows.items():
        cfg = model.config.tables[t]
        row_bytes = Precision(by_name[cfg.name]["precision"]).bytes_per_row(pdim)
        total += (cfg.num_embeddings - len(r)) * row_bytes
    return total


def positions_in(rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Ids replaced by their positions in `rows` (sorted, holding every id that occurs); -1 pads stay."""
    pos = torch.searchsorted(rows, ids.clamp(min=0).long())
    return torch.where(ids >= 0, pos.to(ids.dtype), ids)


class RowsSubset(nn.Module):
    """A rows-subset artifact's runtime read with the full model's ids: ids of table t are replaced
    by their position in rows[t] (every id the eval windows hold is there; -1 padding stays)."""

    def __init__(self, runtime: nn.Module, config, rows: dict[int, torch.Tensor]):
        super().__init__()
        self.runtime, self.config, self.rows = runtime, config, rows
        self.hotness = [t.hotness for t in config.tables]

    def linear_layers(self) -> dict[str, nn.Module]:
        return self.runtime.linear_layers()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        cols = []
        for t, ids in enumerate(torch.split(sparse, self.hotness, dim=1)):
            cols.append(positions_in(self.rows[t], ids) if t in self.rows else ids)
        return self.runtime(dense, torch.cat(cols, 1))
