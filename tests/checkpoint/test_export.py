"""TorchScript export: same logits as the runtime for every serving form, runs with only torch +
fbgemm_gpu, hashed, atomic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from helpers import make_tiny_dataset, random_float_model
from lowprec.checkpoint.artifact import load_artifact, read_manifest
from lowprec.checkpoint.convert import convert
from lowprec.serve.export import TORCHSCRIPT, export_torchscript, load_torchscript
from lowprec.cli import main
from lowprec.data.batches import iter_batches
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError
from lowprec.plan import LayerChoice, Plan, TableChoice
from lowprec.precision import Precision


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("exdata")
    return Dataset(make_tiny_dataset(root / "data", windows=1, rows=200, hotness=(1, 3, 1)))


float_model = random_float_model


def batch(ds, n=64):
    return next(iter(iter_batches(ds, [0], batch_size=n)))


def assert_matches_runtime(path, ds, tol=1e-5):
    runtime, _ = load_artifact(path)
    module = load_torchscript(path)
    b = batch(ds)
    with torch.no_grad():
        want, got = runtime(b.dense, b.sparse), module(b.dense, b.sparse)
    assert want.shape == got.shape == (len(b),)
    assert (got - want).abs().max() <= tol
    return want


CALIB = {"layers": {"bottom.0": {"min": -3.0, "max": 3.0}, "top.0": {"min": -1.0, "max": 6.0}}}
PLANS = {
    "int4-tables-int8-dynamic": (Plan.uniform(Precision.INT4, Precision.INT8), None),
    "fp32-tables-fp32-layers": (Plan.uniform(Precision.FP32), None),
    "mixed-int8-static": (Plan({"t0": TableChoice(Precision.INT2), "t1": TableChoice(Precision.FP16),
                                "*": TableChoice(Precision.INT8)},
                               {"top.2": LayerChoice(Precision.FP32), "*": LayerChoice(Precision.INT8)}), CALIB),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_exported_module_equals_runtime(ds, tmp_path, name):
    plan, calib = PLANS[name]
    model = float_model(ds, tmp_path / "model")
    convert(model, plan, tmp_path / "art", calib)
    export_torchscript(tmp_path / "art")
    want = assert_matches_runtime(tmp_path / "art", ds)
    assert want.std() > 1e-3  # the batch exercises the model, not a constant


def test_padded_dim_and_qr_tables_export(ds, tmp_path):
    model = float_model(ds, tmp_path / "model", embeddings=("dense", "qr:ratio=4", "dense"), dim=6)
    with pytest.warns(UserWarning, match="padded with 2 zero columns"):
        convert(model, Plan.uniform(Precision.INT8), tmp_path / "art")
    export_torchscript(tmp_path / "art")
    assert_matches_runtime(tmp_path / "art", ds)


@pytest.mark.parametrize("spec", ["hash:ratio=4", "robe:ratio=4,z=4,align=1,sign=1", "qr:ratio=3"])
def test_hashed_tables_export_exactly(ds, tmp_path, spec):
    model = float_model(ds, tmp_path / "model", embeddings=("dense", spec, "dense"))
    convert(model, Plan.uniform(Precision.INT8), tmp_path / "art")
    export_torchscript(tmp_path / "art")
    assert_matches_runtime(tmp_path / "art", ds, tol=0)


def test_one_hot_tables_fast_path_with_and_without_pads(tmp_path):
    ds1 = Dataset(make_tiny_dataset(tmp_path / "d1", windows=1, rows=64, hotness=(1, 1, 1)))
    convert(float_model(ds1, tmp_path / "model"), Plan.uniform(Precision.INT4), tmp_path / "art")
    export_torchscript(tmp_path / "art")
    runtime, _ = load_artifact(tmp_path / "art")
    module = load_torchscript(tmp_path / "art")
    assert module.embeddings.simple
    b = batch(ds1)
    padded = b.sparse.clone()
    padded[::3, 1] = -1  # an empty bag: pooled to zeros on both paths
    with torch.no_grad():
        for sparse in (b.sparse, padded):
            assert (module(b.dense, sparse) - runtime(b.dense, sparse)).abs().max() < 1e-5


@pytest.mark.parametrize("lookup", ["remap", "search"])
def test_hot_sharing_exports_with_either_lookup(ds, tmp_path, lookup):
    counts = torch.arange(ds.meta.num_embeddings[0], dtype=torch.float32) ** 2
    plan = Plan({"t0": TableChoice(Precision.INT8, {"kind": "hot", "ratio": 4, "lookup": lookup}),
                 "*": TableChoice(Precision.INT8)})
    convert(float_model(ds, tmp_path / "model"), plan, tmp_path / "art", {"row_counts": {"t0": counts}})
    export_torchscript(tmp_path / "art")
    assert_matches_runtime(tmp_path / "art", ds)


SUBPROCESS = textwrap.dedent("""
    import sys
    import torch
    import fbgemm_gpu  # noqa: F401  (registers the TBE ops)
    module = torch.jit.load(sys.argv[1])
    inputs = torch.load(sys.argv[2])
    with torch.no_grad():
        logits = module(inputs["dense"], inputs["sparse"])
    torch.save({"logits": logits}, sys.argv[3])
    assert not any(m == "lowprec" or m.startswith("lowprec.") for m in sys.modules), "lowprec was imported"
    print("ok")
""")


def test_runs_with_only_torch_and_fbgemm(ds, tmp_path):
    model = float_model(ds, tmp_path / "model", seed=1)
    convert(model, Plan.uniform(Precision.INT4, Precision.INT8), tmp_path / "art", CALIB)
    export_torchscript(tmp_path / "art")
    b = batch(ds)
    torch.save({"dense": b.dense, "sparse": b.sparse}, tmp_path / "inputs.pt")
    script = tmp_path / "score.py"
    script.write_text(SUBPROCESS)
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "art" / TORCHSCRIPT),
                          str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")["logits"]
    runtime, _ = load_artifact(tmp_path / "art")
    with torch.no_grad():
        want = runtime(b.dense, b.sparse)
    assert (got - want).abs().max() < 1e-5


def test_manifest_covers_the_module_and_tampering_is_caught(ds, tmp_path):
    convert(float_model(ds, tmp_path / "model"), Plan.uniform(Precision.INT8), tmp_path / "art")
    with pytest.raises(InputError, match="no TorchScript export"):
        load_torchscript(tmp_path / "art")
    export_torchscript(tmp_path / "art")
    manifest = read_manifest(tmp_path / "art")
    assert set(manifest["files"]) == {"weights.safetensors", TORCHSCRIPT}
    assert manifest["torchscript"]["file"] == TORCHSCRIPT
    export_torchscript(tmp_path / "art")  # re-export over an existing one is fine
    assert_matches_runtime(tmp_path / "art", ds)
    pt = tmp_path / "art" / TORCHSCRIPT
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 does not match"):
        load_torchscript(tmp_path / "art")
    with pytest.raises(InputError, match="sha256 does not match"):
        load_artifact(tmp_path / "art")


def test_a_crash_while_exporting_leaves_the_old_artifact(ds, tmp_path, monkeypatch):
    convert(float_model(ds, tmp_path / "model"), Plan.uniform(Precision.INT4), tmp_path / "art")
    export_torchscript(tmp_path / "art")
    before = {p.name: p.read_bytes() for p in (tmp_path / "art").iterdir()}

    def crash(module, path):
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch.jit, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        export_torchscript(tmp_path / "art")
    after = {p.name: p.read_bytes() for p in (tmp_path / "art").iterdir()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "model"]  # no temp dirs left
    monkeypatch.undo()
    assert_matches_runtime(tmp_path / "art", ds)


def test_cli_convert_export_torchscript(ds, tmp_path):
    model = float_model(ds, tmp_path / "model")
    res = CliRunner().invoke(main, ["convert", "--model", str(model), "--precision", "int4",
                                    "--layer-precision", "int8", "--out", str(tmp_path / "art"),
                                    "--export", "torchscript", "--json"])
    assert res.exit_code == 0, res.output
    json.loads(res.output.strip().splitlines()[-1])
    assert TORCHSCRIPT in read_manifest(tmp_path / "art")["files"]
    assert_matches_runtime(tmp_path / "art", ds)
