"""The float DLRM: `lowprec.graph.DLRMGraph` over one trainable embedding module per table.

State-dict keys (the float checkpoint's tensor names): `bottom.i.{weight,bias}`, `top.i.*`, and
`embeddings.t.*` per table (see lowprec.model.backends for each backend's tensors).
"""

from __future__ import annotations

import torch
from torch import nn

from lowprec.graph import DLRMGraph
from lowprec.model.backends import build_table, link_shared
from lowprec.model.config import DLRMConfig


def split_sparse(sparse: torch.Tensor, hotness: list[int]) -> list[torch.Tensor]:
    """(B, slots) -> per-table (B, hotness_t) views."""
    return list(torch.split(sparse, hotness, dim=1))


class DLRM(DLRMGraph):
    def __init__(self, config: DLRMConfig):
        shapes = config.layer_shapes()
        super().__init__([nn.Linear(i, o) for name, (i, o) in shapes.items() if name.startswith("bottom.")],
                         [nn.Linear(i, o) for name, (i, o) in shapes.items() if name.startswith("top.")],
                         len(config.tables))
        self.config = config
        self.embeddings = nn.ModuleList(build_table(t, config.embedding_dim) for t in config.tables)
        # Parameters shared across tables (ROBE's one array): registered once, in the first
        # table that uses them, and referenced by the others (lowprec.model.sharing).
        link_shared(self.embeddings)
        self.hotness = [t.hotness for t in config.tables]

    def pooled(self, sparse: torch.Tensor) -> torch.Tensor:
        parts = split_sparse(sparse, self.hotness)
        return torch.stack([emb(ids) for emb, ids in zip(self.embeddings, parts)], dim=1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.logits(dense, self.pooled(sparse))
