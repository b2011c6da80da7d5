"""TorchRec DLRM import: key layout, table matching, feature order, refusals, and a real TorchRec model.

The reference is a slow per-sample loop over the TorchRec graph written from its definition (ReLU
MLP, sum pooling over valid ids, pairwise dots over [z0, e_1..e_F] in TorchRec's feature order, over
arch); the real-model test compares against torchrec.models.dlrm.DLRM itself when torchrec imports.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from helpers import make_tiny_dataset, run_cli as run
from lowprec.checkpoint.float_model import load_float_model
from lowprec.checkpoint.torchrec_import import import_torchrec
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError

D = 8
DENSE_SIZES = (12, D)
OVER_SIZES = (10, 6)  # hidden; the final Linear to 1 is over_arch.model.1


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("trdata")
    return Dataset(make_tiny_dataset(root / "data", windows=1, rows=64, hotness=(1, 3, 1)))


@pytest.fixture(scope="module")
def batch(ds):
    return next(iter(iter_batches(ds, [0], batch_size=32)))


def torchrec_state(ds, order=None, seed=0, table_names=None, prefix=""):
    """A state dict in TorchRec DLRM's key layout, tables in `order` (feature names)."""
    g = torch.Generator().manual_seed(seed)
    meta = ds.meta
    order = order or meta.sparse_names
    names = table_names or {f: f"t_{f}" for f in meta.sparse_names}
    rows = dict(zip(meta.sparse_names, meta.num_embeddings))
    state = {}
    for f in order:
        state[f"sparse_arch.embedding_bag_collection.embedding_bags.{names[f]}.weight"] = \
            torch.randn(rows[f], D, generator=g) * 0.3
    width = len(meta.dense_names)
    for i, out in enumerate(DENSE_SIZES):
        state[f"dense_arch.model._mlp.{i}._linear.weight"] = torch.randn(out, width, generator=g) * 0.4
        state[f"dense_arch.model._mlp.{i}._linear.bias"] = torch.randn(out, generator=g) * 0.1
        width = out
    f = len(order) + 1
    width = D + f * (f - 1) // 2
    for i, out in enumerate(OVER_SIZES):
        state[f"over_arch.model.0._mlp.{i}._linear.weight"] = torch.randn(out, width, generator=g) * 0.3
        state[f"over_arch.model.0._mlp.{i}._linear.bias"] = torch.randn(out, generator=g) * 0.1
        width = out
    state["over_arch.model.1.weight"] = torch.randn(1, width, generator=g) * 0.3
    state["over_arch.model.1.bias"] = torch.randn(1, generator=g) * 0.1
    return {prefix + k: v for k, v in state.items()}


def reference_logits(state, meta, dense, sparse, order=None, table_names=None):
    """TorchRec's DLRM forward, one sample at a time, from the state dict alone."""
    order = order or meta.sparse_names
    names = table_names or {f: f"t_{f}" for f in meta.sparse_names}
    starts = dict(zip(meta.sparse_names, meta.slot_offsets))
    hot = dict(zip(meta.sparse_names, meta.hotness))
    out = []
    for b in range(dense.shape[0]):
        x = dense[b].double()
        for i in range(len(DENSE_SIZES)):
            w = state[f"dense_arch.model._mlp.{i}._linear.weight"].double()
            x = torch.relu(w @ x + state[f"dense_arch.model._mlp.{i}._linear.bias"].double())
        vecs = [x]
        for f in order:
            table = state[f"sparse_arch.embedding_bag_collection.embedding_bags.{names[f]}.weight"].double()
            acc = torch.zeros(D, dtype=torch.float64)
            for j in range(starts[f], starts[f] + hot[f]):
                if int(sparse[b, j]) >= 0:
                    acc = acc + table[int(sparse[b, j])]
            vecs.append(acc)
        feats = [x] + [float(vecs[i] @ vecs[j]) for i in range(len(vecs)) for j in range(i + 1, len(vecs))]
        y = torch.cat([x, torch.tensor(feats[1:], dtype=torch.float64)])
        for i in range(len(OVER_SIZES)):
            w = state[f"over_arch.model.0._mlp.{i}._linear.weight"].double()
            y = torch.relu(w @ y + state[f"over_arch.model.0._mlp.{i}._linear.bias"].double())
        y = state["over_arch.model.1.weight"].double() @ y + state["over_arch.model.1.bias"].double()
        out.append(float(y[0]))
    return torch.tensor(out, dtype=torch.float64)


def save(state, path, metadata=None):
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def test_hand_made_state_dict_matches_reference(ds, batch, tmp_path):
    state = torchrec_state(ds)
    model, info = import_torchrec(save(state, tmp_path / "s.safetensors"), ds.meta)
    assert info["tables"] == {f: f"t_{f}" for f in ds.meta.sparse_names}
    assert model.config.bottom_mlp == DENSE_SIZES and model.config.top_mlp == OVER_SIZES
    with torch.no_grad():
        got = model(batch.dense, batch.sparse).double()
    want = reference_logits(state, ds.meta, batch.dense, batch.sparse)
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("how", ["argument", "metadata"])
def test_torchrec_feature_order_is_permuted_into_dataset_order(ds, batch, tmp_path, how):
    order = list(reversed(ds.meta.sparse_names))
    state = torchrec_state(ds, order=order, seed=1)
    meta = {"sparse_feature_names": json.dumps(order)} if how == "metadata" else None
    path = save(state, tmp_path / "s.safetensors", meta)
    model, info = import_torchrec(path, ds.meta, feature_order=order if how == "argument" else None)
    assert info["feature_order"] == order
    assert model.config.table_names == ds.meta.sparse_names  # the model itself is in dataset order
    with torch.no_grad():
        got = model(batch.dense, batch.sparse).double()
    want = reference_logits(state, ds.meta, batch.dense, batch.sparse, order=order)
    assert (got - want).abs().max() < 1e-5
    # without the order, the columns would be wrong: the order matters and is not guessed
    wrong, _ = import_torchrec(save(state, tmp_path / "plain.safetensors"), ds.meta)
    with torch.no_grad():
        assert (wrong(batch.dense, batch.sparse).double() - want).abs().max() > 1e-3


def test_wrappers_plain_names_and_table_map(ds, batch, tmp_path):
    names = {"t0": "t0", "t1": "user_items", "t2": "t_t2"}
    state = torchrec_state(ds, table_names=names, prefix="model.", seed=2)  # DLRMTrain wraps in .model
    model, info = import_torchrec(save(state, tmp_path / "s.safetensors"), ds.meta,
                                  table_map={"t1": "user_items"})
    assert info["tables"] == names
    plain = {k[len("model."):]: v for k, v in state.items()}
    with torch.no_grad():
        got = model(batch.dense, batch.sparse).double()
    assert (got - reference_logits(plain, ds.meta, batch.dense, batch.sparse, table_names=names)).abs().max() < 1e-5


def test_one_table_shared_by_two_features_through_the_map(tmp_path):
    ds2 = Dataset(make_tiny_dataset(tmp_path / "d2", windows=1, rows=32, tables=(50, 20, 20), hotness=(1, 2, 1)))
    names = {"t0": "t_t0", "t1": "shared", "t2": "shared"}
    state = torchrec_state(ds2, order=["t0", "t1"], table_names=names)
    f = 3 + 1  # the over arch sees three sparse features although there are two tables
    state["over_arch.model.0._mlp.0._linear.weight"] = torch.randn(OVER_SIZES[0], D + f * (f - 1) // 2)
    path = save(state, tmp_path / "s.safetensors")
    with pytest.raises(InputError, match="'t1' has no table named"):
        import_torchrec(path, ds2.meta)
    model, info = import_torchrec(path, ds2.meta, table_map={"t1": "shared", "t2": "shared"})
    assert info["tables"] == names
    b = next(iter(iter_batches(ds2, [0], batch_size=16)))
    with torch.no_grad():
        got = model(b.dense, b.sparse).double()
    assert (got - reference_logits(state, ds2.meta, b.dense, b.sparse, table_names=names)).abs().max() < 1e-5


def _bad(ds, tmp_path, edit, match, **kw):
    state = torchrec_state(ds)
    edit(state)
    with pytest.raises(InputError, match=match):
        import_torchrec(save(state, tmp_path / "bad.safetensors"), ds.meta, **kw)


T = "sparse_arch.embedding_bag_collection.embedding_bags."


@pytest.mark.parametrize("edit,match,kw", [
    (lambda s: s.__setitem__(T + "extra.weight", torch.zeros(5, D)), r"tables \['extra'\] serve no dataset feature", {}),
    (lambda s: s.__setitem__(T + "t1.weight", s[T + "t_t1.weight"].clone()), "matches both tables", {}),
    (lambda s: s.pop(T + "t_t2.weight"), "feature 't2' has no table named 't_t2' or 't2'", {}),
    (lambda s: s.__setitem__(T + "t_t1.weight", torch.zeros(19, D)), "'t_t1' has 19 rows but dataset feature 't1' has num_embeddings 20", {}),
    (lambda s: s.__setitem__(T + "t_t1.weight", torch.zeros(20, 4)), r"table 't_t1' has shape \(20, 4\)", {}),
    (lambda s: s.update({"dense_arch.model._mlp.1._linear.weight": torch.zeros(4, 12),
                        "dense_arch.model._mlp.1._linear.bias": torch.zeros(4)}), "wrong", {}),
    (lambda s: s.__setitem__("over_arch.model.0._mlp.0._linear.weight", torch.zeros(10, 13)), r"takes 13 inputs; expected D \+ F\(F-1\)/2", {}),
    (lambda s: s.update({"over_arch.model.1.weight": torch.zeros(2, 6), "over_arch.model.1.bias": torch.zeros(2)}),
     "one logit", {}),
    (lambda s: s[T + "t_t0.weight"].__setitem__((3, 1), float("nan")), r"'sparse_arch\.embedding_bag_collection\.embedding_bags\.t_t0\.weight' holds NaN", {}),
    (lambda s: s.__setitem__("inter_arch.crossnet.W_kernels.0", torch.zeros(3, 3)), "DLRM_DCN", {}),
    (lambda s: s.__setitem__("inter_arch.interaction_branch1.model._mlp.0._linear.weight", torch.zeros(3, 3)), "DLRM_Projection", {}),
    (lambda s: s.pop("dense_arch.model._mlp.0._linear.bias"), r"missing dense_arch\.model\._mlp\.0\._linear\.bias", {}),
    (lambda s: None, r"table map names tables the state dict lacks: \['nope'\]", {"table_map": {"t0": "nope"}}),
    (lambda s: None, r"features the dataset lacks: \['zz'\]", {"table_map": {"zz": "t_t0"}}),
    (lambda s: None, "not a permutation", {"feature_order": ["t0", "t1"]}),
], ids=["extra-table", "ambiguous", "unmatched", "rows", "dim", "bottom-not-D", "over-in", "final-out",
        "nan", "dcn", "projection", "missing-bias", "map-bad-table", "map-bad-feature", "bad-order"])
def test_refusals_name_the_key_or_table(ds, tmp_path, edit, match, kw):
    if match == "wrong":  # the bottom MLP must end at D
        match = "the dense arch ends at 4, not at the embedding dim 8"
    _bad(ds, tmp_path, edit, match, **kw)


def test_a_safetensors_header_length_that_starts_like_a_pickle_is_read(ds, tmp_path):
    """The pickle check looked at byte 0, which in safetensors is the header length's low byte:
    every file whose header length is 128 mod 256 was refused."""
    path = tmp_path / "m.safetensors"
    for n in range(300):
        save_file(torchrec_state(ds), path, metadata={"pad": "x" * n})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    import_torchrec(path, ds.meta)


def test_pickles_are_refused_unopened(ds, tmp_path):
    path = tmp_path / "dlrm.pt"
    torch.save(torchrec_state(ds), path)
    with pytest.raises(InputError, match="never unpickles"):
        import_torchrec(path, ds.meta)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        import_torchrec(tmp_path / "junk.safetensors", ds.meta)


def test_cli_import_then_convert(ds, batch, tmp_path):
    state = torchrec_state(ds, seed=3)
    path = save(state, tmp_path / "dlrm.safetensors")
    res = run("import", "--format", "torchrec", "--state-dict", path, "--data", ds.root,
              "--out", tmp_path / "model", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["tables"] == {f: f"t_{f}" for f in ds.meta.sparse_names}
    assert summary["bottom_mlp"] == list(DENSE_SIZES) and summary["feature_order_source"] == "dataset"
    model, info = load_float_model(tmp_path / "model")
    assert info["imported"]["format"] == "torchrec"
    with torch.no_grad():
        got = model(batch.dense, batch.sparse).double()
    assert (got - reference_logits(state, ds.meta, batch.dense, batch.sparse)).abs().max() < 1e-5
    res = run("convert", "--model", tmp_path / "model", "--precision", "int8", "--out", tmp_path / "art")
    assert res.exit_code == 0, res.output


def test_an_import_carries_the_datasets_encodings_and_scoring_checks_them(ds, tmp_path):
    """The import binds the weights to --data's ids: its encoding fingerprints go into the model's
    config (and on into artifacts), so data whose ids mean something else is refused, not scored."""
    import shutil

    def with_encodings(dst, encodings):
        shutil.copytree(ds.root, dst)
        meta = json.loads((dst / "dataset.json").read_text())
        meta["encodings"] = encodings
        (dst / "dataset.json").write_text(json.dumps(meta))
        return dst

    names = ds.meta.sparse_names
    enc = [f"vocab:{i:016x}:n={n}" for i, n in enumerate(ds.meta.num_embeddings)]
    data = with_encodings(tmp_path / "data", enc)
    res = run("import", "--format", "torchrec", "--state-dict", save(torchrec_state(ds), tmp_path / "d.safetensors"),
              "--data", data, "--out", tmp_path / "model")
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert [t.get("encoding") for t in config["model"]["tables"]] == enc
    assert run("eval", "--model", tmp_path / "model", "--data", data, "--windows", "0").exit_code == 0
    other = with_encodings(tmp_path / "other", enc[:1] + [
        f"vocab:{'e' * 16}:n={n}" for n in ds.meta.num_embeddings[1:]])
    res = run("eval", "--model", tmp_path / "model", "--data", other, "--windows", "0")
    assert res.exit_code == 2 and f"table {names[1]!r} was trained on ids encoded as {enc[1]}" in res.output
    res = run("convert", "--model", tmp_path / "model", "--precision", "int8", "--out", tmp_path / "art")
    assert res.exit_code == 0, res.output
    res = run("eval", "--model", tmp_path / "art", "--data", other, "--windows", "0")
    assert res.exit_code == 2 and "was trained on ids encoded as" in res.output


def test_cli_bad_input_exits_2_and_writes_nothing(ds, tmp_path):
    state = torchrec_state(ds)
    state["inter_arch.crossnet.bias.0"] = torch.zeros(3)
    path = save(state, tmp_path / "dcn.safetensors")
    res = run("import", "--format", "torchrec", "--state-dict", path, "--data", ds.root, "--out", tmp_path / "m")
    assert res.exit_code == 2 and "DLRM_DCN" in res.output
    assert not (tmp_path / "m").exists()
    res = run("import", "--format", "torchrec", "--state-dict", path, "--data", ds.root, "--out",
              tmp_path / "m", "--table-map", "no-equals-sign")
    assert res.exit_code == 2 and not (tmp_path / "m").exists()



def test_cli_fp64_beyond_float32_is_refused_naming_tensor_and_index(ds, tmp_path):
    """fp64 weights were checked for NaN/Inf before .float(): 1e300 became Inf in the written model,
    which every other command then refused. In-range fp64 still imports."""
    state = {k: v.double() for k, v in torchrec_state(ds).items()}
    res = run("import", "--format", "torchrec", "--state-dict", save(state, tmp_path / "ok.safetensors"),
              "--data", ds.root, "--out", tmp_path / "ok")
    assert res.exit_code == 0, res.output
    for key, at, value in ((T + "t_t1.weight", (3, 2), 1e300), ("over_arch.model.1.bias", (0,), -1e39)):
        bad = dict(state, **{key: state[key].clone().index_put_(tuple(map(torch.tensor, at)), torch.tensor(value,
                                                                 dtype=torch.float64))})
        res = run("import", "--format", "torchrec", "--state-dict", save(bad, tmp_path / "big.safetensors"),
                  "--data", ds.root, "--out", tmp_path / "m")
        assert res.exit_code == 2, res.output
        assert f"tensor {key!r} holds {value:g} at index {list(at)}, beyond float32's range" in res.output, res.output
        assert not (tmp_path / "m").exists() and "Traceback" not in res.output


def test_cli_import_streams_tables_in_row_chunks_never_whole(ds, batch, tmp_path, monkeypatch):
    """The import held ~3x the model in RAM (get_tensor copies, .float(), clone, a randomly initialised
    DLRM): tables are now mapped and written chunk by chunk, each checked (after the cast) as it is read."""
    import lowprec.checkpoint.torchrec_import as tri
    from lowprec.checkpoint.mapped import LogicalTable

    monkeypatch.setattr(tri, "CHUNK_BYTES", 4 * D * 8)  # 4 rows of fp64
    whole, chunks = [], []
    tensor, to_float32 = LogicalTable.tensor, tri.to_float32
    monkeypatch.setattr(LogicalTable, "tensor", lambda self: whole.append(self.name) or tensor(self))
    monkeypatch.setattr(tri, "to_float32", lambda where, name, row, chunk: chunks.append((name, row, len(chunk)))
                        or to_float32(where, name, row, chunk))
    state = {k: v.double() for k, v in torchrec_state(ds, seed=4).items()}
    res = run("import", "--format", "torchrec", "--state-dict", save(state, tmp_path / "s.safetensors"),
              "--data", ds.root, "--out", tmp_path / "m")
    assert res.exit_code == 0, res.output
    assert not [n for n in whole if n.startswith(T)], whole  # (layers are small: read whole)
    table_chunks = [c for c in chunks if c[0].startswith(T)]
    assert table_chunks and max(n for _, _, n in table_chunks) == 4
    assert {(n, r) for n, r, _ in table_chunks} >= {(T + "t_t1.weight", 16)}
    model, _ = load_float_model(tmp_path / "m")
    with torch.no_grad():
        got = model(batch.dense, batch.sparse).double()
    assert (got - reference_logits(state, ds.meta, batch.dense, batch.sparse)).abs().max() < 1e-5
    state[T + "t_t1.weight"][17, 5] = float("nan")  # in the fifth chunk: its index is the table's
    res = run("import", "--format", "torchrec", "--state-dict", save(state, tmp_path / "nan.safetensors"),
              "--data", ds.root, "--out", tmp_path / "m2")
    assert res.exit_code == 2 and f"tensor '{T}t_t1.weight' holds NaN/Inf (first at index [17, 5])" in res.output
    assert not (tmp_path / "m2").exists()

# --- a real TorchRec model ---------------------------------------------------------------------

def _torchrec():
    try:
        import torchrec  # noqa: F401
        from torchrec.models.dlrm import DLRM, DLRM_DCN
        from torchrec.modules.embedding_configs import EmbeddingBagConfig
        from torchrec.modules.embedding_modules import EmbeddingBagCollection
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
        pytest.skip(f"torchrec cannot be imported here ({type(exc).__name__}: {exc}); "
                    f"install it with: pip install --no-deps torchrec==1.8.0 tensordict==0.15.3 "
                    f"pyvers==0.2.3 cloudpickle pyre-extensions typing-inspect mypy-extensions")
    return DLRM, DLRM_DCN, EmbeddingBagConfig, EmbeddingBagCollection, KeyedJaggedTensor


def _kjt(KeyedJaggedTensor, meta, sparse, keys):
    starts = dict(zip(meta.sparse_names, meta.slot_offsets))
    hot = dict(zip(meta.sparse_names, meta.hotness))
    values, lengths = [], []
    for f in keys:
        ids = sparse[:, starts[f]:starts[f] + hot[f]]
        valid = ids >= 0
        values.append(ids[valid])  # row-major: sample by sample, as a KJT wants within a key
        lengths.append(valid.sum(1))
    return KeyedJaggedTensor.from_lengths_sync(keys=list(keys), values=torch.cat(values),
                                               lengths=torch.cat(lengths).int())


@pytest.mark.parametrize("reverse", [False, True], ids=["dataset-order", "other-order+metadata"])
def test_real_torchrec_dlrm_logits_match(ds, batch, tmp_path, reverse):
    DLRM, _, EmbeddingBagConfig, EmbeddingBagCollection, KeyedJaggedTensor = _torchrec()
    meta = ds.meta
    order = list(reversed(meta.sparse_names)) if reverse else meta.sparse_names
    rows = dict(zip(meta.sparse_names, meta.num_embeddings))
    torch.manual_seed(4)
    cpu = torch.device("cpu")
    ebc = EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name=f"t_{f}", embedding_dim=D, num_embeddings=rows[f], feature_names=[f])
        for f in order], device=cpu)
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=len(meta.dense_names),
                 dense_arch_layer_sizes=list(DENSE_SIZES), over_arch_layer_sizes=list(OVER_SIZES) + [1],
                 dense_device=cpu)
    model.eval()
    metadata = {"sparse_feature_names": json.dumps(model.sparse_arch.sparse_feature_names)} if reverse else None
    path = tmp_path / "dlrm.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    ours, info = import_torchrec(path, meta)
    assert info["feature_order"] == order
    with torch.no_grad():
        want = model(batch.dense, _kjt(KeyedJaggedTensor, meta, batch.sparse, order)).squeeze(1)
        got = ours(batch.dense, batch.sparse)
    assert (got - want).abs().max() < 1e-5


def test_real_torchrec_dcn_variant_is_refused(ds, tmp_path):
    _, DLRM_DCN, EmbeddingBagConfig, EmbeddingBagCollection, _ = _torchrec()
    meta = ds.meta
    cpu = torch.device("cpu")
    ebc = EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name=f"t_{f}", embedding_dim=D, num_embeddings=n, feature_names=[f])
        for f, n in zip(meta.sparse_names, meta.num_embeddings)], device=cpu)
    model = DLRM_DCN(embedding_bag_collection=ebc, dense_in_features=len(meta.dense_names),
                     dense_arch_layer_sizes=list(DENSE_SIZES), over_arch_layer_sizes=[6, 1],
                     dcn_num_layers=2, dcn_low_rank_dim=4, dense_device=cpu)
    path = tmp_path / "dcn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with pytest.raises(InputError, match=r"inter_arch\.crossnet.*DLRM_DCN"):
        import_torchrec(path, meta)


def _zero_dim(s):
    """Tables of dim 0 and a dense arch ending at 0 outputs: DLRMConfig itself refused it, naming nothing."""
    for k in [k for k in s if k.startswith(T)]:
        s[k] = torch.zeros(s[k].shape[0], 0)
    s["dense_arch.model._mlp.1._linear.weight"], s["dense_arch.model._mlp.1._linear.bias"] = torch.zeros(0, 12), torch.zeros(0)


def _zero_width(s):
    s["dense_arch.model._mlp.0._linear.weight"] = torch.zeros(0, s["dense_arch.model._mlp.0._linear.weight"].shape[1])
    s["dense_arch.model._mlp.0._linear.bias"] = torch.zeros(0)
    s["dense_arch.model._mlp.1._linear.weight"] = torch.zeros(D, 0)


@pytest.mark.parametrize("edit,match", [
    (_zero_dim, r"dense_arch\.model\._mlp\.1\._linear has weight \(0, 12\): a layer with no outputs"),
    (_zero_width, r"dense_arch\.model\._mlp\.0\._linear has weight \(0, \d+\): a layer with no outputs"),
    (lambda s: s.update({k: torch.zeros(s[k].shape[0], 0) for k in s if k.startswith(T)}),
     r"table 't_t0' has shape \(\d+, 0\); an embedding table needs at least one column"),
], ids=["dim-0", "width-0", "table-dim-0"])
def test_cli_shape_refusals_name_the_file(ds, tmp_path, edit, match):
    """Every shape refusal names the file and the key (a zero dim reached DLRMConfig's bare
    'embedding_dim must be >= 1' / 'MLP widths must be >= 1')."""
    state = torchrec_state(ds)
    edit(state)
    path = save(state, tmp_path / "shape.safetensors")
    res = run("import", "--format", "torchrec", "--state-dict", path, "--data", ds.root, "--out", tmp_path / "m")
    assert res.exit_code == 2, res.output
    assert f"{path}: " in res.output and re.search(match, res.output), res.output
    assert not (tmp_path / "m").exists()


def test_cli_config_is_refused_for_torchrec(ds, tmp_path):
    """--config has no meaning for --format torchrec; it was silently ignored."""
    path = save(torchrec_state(ds), tmp_path / "dlrm.safetensors")
    cfg = tmp_path / "tables.json"
    cfg.write_text(json.dumps({"tables": []}))
    res = run("import", "--format", "torchrec", "--state-dict", path, "--config", cfg, "--data", ds.root,
              "--out", tmp_path / "m")
    assert res.exit_code == 2, res.output
    assert "--config applies to --format torchrec-quant and dlrm-reference only" in res.output
    assert str(cfg) in res.output and not (tmp_path / "m").exists()
