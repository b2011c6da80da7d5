"""TorchRec export: built with the real torchrec, the quantized EBC + DLRM computes exactly the runtime's
logits on every table precision and a mixed plan, scripts as TorchRec's inference flow does, gives
`lowprec eval`'s AUC/NE, and refuses what TorchRec's EBC cannot hold naming the table.

The references: the artifact's own runtime (QuantizedDLRM, itself tested against slow row-wise
references in tests/quant) and, for the row bytes, a slow per-row decode of each table.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from helpers import REPO, make_tiny_dataset, random_float_model, run_cli as run
from lowprec.checkpoint.artifact import load_artifact, read_manifest
from lowprec.checkpoint.convert import convert
from lowprec.cli import main
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError
from lowprec.evaluation.scoring import evaluate
from lowprec.plan import LayerChoice, Plan, TableChoice
from lowprec.precision import Precision
from lowprec.serve.tables import table_codec

torchrec = pytest.importorskip("torchrec", reason="torchrec 1.8 is installed by `make env`")

from lowprec.serve.torchrec_export import (  # noqa: E402
    export_torchrec, kjt_from_ids, load_export_config, load_torchrec)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("trexp")
    return Dataset(make_tiny_dataset(root / "data", windows=2, rows=300, hotness=(1, 3, 1)))


float_model = random_float_model


class TorchRecScorer(torch.nn.Module):
    """lowprec's scorer interface (dense, id matrix) -> logits over the TorchRec model."""

    def __init__(self, folder):
        super().__init__()
        self.model = load_torchrec(folder)
        self.config = load_export_config(folder.parent)

    def forward(self, dense, sparse):
        return self.model(dense, kjt_from_ids(sparse, self.config)).squeeze(1)


def batch(ds, n=128):
    return next(iter(iter_batches(ds, [0], batch_size=n)))


CALIB = {"layers": {"bottom.0": {"min": -3.0, "max": 3.0}, "top.0": {"min": -1.0, "max": 6.0}}}
PLANS = {p.value: (Plan.uniform(p, Precision.INT8 if p == Precision.INT8 else None), None)
         for p in (Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4, Precision.INT2)}
PLANS["mixed"] = (Plan({"t0": TableChoice(Precision.INT2), "t1": TableChoice(Precision.FP16, range_method="minmax"),
                        "t2": TableChoice(Precision.INT4, range_method="l2")},
                       {"top.2": LayerChoice(Precision.FP32), "top.1": LayerChoice(Precision.FP16),
                        "*": LayerChoice(Precision.INT8)}), CALIB)


@pytest.mark.parametrize("name", list(PLANS))
def test_torchrec_model_equals_runtime(ds, tmp_path, name):
    plan, calib = PLANS[name]
    convert(float_model(ds, tmp_path / "model"), plan, tmp_path / "art", calib)
    folder = export_torchrec(tmp_path / "art")
    runtime, manifest = load_artifact(tmp_path / "art")  # verifies the new files' hashes
    assert manifest["torchrec"]["checked_against_runtime"] is True
    scorer = TorchRecScorer(folder)
    b = batch(ds)
    with torch.no_grad():
        want, got = runtime(b.dense, b.sparse), scorer(b.dense, b.sparse)
    assert want.std() > 1e-3
    assert torch.equal(got, want), float((got - want).abs().max())
    # the EBC's pooled outputs are the runtime's, table by table
    with torch.no_grad():
        pooled = scorer.model.sparse_arch(kjt_from_ids(b.sparse, scorer.config))
        assert torch.equal(pooled, runtime.embeddings(b.sparse))


def test_ebc_rows_decode_to_the_artifact_tables(ds, tmp_path):
    """Slow reference: each padded EBC row, decoded by the precision's handler, is the artifact's row."""
    plan, calib = PLANS["mixed"]
    convert(float_model(ds, tmp_path / "model"), plan, tmp_path / "art", calib)
    folder = export_torchrec(tmp_path / "art")
    from safetensors.torch import load_file

    ebc, cfg = load_file(str(folder / "ebc.safetensors")), json.loads((folder / "config.json").read_text())
    runtime, _ = load_artifact(tmp_path / "art")
    for t, stored in zip(cfg["tables"], runtime.embeddings.table_weights()):
        rows = ebc[f"embedding_bags.{t['name']}.weight"]
        assert rows.dtype == torch.uint8 and rows.shape[1] % 16 == 0
        codec = table_codec(Precision(t["precision"]))
        width = Precision(t["precision"]).bytes_per_row(t["embedding_dim"])
        assert not rows[:, width:].any()  # zero padding
        for r in range(rows.shape[0]):
            assert torch.equal(codec.decode(rows[r:r + 1, :width], 8), codec.decode(stored[r:r + 1, :width], 8))


def test_quantize_embeddings_flow_loads_the_same_state(ds, tmp_path):
    """A TorchRec user's own flow: float DLRM -> quantize_embeddings(per_table_weight_dtype) -> load."""
    from safetensors.torch import load_file
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.inference.modules import quantize_embeddings
    from torchrec.models.dlrm import DLRM as TorchRecDLRM
    from torchrec.tensor_types import UInt2Tensor, UInt4Tensor

    plan, calib = PLANS["mixed"]
    convert(float_model(ds, tmp_path / "model"), plan, tmp_path / "art", calib)
    folder = export_torchrec(tmp_path / "art")
    cfg = json.loads((folder / "config.json").read_text())
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        name=t["name"], feature_names=t["feature_names"], num_embeddings=t["num_embeddings"],
        embedding_dim=t["embedding_dim"]) for t in cfg["tables"]], device=torch.device("cpu"))
    model = TorchRecDLRM(embedding_bag_collection=ebc, dense_in_features=cfg["dense_in_features"],
                         dense_arch_layer_sizes=cfg["dense_arch_layer_sizes"],
                         over_arch_layer_sizes=cfg["over_arch_layer_sizes"])
    dtypes = {k: getattr(torch, v) for k, v in cfg["per_table_weight_dtype"].items()}
    model = quantize_embeddings(model, dtype=torch.qint8, inplace=True, per_table_weight_dtype=dtypes)
    state = load_file(str(folder / "ebc.safetensors"))
    wrap = {"INT4": UInt4Tensor, "INT2": UInt2Tensor}
    state = {k: wrap[t["data_type"]](state[k]) if t["data_type"] in wrap else state[k]
             for t in cfg["tables"] for k in [f"embedding_bags.{t['name']}.weight"]}
    model.sparse_arch.embedding_bag_collection.load_state_dict(state, strict=True)
    runtime, _ = load_artifact(tmp_path / "art")
    b = batch(ds)
    with torch.no_grad():
        got = model.sparse_arch(kjt_from_ids(b.sparse, cfg))
        assert torch.equal(got, runtime.embeddings(b.sparse))


def test_scripts_as_torchrec_inference_does(ds, tmp_path):
    """TorchRec's inference flow: torchrec.fx.symbolic_trace, then torch.jit.script; same logits."""
    from torchrec.fx import symbolic_trace

    plan, calib = PLANS["mixed"]
    convert(float_model(ds, tmp_path / "model"), plan, tmp_path / "art", calib)
    folder = export_torchrec(tmp_path / "art")
    scorer = TorchRecScorer(folder)
    scripted = torch.jit.script(symbolic_trace(scorer.model))
    b = batch(ds)
    kjt = kjt_from_ids(b.sparse, scorer.config)
    with torch.no_grad():
        assert torch.equal(scripted(b.dense, kjt), scorer.model(b.dense, kjt))
    torch.jit.save(scripted, str(tmp_path / "m.pt"))
    with torch.no_grad():
        assert torch.equal(torch.jit.load(str(tmp_path / "m.pt"))(b.dense, kjt), scorer.model(b.dense, kjt))


def test_served_in_torchrec_gives_lowprec_eval_auc_and_ne(ds, tmp_path):
    """Done criterion: the exported plan served in TorchRec has `lowprec eval`'s AUC/NE on the same windows."""
    plan, calib = PLANS["mixed"]
    convert(float_model(ds, tmp_path / "model"), plan, tmp_path / "art", calib)
    res = CliRunner().invoke(main, ["eval", "--model", str(tmp_path / "art"), "--data", str(ds.root),
                                    "--windows", "0-1", "--json"])
    assert res.exit_code == 0, res.output
    cli = json.loads(res.output.strip().splitlines()[-1])
    folder = export_torchrec(tmp_path / "art")
    served = evaluate(TorchRecScorer(folder), ds, [0, 1]).to_json()
    for key in ("auc", "ne"):
        assert served[key] == cli[key], key
        assert [w[key] for w in served["windows"]] == [w[key] for w in cli["windows"]]
    assert len(cli["windows"]) == 2 and served["auc"] != 0.5


@pytest.mark.parametrize("embeddings,plan,match", [
    (("dense", "hash:ratio=4", "dense"), Plan.uniform(Precision.INT8), "table 't1' serves as hash"),
    (("dense", "dense", "qr:ratio=3"), Plan.uniform(Precision.INT8), "table 't2' serves as qr"),
    (("robe:ratio=4,z=4,align=1,sign=1", "dense", "dense"), Plan.uniform(Precision.INT4), "table 't0' serves as robe"),
    (("dense",) * 3, Plan({"t1": TableChoice(Precision.FP8), "*": TableChoice(Precision.INT8)}), "table 't1' is fp8"),
], ids=["hash", "qr", "robe", "fp8"])
def test_refusals_name_the_table_and_point_to_torchscript(ds, tmp_path, embeddings, plan, match):
    convert(float_model(ds, tmp_path / "model", embeddings=embeddings), plan, tmp_path / "art")
    before = read_manifest(tmp_path / "art")
    with pytest.raises(InputError, match=match + r".*--export torchscript"):
        export_torchrec(tmp_path / "art")
    assert read_manifest(tmp_path / "art") == before and not (tmp_path / "art" / "torchrec").exists()


def test_hot_sharing_is_refused(ds, tmp_path):
    counts = torch.arange(ds.meta.num_embeddings[0], dtype=torch.float32) ** 2
    plan = Plan({"t0": TableChoice(Precision.INT8, {"kind": "hot", "ratio": 4}), "*": TableChoice(Precision.INT8)})
    convert(float_model(ds, tmp_path / "model"), plan, tmp_path / "art", {"row_counts": {"t0": counts}})
    with pytest.raises(InputError, match="table 't0' serves as hot"):
        export_torchrec(tmp_path / "art")


def test_cli_convert_export_both_and_refusal_writes_nothing(ds, tmp_path):
    model = float_model(ds, tmp_path / "model")
    res = run("convert", "--model", model, "--precision", "int4", "--layer-precision", "int8",
              "--out", tmp_path / "art", "--export", "torchrec", "--export", "torchscript")
    assert res.exit_code == 0, res.output
    files = read_manifest(tmp_path / "art")["files"]
    assert {"torchrec/config.json", "torchrec/ebc.safetensors", "torchrec/dense.safetensors",
            "model.torchscript.pt"} <= set(files)
    res = run("convert", "--model", model, "--precision", "fp8", "--out", tmp_path / "art8", "--export", "torchrec")
    assert res.exit_code == 2 and "table 't0' is fp8" in res.output
    assert not (tmp_path / "art8").exists()


def test_docs_loader_is_the_library_loader(ds, tmp_path):
    """docs/torchrec.md's loader, run as written, builds the same model."""
    text = (REPO / "docs" / "torchrec.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    convert(float_model(ds, tmp_path / "model"), *PLANS["mixed"][:1], tmp_path / "art", PLANS["mixed"][1])
    folder = export_torchrec(tmp_path / "art")
    scope: dict = {}
    exec(compile(code, "docs/torchrec.md", "exec"), scope)  # noqa: S102 - our own documentation
    model = scope["load_lowprec_torchrec"](str(folder))
    cfg = load_export_config(tmp_path / "art")
    b = batch(ds)
    with torch.no_grad():
        assert torch.equal(model(b.dense, kjt_from_ids(b.sparse, cfg)),
                           load_torchrec(folder)(b.dense, kjt_from_ids(b.sparse, cfg)))


KJT_CONFIG = {"tables": [{"name": "t_t0", "feature_names": ["t0"], "num_embeddings": 50, "hotness": 1},
                         {"name": "t_t1", "feature_names": ["t1"], "num_embeddings": 20, "hotness": 3}]}


@pytest.mark.parametrize("col,value", [(0, 50), (0, 10**12), (2, 20), (3, -2)])
def test_kjt_from_ids_refuses_ids_outside_their_table(col, value):
    """An id past its table's end reached FBGEMM, which served row 0 with a log line; one below -1
    was dropped as a pad. Both are refused as the runtime refuses them."""
    from lowprec.serve.runtime import IdOutOfRange

    ids = torch.tensor([[3, 1, -1, 19], [49, 0, 5, -1], [0, -1, -1, -1]])
    kjt = kjt_from_ids(ids, KJT_CONFIG)  # in range: pads dropped, bags keep their ids
    assert kjt.lengths().tolist() == [1, 1, 1, 2, 2, 0] and kjt.values().tolist() == [3, 49, 0, 1, 19, 0, 5]
    ids[1, col] = value
    table, rows = ("t_t0", 50) if col == 0 else ("t_t1", 20)
    with pytest.raises(IdOutOfRange, match=rf"table '{table}': id {value} \(batch row 1\) is out of range; "
                                           rf"the table has {rows} rows"):
        kjt_from_ids(ids, KJT_CONFIG)
    with pytest.raises(InputError, match=r"ids are floating-point"):
        kjt_from_ids(ids.float(), KJT_CONFIG)
    with pytest.raises(InputError, match=r"id matrix of shape \(3, 3\); this model reads \(batch, 4\) ids"):
        kjt_from_ids(ids[:, :3], KJT_CONFIG)
