"""Hash-sharing backends (hash, QR, ROBE-Z), their deploy forms, and post-training hot sharing.

References are slow per-element Python loops straight from the formulas, with hashes from
`reference_hash` (Python integers), so they share no tensor code with the implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from safetensors.torch import save_file

from helpers import make_tiny_dataset
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError
from lowprec.model.config import DLRMConfig, TableConfig
from lowprec.model.backends import load_table_module
from lowprec.model.dlrm import DLRM
from lowprec.model import sharing
from lowprec.model.realign import realign
from lowprec.serve.forms import ServingForm as DeployForm, dense_form
from lowprec.serve.sharing import SHARING_KINDS, hot_split, post_training_form
from lowprec.serve.transforms import build_transform
from lowprec.quant.hashing import (P61, SIGN, hash_ids, mulmod, reference_hash, sign_hash,
                                   table_id)
from lowprec.train import TrainConfig, model_config_for, train

D = 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention (much of it on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_with(*tables: TableConfig, dim: int = D) -> DLRM:
    torch.manual_seed(0)
    return DLRM(DLRMConfig(3, tables, dim, (dim,), (8,)))


def padded_ids(n: int, b: int = 7, h: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n, (b, h), generator=g)
    ids[torch.rand(b, h, generator=g) < 0.35] = -1
    ids[0] = -1  # an empty bag
    return ids


def deploy_form(module: torch.nn.Module, key: str) -> DeployForm:
    """The serving form of a trained table module (by its backend class)."""
    kind = {sharing.HashBag: "hash", sharing.QRBag: "qr", sharing.RobeBag: "robe"}.get(type(module), "dense")
    return SHARING_KINDS[kind].form(module, key)


def serve(form: DeployForm, ids: torch.Tensor) -> torch.Tensor:
    """Emulate the runtime: sum over groups of concat over features of weighted, sum-pooled rows."""
    valid = ids >= 0
    safe = torch.where(valid, ids, torch.zeros_like(ids))
    out = None
    for group in form.groups:
        cols = []
        for f in group:
            mapped, w = build_transform(f.transform, form.buffers)(safe)
            w = valid.float() * (w if w is not None else 1.0)
            cols.append((form.tables[f.table][mapped] * w[..., None]).sum(1))
        g = torch.cat(cols, 1)
        out = g if out is None else out + g
    return out


# --- hashing ------------------------------------------------------------------------------------

def test_hash_fixed_values_and_reference():
    t = table_id("t0")
    assert t == 1501602633526685522
    assert hash_ids(torch.arange(3), t).tolist() == [2117663353841932506, 20405626125711434,
                                                      228990907623184313]
    assert sign_hash(torch.arange(8), 7).tolist() == [1, -1, -1, 1, -1, 1, 1, -1]
    ids = torch.tensor([0, 1, 5, 2**31 - 1, 2**31, 2**61 - 2, 2**61 - 1, 2**61, 2**63 - 1, -1])
    got = hash_ids(ids, t, [0, 3])
    for i, x in enumerate(ids.tolist()):
        for j, c in enumerate([0, 3]):
            assert int(got[i, j]) == reference_hash(x, t, c)
    rng = np.random.default_rng(0)
    a = [int(v) for v in rng.integers(0, P61, 2000)] + [P61 - 1]
    x = [int(v) for v in rng.integers(0, P61, 2000)] + [P61 - 1]
    assert mulmod(torch.tensor(a), torch.tensor(x)).tolist() == [(u * v) % P61 for u, v in zip(a, x)]


def test_hash_spreads_uniformly():
    m = 97
    for table, chunk in ((table_id("a"), 0), (table_id("b"), 5)):
        rows = torch.remainder(hash_ids(torch.arange(50_000), table, chunk), m)
        counts = torch.bincount(rows, minlength=m).numpy()
        assert scipy.stats.chisquare(counts).pvalue > 1e-4
    signs = sign_hash(torch.arange(20_000), table_id("a"), 2)
    assert abs(float(signs.mean())) < 0.05


# --- parameter counts ---------------------------------------------------------------------------

def test_parameter_counts_match_ratio():
    n = 10_000
    m = model_with(TableConfig("h", n, 1, "hash:ratio=8"), TableConfig("q", n, 1, "qr:ratio=8"),
                   TableConfig("r1", n, 2, "robe:ratio=8"), TableConfig("r2", 3 * n, 1, "robe:ratio=16"))
    count = [sum(p.numel() for p in e.parameters()) for e in m.embeddings]
    assert count[0] == math.ceil(n / 8) * D
    assert abs(count[1] - n * D / 8) <= 2 * D
    robe = n * D / 8 + 3 * n * D / 16
    assert abs(count[2] - robe) <= 16 and count[3] == 0 and count[2] % 16 == 0
    names = [k for k in m.state_dict() if k.startswith("embeddings.")]
    assert names == ["embeddings.0.bag.weight", "embeddings.1.q.weight", "embeddings.1.r.weight",
                     "embeddings.2.shared.bag.weight"]
    assert sharing.qr_collisions(1000, 4) == 245  # 5 + 245 = 250 rows = 1000 / 4
    c = sharing.qr_collisions(10, 10)
    assert -(-10 // c) + c == 7  # the fewest rows QR can do for 10 ids


# --- forward against per-element references -----------------------------------------------------

def ref_hash(bag: sharing.HashBag, ids):
    w = bag.bag.weight.detach()
    out = torch.zeros(ids.shape[0], w.shape[1])
    for b, x in ((b, x) for b in range(ids.shape[0]) for x in ids[b].tolist() if x >= 0):
        out[b] += w[reference_hash(x, bag.table, 0, bag.seed) % bag.rows]
    return out


def ref_qr(bag: sharing.QRBag, ids):
    q, r = bag.q.weight.detach(), bag.r.weight.detach()
    out = torch.zeros(ids.shape[0], q.shape[1])
    for b, x in ((b, x) for b in range(ids.shape[0]) for x in ids[b].tolist() if x >= 0):
        out[b] += q[x // bag.c] + r[x % bag.c]
    return out


def ref_robe(bag: sharing.RobeBag, ids):
    m, z, e, seed = bag.array.weight.detach().reshape(-1), bag.z, bag.member.table, bag.seed
    size, d = len(m), bag.member.dim
    out = torch.zeros(ids.shape[0], d)
    for b in range(ids.shape[0]):
        for x in ids[b].tolist():
            if x < 0:
                continue
            for i in range(d):
                h = reference_hash(x, e, i // z, seed)
                o = z * (h % (size // z)) if bag.member.align else h % size
                s = 1 - 2 * (reference_hash(x, e, i // z, seed, SIGN) >> 60) if bag.member.sign else 1
                out[b, i] += m[(o + i % z) % size] * s
    return out


SPECS = ["hash:ratio=3", "hash:ratio=2,seed=7", "qr:ratio=4", "robe:ratio=4",
         "robe:ratio=4,z=4,sign=1", "robe:ratio=2,z=8,align=1,sign=1", "robe:ratio=4,align=1"]


@pytest.mark.parametrize("spec", SPECS)
def test_forward_matches_reference(spec):
    n = 300
    z = next((o for o in spec.split(",") if o.startswith("z=")), None)
    other = "robe:ratio=2" + (f",{z}" if z else "")  # a second robe table shares the array
    m = model_with(TableConfig("t", n, 4, spec), TableConfig("u", 50, 1, other))
    bag = m.embeddings[0]
    ref = {sharing.HashBag: ref_hash, sharing.QRBag: ref_qr, sharing.RobeBag: ref_robe}[type(bag)]
    ids = padded_ids(n)
    torch.testing.assert_close(bag(ids), ref(bag, ids), rtol=1e-5, atol=1e-6)


def test_robe_z_must_divide_dim_and_share():
    with pytest.raises(InputError, match="'bad'.*z=5"):
        model_with(TableConfig("bad", 10, 1, "robe:ratio=2,z=5"))
    with pytest.raises(InputError, match="'bad'.*multiple of 4"):
        model_with(TableConfig("bad", 10, 1, "robe:ratio=2,z=2,align=1"))
    with pytest.raises(InputError, match="same z"):
        model_with(TableConfig("a", 10, 1, "robe:ratio=2,z=8"), TableConfig("b", 10, 1, "robe:ratio=2"))
    with pytest.raises(InputError, match="'x'.*ratio"):
        model_with(TableConfig("x", 10, 1, "hash:seed=3"))
    with pytest.raises(InputError, match="'x'.*takes options"):
        model_with(TableConfig("x", 10, 1, "qr:ratio=2,z=4"))


# --- deploy forms -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["hash:ratio=3", "qr:ratio=4", "robe:ratio=4,align=1",
                                  "robe:ratio=2,z=8,align=1,sign=1"])
def test_deploy_form_is_exact(spec):
    n = 300
    m = model_with(TableConfig("t", n, 4, spec), TableConfig("u", 40, 1, "dense"))
    bag, ids = m.embeddings[0], padded_ids(n)
    form = deploy_form(bag, "t")
    assert form.exact and all(w.shape[1] % 4 == 0 for w in form.tables.values())
    torch.testing.assert_close(serve(form, ids), bag(ids).detach(), rtol=1e-5, atol=1e-6)


def test_unaligned_robe_deploys_approximately_and_realigns():
    specs = ("robe:ratio=4,sign=1", "robe:ratio=4,sign=1")
    m = model_with(TableConfig("a", 200, 3, specs[0]), TableConfig("b", 90, 1, specs[1]))
    ids = padded_ids(200, h=3)
    form = deploy_form(m.embeddings[0], "a")  # (convert warns, once for all such tables: test_artifact)
    assert not form.exact
    exact = m.embeddings[0].exact_runtime()
    torch.testing.assert_close(exact.exact_pooled(ids), m.embeddings[0](ids).detach())
    aligned = realign(m)
    assert aligned.config.tables[0].embedding.endswith("align=1")
    # the approximate form serves exactly what the realigned model computes
    torch.testing.assert_close(serve(form, ids), aligned.embeddings[0](ids).detach(), rtol=1e-5, atol=1e-6)
    form2 = deploy_form(aligned.embeddings[0], "a")
    assert form2.exact
    torch.testing.assert_close(form2.tables["robe.shared"], form.tables["robe.shared"])
    # the projection is a least-squares fit: no worse than serving the raw array aligned
    rows = torch.arange(200).unsqueeze(1)
    target = m.embeddings[0](rows).detach()
    raw = DeployForm({"robe.shared": m.embeddings[0].array.weight.detach().reshape(-1, 16)}, form.groups)
    assert ((serve(form, rows) - target) ** 2).sum() < ((serve(raw, rows) - target) ** 2).sum()


def test_robe_state_dict_round_trip_and_table_loading(tmp_path):
    m = model_with(TableConfig("a", 100, 2, "robe:ratio=4,align=1"), TableConfig("d", 30, 1, "dense"),
                   TableConfig("b", 60, 1, "robe:ratio=2,align=1,sign=1"))
    state = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
    save_file(state, str(tmp_path / "m.safetensors"))  # refuses tensors that share memory
    m2 = model_with(*m.config.tables)
    m2.load_state_dict(state)
    assert m2.embeddings[2].array is m2.embeddings[0].shared
    ids = padded_ids(60, h=2)
    torch.testing.assert_close(m2.embeddings[2](ids), m.embeddings[2](ids))
    for i, key in ((2, "b"), (1, "d")):
        module = load_table_module(m.config, i, state.__getitem__)
        want, got = deploy_form(m.embeddings[i], key), deploy_form(module, key)
        for k in want.tables:
            torch.testing.assert_close(got.tables[k], want.tables[k])
    with pytest.raises(InputError, match="'b'.*not linked"):
        sharing.RobeBag("b", 60, D, 2.0, 16, True, True, 1)(ids)


# --- post-training hot sharing ------------------------------------------------------------------

def ref_hot_table(weight, counts, k, b, seed, table):
    """The shared table and id -> row map, by loops: hottest k ids (ties to lower id), then buckets."""
    n = len(weight)
    order = sorted(range(n), key=lambda i: (-counts[i], i))
    hot = sorted(order[:k])
    where = {x: j for j, x in enumerate(hot)}
    members: dict[int, list[int]] = {}
    for x in range(n):
        if x not in where:
            bucket = reference_hash(x, table_id(table), 0, seed) % b
            where[x] = k + bucket
            members.setdefault(bucket, []).append(x)
    rows = [weight[x] for x in hot]
    for j in range(b):
        xs = members.get(j, [])
        tot = sum(counts[x] for x in xs)
        if not xs:
            rows.append(torch.zeros(weight.shape[1]))
        elif tot > 0:
            rows.append(sum(weight[x] * counts[x] for x in xs) / tot)
        else:
            rows.append(sum(weight[x] for x in xs) / len(xs))
    return torch.stack(rows), where


@pytest.mark.parametrize("lookup", ["search", "remap"])
@pytest.mark.parametrize("hot", [0.0, 0.5, 0.9])
def test_hot_sharing_serves_the_shared_table(lookup, hot):
    n, ratio = 500, 8
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(n, 12, generator=g)
    counts = torch.randint(0, 5, (n,), generator=g).float() ** 3
    form = post_training_form(dense_form("cat", weight), {"kind": "hot", "ratio": ratio, "hot": hot,
                                                          "lookup": lookup}, counts, "cat")
    k, b = hot_split(n, ratio, hot)
    assert k + b == math.ceil(n / ratio) and form.tables["cat"].shape == (k + b, 12)
    table, where = ref_hot_table(weight.double(), counts.tolist(), k, b, sharing.DEFAULT_SEED, "cat")
    torch.testing.assert_close(form.tables["cat"].double(), table, rtol=1e-6, atol=1e-6)
    ids = padded_ids(n, b=20, h=5)
    want = torch.zeros(20, 12, dtype=torch.float64)
    for r in range(20):
        for x in ids[r].tolist():
            if x >= 0:
                want[r] += table[where[x]]
    torch.testing.assert_close(serve(form, ids).double(), want, rtol=1e-5, atol=1e-5)
    buf = sum(t.numel() * t.element_size() for t in form.buffers.values())
    assert buf == (4 * n if lookup == "remap" and k else 4 * k)


def test_hot_sharing_needs_counts_and_dense():
    w = torch.randn(40, 8)
    with pytest.raises(InputError, match="'cat'.*row access counts"):
        post_training_form(dense_form("cat", w), {"kind": "hot", "ratio": 4}, None, "cat")
    with pytest.raises(InputError, match="'cat'.*3 row counts"):
        post_training_form(dense_form("cat", w), {"kind": "hot", "ratio": 4}, torch.ones(3), "cat")
    qr = deploy_form(model_with(TableConfig("q", 40, 1, "qr:ratio=2")).embeddings[0], "q")
    with pytest.raises(InputError, match="'q'.*dense tables"):
        post_training_form(qr, {"kind": "hot", "ratio": 4}, torch.ones(40), "q")
    with pytest.raises(InputError, match="'cat'.*lookup"):
        post_training_form(dense_form("cat", w), {"kind": "hot", "ratio": 4, "lookup": "x"},
                           torch.ones(40), "cat")


# --- training and the full conversion path ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return Dataset(make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", windows=3, rows=1500,
                                     tables=(60, 24, 8), hotness=(1, 3, 1)))


def mean_loss(model, ds, window):
    loss, n = 0.0, 0
    with torch.no_grad():
        for batch in iter_batches(ds, [window], 4096):
            loss += float(torch.nn.functional.binary_cross_entropy_with_logits(
                model(batch.dense, batch.sparse), batch.labels, reduction="sum"))
            n += len(batch)
    return loss / n


TRAIN_SPECS = ["hash:ratio=2", "qr:ratio=2", "robe:ratio=2,sign=1", "robe:ratio=2,align=1"]


def trained(ds, spec, epochs=2):
    cfg = TrainConfig(windows=(0, 1), epochs=epochs, batch_size=128, embedding=spec,
                      table_embedding={"t2": "dense"})
    torch.manual_seed(0)
    init = DLRM(model_config_for(ds.meta, cfg))
    before = mean_loss(init, ds, 0)
    model, _ = train(ds, cfg, init=init)
    return model, before


@pytest.mark.parametrize("spec", TRAIN_SPECS)
def test_training_reduces_loss(tiny, spec):
    model, before = trained(tiny, spec)
    assert mean_loss(model, tiny, 0) < before - 0.02


def _convert_patch(monkeypatch):
    """Until convert builds tables through sharing.load_table_module, route it there (ROBE needs
    the shared array from the checkpoint, which a table built alone does not have)."""
    from lowprec.checkpoint import convert as conv

    if hasattr(conv, "load_table_module"):
        return

    def load_table_form(src, index, config, choice, row_counts):
        tcfg = config.tables[index]
        module = load_table_module(config, index, src.get_tensor)
        form = deploy_form(module, tcfg.name)
        if choice.sharing is not None:
            form = post_training_form(form, choice.sharing, row_counts, tcfg.name)
        return form

    monkeypatch.setattr(conv, "load_table_form", load_table_form)


@pytest.mark.parametrize("spec", TRAIN_SPECS + ["dense+hot"])
def test_convert_int8_matches_float(tiny, spec, tmp_path, monkeypatch):
    try:
        import lowprec.quant.rowwise  # noqa: F401
        from lowprec.checkpoint.artifact import load_artifact
        from lowprec.checkpoint.convert import convert
        from lowprec.checkpoint.float_model import save_float_model
    except ImportError as exc:
        pytest.skip(f"row-wise quantization / conversion not available yet: {exc}")
    from lowprec.evaluation.scoring import evaluate
    from lowprec.plan import Plan, TableChoice
    from lowprec.precision import Precision

    _convert_patch(monkeypatch)
    hot = spec == "dense+hot"
    model, _ = trained(tiny, "dense" if hot else spec)
    save_float_model(model, tmp_path / "float")
    plan = Plan.uniform(Precision.INT8)
    calibration = None
    if hot:
        counts = torch.bincount(torch.from_numpy(np.asarray(tiny.arrays(0)[1][:, 0], dtype=np.int64)),
                                minlength=60).float()
        plan = Plan({"t0": TableChoice(Precision.INT8, {"kind": "hot", "ratio": 2}),
                     "*": TableChoice(Precision.INT8)})
        calibration = {"row_counts": {"t0": counts.tolist()}}
    if "robe" in spec and "align" not in spec:
        with pytest.warns(UserWarning, match="unaligned"):
            manifest = convert(tmp_path / "float", plan, tmp_path / "art", calibration)
        assert [t["exact"] for t in manifest["tables"]] == [False, False, True]
        load_artifact(tmp_path / "art")
        return
    manifest = convert(tmp_path / "float", plan, tmp_path / "art", calibration)
    runtime, _ = load_artifact(tmp_path / "art")
    batch = next(iter_batches(tiny, [2], 4096, feature_ids=True))
    with torch.no_grad():
        # the general (transforming) path reads the loader's FeatureIds as it reads the matrix
        torch.testing.assert_close(runtime(batch.dense, batch.ids), runtime(batch.dense, batch.sparse),
                                   rtol=0, atol=0)
        want = model(batch.dense, batch.sparse)
        if hot:  # the reference is the float model serving the shared table
            form = post_training_form(deploy_form(model.embeddings[0], "t0"),
                                      {"kind": "hot", "ratio": 2}, counts, "t0")
            pooled = model.pooled(batch.sparse)
            pooled[:, 0] = serve(form, batch.sparse[:, :1])
            want = model.logits(batch.dense, pooled)
        got = runtime(batch.dense, batch.sparse)
    err = float((got - want).abs().max())
    assert err < 0.05, err
    auc_f = evaluate(model, tiny, [2]).overall.summary()["auc"]
    auc_q = evaluate(runtime, tiny, [2]).overall.summary()["auc"]
    if not hot:
        assert abs(auc_f - auc_q) < 1e-3, (auc_f, auc_q)  # equal to 3 decimals (no rounding-edge flake)
    assert manifest["embedding_bytes"] < manifest["fp32_embedding_bytes"]


def test_unaligned_robe_tables_are_named_and_the_search_says_so_before_measuring():
    """QA 6d item 3 / 6c item 3: the README's `robe:ratio=16,z=8` trained unaligned ROBE, whose
    artifacts serve a projection at every precision; the search ended in an all-fp32 plan 90x over
    the budget, blaming the budget. The tables are named and the search warns up front."""
    from lowprec.model.config import DLRMConfig, TableConfig
    from lowprec.model.sharing import unaligned_robe, unaligned_robe_warning

    tables = tuple(TableConfig(f"t{i}", 1000, 1, spec) for i, spec in enumerate(
        ("robe:ratio=16,z=8", "robe:ratio=16,z=8,align=1", "robe:ratio=4,align=0", "hash:ratio=4", "dense")))
    config = DLRMConfig(2, tables, 16, (16,), (8,), ("d0", "d1"))
    assert unaligned_robe(config) == ["t0", "t2"]
    assert "2 table(s) (t0, t2) were trained as unaligned ROBE" in unaligned_robe_warning(config)
    assert unaligned_robe_warning(DLRMConfig(2, tables[1:2], 16, (16,), (8,), ("d0", "d1"))) is None
