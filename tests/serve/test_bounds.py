"""Id bounds: the runtime and its TorchScript export refuse ids outside a table's logical rows.

Before, FBGEMM ran with BoundsCheckMode.NONE: an id just past a table's end returned a logit and
further ones raised a raw FBGEMM error. Every entry point (id matrix, FeatureIds, the scripted
module) must now refuse with a message naming the table, the id and the table's rows, and keep
serving in-range ids exactly as before (the reference: the same TBE called directly)."""

import pytest
import torch

from helpers import trained_tiny
from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.data.ids import FeatureIds
from lowprec.errors import InputError
from lowprec.plan import Plan, TableChoice
from lowprec.precision import Precision
from lowprec.serve.export import export_torchscript, load_torchscript
from lowprec.serve.forms import dense_form
from lowprec.serve.quantize import embeddings_from_forms, quantize_form
from lowprec.serve.runtime import IdOutOfRange
from lowprec.train import TrainConfig

TABLES = (50, 20, 8)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds")
    trained_tiny(root, TrainConfig(windows=(0,), epochs=1, table_embedding={"t0": "hash:ratio=4"}), windows=2,
                 rows=400, tables=TABLES, hotness=(1, 3, 1))
    convert(root / "model", Plan.uniform(Precision.INT4), root / "art")
    return root / "art"


def ids(rows=4):
    """In-range ids for tables (50, hotness 1), (20, hotness 3), (8, hotness 1), with pads."""
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randint(0, 50, (rows, 1), generator=g), torch.randint(-1, 20, (rows, 3), generator=g),
                      torch.randint(0, 8, (rows, 1), generator=g)], dim=1)


@pytest.mark.parametrize("column,value,table,rows", [
    (4, 8, "t2", 8),     # one past the end of a dense table: used to return a logit
    (4, 9, "t2", 8),
    (2, 20, "t1", 20),   # a multi-hot slot
    (0, 50, "t0", 50),   # a hashed table: its transform would wrap any id into range silently
    (0, 10**9, "t0", 50),
    (1, -2, "t1", 20),   # negative, not the -1 pad
])
def test_out_of_range_ids_are_refused_naming_table_id_rows(artifact, column, value, table, rows):
    runtime, _ = load_artifact(artifact)
    dense = torch.randn(4, runtime.config.dense_in)
    sparse = ids()
    runtime(dense, sparse)  # in range: serves
    sparse[2, column] = value
    for x in (sparse, FeatureIds.from_matrix(sparse, tuple(runtime.embeddings.hotness))):
        with pytest.raises(IdOutOfRange) as exc:
            runtime(dense, x)
        msg = str(exc.value)
        assert f"table '{table}'" in msg and f"id {value} " in msg and f"has {rows} rows" in msg
        assert "batch row 2" in msg
    assert issubclass(IdOutOfRange, InputError)  # the CLI maps it to exit 2


def test_torchscript_export_refuses_the_same_ids(artifact):
    export_torchscript(artifact)
    runtime, _ = load_artifact(artifact)
    scripted = load_torchscript(artifact)
    dense, sparse = torch.randn(4, runtime.config.dense_in), ids()
    with torch.no_grad():
        torch.testing.assert_close(scripted(dense, sparse), runtime(dense, sparse))
    sparse[1, 4] = 8
    with pytest.raises(torch.jit.Error, match=r"table 't2': id 8 \(batch row 1\) is out of range; the table has 8 rows"):
        scripted(dense, sparse)


def test_checked_lookup_equals_the_tbe_called_directly():
    """The fast path keeps computing what raw FBGEMM computes; bounds default to physical rows."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, 8, generator=g) for n in (30, 7)]
    forms = [quantize_form(dense_form(f"t{i}", w), TableChoice(Precision.INT8, None, "minmax"), None)
             for i, w in enumerate(weights)]
    emb = embeddings_from_forms(8, [("t0", 2), ("t1", 2)], forms)
    sparse = torch.cat([torch.randint(-1, 30, (16, 2), generator=g), torch.randint(-1, 7, (16, 2), generator=g)], 1)
    fids = FeatureIds.from_matrix(sparse, (2, 2))
    want = emb.tbe(fids.indices, fids.offsets).view(16, 2, 8)
    torch.testing.assert_close(emb.lookup_ids(fids), want)
    torch.testing.assert_close(emb(sparse), want)
    sparse[0, 3] = 7
    with pytest.raises(IdOutOfRange, match="table 't1': id 7"):
        emb(sparse)
    empty = torch.zeros(0, 4, dtype=torch.int64)
    assert emb(empty).shape == (0, 2, 8)
