"""The serving form of an embedding table: physical TBE tables plus id transforms.

A logical table (one sparse feature of the DLRM) serves as one or more FBGEMM TBE *features*, each a
lookup into a *physical* table after an id transform:

    pooled(ids) = Σ_groups concat_{feature f in group} TBE_f(transform_f(ids))

- dense table:   one group, one feature, identity transform;
- hashing trick: one feature into a smaller table, `hash` transform;
- QR:            two groups (quotient table + remainder table), summed;
- ROBE (aligned): one group of D/Z features of width Z into one shared array, concatenated.

Transforms are JSON-serialisable dicts {"kind": ..., params}; their implementations live in
`TRANSFORMS` (kind -> function(ids, spec, buffers) -> (ids, per-sample weights or None)), so the
artifact's manifest fully describes how to serve each table. Buffers (e.g. a remap array for
post-training sharing) are tensors stored in the artifact beside the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lowprec.errors import InputError

Transform = Callable[[torch.Tensor, dict[str, Any], dict[str, torch.Tensor]],
                     tuple[torch.Tensor, torch.Tensor | None]]


def _identity(ids: torch.Tensor, spec: dict[str, Any], buffers: dict[str, torch.Tensor]):
    return ids, None


# id transform kind -> function; the hashing kinds are added by `lowprec.model.sharing`, which the
# package imports (lowprec/model/__init__.py), so the table is full wherever this module is used
TRANSFORMS: dict[str, Transform] = {"identity": _identity}
IDENTITY: dict[str, Any] = {"kind": "identity"}


def apply_transform(spec: dict[str, Any], ids: torch.Tensor, buffers: dict[str, torch.Tensor]):
    """Map valid ids (>= 0) through a transform; callers mask pads themselves."""
    fn = TRANSFORMS.get(spec.get("kind", ""))
    if fn is None:
        raise InputError(f"unknown id transform {spec.get('kind')!r} (known: {sorted(TRANSFORMS)})")
    return fn(ids, spec, buffers)


@dataclass(frozen=True)
class Feature:
    table: str  # key of the physical table
    transform: dict[str, Any] = field(default_factory=lambda: dict(IDENTITY))


@dataclass
class DeployForm:
    """How one logical table serves: physical float tables and feature groups over them."""

    tables: dict[str, torch.Tensor]  # physical key -> float weight (rows, dim)
    groups: list[list[Feature]]
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    exact: bool = True  # False where the form approximates the training-time computation

    def output_dim(self) -> int:
        dims = {sum(self.tables[f.table].shape[1] for f in g) for g in self.groups}
        if len(dims) != 1:
            raise ValueError(f"feature groups produce different widths {sorted(dims)}")
        return dims.pop()


def dense_form(key: str, weight: torch.Tensor) -> DeployForm:
    return DeployForm({key: weight}, [[Feature(key)]])


# Post-training sharing: sharing kind -> function(dense form, spec, row access counts, table name)
# returning a smaller form. Registered by `lowprec.model.sharing` (imported with the package).
POST_TRAINING: dict[str, Callable[..., DeployForm]] = {}


def post_training_form(form: DeployForm, spec: dict[str, Any], row_counts: torch.Tensor | None,
                       table: str) -> DeployForm:
    fn = POST_TRAINING.get(spec.get("kind", ""))
    if fn is None:
        raise InputError(f"table {table!r}: unknown sharing kind {spec.get('kind')!r} "
                         f"(known: {sorted(POST_TRAINING)})")
    return fn(form, spec, row_counts, table)
