"""One DLRM graph: the float model, the search's emulator, the FBGEMM runtime and the TorchScript
export compute the same logits for the same plan (lowprec.graph, built through lowprec.serve)."""

from __future__ import annotations

import pytest
import torch

from helpers import make_tiny_dataset
from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.checkpoint.float_model import save_float_model
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.evaluation.metrics import BinaryStats
from lowprec.model.config import DLRMConfig, TableConfig
from lowprec.model.dlrm import DLRM
from lowprec.precision import Precision
from lowprec.search.sensitivity import Emulator, FloatCache
from lowprec.search.space import SearchSpace, options_for, plan_from_options
from lowprec.serve.export import export_torchscript, load_torchscript

CALIB = {"layers": {"bottom.0": {"min": -3.0, "max": 3.0}, "top.1": {"min": 0.0, "max": 5.0}}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph")
    ds = Dataset(make_tiny_dataset(root / "data", windows=1, rows=300, tables=(60, 30, 9), hotness=(1, 3, 1)))
    tables = tuple(TableConfig(f.name, f.num_embeddings, f.hotness, e)
                   for f, e in zip(ds.meta.sparse, ("dense", "hash:ratio=3", "qr:ratio=2")))
    torch.manual_seed(0)
    model = DLRM(DLRMConfig(len(ds.meta.dense_names), tables, 8, (16, 8), (16, 8), tuple(ds.meta.dense_names)))
    with torch.no_grad():
        for p in model.embeddings.parameters():
            p.normal_(0, 0.5)
    model.eval()
    save_float_model(model, root / "model")
    return root, ds, model


def choose(items, picks: dict[str, str]):
    """The option of each item at the named precision (fp32 elsewhere)."""
    return {item: next(o for o in opts if o.precision.value == picks.get(item, "fp32") and o.sharing is None)
            for item, opts in items.items()}


PLANS = {
    "fp32": {},
    "mixed": {"table:t0": "int4", "table:t1": "fp8", "table:t2": "int8", "layer:bottom.0": "int8",
              "layer:top.1": "int8", "layer:top.0": "fp16"},
}


@pytest.mark.parametrize("name", list(PLANS))
def test_float_emulator_runtime_and_export_agree(setup, tmp_path, name):
    root, ds, model = setup
    space = SearchSpace(table_precisions=tuple(Precision), layer_precisions=(Precision.FP32, Precision.FP16, Precision.INT8))
    items = options_for(model.config, space)
    chosen = choose(items, PLANS[name])
    plan = plan_from_options(chosen, "minmax")
    convert(root / "model", plan, tmp_path / "art", CALIB)
    export_torchscript(tmp_path / "art")
    runtime, _ = load_artifact(tmp_path / "art")
    scripted = load_torchscript(tmp_path / "art")
    emulator = Emulator(model, FloatCache(model, ds, [0], 10**9, batch_size=10**6), CALIB)
    batch = next(iter(iter_batches(ds, [0], 10**6)))
    with torch.no_grad():
        got = {"runtime": runtime(batch.dense, batch.sparse), "export": scripted(batch.dense, batch.sparse),
               "emulator": emulator_logits(emulator, list(chosen.values()))}
        if name == "fp32":
            got["float"] = model(batch.dense, batch.sparse)
    want = got["runtime"]
    assert want.std() > 1e-2  # the batch exercises the model
    for k, v in got.items():
        torch.testing.assert_close(v, want, rtol=1e-6, atol=1e-6, msg=lambda m: f"{k}: {m}")
    # and the emulator's statistics are those of the runtime's logits
    stats = BinaryStats()
    stats.update(torch.sigmoid(want).numpy(), batch.labels.numpy())
    assert emulator.run(list(chosen.values()), "minmax").summary() == pytest.approx(stats.summary(), abs=1e-6)


def emulator_logits(emulator: Emulator, options) -> torch.Tensor:
    """The emulator's logits for one cached batch (what `Emulator.run` turns into statistics)."""
    b = emulator.cache.batches[0]
    tables = {emulator.names.index(o.name): emulator.table_pooled(o, "minmax")[0]
              for o in options if o.kind == "table" and not o.is_float_baseline}
    layers = {o.name: emulator.layer_module(o) for o in options if o.kind == "layer" and not o.is_float_baseline}
    pooled = b.pooled.clone()
    for t, out in tables.items():
        pooled[:, t] = out
    return emulator._forward(b, pooled if tables else None, layers)
