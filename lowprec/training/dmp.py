"""Multi-process float training on TorchRec's DistributedModelParallel (`lowprec train` under torchrun).

Tables are model-parallel: one TorchRec `EmbeddingBagCollection` holding every (dense-backend) table,
sharded table-wise by `EmbeddingBagCollectionSharder` with the FUSED compute kernel, i.e. each rank
trains its tables in one FBGEMM training TBE with EXACT_ROWWISE_ADAGRAD applied inside backward (the
optimizer of the one-process trainer, lowprec.training.fused_tables). Tables go to ranks greedily by
bytes (largest first to the least loaded rank; ties to the lower rank), so the plan depends only on
the model and the world size. The MLPs are data-parallel: DMP wraps them in DDP (gradients averaged
by all-reduce) and Adam steps them on every rank alike. Ids and pooled embeddings travel by
all_to_all (TorchRec's KJT and pooled-embedding dists over gloo).

Batches: every rank reads the same shuffled global batches (`--batch-size` rows, the one-process
order for that seed) and trains on its contiguous share of each. The loss is scaled so the update is
the one-process update on the whole global batch: rank r's loss is N Σ_r bce / B (DDP averages over
N ranks) and the pooled embeddings' gradient is divided by N (the owner's TBE receives it from all N
ranks). Differences from the one-process trainer: float summation order (all-reduce, all_to_all,
per-rank TBEs), so weights agree to rounding, not bit for bit; a global batch with fewer rows than
ranks is skipped (at most the last of a window); dense-backend tables only. Same world size and seed
give the same weights (gloo's collectives are deterministic for a fixed world size).

The DLRM's own modules hold the result: `sync()` copies every table from its owner rank into every
rank's DLRM (broadcast), so validation scores the plain model data-parallel and rank 0 saves the
normal safetensors float model.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lowprec import distributed as dist
from lowprec._compat import quiet_torchrec_internals
from lowprec.errors import InputError
from lowprec.model.dlrm import DLRM, split_sparse
from lowprec.model.embedding import DenseBag

_EBC = "ebc"  # the sharded module's name inside `_Trainee`


def assign_tables(row_bytes: list[int], world: int) -> list[int]:
    """Owner rank of every table: largest first, each to the rank holding the fewest bytes so far."""
    load, owner = [0] * world, [0] * len(row_bytes)
    for t in sorted(range(len(row_bytes)), key=lambda t: (-row_bytes[t], t)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[t], load[r] = r, load[r] + row_bytes[t]
    return owner


class _Trainee(nn.Module):
    """The DLRM's MLPs and graph over a TorchRec EBC of its tables (what DMP shards)."""

    def __init__(self, model: DLRM):
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

        cfg = model.config
        # the MLPs are registered here (DDP wraps them); the DLRM itself is not, or DDP would also
        # wrap its per-table modules, which this forward never uses
        self.bottom, self.top, self._model = model.bottom, model.top, [model]
        self.names, self.world = list(cfg.table_names), dist.world_size()
        self.ebc = EmbeddingBagCollection(
            [EmbeddingBagConfig(name=n, embedding_dim=cfg.embedding_dim, num_embeddings=t.num_embeddings,
                                feature_names=[n], pooling=PoolingType.SUM) for n, t in zip(self.names, cfg.tables)],
            device=torch.device("meta"))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        from torchrec import KeyedJaggedTensor

        model = self._model[0]
        per_table = split_sparse(sparse, model.hotness)
        lengths = torch.cat([(ids >= 0).sum(1) for ids in per_table])
        values = torch.cat([ids[ids >= 0] for ids in per_table])
        kjt = KeyedJaggedTensor(keys=self.names, values=values, lengths=lengths)
        pooled = self.ebc(kjt).values().reshape(len(dense), len(self.names), -1)
        if pooled.requires_grad and self.world > 1:  # every rank's gradient reaches the owner's TBE
            pooled.register_hook(lambda g: g / self.world)
        return model.logits(dense, pooled)


class DMPStep:
    """`lowprec.training.steps` interface (step / scorer / keep / finish / state_bytes) on DMP."""

    def __init__(self, model: DLRM, lr: float, sparse_lr: float, weight_decay: float, eps: float = 1e-8):
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
        from torchrec.distributed.types import ShardingEnv, ShardingPlan

        bad = [t.name for t, m in zip(model.config.tables, model.embeddings) if not isinstance(m, DenseBag)]
        if bad:
            raise InputError(f"tables {bad} are not dense tables: multi-process training (TorchRec DMP) "
                             f"shards dense tables only; train them in one process")
        self.model, self.world = model, dist.world_size()
        self.owner = assign_tables([m.bag.weight.numel() for m in model.embeddings], self.world)
        trainee = _Trainee(model)
        sharder = EmbeddingBagCollectionSharder(fused_params={
            "optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": sparse_lr, "eps": eps})
        module_plan = construct_module_sharding_plan(
            trainee.ebc, {n: table_wise(rank=r, compute_kernel="fused")  # no device: TorchRec 1.8 puts every "cpu" placement on rank 0
                          for n, r in zip(trainee.names, self.owner)},
            sharder=sharder, local_size=self.world, world_size=self.world, device_type="cpu")
        with dist.guarded("DMP set-up"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)  # TorchRec's call
            self.dmp = DistributedModelParallel(
                trainee, env=ShardingEnv.from_process_group(torch.distributed.group.WORLD),
                device=torch.device("cpu"), plan=ShardingPlan({_EBC: module_plan}), sharders=[sharder])
        quiet_torchrec_internals()
        self._load_tables()
        dense = [p for n, p in self.dmp.named_parameters() if f"{_EBC}." not in n]
        self.dense = torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay)
        self.loss = nn.BCEWithLogitsLoss(reduction="sum")
        self._dirty, self._best = False, None

    def _local_tables(self) -> dict[str, torch.Tensor]:
        """This rank's tables: name -> the fused TBE's weight (a view: writes reach the TBE)."""
        out = {}
        for key, value in self.dmp.state_dict().items():
            name = key.split(".")[-2] if key.endswith(".weight") and f"{_EBC}." in key else None
            if name in self.model.config.table_names and hasattr(value, "local_shards"):
                for shard in value.local_shards():
                    out[name] = shard.tensor
        return out

    @torch.no_grad()
    def _load_tables(self) -> None:
        for name, w in self._local_tables().items():
            w.copy_(self.model.embeddings[self.model.config.table_names.index(name)].bag.weight)

    @torch.no_grad()
    def sync(self) -> None:
        """Every table from its owner rank into every rank's DLRM modules."""
        local = self._local_tables()
        for t, (name, r) in enumerate(zip(self.model.config.table_names, self.owner)):
            w = self.model.embeddings[t].bag.weight
            if r == dist.rank():
                w.copy_(local[name])
            with dist.guarded(f"table {name} from rank {r}"):
                torch.distributed.broadcast(w.data, src=r)
        self._dirty = False

    def step(self, dense: torch.Tensor, sparse: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One update on the global batch; returns the logits of the whole global batch."""
        n = len(labels)
        if n < self.world:  # a rank would get no rows (TorchRec needs a non-empty local batch): scored, not trained on
            with torch.no_grad():
                return self.scorer(dense, sparse).float()
        a, b = dist.span(n)
        self.dense.zero_grad(set_to_none=True)
        with dist.guarded("DMP training step"):  # all_to_all and DDP's all-reduce
            logits = self.dmp(dense[a:b], sparse[a:b])
            (self.loss(logits, labels[a:b]) * (self.world / n)).backward()
        self.dense.step()
        self._dirty = True
        rows = dist.gather_rows(logits.detach().double().reshape(-1, 1), "training logits")
        return torch.from_numpy(rows.reshape(-1)).float()

    @property
    def scorer(self) -> nn.Module:
        """The plain DLRM with the current tables (synced from their owners when they changed)."""
        if self._dirty:
            self.sync()
        return self.model

    def keep(self) -> None:
        self.sync()
        self._best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def finish(self, restore_best: bool) -> DLRM:
        if restore_best and self._best is not None:
            self.model.load_state_dict(self._best)
        else:
            self.sync()
        return self.model

    def state_bytes(self) -> int:
        """Bytes of the row-wise Adagrad accumulators over all ranks (4 bytes a row)."""
        rows = sum(int(self.model.config.tables[t].num_embeddings) for t, r in enumerate(self.owner)
                   if r == dist.rank())
        return int(dist.all_reduce_sum([4.0 * rows], "optimizer state bytes")[0])
