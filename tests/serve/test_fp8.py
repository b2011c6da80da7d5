"""FP8 tables (FBGEMM's HFP8: 1 sign, 4 exponent, 3 mantissa bits, bias 7) against a slow reference,
and end to end: searchable, convertible, served, exported."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec.precision import Precision
from lowprec.quant.fp8 import MAX_POS, fp8_rows, fp8_to_float
from lowprec.serve.forms import Feature
from lowprec.serve.runtime import PhysicalTable, QuantizedEmbeddings, TableServing
from lowprec.serve.tables import table_codec


def decode_reference(code: int) -> float:
    """The value of one HFP8 code, from the format's definition."""
    sign = -1.0 if code & 0x80 else 1.0
    e, m = (code >> 3) & 0xF, code & 7
    return sign * (2.0 ** (e - 7) * (1 + m / 8) if e else 2.0 ** -6 * (m / 8))


VALUES = np.array([decode_reference(c) for c in range(256)])


def nearest_reference(x: float) -> set[float]:
    """Every representable value nearest to x after clamping to +-MAX_POS (two at a tie)."""
    x = min(max(x, -MAX_POS), MAX_POS)
    d = np.abs(VALUES - x)
    return set(VALUES[d == d.min()].tolist())


def test_decoding_equals_the_format_definition():
    codes = torch.arange(256, dtype=torch.uint8).reshape(4, 64)
    assert fp8_to_float(codes).flatten().tolist() == VALUES.tolist()


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 5), dim=st.sampled_from([4, 8, 12]), scale=st.sampled_from([1e-3, 0.05, 1.0, 50.0, 1e3]),
       seed=st.integers(0, 2**16))
def test_codes_are_the_nearest_representable_values(rows, dim, scale, seed):
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)) * scale
    codes = fp8_rows(x)
    assert codes.dtype == torch.uint8 and codes.shape == (rows, dim)
    got = fp8_to_float(codes)
    for v, g in zip(x.flatten().tolist(), got.flatten().tolist()):
        assert g in nearest_reference(v), (v, g)


def test_row_bytes_and_codec():
    assert Precision.FP8.bytes_per_row(16) == 16  # one byte an element, no scale/bias
    codec = table_codec(Precision.FP8)
    w = torch.randn(10, 8)
    rows = codec.encode(w)
    assert rows.shape == (10, 8)
    torch.testing.assert_close(codec.decode(rows, 8), fp8_to_float(fp8_rows(w)), rtol=0, atol=0)
    assert codec.table_bytes(10, 6) == 10 * 8  # dim padded to 8


def test_lookups_equal_the_decoded_table():
    """The TBE's FP8 kernel sums exactly the decoded rows (pads skipped)."""
    w = torch.randn(50, 8) * 0.3
    emb = QuantizedEmbeddings(8, [PhysicalTable("t", 50, 8, Precision.FP8)], [Feature("t")],
                              [TableServing("t", 3, ((0,),))])
    emb.load_rows({"t": fp8_rows(w)}.__getitem__)
    ids = torch.randint(0, 50, (16, 3), generator=torch.Generator().manual_seed(1))
    ids[::4, 2] = -1
    table = fp8_to_float(fp8_rows(w))
    want = torch.stack([table[[i for i in row if i >= 0]].sum(0) for row in ids.tolist()])
    torch.testing.assert_close(emb(ids)[:, 0], want, rtol=1e-6, atol=1e-6)


def test_a_mixed_fp8_module_takes_ids_as_they_are_when_a_call_has_no_pad():
    """FP8 kernels add a wrong row for a pad, so a module with an FP8 table used to drop pads by hand
    on every call (3x slower lookups for a whole plan); a call without any pad now goes to the TBE
    as it is. Both paths against the decoded tables, through lookup_ids and forward."""
    from lowprec.data.ids import FeatureIds
    from lowprec.serve.tables import table_codec

    g = torch.Generator().manual_seed(3)
    ws = {"a": torch.randn(40, 8, generator=g) * 0.3, "b": torch.randn(30, 8, generator=g) * 0.3}
    precisions = {"a": Precision.FP8, "b": Precision.INT4}
    emb = QuantizedEmbeddings(8, [PhysicalTable(k, len(w), 8, precisions[k]) for k, w in ws.items()],
                              [Feature("a"), Feature("b")], [TableServing("a", 2, ((0,),)), TableServing("b", 2, ((1,),))])
    codecs = {k: table_codec(precisions[k]) for k in ws}
    emb.load_rows({k: codecs[k].encode(w) for k, w in ws.items()}.__getitem__)
    decoded = [codecs[k].decode(codecs[k].encode(w), 8) for k, w in ws.items()]
    assert emb.dense_ids and not emb.simple
    for pads in (False, True):
        ids = torch.cat([torch.randint(0, 40, (12, 2), generator=g), torch.randint(0, 30, (12, 2), generator=g)], 1)
        if pads:
            ids[::3, 1] = -1
            ids[1::4, 3] = -1
        want = torch.stack([torch.stack([decoded[t][[i for i in row[2 * t:2 * t + 2] if i >= 0]].sum(0)
                                         for t in range(2)]) for row in ids.tolist()])
        torch.testing.assert_close(emb(ids), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(emb.lookup_ids(FeatureIds.from_matrix(ids, (2, 2))), want, rtol=1e-5, atol=1e-5)


def test_fp8_end_to_end_through_the_cli(tmp_path):
    """convert --precision fp8 (and a plan mixing it), inspect, eval, export: FP8 is one more precision."""
    import json

    from click.testing import CliRunner

    from helpers import make_tiny_dataset
    from lowprec.checkpoint.artifact import load_artifact
    from lowprec.checkpoint.float_model import save_float_model
    from lowprec.cli import main
    from lowprec.data.dataset import Dataset
    from lowprec.model.dlrm import DLRM
    from lowprec.serve.export import load_torchscript
    from lowprec.train import TrainConfig, model_config_for

    ds = Dataset(make_tiny_dataset(tmp_path / "data", windows=1, rows=200, hotness=(1, 2, 1)))
    torch.manual_seed(0)
    save_float_model(DLRM(model_config_for(ds.meta, TrainConfig(windows=(0,)))), tmp_path / "m")

    def run(*args):
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return json.loads(res.output.strip().splitlines()[-1])

    run("convert", "--model", tmp_path / "m", "--precision", "fp8", "--out", tmp_path / "a",
        "--export", "torchscript", "--json")
    info = run("inspect", tmp_path / "a", "--json")
    assert {t["precision"] for t in info["tables"]} == {"fp8"}
    rows = ds.meta.sparse[0].num_embeddings
    assert info["tables"][0]["bytes"] == rows * Precision.FP8.bytes_per_row(16)
    metrics = run("eval", "--model", tmp_path / "a", "--data", tmp_path / "data", "--windows", "0", "--json")
    assert 0 < metrics["ne"] < 2
    runtime, _ = load_artifact(tmp_path / "a")
    scripted = load_torchscript(tmp_path / "a")
    sparse = torch.randint(0, 8, (32, 4))
    sparse[::3, 2] = -1
    dense = torch.randn(32, len(ds.meta.dense_names))
    with torch.no_grad():
        assert torch.equal(runtime(dense, sparse), scripted(dense, sparse))


def test_the_slow_lookup_warning_counts_the_tables_a_user_named():
    """QA 6c item 4: the fp8 warning counted physical tables ("27 table(s) at fp8" on a 26-table model)
    and named pieces like `robe.shared`. It counts logical tables by what they read."""
    from lowprec.cli.convert import _slow_lookups
    from lowprec.precision import Precision, slow_lookup_warnings

    manifest = {"physical_tables": [{"key": "robe.shared", "precision": "fp8"}, {"key": "t2.q", "precision": "fp8"},
                                    {"key": "t2.r", "precision": "fp8"}, {"key": "t3", "precision": "int8"}],
                "features": [{"table": "robe.shared"}, {"table": "robe.shared"}, {"table": "t2.q"}, {"table": "t2.r"},
                             {"table": "t3"}],
                "serving": [{"name": "t0", "groups": [[0]]}, {"name": "t1", "groups": [[1]]},
                            {"name": "t2", "groups": [[2], [3]]}, {"name": "t3", "groups": [[4]]}]}
    slow = _slow_lookups(manifest)
    assert slow == {"t0": Precision.FP8, "t1": Precision.FP8, "t2": Precision.FP8}
    (w,) = slow_lookup_warnings(slow)
    assert w.startswith("3 table(s) at fp8 (t0, t1, t2)") and "robe.shared" not in w
