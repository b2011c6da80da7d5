"""One training step of the float DLRM, two ways, behind one small interface.

- `FusedStep` (default, `rowwise-adagrad`): every table in one FBGEMM fused training TBE
  (`fused_tables`), EXACT_ROWWISE_ADAGRAD applied inside backward; the MLPs with Adam.
- `SparseAdamStep` (`sparse-adam`, the previous path): the per-table modules with sparse gradients
  and SparseAdam; the MLPs with Adam.

Both add `embedding_l2` times the batch mean of Σ_t ||pooled_t||² (each sample's pooled embedding of
every table) to the log-loss: for one-hot tables that is an L2 penalty on a row once per sample it
appears in (a row is shrunk as often as it is looked up; rows a batch does not touch cost nothing),
and `embedding_prior` λ times the same sum weighted by each id's inverse training frequency
(lowprec.training.id_prior): a Gaussian prior on every row, once per row and epoch, which shrinks
rarely seen rows hardest. Their gradients flow into the tables' optimizer with the data's.
(FBGEMM 1.8's CPU row-wise Adagrad ignores its own `weight_decay`/`weight_decay_mode`: measured, the
weights after a step are identical to weight_decay=0 for L2 and DECOUPLE, so the penalty is in the loss.)

Both score batches (`scorer`, a module (dense, sparse) -> logits, for validation), keep the current
weights as the best so far (`keep`), end with the kept or the current weights in the DLRM's own
modules (`finish`), and report the bytes of the tables' optimizer state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lowprec.model.dlrm import DLRM
from lowprec.errors import InputError
from lowprec.training.fused_tables import FusedDLRM

OPTIMIZERS = ("rowwise-adagrad", "sparse-adam")


@dataclass(frozen=True)
class Penalty:
    """The tables' penalties in the loss: `l2` per occurrence; `prior` (λ) weighted by `weights`
    (sparse -> (B, T) inverse id frequencies, lowprec.training.id_prior), a per-row Gaussian prior."""

    l2: float = 0.0
    prior: float = 0.0
    weights: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.prior and self.weights is None:
            raise InputError("embedding_prior needs the training ids' counts")


def penalised_loss(logits: torch.Tensor, labels: torch.Tensor, pooled: torch.Tensor, pen: Penalty,
                   sparse: torch.Tensor) -> torch.Tensor:
    """Mean log-loss + l2 * mean_b Σ_t ||pooled_bt||² + prior * mean_b Σ_t v_bt ||pooled_bt||²
    (pooled: (B, T, D); v = pen.weights(sparse))."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
    if pen.l2 or pen.prior:
        sq = pooled.square().sum(dim=2)  # (B, T)
        if pen.l2:
            loss = loss + pen.l2 * sq.sum(1).mean()
        if pen.prior:
            loss = loss + pen.prior * (pen.weights(sparse) * sq).sum(1).mean()
    return loss


def _tensor_bytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for s in state.values() for v in s.values()
               if isinstance(v, torch.Tensor))


class SparseAdamStep:
    def __init__(self, model: DLRM, lr: float, sparse_lr: float, weight_decay: float, penalty: Penalty = Penalty()):
        self.model = self.scorer = model
        sparse = [m.weight for m in model.embeddings.modules()
                  if isinstance(m, nn.EmbeddingBag) and m.sparse]
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in ids]
        self.dense = torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay)
        self.sparse = torch.optim.SparseAdam(sparse, lr=sparse_lr) if sparse else None
        self.penalty = penalty
        self._best: dict[str, torch.Tensor] | None = None

    def step(self, dense: torch.Tensor, sparse: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        opts = [o for o in (self.dense, self.sparse) if o is not None]
        for o in opts:
            o.zero_grad(set_to_none=True)
        pooled = self.model.pooled(sparse)
        logits = self.model.logits(dense, pooled)
        penalised_loss(logits, labels, pooled, self.penalty, sparse).backward()
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
    def __init__(self, model: DLRM, lr: float, sparse_lr: float, weight_decay: float, penalty: Penalty = Penalty(),
                 adagrad_init: float = 0.0):
        self.model = model
        self.scorer = FusedDLRM(model, sparse_lr, init=adagrad_init)
        self.dense = torch.optim.Adam(self.scorer.dense_parameters(), lr=lr, weight_decay=weight_decay)
        self.penalty = penalty
        self._names = [n for n, _ in self._dense_state()]
        self._best: list[torch.Tensor] | None = None

    def _dense_state(self):
        tables = {id(p) for p in self.model.embeddings.parameters()}
        return [(n, p) for n, p in self.model.named_parameters() if id(p) not in tables]

    def step(self, dense: torch.Tensor, sparse: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.dense.zero_grad(set_to_none=True)
        pooled = self.scorer.tables(sparse)
        logits = self.model.logits(dense, pooled)
        penalised_loss(logits, labels, pooled, self.penalty, sparse).backward()  # the TBE updates the tables in backward
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


def _check_multi_process(optimizer: str, embedding_l2: float, adagrad_init: float, embedding_prior: float) -> None:
    """InputError naming the options set that only one process trains with (DMP: plain row-wise Adagrad)."""
    one_process = [f"--optimizer {optimizer}"] if optimizer != "rowwise-adagrad" else []
    one_process += [f"--{k} {v}" for k, v in (("embedding-l2", embedding_l2), ("adagrad-init", adagrad_init),
                                                ("embedding-prior", embedding_prior)) if v]
    if not one_process:
        return
    *rest, last = one_process
    listed, verb, them = (f"{', '.join(rest)} and {last}", "train", "them") if rest else (last, "trains", "it")
    raise InputError(f"multi-process training runs TorchRec's fused row-wise Adagrad only: {listed} {verb} in "
                     f"one process (leave {them} out, or train without --nproc / torchrun)")


def make_step(model: DLRM, optimizer: str, lr: float, sparse_lr: float, weight_decay: float = 0.0,
              embedding_l2: float = 0.0, adagrad_init: float = 0.0, embedding_prior: float = 0.0,
              id_weights: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """The step for `optimizer` (one of OPTIMIZERS); weight_decay: the MLPs' (Adam's L2); adagrad_init:
    the row-wise Adagrad accumulators' start (rowwise-adagrad only); embedding_prior with id_weights:
    the inverse-frequency row penalty (lowprec.training.id_prior). Under torchrun with several ranks,
    TorchRec's DistributedModelParallel (lowprec.training.dmp; row-wise Adagrad only)."""
    from lowprec import distributed as dist

    if dist.world_size() > 1:
        _check_multi_process(optimizer, embedding_l2, adagrad_init, embedding_prior)
        from lowprec.training.dmp import DMPStep

        return DMPStep(model, lr, sparse_lr, weight_decay)
    if optimizer == "sparse-adam" and adagrad_init:
        raise InputError("adagrad_init applies to the row-wise Adagrad tables, not sparse-adam")
    penalty = Penalty(embedding_l2, embedding_prior, id_weights)
    if optimizer == "sparse-adam":
        return SparseAdamStep(model, lr, sparse_lr, weight_decay, penalty)
    return FusedStep(model, lr, sparse_lr, weight_decay, penalty, adagrad_init)
