"""The fused training step (FBGEMM TBE + batched ROBE) against a slow, obviously correct reference.

Reference: the model's own per-table modules give the gradient (autograd), and a Python loop applies
row-wise Adagrad row by row: s[r] += mean(g_r^2), w_r -= lr * g_r / (sqrt(s[r]) + eps), for every
row with a non-zero gradient (exact ROBE: every element of M is a one-wide row). With embedding_l2 = λ
the loss the reference differentiates is log-loss + λ * mean_b Σ_t ||pooled_t||², written out sample by
sample and table by table. With adagrad_init the accumulators start at that value instead of 0. With
embedding_prior = λ it adds λ * mean_b Σ_t v_bt ||e_t||², v_bt the mean of 1 / count over the bag's ids,
the counts tallied id by id in a Python loop over the training window.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import make_tiny_dataset
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.model.dlrm import DLRM
from lowprec.model.embedding import pad_mask
from lowprec.model.sharing import QRBag, RobeBag, robe_offsets
from lowprec.quant.hashing import sign_hash
from lowprec.train import TrainConfig, model_config_for
from lowprec.training.id_maps import BatchedIdMaps, FeatureSpec
from lowprec.training.steps import make_step

LR, EPS = 0.05, 1e-8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Dataset(make_tiny_dataset(tmp_path_factory.mktemp("d") / "tiny", windows=2, rows=600,
                                     tables=(50, 20, 8, 30), hotness=(1, 3, 1, 2)))


def _model(ds, specs: list[str], seed: int = 0) -> DLRM:
    names = ds.meta.sparse_names
    cfg = TrainConfig(windows=(0,), embedding=specs[0], table_embedding=dict(zip(names, specs)))
    torch.manual_seed(seed)
    return DLRM(model_config_for(ds.meta, cfg))


def _rows(module) -> list[tuple[torch.nn.Parameter, int]]:
    """(parameter, row width) of every trainable table tensor of a per-table module."""
    if isinstance(module, QRBag):
        return [(module.q.weight, module.q.weight.shape[1]), (module.r.weight, module.r.weight.shape[1])]
    if isinstance(module, RobeBag):
        if not hasattr(module, "shared"):
            return []
        z = module.z if all(m.align for m in module.array.members) else 1
        return [(module.array.weight, z)]
    return [(module.bag.weight, module.bag.weight.shape[1])]


@torch.no_grad()
def _rowwise_adagrad_reference(param, width, state, lr=LR, eps=EPS):
    w = param.view(-1, width)
    g = param.grad.to_dense().view(-1, width) if param.grad.is_sparse else param.grad.view(-1, width)
    for r in range(w.shape[0]):
        if bool(g[r].any()):
            state[r] += float((g[r].double() ** 2).mean())
            w[r] -= (lr * g[r].double() / (math.sqrt(state[r]) + eps)).float()


def _slow_counts(ds, window: int, hotness: list[int]) -> list[dict[int, int]]:
    counts: list[dict[int, int]] = [{} for _ in hotness]
    for row in ds.arrays(window)[1].tolist():
        slot = 0
        for t, h in enumerate(hotness):
            for i in row[slot : slot + h]:
                if i >= 0:
                    counts[t][i] = counts[t].get(i, 0) + 1
            slot += h
    return counts


def _penalty(model: DLRM, sparse: torch.Tensor, l2: float, prior: float = 0.0, counts=None) -> torch.Tensor:
    """λ * mean over samples of Σ_t ||e_t||² (+ the prior's weighted sum), one sample and table at a time."""
    parts = torch.split(sparse, model.hotness, dim=1)
    total = torch.zeros(())
    for b in range(sparse.shape[0]):
        for t, (emb, ids) in enumerate(zip(model.embeddings, parts)):
            sq = (emb(ids[b : b + 1]) ** 2).sum()
            valid = [i for i in ids[b].tolist() if i >= 0]
            v = sum(1 / counts[t][i] for i in valid) / len(valid) if prior and valid else 0.0
            total = total + (l2 + prior * v) * sq
    return total / sparse.shape[0]


def _reference_steps(model: DLRM, batches, l2: float = 0.0, init: float = 0.0, prior: float = 0.0,
                     counts=None) -> None:
    tables = [(p, width) for m in model.embeddings for p, width in _rows(m)]
    states = [[init] * (p.numel() // width) for p, width in tables]
    table_ids = {id(p) for p, _ in tables}
    adam = torch.optim.Adam([p for p in model.parameters() if id(p) not in table_ids], lr=1e-3)
    for b in batches:
        adam.zero_grad(set_to_none=True)
        for p, _ in tables:
            p.grad = None
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b.dense, b.sparse), b.labels)
        (loss + _penalty(model, b.sparse, l2, prior, counts) if l2 or prior else loss).backward()
        adam.step()
        for (p, width), state in zip(tables, states):
            _rowwise_adagrad_reference(p, width, state)


SPECS = [
    ["dense", "hash:ratio=3", "qr:ratio=2", "robe:ratio=2,z=8,align=1,sign=1"],  # all in the TBE
    ["robe:ratio=3,z=4", "hash:ratio=2", "dense", "robe:ratio=2,z=4,sign=1,align=1"],  # exact ROBE batched
]


@pytest.mark.parametrize("l2,init,prior", [(0.0, 0.0, 0.0), (0.5, 0.0, 0.0), (0.0, 1e-4, 0.0), (0.0, 0.0, 20.0)],
                         ids=["plain", "embedding-l2", "adagrad-init", "embedding-prior"])
@pytest.mark.parametrize("specs", SPECS, ids=["tbe", "robe-batched"])
def test_fused_steps_match_rowwise_adagrad_reference(tiny, specs, l2, init, prior):
    from lowprec.training.id_prior import InverseFrequency, id_counts

    batches = list(iter_batches(tiny, [0], 128, shuffle=True, seed=1))[:4]
    fused_model = _model(tiny, specs)
    ref_model = copy.deepcopy(fused_model)
    weights = InverseFrequency(id_counts(tiny, [0]), fused_model.hotness) if prior else None
    step = make_step(fused_model, "rowwise-adagrad", 1e-3, LR, embedding_l2=l2, adagrad_init=init,
                     embedding_prior=prior, id_weights=weights)
    for b in batches:
        step.step(b.dense, b.sparse, b.labels)
    fused_model = step.finish(restore_best=False)
    _reference_steps(ref_model, batches, l2, init, prior, _slow_counts(tiny, 0, ref_model.hotness))
    if l2 or init or prior:  # the option matters at this size: the same steps without it end elsewhere
        plain = _model(tiny, specs)
        _reference_steps(plain, batches)
        keys = [k for k in plain.state_dict() if k.startswith("embeddings.")]
        assert any((plain.state_dict()[k] - ref_model.state_dict()[k]).abs().max() > 1e-3 for k in keys)
    before = _model(tiny, specs).state_dict()
    got, want = fused_model.state_dict(), ref_model.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert not torch.equal(want[key], before[key]), f"{key} did not train"
        torch.testing.assert_close(got[key], want[key], atol=2e-5, rtol=1e-4, msg=key)
    # the training-time scorer and the written-back model give the same logits
    b = batches[0]
    with torch.no_grad():
        torch.testing.assert_close(step.scorer(b.dense, b.sparse), fused_model(b.dense, b.sparse))


def test_batched_ids_equal_the_per_table_transforms(tiny):
    model = _model(tiny, ["hash:ratio=3", "qr:ratio=2", "robe:ratio=2,z=4,sign=1,align=1", "robe:ratio=3,z=4"])
    sparse = next(iter(iter_batches(tiny, [0], 64))).sparse
    parts = torch.split(sparse, model.hotness, dim=1)
    h, q, ra, ru = model.embeddings
    size = ra.array.size
    feats = [FeatureSpec(0, "hash", h.table, 0, h.seed, h.rows), FeatureSpec(1, "qr_q", c=q.c),
             FeatureSpec(1, "qr_r", c=q.c)]
    feats += [FeatureSpec(2, "hash", ra.member.table, k, ra.seed, size // 4, sign=True) for k in range(4)]
    feats += [FeatureSpec(3, "hash", ru.member.table, k, ru.seed, size) for k in range(4)]
    rows, valid, signs = BatchedIdMaps(feats, model.hotness).rows_and_signs(sparse)
    safe = [pad_mask(p)[0] for p in parts]
    want = [h.row_ids(safe[0]), safe[1] // q.c, safe[1] % q.c]
    off_a = robe_offsets(safe[2], ra.member, 4, size, ra.seed) // 4
    want += [off_a[..., k] for k in range(4)]
    off_u = robe_offsets(safe[3], ru.member, 4, size, ru.seed)
    want += [off_u[..., k] for k in range(4)]
    assert torch.equal(rows, torch.cat(want, dim=1))
    assert torch.equal(valid, torch.cat([parts[0] >= 0, parts[1] >= 0, parts[1] >= 0] + [parts[2] >= 0] * 4
                                        + [parts[3] >= 0] * 4, dim=1))
    want_sign = sign_hash(safe[2], ra.member.table, range(4), ra.seed)
    assert torch.equal(signs[:, 7:11], want_sign.reshape(64, 4))
    assert torch.equal(signs[:, :7], torch.ones(64, 7)) and torch.equal(signs[:, 11:], torch.ones(64, 8))


def test_tbe_input_drops_empty_slots(tiny):
    ids = BatchedIdMaps([FeatureSpec(0, "id"), FeatureSpec(1, "id")], [1, 3])
    sparse = torch.tensor([[4, 1, -1, -1], [7, 2, 3, -1]])
    indices, offsets, weights = ids(sparse)
    assert indices.tolist() == [4, 7, 1, 2, 3] and offsets.tolist() == [0, 1, 2, 3, 5] and weights is None


def test_state_bytes_rowwise_vs_sparse_adam(tiny):
    specs = ["dense"] * 4
    b = next(iter(iter_batches(tiny, [0], 128)))
    steps = {}
    for opt in ("rowwise-adagrad", "sparse-adam"):
        steps[opt] = make_step(_model(tiny, specs), opt, 1e-3, LR)
        steps[opt].step(b.dense, b.sparse, b.labels)
    rows = sum(tiny.meta.num_embeddings)
    assert steps["rowwise-adagrad"].state_bytes() == 4 * rows
    assert steps["sparse-adam"].state_bytes() >= 2 * 4 * rows * 16  # two dense moments per table


def test_dim_not_multiple_of_4_is_a_clear_error(tiny):
    from lowprec.errors import InputError

    cfg = TrainConfig(windows=(0,), embedding_dim=6, bottom_mlp=(8, 6))
    with pytest.raises(InputError, match="multiple of 4.*sparse-adam"):
        make_step(DLRM(model_config_for(tiny.meta, cfg)), "rowwise-adagrad", 1e-3, LR)


def test_inverse_frequency_weights_match_slow_counts(tiny):
    from lowprec.training.id_prior import InverseFrequency, id_counts

    hot = [f.hotness for f in tiny.meta.sparse]
    counts = _slow_counts(tiny, 0, hot)
    b = next(iter(iter_batches(tiny, [1], 64)))  # ids of another window: some never seen in window 0
    got = InverseFrequency(id_counts(tiny, [0]), hot)(b.sparse)
    parts = torch.split(b.sparse, hot, dim=1)
    for r in range(64):
        for t, ids in enumerate(parts):
            valid = [i for i in ids[r].tolist() if i >= 0]
            want = sum(1 / max(counts[t].get(i, 0), 1) for i in valid) / len(valid) if valid else 0.0
            assert float(got[r, t]) == pytest.approx(want, rel=1e-6), (r, t)
    assert (got[:, 1] > 0).all() and got.shape == (64, len(hot))
