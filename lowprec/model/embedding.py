"""The dense embedding backend, the SPEC parser and the pad mask every backend uses.

Every backend maps padded ids (B, hotness) with -1 for empty slots to pooled vectors (B, D) by
summing the embeddings of the valid ids. `lowprec.model.backends` picks the backend from the
table's SPEC string (`dense` here; hash, qr, robe in `lowprec.model.sharing`).
The modules hold the weights a checkpoint saves; `lowprec train` trains them in FBGEMM's fused
training TBE by default (`lowprec.training.fused_tables`) and writes the result back here.
"""

from __future__ import annotations

import math
import torch
from torch import nn

from lowprec.data.dataset import PAD_ID
from lowprec.errors import InputError


def pad_mask(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids with pads replaced by 0, float weights 1 for valid slots and 0 for pads)."""
    valid = ids != PAD_ID
    return torch.where(valid, ids, torch.zeros_like(ids)), valid.to(torch.float32)


class DenseBag(nn.Module):
    """A plain table: one row per id, sum-pooled over the valid ids of a bag."""

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(num_embeddings, dim, mode="sum", sparse=True)
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.bag.weight, -0.1 * bound, 0.1 * bound)

    @property
    def weight(self) -> torch.Tensor:
        return self.bag.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        safe, w = pad_mask(ids)
        return self.bag(safe, per_sample_weights=w)


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`robe:ratio=16,z=32` -> ('robe', {'ratio': '16', 'z': '32'})."""
    kind, _, rest = spec.strip().partition(":")
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise InputError(f"embedding SPEC {spec!r}: option {part!r} is not key=value")
        if key.strip() in options:  # (the last one silently won)
            raise InputError(f"embedding SPEC {spec!r}: option {key.strip()!r} is given twice; give it once")
        options[key.strip()] = value.strip()
    return kind, options
