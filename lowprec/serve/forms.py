"""The serving form of an embedding table: physical TBE tables plus id transforms.

A logical table (one sparse feature of the DLRM) serves as one or more FBGEMM TBE *features*, each a
lookup into a *physical* table after an id transform:

    pooled(ids) = Σ_groups concat_{feature f in group} TBE_f(transform_f(ids))

- dense table:   one group, one feature, identity transform;
- hashing trick: one feature into a smaller table, `hash` transform;
- QR:            two groups (quotient table + remainder table), summed;
- ROBE (aligned): one group of D/Z features of width Z into one shared array, concatenated;
- hot sharing:   one feature into the K hot rows + B buckets, `hot_hash` or `remap` transform;
- tiered:        one group per tier (its own table and precision), `tier` transform (-1: not in this tier).

Transforms are JSON-serialisable dicts {"kind": ..., params} (`lowprec.serve.transforms` builds each
into a module), so the artifact's manifest fully describes how to serve each table. Buffers (a remap
array, the sorted hot ids) are tensors stored in the artifact beside the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lowprec.precision import Precision

IDENTITY: dict[str, Any] = {"kind": "identity"}


@dataclass(frozen=True)
class Feature:
    table: str  # key of the physical table
    transform: dict[str, Any] = field(default_factory=lambda: dict(IDENTITY))


@dataclass
class ServingForm:
    """How one logical table serves: physical float tables and feature groups over them."""

    tables: dict[str, torch.Tensor]  # physical key -> float weight (rows, dim)
    groups: list[list[Feature]]
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    exact: bool = True  # False where the form approximates the training-time computation
    # physical key -> its own precision (a tiered table's upper tiers); others take the plan's
    precisions: dict[str, Precision] = field(default_factory=dict)

    @property
    def rows_are_ids(self) -> bool:
        """One physical table looked up by the logical ids themselves (a dense table)."""
        return (len(self.tables) == 1 and len(self.groups) == 1 and len(self.groups[0]) == 1
                and self.groups[0][0].transform.get("kind") == "identity")


def dense_form(key: str, weight: torch.Tensor) -> ServingForm:
    return ServingForm({key: weight}, [[Feature(key)]])
