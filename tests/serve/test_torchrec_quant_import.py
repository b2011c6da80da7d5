"""TorchRec quantized import: artifact -> TorchRec export -> import gives identical scores; TorchRec's
split scale/bias state dict and another feature order import exactly (checked against the real
TorchRec model); bad inputs exit 2 naming the table or layer."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import make_tiny_dataset, run_cli as run
from lowprec.checkpoint.artifact import load_artifact, read_manifest
from lowprec.checkpoint.convert import convert
from lowprec.checkpoint.torchrec_import import interaction_permutation
from lowprec.checkpoint.torchrec_quant_import import import_torchrec_quant
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError
from lowprec.checkpoint.float_model import save_float_model
from lowprec.model.config import DLRMConfig, TableConfig
from lowprec.model.dlrm import DLRM
from lowprec.plan import LayerChoice, Plan, TableChoice
from lowprec.precision import Precision

torchrec = pytest.importorskip("torchrec", reason="torchrec 1.8 is installed by `make env`")

from lowprec.serve.torchrec_export import export_torchrec, kjt_from_ids, load_torchrec  # noqa: E402

PLAN = Plan({"t0": TableChoice(Precision.INT4, range_method="l2"), "t1": TableChoice(Precision.INT2),
             "t2": TableChoice(Precision.FP16)},
            {"top.1": LayerChoice(Precision.FP16), "top.2": LayerChoice(Precision.FP32), "*": LayerChoice(Precision.INT8)})
CALIB = {"layers": {"bottom.0": {"min": -3.0, "max": 3.0}}}


def float_model(ds, out, seed=0, dim=8):
    meta = ds.meta
    torch.manual_seed(seed)
    model = DLRM(DLRMConfig(len(meta.dense_names), tuple(TableConfig(f.name, f.num_embeddings, f.hotness) for f in meta.sparse),
                            dim, (16, dim), (16, 8), tuple(meta.dense_names)))
    with torch.no_grad():
        for p in model.embeddings.parameters():
            p.normal_(0, 0.5)
    save_float_model(model, out)
    return out


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return Dataset(make_tiny_dataset(tmp_path_factory.mktemp("trq") / "data", windows=1, rows=200, hotness=(1, 3, 1)))


@pytest.fixture(scope="module")
def exported(ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("trq_art")
    convert(float_model(ds, root / "model", seed=3), PLAN, root / "art", CALIB)
    return root / "art", export_torchrec(root / "art")


def logits(path, ds):
    runtime, _ = load_artifact(path)
    b = next(iter(iter_batches(ds, [0], batch_size=128)))
    with torch.no_grad():
        return runtime(b.dense, b.sparse)


def test_round_trip_gives_identical_scores_and_plan(ds, exported, tmp_path):
    art, folder = exported
    manifest = import_torchrec_quant(folder / "ebc.safetensors", folder / "dense.safetensors",
                                     folder / "config.json", ds.meta, tmp_path / "back")
    want, got = logits(art, ds), logits(tmp_path / "back", ds)
    assert want.std() > 1e-3 and torch.equal(got, want)
    before = read_manifest(art)
    assert [t["precision"] for t in manifest["tables"]] == [t["precision"] for t in before["tables"]]
    assert [t["range_method"] for t in manifest["tables"]] == ["l2", "minmax", "minmax"]
    assert {n: (v["precision"], v["input_qparams"]) for n, v in manifest["layers"].items()} == \
        {n: (v["precision"], v["input_qparams"]) for n, v in before["layers"].items()}
    assert manifest["embedding_bytes"] == before["embedding_bytes"]


def test_split_scale_bias_state_dict_from_real_torchrec(ds, exported, tmp_path):
    """TorchRec's quant_state_dict_split_scale_bias mode: weight codes + weight_qscale/qbias apart."""
    from torchrec import DataType, EmbeddingBagConfig
    from torchrec.quant.embedding_modules import EmbeddingBagCollection
    from torchrec.tensor_types import UInt2Tensor, UInt4Tensor

    art, folder = exported
    cfg = json.loads((folder / "config.json").read_text())
    fused = load_file(str(folder / "ebc.safetensors"))
    tables = [EmbeddingBagConfig(name=t["name"], feature_names=t["feature_names"], num_embeddings=t["num_embeddings"],
                                 embedding_dim=t["embedding_dim"], data_type=DataType[t["data_type"]]) for t in cfg["tables"]]
    ebc = EmbeddingBagCollection(tables, is_weighted=False, device=torch.device("cpu"),
                                 quant_state_dict_split_scale_bias=True)
    wrap = {"INT4": UInt4Tensor, "INT2": UInt2Tensor}
    state = {}
    for t, spec in zip(tables, cfg["tables"]):
        rows, key = fused[f"embedding_bags.{t.name}.weight"], f"embedding_bags.{t.name}"
        width = Precision(spec["precision"]).bytes_per_row(spec["embedding_dim"])
        if Precision(spec["precision"]).is_integer:
            state[f"{key}.weight_qscale"] = rows[:, 0:2].contiguous().view(torch.float16)
            state[f"{key}.weight_qbias"] = rows[:, 2:4].contiguous().view(torch.float16)
            codes = rows[:, 4:width].contiguous()
            state[f"{key}.weight"] = wrap[spec["data_type"]](codes) if spec["data_type"] in wrap else codes
        else:
            state[f"{key}.weight"] = rows
    ebc.load_state_dict(state, strict=True)
    runtime, _ = load_artifact(art)
    b = next(iter(iter_batches(ds, [0], batch_size=64)))
    with torch.no_grad():  # TorchRec's own kernel confirms the split layout
        pooled = ebc(kjt_from_ids(b.sparse, cfg)).values().view(len(b), 3, -1)
        assert torch.equal(pooled, runtime.embeddings(b.sparse))
    saved = {f"sparse_arch.embedding_bag_collection.{k}": getattr(v, "elem", v).contiguous()
             for k, v in ebc.state_dict().items()}
    save_file(saved, str(tmp_path / "split.safetensors"))
    import_torchrec_quant(tmp_path / "split.safetensors", folder / "dense.safetensors", folder / "config.json",
                          ds.meta, tmp_path / "back")
    assert torch.equal(logits(tmp_path / "back", ds), logits(art, ds))


def test_torchrec_feature_order_is_permuted_into_dataset_order(ds, tmp_path):
    """A TorchRec model whose EBC lists the tables in another order imports to the same logits.

    fp32 layers: an int8 top.0 over permuted columns rounds differently inside FBGEMM's GEMM."""
    art = tmp_path / "art"
    convert(float_model(ds, tmp_path / "model", seed=5), Plan(PLAN.tables), art)
    folder = export_torchrec(art)
    cfg = json.loads((folder / "config.json").read_text())
    ids_cfg = dict(cfg)  # the id matrix is in dataset order; KJT keys name the features either way
    cfg["tables"] = list(reversed(cfg["tables"]))
    order = [t["feature_names"][0] for t in cfg["tables"]]
    dense = load_file(str(folder / "dense.safetensors"))
    key = "over_arch.model.0._mlp.0._linear.weight"
    perm = interaction_permutation(8, ds.meta.sparse_names, order)
    permuted = torch.zeros_like(dense[key])
    permuted[:, perm] = dense[key]  # TorchRec's columns for its order
    dense[key] = permuted
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text(json.dumps(cfg))
    save_file(dense, str(theirs / "dense.safetensors"))
    (theirs / "ebc.safetensors").write_bytes((folder / "ebc.safetensors").read_bytes())
    model = load_torchrec(theirs)
    b = next(iter(iter_batches(ds, [0], batch_size=128)))
    with torch.no_grad():
        served = model(b.dense, kjt_from_ids(b.sparse, ids_cfg)).squeeze(1)
    want = logits(art, ds)
    # the same model with its tables listed otherwise (the dots sum in another order: ULPs apart)
    assert (served - want).abs().max() < 1e-5
    import_torchrec_quant(theirs / "ebc.safetensors", theirs / "dense.safetensors", theirs / "config.json",
                          ds.meta, tmp_path / "back")
    back = logits(tmp_path / "back", ds)
    assert torch.equal(back, want) and (back - served).abs().max() < 1e-5


def test_cli_import_then_inspect_and_compare(ds, exported, tmp_path):
    art, folder = exported
    res = run("import", "--format", "torchrec-quant", "--state-dict", folder / "ebc.safetensors", "--dense",
              folder / "dense.safetensors", "--config", folder / "config.json", "--data", ds.root,
              "--out", tmp_path / "served", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["tables"]["t0"] == {"torchrec_table": "t_t0", "precision": "int4"}
    res = run("inspect", tmp_path / "served", "--json")
    assert res.exit_code == 0 and json.loads(res.output.strip().splitlines()[-1])["tables"][1]["precision"] == "int2"
    # an imported artifact records no source model: compare refuses it unless told they belong together
    args = ["compare", "--reference", art.parent / "model", "--candidate", tmp_path / "served", "--data", ds.root,
            "--windows", "0", "--json"]
    res = run(*args)
    assert res.exit_code == 2 and "--allow-unrelated-candidate" in res.output, res.output
    res = run(*args, "--allow-unrelated-candidate")
    assert res.exit_code == 0, res.output


def _edit(folder, tmp_path, cfg_edit=None, ebc_edit=None):
    cfg = json.loads((folder / "config.json").read_text())
    ebc = load_file(str(folder / "ebc.safetensors"))
    if cfg_edit:
        cfg_edit(cfg)
    if ebc_edit:
        ebc_edit(ebc)
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    save_file(ebc, str(tmp_path / "e.safetensors"))
    return tmp_path / "e.safetensors", tmp_path / "c.json"


@pytest.mark.parametrize("cfg_edit,ebc_edit,match", [
    (lambda c: c["tables"][0].update(data_type="NFP8"), None, "table 't_t0' has data_type 'NFP8'"),
    (lambda c: c["tables"][1].update(num_embeddings=7), None, "table 't_t1' has 7 rows but dataset feature 't1'"),
    (lambda c: c["tables"][2].update(feature_names=["x"], name="other"), None, "dataset feature 't2' is served by no table"),
    (None, lambda e: e.__setitem__("embedding_bags.t_t1.weight", e["embedding_bags.t_t1.weight"][:, :4].contiguous()),
     r"table 't_t1' holds torch.uint8 of shape \(20, 4\)"),
    (None, lambda e: e.pop("embedding_bags.t_t0.weight"), "no rows for table 't_t0'"),
    (lambda c: c["tables"][0].pop("name"), None, r"tables\[0\] has name None; every table needs a name"),
    (lambda c: c.update(tables=[1, 2]), None, r"tables\[0\] is int; expected an object"),
    (lambda c: [x.update(input_qparams=[-1.0, 0]) for x in c["layers"] if x["precision"] == "int8"], None,
     "the artifact they make would not load, so nothing was written: .*activation qparams"),
    # rows wider than the layout (another dim or data type) were read by their first bytes, silently
    (None, lambda e: e.__setitem__("embedding_bags.t_t0.weight", _widened(e["embedding_bags.t_t0.weight"], 32)),
     r"table 't_t0' holds torch.uint8 of shape \(50, 32\); a int4 table of 50 rows x dim 8 needs uint8 rows "
     r"of exactly 8 bytes \(or 16: padded to the row_alignment 16\)"),
    (lambda c: c.update(row_alignment=32), None, r"table 't_t0' holds torch.uint8 of shape \(50, 16\); .* exactly "
     r"8 bytes \(or 32: padded to the row_alignment 32\)"),
    (lambda c: c.update(row_alignment="16"), None, r"row_alignment is '16'; it must be an integer >= 1"),
], ids=["fp8", "rows", "unserved", "short-rows", "missing", "no-name", "not-tables", "bad-qparams", "wide-rows",
        "alignment-32", "alignment-str"])
def test_bad_inputs_name_the_table(ds, exported, tmp_path, cfg_edit, ebc_edit, match):
    _, folder = exported
    ebc, cfg = _edit(folder, tmp_path, cfg_edit, ebc_edit)
    with pytest.raises(InputError, match=match):
        import_torchrec_quant(ebc, folder / "dense.safetensors", cfg, ds.meta, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _widened(rows, width):
    out = torch.zeros(rows.shape[0], width, dtype=torch.uint8)
    out[:, :rows.shape[1]] = rows
    return out


def test_rows_unpadded_or_padded_to_the_configs_row_alignment_import_the_same(ds, exported, tmp_path):
    art, folder = exported
    widths = {"t_t0": 8, "t_t1": 6}  # int4 / int2 dim 8: 4 bytes of fp16 scale and bias + codes
    for align, width in ((None, None), (32, 32)):
        def edit(e):
            for name, w in widths.items():
                key = f"embedding_bags.{name}.weight"
                e[key] = e[key][:, :w].contiguous() if width is None else _widened(e[key], width)
        ebc, cfg = _edit(folder, tmp_path, (lambda c: c.update(row_alignment=align)) if align else None, edit)
        import_torchrec_quant(ebc, folder / "dense.safetensors", cfg, ds.meta, tmp_path / f"o{align}")
        assert torch.equal(logits(tmp_path / f"o{align}", ds), logits(art, ds))


def test_cli_refusals_exit_2(ds, exported, tmp_path):
    _, folder = exported
    res = run("import", "--format", "torchrec-quant", "--state-dict", folder / "ebc.safetensors",
              "--data", ds.root, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "needs --config" in res.output
    torch.save(load_file(str(folder / "ebc.safetensors")), tmp_path / "ebc.pt")
    res = run("import", "--format", "torchrec-quant", "--state-dict", tmp_path / "ebc.pt", "--config",
              folder / "config.json", "--data", ds.root, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "never unpickles" in res.output and not (tmp_path / "o").exists()
    dense = load_file(str(folder / "dense.safetensors"))
    dense["dense_arch.model._mlp.0._linear.weight_scale"][1] = float("nan")
    save_file(dense, str(tmp_path / "d.safetensors"))
    res = run("import", "--format", "torchrec-quant", "--state-dict", folder / "ebc.safetensors", "--dense",
              tmp_path / "d.safetensors", "--config", folder / "config.json", "--data", ds.root, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "dense_arch.model._mlp.0._linear" in res.output


def _cli_edit(ds, folder, tmp_path, cfg_edit=None, ebc_edit=None, dense_edit=None):
    ebc, cfg = _edit(folder, tmp_path, cfg_edit, ebc_edit)
    dense = load_file(str(folder / "dense.safetensors"))
    if dense_edit:
        dense_edit(dense)
    save_file(dense, str(tmp_path / "d.safetensors"))
    res = run("import", "--format", "torchrec-quant", "--state-dict", ebc, "--dense", tmp_path / "d.safetensors",
              "--config", cfg, "--data", ds.root, "--out", tmp_path / "o")
    return res, {"ebc": ebc, "dense": tmp_path / "d.safetensors", "config": cfg}


def _extra_keys(e):
    e.update({f"unused.{i}": torch.zeros(2) for i in range(10)})


@pytest.mark.parametrize("cfg_edit,ebc_edit,dense_edit,file,match", [
    (None, lambda e: e.__setitem__("embedding_bags.spare.weight", torch.zeros(5, 16, dtype=torch.uint8)), None,
     "ebc", r"tables \['spare'\] serve no dataset feature"),
    (lambda c: c["tables"].append(dict(c["tables"][0], name="spare", feature_names=["zz"])), None, None,
     "config", r"tables \['spare'\] serve no dataset feature"),
    (None, _extra_keys, None, "ebc", r"unexpected keys \['unused\.0', .*\] and 2 more\. Supported: TorchRec's quantized EBC"),
    (None, lambda e: e.__setitem__("dense_arch.model._mlp.0._linear.weight", torch.zeros(2)), None,
     "ebc", r"unexpected keys \['dense_arch\.model\._mlp\.0\._linear\.weight'\].*read from --dense"),
    (None, None, lambda d: d.__setitem__("inter_arch.crossnet.W_kernels.0", torch.zeros(3, 3)),
     "dense", r"unexpected keys \['inter_arch\.crossnet\.W_kernels\.0'\]\. They belong to DLRM_DCN"),
], ids=["ebc-table", "config-table", "ebc-keys", "layer-in-ebc", "dense-key"])
def test_cli_unused_tables_and_keys_are_refused(ds, exported, tmp_path, cfg_edit, ebc_edit, dense_edit, file, match):
    """Extra tables and keys were silently dropped; --format torchrec refuses them, and so does this."""
    _, folder = exported
    res, files = _cli_edit(ds, folder, tmp_path, cfg_edit, ebc_edit, dense_edit)
    assert res.exit_code == 2, res.output
    assert f"{files[file]}: " in res.output and re.search(match, res.output), res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cfg_edit,dense_edit,file,match", [
    (lambda c: [t.update(embedding_dim=0) for t in c["tables"]], None, "config", "tables have embedding_dim 0"),
    (None, lambda d: d.update({"dense_arch.model._mlp.1._linear.weight": torch.zeros(4, 16),
                               "dense_arch.model._mlp.1._linear.bias": torch.zeros(4)}),
     "dense", r"dense_arch\.model\._mlp\.1\._linear has 4 outputs, but the tables' embedding_dim in .* is 8"),
    (None, lambda d: d.update({"over_arch.model.0._mlp.1._linear.weight": torch.zeros(0, 16),
                               "over_arch.model.0._mlp.1._linear.bias": torch.zeros(0),
                               "over_arch.model.1.weight": torch.zeros(1, 0)}),
     "dense", r"not a DLRM lowprec can build \(MLP widths must be >= 1\)"),
], ids=["dim-0", "bottom-not-D", "width-0"])
def test_cli_shape_refusals_name_the_file(ds, exported, tmp_path, cfg_edit, dense_edit, file, match):
    """These reached DLRMConfig, whose message ('embedding_dim must be >= 1', ...) named no file."""
    _, folder = exported
    res, files = _cli_edit(ds, folder, tmp_path, cfg_edit=cfg_edit, dense_edit=dense_edit)
    assert res.exit_code == 2, res.output
    assert f"{files[file]}" in res.output and re.search(match, res.output), res.output
    assert not (tmp_path / "o").exists()


def _set_table(i, **kv):
    return lambda c: c["tables"][i].update(kv)


def _set_layer(module, **kv):
    return lambda c: [x.update(kv) for x in c["layers"] if x["module"] == module]


def _scale(d):
    d["dense_arch.model._mlp.0._linear.weight_scale"][3] = 1e38  # finite and positive: passed before


BOTTOM0, TOP1 = "dense_arch.model._mlp.0._linear", "over_arch.model.0._mlp.1._linear"


@pytest.mark.parametrize("cfg_edit,dense_edit,file,match", [
    (None, _scale, "dense", rf"int8 layer {BOTTOM0}: output channel 3's weight_scale 1e\+38 times its codes "
                            r"overflows float32"),
    (None, lambda d: d.__setitem__(f"{BOTTOM0}.bias", d[f"{BOTTOM0}.bias"].long()), "dense",
     rf"layer {BOTTOM0}\.bias is torch\.int64; expected float32"),
    (_set_table(2, feature_names=["nope"]), None, "config",  # was matched by its name t_t2
     r"dataset feature 't2' is served by no table"),
    (_set_table(2, feature_names=["t2", "nope"]), None, "config",
     r"table 't_t2' lists feature_names \['nope'\], which are not features of the dataset"),
    (_set_table(2, feature_names="t2"), None, "config", r"table 't_t2' has feature_names 't2'; expected a non-empty list"),
    (_set_table(0, feature_names="t0t1"), None, "config", r"table 't_t0' has feature_names 't0t1'"),  # was a substring
    (_set_table(1, num_embeddings="20"), None, "config", r"table 't_t1' num_embeddings is '20'; it must be an integer"),
    (_set_table(1, num_embeddings=20.0), None, "config", r"table 't_t1' num_embeddings is 20\.0; it must be an integer"),
    (_set_table(1, embedding_dim="8"), None, "config", r"table 't_t1' embedding_dim is '8'"),
    (_set_table(1, hotness=0), None, "config", r"table 't_t1' hotness is 0; it must be an integer >= 1"),
    (_set_table(1, hotness=1), None, "config", r"table 't_t1' has hotness 1 but dataset feature 't1' has 3 ids a row"),
    (_set_table(0, weight_dtype="qint8"), None, "config", r"table 't_t0' has weight_dtype 'qint8' but data_type 'INT4'"),
    (_set_table(0, range_method="best"), None, "config", r"table 't_t0' has range_method 'best'"),
    (lambda c: c.update(dense_in_features=5), None, "config",
     r"dense_in_features is 5, but the weights in .* \(and the dataset's 4 dense features\) make it 4"),
    (lambda c: c.update(dense_in_features="4"), None, "config", r"dense_in_features is '4'"),
    (lambda c: c.update(over_arch_layer_sizes=[16, 9, 1]), None, "config",
     r"over_arch_layer_sizes is \[16, 9, 1\], but the weights .* make it \[16, 8, 1\]"),
    (lambda c: c.update(dense_arch_layer_sizes=[16]), None, "config", r"dense_arch_layer_sizes is \[16\]"),
    (lambda c: c.update(dense_names=["a", "b", "c", "d"]), None, "config", r"dense_names is \['a', 'b', 'c', 'd'\]"),
    (_set_layer(BOTTOM0, precision="fp8"), None, "config", rf"layer {BOTTOM0} has precision 'fp8'; layers are"),
    (_set_layer(BOTTOM0, precision="fp32"), None, "config",
     rf"layer {BOTTOM0} has precision 'fp32', but its tensors in .* are int8"),
    (_set_layer(TOP1, input_qparams=[0.1, 3]), None, "config", rf"layer {TOP1} has input_qparams but is fp16"),
    (_set_layer(BOTTOM0, input_qparams=["0.1", 3]), None, "config", rf"layer {BOTTOM0} has input_qparams \['0.1', 3\]"),
    (lambda c: c.pop("layers"), None, "config", r"'layers' is missing; expected a list with one"),
    (lambda c: c["layers"].pop(0), None, "config", rf"layers lists no entry for \['{BOTTOM0}'\]"),
    (lambda c: c["layers"].append({"module": "nope"}), None, "config", r"layers\[5\] has module 'nope'"),
], ids=["scale-overflow", "int-bias", "unknown-feature", "extra-feature", "features-string", "substring", "rows-string", "rows-float",
        "dim-string", "hotness-0", "hotness-wrong", "weight-dtype", "range-method", "dense-in", "dense-in-string",
        "over-arch", "dense-arch", "dense-names", "layer-fp8", "layer-precision", "qparams-fp16", "qparams-type",
        "no-layers", "layer-missing", "layer-unknown"])
def test_cli_config_keys_are_type_checked_and_agree_with_the_tensors(ds, exported, tmp_path, cfg_edit, dense_edit,
                                                                      file, match):
    """Each of these imported (a wrong model, or Inf outputs) or failed with a raw error; each is
    now exit 2 naming the file and the key, with nothing written."""
    _, folder = exported
    res, files = _cli_edit(ds, folder, tmp_path, cfg_edit=cfg_edit, dense_edit=dense_edit)
    assert res.exit_code == 2, res.output
    assert f"{files[file]}: " in res.output and re.search(match, res.output), res.output
    assert not (tmp_path / "o").exists()
