"""The native tiered id split (lowprec.serve.tier_native, tier_split.c) against slow references: its
TBE inputs against a per-bag list reference, lookups against the dequantized tiers and bit for bit
against the stock torch ops, ranked ids against raw ids, both row orders, pads and empty bags, the
fallback without a compiler, and the TorchScript export (which keeps the torch ops)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowprec import native
from lowprec.data.ids import FeatureIds
from lowprec.errors import InputError
from lowprec.plan import TableChoice
from lowprec.precision import Precision
from lowprec.serve import tier_native
from lowprec.serve.forms import dense_form
from lowprec.serve.quantize import embeddings_from_forms, quantize_form
from lowprec.serve.sharing import post_training_form
from lowprec.serve.tables import table_codec
from lowprec.serve.tiers import TierSpec, directory, widen_directory

DIM = 8


def ref_tiers(counts: list[float], sizes: list[int], by_rank: bool) -> list[list[int]]:
    """Each tier's ids by (-count, id), cut into `sizes`; sorted by id unless `by_rank`."""
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    out, start = [], 0
    for k in sizes:
        part = order[start:start + k]
        out.append(part if by_rank else sorted(part))
        start += k
    return out


def build(tables: list[dict], seed: int):
    """A runtime over `tables` (dicts: n, hotness, tiers or None, order) and each table's reference:
    per tier the ids in row order (None: untiered) and every id's dequantized row."""
    g = torch.Generator().manual_seed(seed)
    forms, names, refs = [], [], []
    for i, t in enumerate(tables):
        weight = torch.randn(t["n"], DIM, generator=g)
        counts = (torch.rand(t["n"], generator=g) ** 4).double()
        name = f"t{i}"
        if t["tiers"] is None:
            qf = quantize_form(dense_form(name, weight), TableChoice(Precision.INT8), None)
            tiers = None
        else:
            spec = {"kind": "tiered", "tiers": t["tiers"], "order": t["order"]}
            qf = quantize_form(post_training_form(dense_form(name, weight), spec, counts, name),
                               TableChoice(Precision.INT4, spec), counts)
            sizes = TierSpec.from_json(spec, name).sizes(t["n"])
            tiers = [p for p in ref_tiers(counts.tolist(), sizes, t["order"] == "rank") if p]
        rows = torch.empty(t["n"], DIM)
        for (phys, raw), ids in zip(qf.physical, tiers or [list(range(t["n"]))]):
            rows[ids] = table_codec(phys.precision).decode(raw, DIM)
        forms.append(qf)
        names.append((name, t["hotness"]))
        refs.append((tiers, rows))
    emb = embeddings_from_forms(DIM, names, forms, [t["n"] for t in tables])
    return emb, refs


def ref_inputs(refs, ids: torch.Tensor, hotness: list[int]) -> tuple[list[int], list[int]]:
    """The TBE's (indices, offsets) by lists: per table, per tier, per bag the rows of its ids."""
    idx, off = [], [0]
    start = 0
    for (tiers, _), h in zip(refs, hotness):
        block = ids[:, start:start + h].tolist()
        start += h
        for tier in tiers or [None]:
            where = {x: r for r, x in enumerate(tier)} if tier is not None else None
            for bag in block:
                idx += [x if where is None else where[x] for x in bag if x >= 0 and (where is None or x in where)]
                off.append(len(idx))
    return idx, off


def random_ids(tables: list[dict], batch: int, g: torch.Generator) -> torch.Tensor:
    cols = []
    for t in tables:
        ids = torch.randint(0, t["n"], (batch, t["hotness"]), generator=g)
        ids[torch.rand(batch, t["hotness"], generator=g) < 0.3] = -1
        ids[0] = -1  # an empty bag in every table
        cols.append(ids)
    return torch.cat(cols, 1)


def ranks_of(emb, ids: torch.Tensor, hotness: list[int]) -> torch.Tensor:
    """Rank-ordered tiered tables' ids mapped to ranks (what a ranked feature pipeline sends)."""
    out, start = ids.clone(), 0
    for t, h in enumerate(hotness):
        m = emb.id_maps[emb.serving[t].groups[0][0]]
        if getattr(m, "ranked_layout", False):
            block = ids[:, start:start + h]
            out[:, start:start + h] = torch.where(block >= 0, m.rank.long()[block.clamp(min=0)], -1)
        start += h
    return out


def stock(emb, f: FeatureIds, ranked: bool = False) -> torch.Tensor:
    emb.native_split = False
    try:
        return emb.lookup_ids(f, ranked)
    finally:
        emb.native_split = True


table = st.fixed_dictionaries({
    "n": st.integers(1, 70), "hotness": st.integers(1, 4), "order": st.sampled_from(["id", "rank"]),
    "tiers": st.one_of(st.none(), st.lists(st.tuples(st.floats(0.05, 0.3), st.sampled_from(["fp16", "int8"])),
                                          min_size=1, max_size=3).map(lambda ts: [list(t) for t in ts]))})


@settings(max_examples=25, deadline=None)
@given(tables=st.lists(table, min_size=1, max_size=4), batch=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_native_split_matches_references(tables, batch, seed):
    if tier_native.kernel() is None:
        pytest.skip("no C compiler: the fallback test covers this machine")
    emb, refs = build(tables, seed)
    hotness = [t["hotness"] for t in tables]
    ids = random_ids(tables, batch, torch.Generator().manual_seed(seed))
    f = FeatureIds.from_matrix(ids.numpy(), tuple(hotness))
    want = torch.stack([sum((rows[x] for x in bag if x >= 0), torch.zeros(DIM)) if bag else torch.zeros(DIM)
                        for (_, rows), block in zip(refs, torch.split(ids, hotness, 1)) for bag in block.tolist()]
                       ).view(len(tables), batch, DIM).transpose(0, 1)
    with torch.no_grad():
        got = emb.lookup_ids(f)
        assert torch.equal(got, stock(emb, f))  # bit for bit the stock-op path
        assert torch.equal(emb(ids), got)  # the id-matrix entry takes the same path
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        plan = tier_native.plan_of(emb)
        tiered_tables = [t for t in tables if t["tiers"] is not None]
        if plan is not None:
            idx, off = tier_native.split(plan, f.indices, batch)
            assert (idx.tolist(), off.tolist()) == ref_inputs(refs, ids, hotness)
        elif tiered_tables:  # only where a tier is empty (its table serves one feature fewer)
            assert any(len(r[0]) < len(t["tiers"]) + 1 for r, t in zip(refs, tables) if t["tiers"] is not None)
        r = FeatureIds.from_matrix(ranks_of(emb, ids, hotness).numpy(), tuple(hotness))
        assert torch.equal(emb.ranked(f).indices, r.indices)  # the runtime's renumbering, by reference
        assert torch.equal(emb.lookup_ids(r, ranked=True), got)
        assert torch.equal(stock(emb, r, ranked=True), got)


@settings(max_examples=30, deadline=None)
@given(hotness=st.lists(st.sampled_from([1, 3, 15, 16, 17, 20, 33]), min_size=1, max_size=3),
       n=st.integers(2, 300), share=st.floats(0.01, 0.9), batch=st.integers(1, 12),
       order=st.sampled_from(["id", "rank"]), seed=st.integers(0, 2**16))
def test_two_tier_split_matches_the_reference(hotness, n, share, batch, order, seed):
    """Two-tier tables, the split vectorised where the build has AVX-512 (16 ids a step over a
    table's ids end to end, bags starting and ending inside a step): raw ids through the directories
    (id order) or the rank map (rank order), and ranked ids (compares only); bags shorter than, equal
    to and longer than a step. Ids past the table are refused, however far past (they are never used
    as an index into a directory or rank map)."""
    if tier_native.kernel() is None:
        pytest.skip("no C compiler: the fallback test covers this machine")
    tables = [{"n": n, "hotness": h, "order": order, "tiers": [[share, "fp16"]]} for h in hotness]
    emb, refs = build(tables, seed)
    plan = tier_native.plan_of(emb)
    if plan is None:  # a tier came out empty: the table serves one feature
        assert any(len(r[0]) < 2 for r in refs)
        return
    ids = random_ids(tables, batch, torch.Generator().manual_seed(seed))
    ranks = ranks_of(emb, ids, hotness)
    f, r = (FeatureIds.from_matrix(x.numpy(), tuple(hotness)) for x in (ids, ranks))
    want = ref_inputs(refs, ids, hotness)
    got = tier_native.split(plan, r.indices, batch, ranked=True)
    assert (got[0].tolist(), got[1].tolist()) == want
    raw = tier_native.split(plan, f.indices, batch)
    assert (raw[0].tolist(), raw[1].tolist()) == want
    for past in (n, 2**31 - 1):  # refused, naming the table
        for ranked, src in ((True, r), (False, f)):
            bad = src.indices.clone()
            bad[-1 - seed % (batch * hotness[-1])] = past  # somewhere in the last table
            with pytest.raises(tier_native.BadIds, match=f"table {len(hotness) - 1} "):
                tier_native.split(plan, bad, batch, ranked=ranked)


@pytest.fixture(scope="module", params=["x86-64-v2", "x86-64-v3"])
def other_build(request, tmp_path_factory):
    """The kernel built for an older instruction set than -march=native may give: x86-64-v2 runs the
    scalar loops, x86-64-v3 (AVX2, no AVX-512) the 8-lane loop; an AVX-512 build runs neither, a
    machine without AVX-512 runs one of them."""
    if tier_native.kernel() is None:
        pytest.skip("no C compiler: the fallback test covers this machine")
    if request.param == "x86-64-v3" and not {"avx2", "bmi2", "fma"} <= set(native._cpu_flags().split()):
        pytest.skip("this CPU cannot run an AVX2 build")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "FLAGS", tuple(f"-march={request.param}" if f == "-march=native" else f for f in native.FLAGS))
        mp.setenv("LOWPREC_CACHE_DIR", str(tmp_path_factory.mktemp(request.param)))
        lib = native.build(tier_native.SOURCE)
    tier_native._declare(lib)
    return lib


@settings(max_examples=25, deadline=None)
@given(tables=st.lists(table, min_size=1, max_size=4), batch=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_other_builds_match_the_reference(other_build, tables, batch, seed):
    """Every tier count through the scalar loops (x86-64-v2) and the AVX2 loop (x86-64-v3): the same
    TBE inputs as the per-bag reference for raw ids (directories, rank maps) and ranked ids, and the
    same pooling."""
    emb, refs = build(tables, seed)
    plan = tier_native.plan_of(emb)
    if plan is None:
        return
    hotness = [t["hotness"] for t in tables]
    ids = random_ids(tables, batch, torch.Generator().manual_seed(seed))
    f = FeatureIds.from_matrix(ids.numpy(), tuple(hotness))
    r = FeatureIds.from_matrix(ranks_of(emb, ids, hotness).numpy(), tuple(hotness))
    want = ref_inputs(refs, ids, hotness)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tier_native, "kernel", lambda: other_build)
        for src, ranked in ((f, False), (r, True)):
            idx, off = tier_native.split(plan, src.indices, batch, ranked)
            assert (idx.tolist(), off.tolist()) == want
        out = torch.randn(batch, plan.features * DIM, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(tier_native.pool(plan.tiers, out, batch, DIM), emb.pooled_from_tbe(out, batch))


def test_bad_ids_and_descriptors_are_refused():
    if tier_native.kernel() is None:
        pytest.skip("no C compiler")
    tables = [{"n": 30, "hotness": 2, "tiers": [[0.1, "fp16"]], "order": "id"}]
    emb, _ = build(tables, 0)
    plan = tier_native.plan_of(emb)
    for bad in (30, -2):
        with pytest.raises(InputError, match=r"table 0 holds an id that is neither -1 nor in \[0, 30\)"):
            tier_native.split(plan, torch.tensor([1, bad], dtype=torch.int32), 1)
    with pytest.raises(ValueError, match="3 ids for batch 1"):
        tier_native.split(plan, torch.tensor([1, 2, 3], dtype=torch.int32), 1)
    for bad in (30, -2):  # the runtime names the table, the id and its batch row
        with pytest.raises(InputError, match=f"table 't0': id {bad} \\(batch row 1\\)"):
            emb.lookup_ids(FeatureIds.from_matrix(np.array([[1, 2], [1, bad]]), (2,)))
    # a runtime not told its logical rows still refuses ids past the tiers'
    emb.table_rows.fill_(2**62)
    tier_native._PLANS.pop(emb, None)
    with pytest.raises(InputError, match=r"neither -1 nor in \[0, 30\)"):
        emb.lookup_ids(FeatureIds.from_matrix(np.array([[1, 30]]), (2,)))


@pytest.mark.parametrize("dropped", [0, 1, 3, 7, 16])
def test_untiered_ids_are_copied_exactly_and_every_one_is_checked(dropped):
    """An untiered table without pads keeps the split's one-pass copy (vector body, scalar head and
    tail): ids land exactly wherever the tiered table before it left the output (`dropped` of its
    bags are empty, so the copy starts at any alignment), and a bad id at any position is refused."""
    if tier_native.kernel() is None:
        pytest.skip("no C compiler")
    tables = [{"n": 40, "hotness": 1, "tiers": [[0.2, "fp16"]], "order": "id"},
              {"n": 30, "hotness": 2, "tiers": None, "order": "id"}]
    emb, refs = build(tables, dropped)
    plan = tier_native.plan_of(emb)
    batch = 61
    g = torch.Generator().manual_seed(dropped)
    ids = torch.cat([torch.randint(0, 40, (batch, 1), generator=g), torch.randint(0, 30, (batch, 2), generator=g)], 1)
    ids[:dropped, 0] = -1
    f = FeatureIds.from_matrix(ids.numpy(), (1, 2))
    idx, off = tier_native.split(plan, f.indices, batch)
    assert (idx.tolist(), off.tolist()) == ref_inputs(refs, ids, [1, 2])
    copied = idx[-2 * batch:]
    assert torch.equal(copied, f.indices[batch:])  # the copy itself, end to end
    for pos in (0, 1, 15, 16, 17, 63, 2 * batch - 1):  # head, vector body, tail
        for bad in (30, -2):
            worse = f.indices.clone()
            worse[batch + pos] = bad
            with pytest.raises(InputError, match=r"table 1 holds an id that is neither -1 nor in \[0, 30\)"):
                tier_native.split(plan, worse, batch)


def test_without_a_compiler_the_runtime_warns_and_runs_torch_ops(monkeypatch, tmp_path):
    tables = [{"n": 50, "hotness": 3, "tiers": [[0.1, "fp16"], [0.2, "int8"]], "order": "rank"},
              {"n": 9, "hotness": 1, "tiers": None, "order": "id"}]
    emb, _ = build(tables, 1)
    ids = random_ids(tables, 16, torch.Generator().manual_seed(1))
    f = FeatureIds.from_matrix(ids.numpy(), (3, 1))
    with torch.no_grad():
        want = stock(emb, f)
        native.forget(tier_native.SOURCE)
        monkeypatch.setenv("CC", "no-such-compiler")
        monkeypatch.setenv("PATH", str(tmp_path))
        monkeypatch.setenv("LOWPREC_CACHE_DIR", str(tmp_path / "cache"))
        with pytest.warns(UserWarning, match="native tiered id split unavailable"):
            got = emb.lookup_ids(f)
        assert tier_native.kernel() is None and tier_native.lookup(emb, f.indices, 16) is None
        assert torch.equal(got, want)
        r = FeatureIds.from_matrix(ranks_of(emb, ids, [3, 1]).numpy(), (3, 1))
        assert torch.equal(emb.lookup_ids(r, ranked=True), want)
    native.forget(tier_native.SOURCE)  # the next test builds (or finds) the real kernel again


@settings(max_examples=40, deadline=None)
@given(tiers=st.lists(st.integers(1, 4), min_size=1, max_size=5), batch=st.integers(1, 6),
       dim=st.sampled_from([4, 8, 12, 16, 32, 64, 128]), seed=st.integers(0, 2**16))
def test_native_pooling_sums_each_tables_tiers_in_order(tiers, batch, dim, seed):
    """The pooling after the TBE against a loop over tables, tiers added first to last (the torch
    path's order, so equal bit for bit); widths with their own unrolled loop and a generic one."""
    if tier_native.kernel() is None:
        pytest.skip("no C compiler: the fallback test covers this machine")
    out = torch.randn(batch, sum(tiers) * dim, generator=torch.Generator().manual_seed(seed)) * 1e3
    want, f = [], 0
    for k in tiers:
        acc = out[:, f * dim:(f + 1) * dim].clone()
        for j in range(1, k):
            acc = acc + out[:, (f + j) * dim:(f + j + 1) * dim]
        want.append(acc)
        f += k
    got = tier_native.pool(torch.tensor(tiers), out, batch, dim)
    assert got.shape == (batch, len(tiers), dim) and torch.equal(got, torch.stack(want, 1))
    with pytest.raises(ValueError, match="TBE output"):
        tier_native.pool(torch.tensor(tiers), out[:, :-1], batch, dim)


def test_torchscript_keeps_the_torch_ops():
    tables = [{"n": 40, "hotness": 2, "tiers": [[0.2, "fp16"]], "order": order, } for order in ("id", "rank")]
    emb, _ = build(tables, 2)
    ids = random_ids(tables, 12, torch.Generator().manual_seed(2))
    scripted = torch.jit.script(emb)
    with torch.no_grad():
        assert torch.equal(scripted(ids), emb(ids))
    assert "native_lookup" not in scripted.code


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), data=st.data())
def test_widened_16_id_directories_equal_32_id_ones(n, data):
    """An older artifact's 16-id rank directory, widened for the kernel, is the 32-id directory of
    the same members (odd word counts included), and both equal a bit-by-bit reference."""
    members = sorted(data.draw(st.sets(st.integers(0, n - 1))))
    d16, d32 = (directory(torch.tensor(members, dtype=torch.int64), n, b) for b in (16, 32))
    assert torch.equal(widen_directory(d16), d32)
    for x in range(n):  # word x >> 5: bit x & 31 says membership, bits 32+ count the members below the block
        word = int(d32[x >> 5])
        assert (word >> (x & 31)) & 1 == (x in members)
        assert word >> 32 == sum(m < (x >> 5) * 32 for m in members)


def test_artifacts_with_16_id_directories_serve_the_same():
    """A tiered table as artifacts before the "block" key store it (16-id directory words, no key)
    looks up exactly what the current 32-id form does, on the native split and the torch ops; a block
    this lowprec does not read is refused by name."""
    tables = [{"n": n, "hotness": 3, "order": "id", "tiers": [[0.1, "fp16"], [0.2, "int8"]]} for n in (70, 33)]
    emb, _ = build(tables, 5)
    old_forms = []
    for i, t in enumerate(tables):
        g = torch.Generator().manual_seed(100 + i)
        weight, counts = torch.randn(t["n"], DIM, generator=g), torch.rand(t["n"], generator=g).double()
        spec = {"kind": "tiered", "tiers": t["tiers"], "order": "id"}
        qf = quantize_form(post_training_form(dense_form(f"t{i}", weight), spec, counts, f"t{i}"),
                           TableChoice(Precision.INT4, spec), counts)
        old = copy.deepcopy(qf)
        for name, d in qf.buffers.items():
            members = torch.tensor([x for x in range(t["n"]) if (int(d[x >> 5]) >> (x & 31)) & 1])
            old.buffers[name] = directory(members, t["n"], 16)
        for group in old.groups:
            for feature in group:
                assert feature.transform.pop("block") == 32
        old_forms.append((qf, old))
    names = [(f"t{i}", t["hotness"]) for i, t in enumerate(tables)]
    rows = [t["n"] for t in tables]
    new, old = (embeddings_from_forms(DIM, names, [p[k] for p in old_forms], rows) for k in (0, 1))
    ids = random_ids(tables, 7, torch.Generator().manual_seed(3))
    f = FeatureIds.from_matrix(ids.numpy(), (3, 3))
    with torch.no_grad():
        want = new.lookup_ids(f)
        assert torch.equal(stock(new, f), want)
        assert torch.equal(stock(old, f), want)
        if tier_native.kernel() is not None:
            assert tier_native.plan_of(old) is not None
            assert torch.equal(old.lookup_ids(f), want)
    bad = copy.deepcopy(old_forms[0][1])
    bad.groups[0][0].transform["block"] = 64
    with pytest.raises(InputError, match="directory block 64"):
        embeddings_from_forms(DIM, names[:1], [bad], rows[:1])
