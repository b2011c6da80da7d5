"""One training step of the float DLRM, two ways, behind one small interface.

- `FusedStep` (default, `rowwise-adagrad`): every table in one FBGEMM fused training TBE
  (`fused_tables`), EXACT_ROWWISE_ADAGRAD applied inside backward; the MLPs with Adam.
- `SparseAdamStep` (`sparse-adam`, the previous path): the per-table modules with sparse gradients
  and SparseAdam; the MLPs with Adam.

Both score batches (`scorer`, a module (dense, sparse) -> logits, for validation), keep the current
weights as the best so far (`keep`), end with the kept or the current weights in the DLRM's own
modules (`finish`), and report the bytes of the tables' optimizer state.
"""

from __future__ import annotations

import torch
from torch import nn

from lowprec.model.dlrm import DLRM
from lowprec.training.fused_tables import FusedDLRM

OPTIMIZERS = ("rowwise-adagrad", "sparse-adam")


def _tensor_bytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for s in state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


class SparseAdamStep:
    def __init__(self, model: DLRM, lr: float, sparse_lr: float, weight_decay: float):
        self.model = self.scorer = model
        sparse = [m.weight for m in model.embeddings.modules()
                  if isinstance(m, nn.EmbeddingBag) and m.sparse]
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in ids]
        self.dense = torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay)
        self.sparse = torch.optim.SparseAdam(sparse, lr=sparse_lr) if sparse else None
        self.loss = nn.BCEWithLogitsLoss()
        self._best: dict[str, torch.Tensor] | None = None

    def step(self, dense: torch.Tensor, sparse: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        opts = [o for o in (self.dense, self.sparse) if o is not None]
        for o in opts:
            o.zero_grad(set_to_none=True)
        logits = self.model(dense, sparse)
        self.loss(logits, labels).backward()
        for o in opts:
            o.step()
        return logits.detach()

    def keep(self) -> None:
        self._best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def finish(self, restore_best: bool) -> DLRM:
        if restore_best and self._best is not None:
            self.model.load_state_dict(self._best)
        return self.model

    def state_bytes(self) -> int:
        return _tensor_bytes(self.sparse.state) if self.sparse is not None else 0


class FusedStep:
    def __init__(self, model: DLRM, lr: float, sparse_lr: float, weight_decay: float):
        self.model = model
        self.scorer = FusedDLRM(model, sparse_lr)
        self.dense = torch.optim.Adam(self.scorer.dense_parameters(), lr=lr, weight_decay=weight_decay)
        self.loss = nn.BCEWithLogitsLoss()
        self._names = [n for n, _ in self._dense_state()]
        self._best: list[torch.Tensor] | None = None

    def _dense_state(self):
        tables = {id(p) for p in self.model.embeddings.parameters()}
        return [(n, p) for n, p in self.model.named_parameters() if id(p) not in tables]

    def step(self, dense: torch.Tensor, sparse: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.dense.zero_grad(set_to_none=True)
        logits = self.scorer(dense, sparse)
        self.loss(logits, labels).backward()  # the TBE updates the tables inside backward
        self.dense.step()
        return logits.detach()

    def keep(self) -> None:
        self.scorer.tables.write_back()  # the model's modules hold the best tables from here on
        self._best = [p.detach().clone() for _, p in self._dense_state()]

    @torch.no_grad()
    def finish(self, restore_best: bool) -> DLRM:
        if restore_best and self._best is not None:  # the tables were written back by `keep`
            for (_, p), best in zip(self._dense_state(), self._best):
                p.copy_(best)
        else:
            self.scorer.tables.write_back()
        return self.model

    def state_bytes(self) -> int:
        return self.scorer.tables.state_bytes()


def make_step(model: DLRM, optimizer: str, lr: float, sparse_lr: float, weight_decay: float = 0.0):
    """The step for `optimizer` (one of OPTIMIZERS); under torchrun with several ranks, TorchRec's
    DistributedModelParallel (lowprec.training.dmp; row-wise Adagrad only)."""
    from lowprec import distributed as dist

    if dist.world_size() > 1:
        if optimizer != "rowwise-adagrad":
            from lowprec.errors import InputError

            raise InputError(f"--optimizer {optimizer} does not train multi-process; use rowwise-adagrad "
                             f"(TorchRec's fused row-wise Adagrad) or one process")
        from lowprec.training.dmp import DMPStep

        return DMPStep(model, lr, sparse_lr, weight_decay)
    cls = {"rowwise-adagrad": FusedStep, "sparse-adam": SparseAdamStep}[optimizer]
    return cls(model, lr, sparse_lr, weight_decay)
