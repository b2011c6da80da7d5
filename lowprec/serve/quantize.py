"""From float serving forms to quantized ones and to a runtime embedding module.

`quantize_form` encodes every physical table of a `ServingForm` with its precision's handler
(lowprec.serve.tables); `table_form` builds a table's form from its trained module and the plan's
choice (trained kind, then post-training sharing: lowprec.serve.sharing); `embeddings_from_forms`
makes the runtime's `QuantizedEmbeddings` straight from quantized forms (no file in between: the
search's emulator uses it; conversion writes the same forms to an artifact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowprec.errors import InputError
from lowprec.model.config import TableConfig
from lowprec.plan import TableChoice
from lowprec.precision import DIM_ALIGNMENT
from lowprec.serve.forms import Feature, ServingForm
from lowprec.serve.runtime import PhysicalTable, QuantizedEmbeddings, TableServing
from lowprec.serve.sharing import post_training_form, trained_form
from lowprec.serve.tables import table_codec


def check_finite(weight: torch.Tensor, what: str, chunk_rows: int = 1 << 16, first_row: int = 0) -> None:
    """InputError naming the first row with NaN/Inf; checks in row chunks to keep memory flat."""
    weight = weight.reshape(weight.shape[0], -1) if weight.dim() else weight.reshape(1, 1)
    for start in range(0, weight.shape[0], chunk_rows):
        part = weight[start:start + chunk_rows]
        if bool(torch.isfinite(part.sum())):  # one cheap pass; NaN/Inf always make the sum non-finite
            continue
        bad = ~torch.isfinite(part)
        if bad.any():
            row = first_row + start + int(torch.nonzero(bad)[0][0])
            raise InputError(f"{what}: row {row} holds NaN or Inf; fix the float model before converting")


def pad_dim(weight: torch.Tensor, key: str) -> torch.Tensor:
    extra = -weight.shape[1] % DIM_ALIGNMENT
    if not extra:
        return weight
    return torch.nn.functional.pad(weight, (0, extra))  # (convert warns once: lowprec.checkpoint.convert)


def table_form(module: nn.Module, table: TableConfig, choice: TableChoice,
               row_counts: torch.Tensor | None, check: bool = True) -> ServingForm:
    """A trained table module's serving form under the plan's choice (finite weights checked
    unless `check` is False)."""
    for name, p in module.state_dict().items() if check else ():
        check_finite(p, f"table {table.name!r} ({name})")
    form = trained_form(module, table)
    if choice.sharing is not None:
        form = post_training_form(form, choice.sharing, row_counts, table.name)
    return form


@dataclass
class QuantizedForm:
    """One logical table quantized: physical tables with their FBGEMM rows, features, buffers."""

    physical: list[tuple[PhysicalTable, torch.Tensor]]  # (table, uint8 rows)
    groups: list[list[Feature]]
    buffers: dict[str, torch.Tensor]
    exact: bool
    padded_from: dict[str, int]

    def bytes(self) -> int:
        rows = sum(r.numel() for _, r in self.physical)
        return rows + sum(b.numel() * b.element_size() for b in self.buffers.values())


def quantize_form(form: ServingForm, choice: TableChoice, row_counts: torch.Tensor | None,
                  skip: set[str] = frozenset(), backends: dict[str, str] | None = None) -> QuantizedForm:
    """Quantize every physical table of `form` at its precision (the form's own for a tier, else the
    plan's), except keys in `skip` (already done elsewhere); `backends`: a physical table's L2
    range-search backend where not "auto" (the search's subset forms: lowprec.search.subset)."""
    physical, padded_from = [], {}
    for key, weight in form.tables.items():
        if key in skip:
            continue
        padded = pad_dim(weight.detach().float(), key)
        if padded.shape[1] != weight.shape[1]:
            padded_from[key] = int(weight.shape[1])
        # Access counts weight a table's rows only where physical rows are the logical ids.
        counts = row_counts if row_counts is not None and form.rows_are_ids else None
        precision = form.precisions.get(key, choice.precision)
        table = PhysicalTable(key, int(padded.shape[0]), int(padded.shape[1]), precision)
        physical.append((table, table_codec(precision).encode(padded, choice.range_method, counts,
                                                                  (backends or {}).get(key, "auto"))))
    return QuantizedForm(physical, form.groups, dict(form.buffers), form.exact, padded_from)


def embeddings_from_forms(dim: int, names_hotness: list[tuple[str, int]],
                          forms: list[QuantizedForm], logical_rows: list[int] | None = None) -> QuantizedEmbeddings:
    """A runtime embedding module straight from quantized forms (no file in between); `logical_rows`: each
    table's logical rows for the bounds check (default: see runtime.default_rows)."""
    tables, rows, features, serving = [], {}, [], []
    for (name, hotness), qf in zip(names_hotness, forms):
        for table, r in qf.physical:
            if table.key not in rows:
                tables.append(table)
                rows[table.key] = r
        groups = []
        for group in qf.groups:
            groups.append(tuple(len(features) + i for i in range(len(group))))
            features.extend(group)
        serving.append(TableServing(name, hotness, tuple(groups)))
    buffers = {k: v for qf in forms for k, v in qf.buffers.items()}
    emb = QuantizedEmbeddings(dim, tables, features, serving, buffers, logical_rows)
    emb.load_rows(rows.__getitem__)
    return emb
