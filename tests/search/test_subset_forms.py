"""The emulator's subset forms (lowprec.search.subset) pool exactly what the whole-table forms pool.

The reference is the whole-table build (`Emulator.table_module(..., full=True)`: the serving
handlers' form of every row, quantized, read through the artifact's own id transforms); the subset
path must give bit-identical pooled outputs on every cached batch, for dense precisions, hot
sharing (hot rows, hashed buckets, zero-count buckets, no hot rows, remap lookups) and tiered tables.
"""

import pytest
import torch

from helpers import trained_search_setup
from lowprec.precision import Precision
from lowprec.quant import range_search_native
from lowprec.search import subset as subset_mod
from lowprec.search.sensitivity import Emulator, FloatCache
from lowprec.search.space import Option, SearchSpace, options_for
from lowprec.serve.sharing import trained_form

P = Precision


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return trained_search_setup(tmp_path_factory.mktemp("subset"), 1500, (600, 40, 8), 1)


def hot(ratio, **extra):
    return tuple(sorted({"kind": "hot", "ratio": ratio, **extra}.items()))


def tiered(*tiers):
    return (("kind", "tiered"), ("tiers", tuple(tiers)))


OPTIONS = [  # (table, precision, sharing, range method)
    ("t0", P.INT4, None, "l2"), ("t0", P.INT2, None, "minmax"), ("t0", P.FP8, None, "l2"),
    ("t0", P.FP32, hot(4.0), "l2"), ("t0", P.INT4, hot(4.0), "l2"), ("t0", P.INT2, hot(16.0), "l2"),
    ("t0", P.INT8, hot(16.0), "minmax"), ("t0", P.INT4, hot(4.0, hot=0.0), "l2"),
    ("t0", P.INT4, hot(8.0, lookup="remap", seed=7), "l2"), ("t0", P.FP16, hot(64.0, hot=0.9), "l2"),
    ("t1", P.INT4, hot(4.0), "l2"),  # two ids a row (multi-hot bags)
    ("t0", P.INT2, tiered((0.05, "fp16")), "l2"), ("t0", P.INT4, tiered((0.02, "fp16"), (0.2, "int8")), "l2"),
    ("t1", P.INT2, tiered((0.1, "fp32")), "minmax"),
]


def full_pooled(emu: Emulator, o: Option, rm: str) -> list[torch.Tensor]:
    """The reference: the whole table's form, looked up by the logical ids."""
    t = emu.names.index(o.name)
    emb = emu.table_module(o, rm, full=True)
    with torch.inference_mode():
        return [emb(b.sparse[t])[:, 0] for b in emu.cache.batches]


def sparse_counts(calib):
    """Calibration counts with 90% of t0's rows never accessed: most hot-sharing buckets of t0 then
    hold only unaccessed rows (the plain-mean branch) and L2 ranges skip those rows."""
    counts = {k: v.clone() for k, v in calib["row_counts"].items()}
    keep = torch.arange(len(counts["t0"])) % 10 == 0
    counts["t0"] = torch.where(keep, counts["t0"], torch.zeros_like(counts["t0"]))
    return {**calib, "row_counts": counts}


@pytest.mark.parametrize("zeroed", [False, True])
def test_subset_pools_exactly_what_the_whole_table_pools(setup, zeroed):
    _, ds, model, calib = setup
    calib = sparse_counts(calib) if zeroed else calib
    # 200 cached rows: a subset of t0's 600 ids, so buckets are reached partly
    emu = Emulator(model, FloatCache(model, ds, [3], 200, batch_size=128), calib)
    assert len(emu.cache.batches) == 2 and len(emu._touched(0)) < 300
    smaller = 0
    for name, p, sharing, rm in OPTIONS:
        o = Option(f"table:{name}", p, sharing)
        got = emu.table_pooled(o, rm)
        want = full_pooled(emu, o, rm)
        assert all(g.abs().sum() > 0 for g in got), o.key  # the lookups reach non-zero rows
        for g, w in zip(got, want):
            assert torch.equal(g, w), (o.key, rm, float((g - w).abs().max()))
        rows = sum(r.shape[0] for _, r in emu.table_form(o, rm).physical)
        smaller += rows < sum(r.shape[0] for _, r in emu.table_form(o, rm, full=True).physical)
    assert smaller >= 8  # the subset forms of t0 hold fewer rows than the whole table


def test_run_scores_hot_options_like_the_whole_table(setup):
    """Through `run_paired` (what the search measures), subset and whole-table forms agree."""
    _, ds, model, calib = setup
    opts = [Option("table:t0", P.INT4, hot(4.0)), Option("table:t1", P.INT2, tiered((0.1, "fp16")))]
    emu = Emulator(model, FloatCache(model, ds, [3], 300, batch_size=128), calib)
    ref = Emulator(model, emu.cache, calib)
    for o in opts:  # the reference emulator's pooled outputs from the whole-table forms
        ref._pooled[o.key] = full_pooled(ref, o, "l2")
    got, want = emu.run_paired(opts, "l2"), ref.run_paired(opts, "l2")
    assert got[0].summary() == want[0].summary() and got[1] == want[1]


def test_rows_ranked_once_per_table(setup, monkeypatch):
    """Every hot and tiered option of a table reads one ranking of its rows (not one per option)."""
    _, ds, model, calib = setup
    ranked = []
    real = subset_mod._Ranked.__init__
    monkeypatch.setattr(subset_mod._Ranked, "__init__",
                        lambda self, counts, touched: ranked.append(len(counts)) or real(self, counts, touched))
    space = SearchSpace(sharing_ratios=(4.0, 16.0), sharing_min_rows=100,
                        tier_layouts=("0.05:fp16/int2", "0.02:fp16,0.2:int8/int4"))
    items = options_for(model.config, space, sharing=True)
    shared = [o for o in items["table:t0"] if o.sharing]
    assert len(shared) == 6
    emu = Emulator(model, FloatCache(model, ds, [3], 200, batch_size=128), calib)
    for o in shared:
        emu.table_pooled(o, "l2")
    assert ranked == [600]


def test_subset_rows_take_the_whole_builds_range_search_backend(setup):
    """The L2 range search picks its backend by the values it searches at once (compiled for large
    tables; the backends differ on near-tie rows), so each subset records the whole build's size per
    physical table: the full form's rows (every row searched) or, for a dense table, its accessed rows."""
    _, ds, model, calib = setup
    emu = Emulator(model, FloatCache(model, ds, [3], 200, batch_size=128), calib)
    for name, p, sharing, rm in OPTIONS:
        o = Option(f"table:{name}", p, sharing)
        t = emu.names.index(name)
        emu.table_form(o, rm)
        counts = calib["row_counts"][name]
        sub = emu._subsets.subset(t, name, trained_form(model.embeddings[t], model.config.tables[t]),
                                  o.sharing_dict(), counts, emu._touched(t))
        full = emu.table_form(o, rm, full=True)
        if sharing is None:
            want = {full.physical[0][0].key: int((counts > 0).sum()) * full.physical[0][0].dim}
        else:
            want = {tab.key: tab.rows * tab.dim for tab, _ in full.physical}
        assert sub.whole == want, o.key
        # the C kernel searches each row alone (any size); without it tables this small stay eager
        assert set(sub.backends().values()) == ({"native"} if range_search_native.kernel() else {"eager"})
