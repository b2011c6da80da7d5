"""Frequency-tiered tables (lowprec.serve.tiers): the split, the codes and the lookups against slow
references, every tier's precision, pads and empty bags, hypothesis over the split."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec.errors import InputError
from lowprec.model.config import TableConfig
from lowprec.plan import TableChoice
from lowprec.precision import Precision
from lowprec.serve.forms import dense_form
from lowprec.serve.quantize import embeddings_from_forms, quantize_form
from lowprec.serve.sharing import post_training_form, serving_bytes
from lowprec.serve.tables import table_codec
from lowprec.serve.tiers import TierSpec, parse_layout
from lowprec.serve.transforms import build_transform


def ref_tiers(counts: list[float], shares: list[float], by_rank: bool = False) -> list[list[int]]:
    """Slow reference: ids by (-count, id), cut at round(cumulative share * n), each tier sorted by
    id (or kept in rank order: `by_rank`)."""
    n = len(counts)
    order = sorted(range(n), key=lambda i: (-counts[i], i))
    bounds, acc = [0], 0.0
    for s in shares:
        acc += s
        bounds.append(min(n, int(acc * n + 0.5)))
    bounds.append(n)
    return [order[a:b] if by_rank else sorted(order[a:b]) for a, b in zip(bounds, bounds[1:])]


def ref_map(tiers: list[list[int]], ids: list[int]) -> list[list[int]]:
    """Per tier, each id's row in that tier or -1 (pads -1 everywhere)."""
    return [[t.index(x) if x in t else -1 for x in ids] for t in tiers]


def tiered(weight, counts, spec, name="t"):
    return post_training_form(dense_form(name, weight), spec, counts, name)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 90), shares=st.lists(st.floats(0.01, 0.5), min_size=1, max_size=3),
       seed=st.integers(0, 2**16), ties=st.booleans())
def test_split_and_id_map_match_reference(n, shares, seed, ties):
    if sum(shares) > 1:
        shares = [s / sum(shares) for s in shares]
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 4 if ties else 10**6, (n,), generator=g).double()
    spec = {"kind": "tiered", "tiers": [[s, "fp16"] for s in shares]}
    weight = torch.randn(n, 4, generator=g)
    form = tiered(weight, counts, spec)
    want = ref_tiers(counts.tolist(), shares)
    ids = list(range(n)) + [-1]
    got = []
    for group in form.groups:
        (f,) = group
        mapped, w = build_transform(f.transform, form.buffers)(torch.tensor(ids))
        assert w is None
        got.append(mapped.tolist())
    nonempty = [t for t in want if t]
    assert got == ref_map(nonempty, ids)
    # each id in exactly one tier, and the physical tables hold the tiers' rows in id order
    assert sorted(sum(nonempty, [])) == list(range(n))
    for table, t in zip(form.tables.values(), nonempty):
        assert torch.equal(table, weight[t])


def test_codes_exact_per_tier_precision():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(300, 8, generator=g)
    counts = torch.rand(300, generator=g)
    spec = {"kind": "tiered", "tiers": [[0.05, "fp16"], [0.2, "int8"]]}
    qf = quantize_form(tiered(weight, counts, spec), TableChoice(Precision.INT2, spec), counts)
    want = ref_tiers(counts.tolist(), [0.05, 0.2])
    precisions = [Precision.FP16, Precision.INT8, Precision.INT2]
    assert [t.precision for t, _ in qf.physical] == precisions
    for (table, rows), ids, p in zip(qf.physical, want, precisions):
        assert table.rows == len(ids)
        ref = torch.stack([table_codec(p).encode(weight[i:i + 1])[0] for i in ids])  # row by row
        assert torch.equal(rows, ref)


@pytest.mark.parametrize("tiers,cold", [([[0.1, "fp16"]], "int4"), ([[0.03, "fp32"], [0.3, "fp8"]], "int2"),
                                        ([[1.0, "int8"]], "int4"), ([[0.5, "int4"], [0.5, "fp16"]], "int8")])
@pytest.mark.parametrize("order", ["id", "rank"])
def test_lookups_equal_dequantized_tiers(tiers, cold, order):
    g = torch.Generator().manual_seed(2)
    n, dim, hot = 120, 8, 3
    weight = torch.randn(n, dim, generator=g)
    counts = torch.rand(n, generator=g) ** 4
    spec = {"kind": "tiered", "tiers": tiers, "order": order}
    choice = TableChoice(Precision(cold), spec)
    qf = quantize_form(tiered(weight, counts, spec, "a"), choice, counts)
    dense = quantize_form(dense_form("b", torch.randn(10, dim, generator=g)), TableChoice(Precision.FP16), None)
    emb = embeddings_from_forms(dim, [("a", hot), ("b", 1)], [qf, dense], [n, 10])
    # reference: each id's row dequantized from its own tier, summed per bag
    want_tiers = [t for t in ref_tiers(counts.tolist(), [s for s, _ in tiers], order == "rank") if t]
    row = torch.empty(n, dim)
    for (table, rows), ids in zip(qf.physical, want_tiers):
        row[ids] = table_codec(table.precision).decode(rows, dim)
    ids = torch.randint(0, n, (40, hot), generator=g)
    ids[torch.rand(40, hot, generator=g) < 0.3] = -1
    ids[:5] = -1  # empty bags
    ids[5:15, 0] = torch.tensor(sum(want_tiers, [])[:10])  # ids from every tier
    other = torch.randint(0, 10, (40, 1), generator=g)
    got = emb(torch.cat([ids, other], 1))
    want = torch.stack([sum((row[x] for x in r.tolist() if x >= 0), torch.zeros(dim)) for r in ids])
    assert torch.allclose(got[:, 0], want, atol=1e-5)
    assert torch.equal(got[:5, 0], torch.zeros(5, dim))
    b_rows = table_codec(Precision.FP16).decode(dense.physical[0][1], dim)
    assert torch.allclose(got[:, 1], b_rows[other[:, 0]], atol=1e-6)


def test_rank_order_lays_rows_out_by_rank():
    """order "rank": a rank is a row of the tiers laid end to end; codes exact against a row-by-row
    encoding in rank order; the rank map is the inverse of the ranking; '/rank' in a layout."""
    g = torch.Generator().manual_seed(3)
    n = 200
    weight, counts = torch.randn(n, 8, generator=g), torch.rand(n, generator=g)
    spec = {"kind": "tiered", "tiers": [[0.05, "fp16"], [0.2, "int8"]], "order": "rank"}
    qf = quantize_form(tiered(weight, counts, spec), TableChoice(Precision.INT4, spec), counts)
    ranking = sorted(range(n), key=lambda i: (-float(counts[i]), i))
    assert qf.buffers["t.rank"].tolist() == [ranking.index(i) for i in range(n)]
    start = 0
    for (table, rows), p in zip(qf.physical, [Precision.FP16, Precision.INT8, Precision.INT4]):
        ids = ranking[start:start + table.rows]
        start += table.rows
        assert torch.equal(rows, torch.stack([table_codec(p).encode(weight[i:i + 1])[0] for i in ids]))
    assert start == n
    assert parse_layout("0.02:fp16/int4/rank") == ({"kind": "tiered", "tiers": [[0.02, "fp16"]], "order": "rank"},
                                                   Precision.INT4)
    with pytest.raises(InputError, match="row order 'rnk'"):
        parse_layout("0.02:fp16/int4/rnk")


@pytest.mark.parametrize("order,maps", [("id", 2 * 8 * (-(-1000 // 32))), ("rank", 4 * 1000)])
def test_bytes_match_the_quantized_form(order, maps):
    n, dim = 1000, 16
    spec = {"kind": "tiered", "tiers": [[0.02, "fp16"], [0.1, "int8"]], "order": order}
    table = TableConfig("t", n, 1)
    weight, counts = torch.randn(n, dim), torch.rand(n)
    qf = quantize_form(tiered(weight, counts, spec), TableChoice(Precision.INT4, spec), counts)
    assert serving_bytes(table, dim, table_codec(Precision.INT4), spec) == qf.bytes()
    # two 0.25-byte-a-row directories (8 bytes a 32-id block) beside the rows, or one 4-byte-a-row rank map
    assert sum(b.numel() * b.element_size() for b in qf.buffers.values()) == maps


@pytest.mark.parametrize("spec,msg", [
    ({"kind": "tiered"}, "tiers="),
    ({"kind": "tiered", "tiers": [[0.7, "fp16"], [0.6, "int8"]]}, "sum to <= 1"),
    ({"kind": "tiered", "tiers": [[0.0, "fp16"]]}, "in (0, 1]"),
    ({"kind": "tiered", "tiers": [["x", "fp16"]]}, "not [share, precision]"),
    ({"kind": "tiered", "tiers": [[0.1, "int3"]]}, "int3"),
    ({"kind": "tiered", "tiers": [[0.1, "fp16"]], "lookup": "remap"}, "unknown ['lookup']"),
    ({"kind": "tiered", "tiers": [[0.1, "fp16"]], "order": "popularity"}, "row order 'popularity'"),
])
def test_bad_specs_are_refused(spec, msg):
    with pytest.raises(InputError, match=msg.replace("[", r"\[").replace("(", r"\(").replace("]", r"\]")
                       .replace(")", r"\)")):
        tiered(torch.randn(10, 4), torch.ones(10), spec)


def test_needs_counts_and_a_dense_table():
    spec = {"kind": "tiered", "tiers": [[0.1, "fp16"]]}
    with pytest.raises(InputError, match="tiered tables need row access counts"):
        tiered(torch.randn(10, 4), None, spec)
    hashed = post_training_form(dense_form("t", torch.randn(40, 4)), {"kind": "hot", "ratio": 4, "hot": 0.0},
                                torch.ones(40), "t")
    with pytest.raises(InputError, match="apply to dense tables"):
        post_training_form(hashed, spec, torch.ones(10), "t")
    assert TierSpec.from_json(spec, "t").sizes(10) == [1, 9]


@pytest.mark.parametrize("order", ["id", "rank"])
def test_convert_export_inspect(tmp_path, order):
    """A tiered table through `convert`, the loaded artifact, TorchScript and `inspect`."""
    import json

    from click.testing import CliRunner

    from helpers import make_tiny_dataset, random_float_model
    from lowprec.checkpoint.artifact import load_artifact
    from lowprec.checkpoint.convert import convert
    from lowprec.data.ids import FeatureIds
    from lowprec.cli import main
    from lowprec.data.batches import iter_batches
    from lowprec.data.dataset import Dataset
    from lowprec.plan import Plan
    from lowprec.serve.export import export_torchscript, load_torchscript

    ds = Dataset(make_tiny_dataset(tmp_path / "data", windows=1, rows=200, hotness=(1, 3, 1)))
    model = random_float_model(ds, tmp_path / "model")
    n = ds.meta.num_embeddings[1]
    counts = torch.arange(n, dtype=torch.float32) ** 2
    spec = {"kind": "tiered", "tiers": [[0.1, "fp16"], [0.3, "fp8"]], "order": order}
    plan = Plan({"t1": TableChoice(Precision.INT4, spec), "*": TableChoice(Precision.INT8)})
    convert(model, plan, tmp_path / "art", {"row_counts": {"t1": counts}})
    export_torchscript(tmp_path / "art")
    runtime, _ = load_artifact(tmp_path / "art")
    module = load_torchscript(tmp_path / "art")
    b = next(iter(iter_batches(ds, [0], batch_size=64)))
    sparse = b.sparse.clone()
    sparse[::4, 1:4] = -1  # empty bags of the tiered table
    with torch.no_grad():
        want = runtime(b.dense, sparse)
        assert (module(b.dense, sparse) - want).abs().max() <= 1e-5
        if order == "rank":  # the artifact's rank map turns the pipeline's ids into ranks
            emb = runtime.embeddings
            rank = emb.id_maps[emb.serving[1].groups[0][0]].rank.long()
            ranked = sparse.clone()
            ranked[:, 1:4] = torch.where(sparse[:, 1:4] >= 0, rank[sparse[:, 1:4].clamp(min=0)], -1)
            hot = (1, 3, 1)
            got = emb.lookup_ids(FeatureIds.from_matrix(ranked.numpy(), hot), ranked=True)
            assert torch.equal(got, emb.lookup_ids(FeatureIds.from_matrix(sparse.numpy(), hot)))
    out = CliRunner().invoke(main, ["inspect", str(tmp_path / "art"), "--json"])
    assert out.exit_code == 0, out.output
    t1 = next(t for t in json.loads(out.output.strip().splitlines()[-1])["tables"] if t["name"] == "t1")
    assert [t["precision"] for t in t1["tiers"]] == ["fp16", "fp8", "int4"]
    if order == "rank":  # where a feature pipeline finds the rank map, and it is that tensor
        from safetensors.numpy import load_file

        file, _, key = t1["rank_map"].partition(":")
        assert load_file(str(tmp_path / "art" / file))[key].tolist() == rank.tolist()
    else:
        assert "rank_map" not in t1
    assert sum(t["rows"] for t in t1["tiers"]) == n
    text = CliRunner().invoke(main, ["inspect", str(tmp_path / "art")]).output
    assert "tiered" in text and "t1.tier0" in text
