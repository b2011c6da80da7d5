"""What callers hand the runtime: the eager runtime and its TorchScript export refuse the same bad
inputs with the same message, naming the shape, the batch sizes, the dense column and batch row.

Before: a NaN dense feature came out as a finite logit through int8 layers; a wrong dense width
reached FBGEMM ("The number of rows in the packB should be equal to K"); a dense/ids batch mismatch
torch.cat; float ids were truncated (-1.5 became a pad) and bool ids ran; the TorchScript module
skipped the id-matrix shape check (raw split_with_sizes error); FeatureIds.from_matrix wrapped
2**32 + 5 into id 5 and 2**32 - 1 into a pad; a hand-built FeatureIds' offsets were ignored on
hashed tables; outputs of fp32 layers carried a grad_fn."""

import pytest
import torch

from helpers import trained_tiny
from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.data.ids import BadFeatureIds, FeatureIds, IdOutOfRange
from lowprec.errors import InputError
from lowprec.plan import Plan
from lowprec.precision import Precision
from lowprec.serve.export import export_torchscript, load_torchscript
from lowprec.serve.runtime import BadServingInput
from lowprec.train import TrainConfig

HOTNESS = (1, 3, 1)  # tables t0 (50 rows, hashed), t1 (20), t2 (8); dense d0..d3


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(eager runtime, TorchScript module) of int8 layers and (the same) of fp32 layers."""
    root = tmp_path_factory.mktemp("inputs")
    trained_tiny(root, TrainConfig(windows=(0,), epochs=1, table_embedding={"t0": "hash:ratio=4"}), windows=2,
                 rows=400, tables=(50, 20, 8), hotness=HOTNESS)
    out = {}
    for layers in (Precision.INT8, Precision.FP32):
        art = root / f"art-{layers.value}"
        convert(root / "model", Plan.uniform(Precision.INT4, layers), art)
        export_torchscript(art)
        out[layers.value] = (load_artifact(art)[0], load_torchscript(art))
    out["root"] = root
    return out


def batch(rows=6):
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.randint(0, 50, (rows, 1), generator=g), torch.randint(-1, 20, (rows, 3), generator=g),
                     torch.randint(0, 8, (rows, 1), generator=g)], dim=1)
    return torch.randn(rows, 4, generator=g), ids


def refused(model, scripted, dense, ids, match):
    """Both raise, eager a BadServingInput (exit 2 from the CLI), TorchScript the same message."""
    with pytest.raises(BadServingInput, match=match):
        model(dense, ids)
    with pytest.raises(torch.jit.Error, match=match):
        scripted(dense, ids)


@pytest.mark.parametrize("layers", ["int8", "fp32"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_dense_is_refused_naming_column_and_row(served, layers, value):
    model, scripted = served[layers]
    dense, ids = batch()
    dense[4, 2] = value
    refused(model, scripted, dense, ids, rf"dense feature 'd2' \(column 2\), batch row 4, is {value}")
    big = batch()[0].double()
    big[1, 0] = 1e300  # finite in float64, Inf once read as float32
    refused(model, scripted, big, ids, r"dense feature 'd0' \(column 0\), batch row 1, is 1(\.0*1)?e\+300")
    huge = batch()[0]
    huge[:, 1] = 3e38  # finite, though their sum overflows (the check's first test): served
    torch.testing.assert_close(model(huge, ids), scripted(huge, ids), equal_nan=True)


@pytest.mark.parametrize("make,match", [
    (lambda d, i: (d[:, :3], i), r"dense features of shape \(6, 3\); this model reads \(batch, 4\) = \(6, 4\)"),
    (lambda d, i: (d[:4], i), r"dense features of shape \(4, 4\); .* = \(6, 4\) .*the ids hold 6 rows"),
    (lambda d, i: (d[0], i[:1]), r"dense features of shape \(4,\); this model reads \(batch, 4\) = \(1, 4\)"),
    (lambda d, i: (d > 0, i), r"dense features are bool"),
    (lambda d, i: (d, i[:, :4]), r"id matrix of shape \(6, 4\); this model reads \(batch, 5\) ids"),
    (lambda d, i: (d[:1], i[0]), r"id matrix of shape \(5,\); this model reads \(batch, 5\) ids"),
    (lambda d, i: (d, i.float()), r"ids are floating-point.*integer ids"),
    (lambda d, i: (d, i.double() - 0.5), r"ids are floating-point"),  # -1.5 became a pad
    (lambda d, i: (d, i > 0), r"ids are bool"),
], ids=["dense-width", "batch-mismatch", "dense-1d", "dense-bool", "ids-width", "ids-1d", "float-ids",
        "float-pad", "bool-ids"])
def test_bad_shapes_and_dtypes_are_refused_alike(served, make, match):
    model, scripted = served["int8"]
    refused(model, scripted, *make(*batch()), match)
    assert issubclass(BadServingInput, InputError)


def test_good_inputs_serve_as_before_without_autograd(served):
    dense, ids = batch()
    for layers in ("int8", "fp32"):
        model, scripted = served[layers]
        want = model(dense, ids)
        assert want.grad_fn is None and scripted(dense, ids).grad_fn is None
        torch.testing.assert_close(scripted(dense, ids), want)
        for cast in (torch.int32, torch.int16):  # any integer dtype
            assert torch.equal(model(dense, ids.to(cast)), want)
        assert torch.equal(model(dense, FeatureIds.from_matrix(ids, HOTNESS)), want)
        assert not any(p.requires_grad for p in model.parameters())


def test_hand_built_feature_ids_are_checked_where_they_enter(served):
    """Wrong offsets used to be ignored on the hashed table's path (or reached FBGEMM)."""
    model, _ = served["int8"]
    dense, ids = batch()
    good = FeatureIds.from_matrix(ids, HOTNESS)
    want = model(dense, good)
    off = good.offsets.clone()
    off[1:] = torch.arange(1, off.numel(), dtype=torch.int32)  # one id a bag everywhere
    cases = [
        (FeatureIds(good.indices, off, 6, HOTNESS), r"offsets\[\d+\] is \d+, not \d+: the runtime reads fixed-slot"),
        (FeatureIds(good.indices, good.offsets.long(), 6, HOTNESS), "offsets are torch.int64"),
        (FeatureIds(good.indices.long(), good.offsets, 6, HOTNESS), "indices are torch.int64"),
        (FeatureIds(good.indices, good.offsets, 5, HOTNESS), r"a batch of 5 .* needs int32 \(25,\)"),
    ]
    for fids, match in cases:
        with pytest.raises(BadFeatureIds, match=match):
            model(dense, fids)
    with pytest.raises(BadServingInput, match=r"the ids hold 6 rows"):
        model(dense[:5], good)
    assert torch.equal(model(dense, FeatureIds(good.indices, good.offsets.clone(), 6, HOTNESS)), want)


def test_sharded_runtime_refuses_the_same_inputs_before_any_collective(served):
    """ShardedEmbeddings routed an id past its table's end to no shard: it was dropped like a pad.
    Refusals come before the all_to_all, so a one-rank plan needs no process group here."""
    from lowprec.checkpoint.artifact import read_manifest
    from lowprec.serve.shard_plan import plan_shards
    from lowprec.serve.sharded import load_sharded

    art = served["root"] / "art-int8"
    sharded = load_sharded(art, plan_shards(read_manifest(art), "x", 1))
    dense, ids = batch()
    bad = ids.clone()
    bad[2, 4] = 8
    with pytest.raises(IdOutOfRange, match=r"table 't2': id 8 \(batch row 2\) is out of range; the table has 8 rows"):
        sharded(dense, bad)
    bad[2, 4], bad[3, 0] = 0, 50  # the hashed table: its transform would wrap 50 into range
    with pytest.raises(IdOutOfRange, match=r"table 't0': id 50 \(batch row 3\)"):
        sharded(dense, bad)
    nan = dense.clone()
    nan[1, 3] = float("nan")
    for d, i, match in ((nan, ids, r"dense feature 'd3' \(column 3\), batch row 1, is nan"),
                        (dense[:4], ids, r"the ids hold 6 rows"), (dense, ids.float(), "ids are floating-point"),
                        (dense, ids[:, :4], r"id matrix of shape \(6, 4\)")):
        with pytest.raises(BadServingInput, match=match):
            sharded(d, i)
    assert not any(p.requires_grad for p in sharded.parameters())
