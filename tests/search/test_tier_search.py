"""Tier layouts as search options: priced as the artifact stores them, measured (sensitivity and
lookup time) and chosen like any option, under both objectives."""

import json
import re
import warnings

import pytest

from helpers import trained_search_setup
from lowprec.checkpoint.convert import convert
from lowprec.errors import InputError, InputWarning
from lowprec.plan import Plan
from lowprec.search import explain
from lowprec.search import run as search_run
from lowprec.search.solver import Budget
from lowprec.search.space import SearchSpace, options_for, plan_from_options
from lowprec.serve.tiers import parse_layout

LAYOUTS = ("0.05:fp16/int2", "0.02:fp16,0.2:int8/int4")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return trained_search_setup(tmp_path_factory.mktemp("tiersearch"), 1500, (600, 40, 8), 1)


def test_layouts_parse_and_refuse():
    spec, cold = parse_layout("0.02:fp16,0.1:int8/int2")
    assert spec == {"kind": "tiered", "tiers": [[0.02, "fp16"], [0.1, "int8"]]} and cold.value == "int2"
    for bad in ("0.02:fp16", "0.02/int4", "x:fp16/int4", "0.9:fp16,0.2:int8/int4", "0.1:int3/int4"):
        with pytest.raises(InputError):
            parse_layout(bad)
    with pytest.raises(InputError, match="tier-layouts"):
        SearchSpace(tier_layouts=("0.1:fp16",))
    # QA 6d item 7: hot rows less precise than cold ones, or as precise, were accepted
    for bad, says in (("0.02:int2/fp32", "tier 0 (int2) is less precise than the cold tier (fp32)"),
                      ("0.02:fp32/fp32", "tier 0 (fp32) is as precise as the cold tier"),
                      ("0.02:int4,0.1:fp16/int2", "tier 0 (int4) is less precise than tier 1 (fp16)")):
        with pytest.raises(InputError, match=re.escape(says)):
            parse_layout(bad)
    parse_layout("0.02:fp8/int8")  # (as many bits, another format: allowed)
    # the same rule for a plan file's tiered table (its precision is the cold tier's: QA 7 item 2)
    plan = {"format": "lowprec-plan", "version": 1, "layers": {"*": {"precision": "fp32"}},
            "tables": {"t0": {"precision": "fp32", "sharing": {"kind": "tiered", "tiers": [[0.02, "int2"]]}}}}
    with pytest.raises(InputError, match=re.escape("tier 0 (int2) is less precise than the cold tier (fp32)")):
        Plan.from_json(plan, "plan.json")
    Plan.from_json(plan, "manifest.json", tier_order=False)  # a deployed artifact's plan: kept as converted
    plan["tables"]["t0"]["precision"] = "int2"
    plan["tables"]["t0"]["sharing"]["tiers"] = [[0.02, "fp16"]]
    Plan.from_json(plan, "plan.json")


def test_tier_options_cost_what_the_artifact_stores(setup, tmp_path):
    root, _, model, calib = setup
    items = options_for(model.config, SearchSpace(tier_layouts=LAYOUTS, sharing_min_rows=100), sharing=True)
    tiered = [o for o in items["table:t0"] if o.sharing and dict(o.sharing)["kind"] == "tiered"]
    assert len(tiered) == 2 and not any(o.sharing for o in items["table:t1"])  # 40 rows: not worth tiering
    for o in tiered:
        chosen = {k: v[0] for k, v in items.items()} | {"table:t0": o}
        manifest = convert(root / "model", plan_from_options(chosen, "l2"), tmp_path / str(len(o.key)), calib)
        assert next(t for t in manifest["tables"] if t["name"] == "t0")["bytes"] == o.bytes


def test_a_layout_that_leaves_a_tier_empty_is_not_offered_on_that_table(setup):
    """QA 3b item 2: a tier whose share rounds to 0 rows was offered (and picked) on every table: the
    plain cold precision plus a rank directory for nothing. Now such a (table, layout) is skipped,
    and a layout skipped on every table is said once."""
    _, _, model, _ = setup
    space = SearchSpace(tier_layouts=("0.01:fp16/int4", "0.0005:fp16/int4"), sharing_min_rows=30)
    items = options_for(model.config, space, sharing=True)
    tiers = {t: [dict(o.sharing)["tiers"] for o in items[f"table:{t}"] if o.sharing] for t in ("t0", "t1")}
    assert tiers == {"t0": [((0.01, "fp16"),)], "t1": []}  # 6 of t0's 600 rows; 0.4 of t1's 40: none
    with pytest.warns(InputWarning) as seen:
        explain.warn_unused_sharing(model.config, space, items, counted=True)
    (w,) = seen
    assert "'0.0005:fp16/int4' is not considered" in str(w.message) and "'t0', has 600 rows" in str(w.message)
    # tiers that take every row leave the cold tier empty: fp16 rows plus an id map, never offered
    space = SearchSpace(tier_layouts=("1:fp16/int4", "0.5:fp16,0.5:int8/int4", "0.5:fp16/int4"), sharing_min_rows=30)
    items = options_for(model.config, space, sharing=True)
    assert [dict(o.sharing)["tiers"] for o in items["table:t0"] if o.sharing] == [((0.5, "fp16"),)]
    with pytest.warns(InputWarning) as seen:
        explain.warn_unused_sharing(model.config, space, items, counted=True)
    assert len(seen) == 2 and all("leaving its cold tier (int4) empty" in str(w.message) for w in seen)


@pytest.mark.parametrize("objective", ["bytes", "latency"])
def test_search_measures_and_may_choose_tiers(setup, tmp_path, objective):
    root, ds, model, calib = setup
    space = SearchSpace(tier_layouts=LAYOUTS, sharing_min_rows=100)
    cfg = search_run.SearchConfig((2,), (3,), Budget(0.01, 0.01), space, objective=objective)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # id-order layouts: nothing to say about ranked timing
        result = search_run.search(root / "model", model, ds, cfg, calib, "c", tmp_path / "c.json")
    keys = [o.key for o in result.items["table:t0"] if o.sharing]
    assert len(keys) == 2 and all(k in result.sensitivity for k in keys)  # each tier layout measured
    assert result.validation is not None and result.validation.fits(0.01, 0.01)
    t0 = result.plan.table("t0")
    if t0.sharing is not None:  # a chosen layout converts to the artifact the search priced
        manifest = convert(root / "model", result.plan, tmp_path / "art", calib)
        assert next(t for t in manifest["tables"] if t["name"] == "t0")["sharing"]["kind"] == "tiered"


def test_rank_ordered_layouts_keep_their_order_and_are_timed_on_ranks(setup, tmp_path, monkeypatch):
    """'.../rank' layouts: the option (and so the plan and artifact) keeps "order": "rank", and the
    latency objective times it on ids renumbered through its rank map (lookup_ids(..., ranked=True);
    that ranks give the raw ids' lookups is tests/serve/test_tier_native.py's)."""
    from lowprec.serve.runtime import QuantizedEmbeddings

    root, ds, model, calib = setup
    items = options_for(model.config, SearchSpace(tier_layouts=("0.05:fp16/int2/rank",), sharing_min_rows=100),
                        sharing=True)
    (opt,) = [o for o in items["table:t0"] if o.sharing]
    assert opt.sharing_dict()["order"] == "rank"
    chosen = {k: v[0] for k, v in items.items()} | {"table:t0": opt}
    manifest = convert(root / "model", plan_from_options(chosen, "l2"), tmp_path / "art", calib)
    assert next(t for t in manifest["tables"] if t["name"] == "t0")["sharing"]["order"] == "rank"

    seen, real, timing = [], QuantizedEmbeddings.lookup_ids, []
    real_costs = search_run.measure_costs

    def recording(self, ids, ranked=False):
        if timing:  # only the latency timings (not validation's lookups)
            seen.append((bool(self.rank_maps()), ranked))
        return real(self, ids, ranked)

    def costs(*args, **kwargs):
        timing.append(1)
        try:
            return real_costs(*args, **kwargs)
        finally:
            timing.clear()

    monkeypatch.setattr(QuantizedEmbeddings, "lookup_ids", recording)
    monkeypatch.setattr(search_run, "measure_costs", costs)
    monkeypatch.setenv("LOWPREC_CACHE", str(tmp_path / "cache"))  # nothing timed before
    space = SearchSpace(tier_layouts=("0.05:fp16/int2/rank",), sharing_min_rows=100)
    cfg = search_run.SearchConfig((2,), (3,), Budget(0.01, 0.01), space, objective="latency")
    with pytest.warns(InputWarning, match=r"0.05:fp16/int2/rank are timed on ranked ids.*without '/rank'"):
        result = search_run.search(root / "model", model, ds, cfg, calib, "c", tmp_path / "c.json")
    assert result.validation is not None
    assert {ranked for is_ranked, ranked in seen if is_ranked} == {True}  # the rank layout timed on ranks
    assert {ranked for is_ranked, ranked in seen if not is_ranked} == {False}  # every other option on ids



@pytest.mark.parametrize("pays", [True, False])
def test_latency_search_picks_a_tier_where_it_pays_and_not_elsewhere(setup, tmp_path, monkeypatch, pays):
    """With measured costs where t0's rank-ordered tier layout is its fastest option (as on aligned
    full-scale artifacts, reports/tiered.md), a latency search under a memory budget that excludes
    fp16/fp32 for t0 takes the tiers; where the layout is slower than int4 it takes int4 instead."""
    root, ds, model, calib = setup
    layout = "0.05:fp16/int4/rank"
    space = SearchSpace(tier_layouts=(layout,), sharing_min_rows=100)
    items = options_for(model.config, space, sharing=True)

    def costs(emulator, items, range_method):
        out = {}
        for opts in items.values():
            for o in opts:
                if o.kind == "layer":
                    out[o.key] = 50.0
                elif o.name != "t0":
                    out[o.key] = 10.0
                else:  # t0: int4 slowest of the plain precisions; the tiers faster than all, or not
                    out[o.key] = ({"fp32": 200.0, "fp16": 150.0, "int8": 180.0, "int4": 220.0, "int2": 240.0,
                                   "fp8": 400.0}[o.precision.value] if o.sharing is None else (100.0 if pays else 300.0))
        return out
    monkeypatch.setattr(search_run, "measure_costs", costs)
    t0_opts = {o.key.split("|", 1)[1]: o.bytes for o in items["table:t0"]}
    rest = sum(min(o.bytes for o in opts) for item, opts in items.items() if item != "table:t0")
    tier_bytes = next(b for k, b in t0_opts.items() if "tiered" in k)
    budget = rest + max(tier_bytes, t0_opts["int4"]) + 1
    assert t0_opts["fp16"] + rest > budget  # fp16 (and fp32) do not fit for t0, whatever the rest takes
    cfg = search_run.SearchConfig((2,), (3,), Budget(0.01, 0.01, memory_bytes=budget), space, objective="latency",
                                  time_whole=False)
    result = search_run.search(root / "model", model, ds, cfg, calib)
    t0 = result.plan.table("t0")
    assert result.validation is not None and result.validation.fits(0.01, 0.01)
    if pays:
        assert json.loads(json.dumps(t0.sharing)) == json.loads(json.dumps(parse_layout(layout)[0]))
        assert t0.precision.value == "int4"
    else:
        assert t0.sharing is None and t0.precision.value not in ("fp16", "fp32")  # a plain table that fits
