"""Precision search: solver optimality, byte costs, emulator fidelity, resume, CLI and report."""

import itertools
import json
import os
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import trained_search_setup
from lowprec.checkpoint.artifact import load_artifact
from lowprec.checkpoint.convert import convert
from lowprec.cli import main
from lowprec.errors import InputError, InputWarning
from lowprec.evaluation.scoring import evaluate
from lowprec.plan import Plan
from lowprec.precision import Precision
from lowprec.recipe import load_recipe, parse_fraction, resolve_windows
from lowprec.search import run as search_run
from lowprec.search import whole as whole_check
from lowprec.search.sensitivity import Emulator, FloatCache
from lowprec.search.solver import Budget, Sensitivity, solve
from lowprec.search.space import Option, SearchSpace, options_for, plan_from_options


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return trained_search_setup(tmp_path_factory.mktemp("search"), 3000, (300, 40, 8), 3)


def test_milp_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(20):
        items = {}
        sens = {}
        for i in range(4):
            opts = []
            for j, p in enumerate([Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4]):
                o = Option(f"table:t{i}", p, None, int(1000 / (j + 1)) + int(rng.integers(0, 50)))
                opts.append(o)
                sens[o.key] = Sensitivity(0.0 if j == 0 else float(rng.random() * 0.001 * j),
                                          0.0 if j == 0 else float(rng.random() * 0.001 * j))
            items[f"table:t{i}"] = opts
        budget = Budget(0.0015, 0.0015)
        chosen = solve(items, sens, budget)
        best = min((c for c in itertools.product(*items.values())
                    if sum(sens[o.key].d_ne for o in c) <= 0.0015 and sum(sens[o.key].d_auc for o in c) <= 0.0015),
                   key=lambda c: sum(o.bytes for o in c))
        assert sum(o.bytes for o in chosen.values()) == sum(o.bytes for o in best), trial


def test_highs_debug_line_is_dropped_and_other_output_kept(capfd):
    """The solver's C-level stdout/stderr filter: HiGHS's stray debug line goes, anything else stays."""
    from lowprec.search.solver import HIGHS_DEBUG_LINE, highs_debug_line_dropped

    with highs_debug_line_dropped():
        for fd in (1, 2):
            os.write(fd, HIGHS_DEBUG_LINE + f"\nkept {fd}\n".encode() + HIGHS_DEBUG_LINE + b"\n")
    os.write(2, b"after\n")
    out, err = capfd.readouterr()
    assert (out, err) == ("kept 1\n", "kept 2\nafter\n")


def test_memory_budget_infeasible_is_input_error():
    o = Option("table:t", Precision.FP32, None, 10_000)
    with pytest.raises(InputError, match="within --memory-budget 1,000 bytes"):
        solve({"table:t": [o]}, {o.key: Sensitivity(0, 0)}, Budget(0.1, 0.1, memory_bytes=1000))


def test_a_memory_budget_the_unconstrained_plan_meets_returns_a_plan_within_it(setup, monkeypatch):
    """The plan a search returns without a memory budget meets a budget of its own bytes, so the same
    search under that budget must return a plan within every budget. Here the solve at m / 4 after
    the first failed round holds no plan within it (a search used to end there: "no plan meets the
    budgets"); the loop moves to the least multiplier that holds one instead."""
    from lowprec.errors import InputError

    root, ds, model, calib = setup
    budget = Budget(0.002, 0.002)
    free = search_run.search(root / "model", model, ds, search_run.SearchConfig((2,), (3,), budget), calib)
    memory = free.plan.info.total_bytes
    assert free.validation is not None and memory < sum(v[0].bytes for v in free.items.values())
    infeasible, real_solve = [], search_run.solve

    def solve(*args, **kwargs):
        try:
            return real_solve(*args, **kwargs)
        except InputError:
            infeasible.append(args[-1])
            raise
    monkeypatch.setattr(search_run, "solve", solve)
    cfg = search_run.SearchConfig((2,), (3,), replace(budget, memory_bytes=memory))
    result = search_run.search(root / "model", model, ds, cfg, calib)
    assert infeasible  # the case under test: a multiplier that holds no plan within the memory budget
    assert result.plan.info.total_bytes <= memory and result.message is None
    assert result.validation.fits(budget.max_ne_increase, budget.max_auc_drop)
    assert result.plan.info.budgets.memory_bytes == memory


def test_option_bytes_equal_artifact_bytes(setup, tmp_path):
    root, ds, model, calib = setup
    space = SearchSpace(sharing_ratios=(4.0,))
    items = options_for(model.config, space, sharing=True)
    for item in ("table:t0",):
        for o in items[item]:
            chosen = {k: v[0] for k, v in items.items()}
            chosen[item] = o
            manifest = convert(root / "model", plan_from_options(chosen, "l2"), tmp_path / o.key.replace("|", "_"), calib)
            table = next(t for t in manifest["tables"] if t["name"] == "t0")
            assert table["bytes"] == o.bytes, o.key
    layer_items = {k: v for k, v in items.items() if k.startswith("layer:")}
    chosen = {k: v[0] for k, v in items.items()} | {k: v[-1] for k, v in layer_items.items()}
    manifest = convert(root / "model", plan_from_options(chosen, "l2"), tmp_path / "layers", calib)
    assert manifest["layer_bytes"] == sum(v[-1].bytes for v in layer_items.values())


def test_emulator_scores_like_the_real_artifact(setup, tmp_path):
    root, ds, model, calib = setup
    emu = Emulator(model, FloatCache(model, ds, [3], 10**9), calib)
    items = options_for(model.config, SearchSpace())
    chosen = {"table:t0": items["table:t0"][3], "table:t1": items["table:t1"][4],
              "table:t2": items["table:t2"][1], "layer:bottom.0": items["layer:bottom.0"][2],
              "layer:top.1": items["layer:top.1"][1]}
    full = {k: v[0] for k, v in items.items()} | chosen
    emulated = emu.run(list(chosen.values()), "l2")
    convert(root / "model", plan_from_options(full, "l2"), tmp_path / "a", calib)
    runtime, _ = load_artifact(tmp_path / "a")
    real = evaluate(runtime, ds, [3]).overall
    assert emulated.ne == pytest.approx(real.ne, rel=1e-5)
    assert emulated.auc == pytest.approx(real.auc, abs=1e-5)


def test_search_meets_budget_and_resumes(setup, tmp_path, monkeypatch):
    root, ds, model, calib = setup
    cfg = search_run.SearchConfig((2,), (3,), Budget(0.001, 0.001), SearchSpace(sharing_ratios=(4.0,)))
    cache = tmp_path / "plan.cache.json"
    calls, interrupt = [], [True]
    real_run = Emulator.run_paired  # sensitivity measurements (with their noise)

    def counting(self, options, rm="l2"):
        calls.append(len(options))
        if interrupt[0] and len(calls) == 5:
            interrupt[0] = False
            raise KeyboardInterrupt  # interrupted mid-sensitivity, after 4 flushed measurements
        return real_run(self, options, rm)

    monkeypatch.setattr(Emulator, "run_paired", counting)
    with pytest.raises(KeyboardInterrupt):
        search_run.search(root / "model", model, ds, cfg, calib, "c", cache)
    assert len(json.loads(cache.read_text())["measurements"]) == 4
    calls.clear()
    result = search_run.search(root / "model", model, ds, cfg, calib, "c", cache)
    measured = sum(len(v) for v in result.items.values()) - len(result.items) + 1
    assert len(calls) == measured - 4  # the 4 cached measurements were not redone
    v = result.validation
    assert v is not None and v.fits(0.001, 0.001)
    assert result.plan.info.table_bytes < sum(v[0].bytes for k, v in result.items.items() if k.startswith("table:"))
    assert result.evaluations <= 2 * len(result.items) * 5


def test_cli_search_writes_plan_report_and_json(setup, tmp_path):
    root, _, _, _ = setup
    r = CliRunner().invoke(main, ["search", "--model", str(root / "model"), "--data", str(root / "data"),
                                  "--calib-windows", "2", "--eval-windows", "3", "--out", str(tmp_path / "plan.json"),
                                  "--max-ne-increase", "0.1%", "--max-auc-drop", "0.001",
                                  "--report", str(tmp_path / "rep"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["ne_increase"] <= 0.001 and out["auc_drop"] <= 0.001
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["format"] == "lowprec-plan" and plan["validated"]["ne_increase"] == out["ne_increase"]
    html = (tmp_path / "rep" / "index.html").read_text()
    for fig in ("sensitivity.png", "frontier.png"):
        assert fig in html and (tmp_path / "rep" / fig).stat().st_size > 1000
    r = CliRunner().invoke(main, ["convert", "--model", str(root / "model"), "--plan", str(tmp_path / "plan.json"),
                                  "--out", str(tmp_path / "a"), "--json"])
    assert r.exit_code == 0, r.output
    # one compression ratio: the search's is the tables' ratio the artifact reports
    converted = json.loads(r.output.strip().splitlines()[-1])
    assert out["compression"] == pytest.approx(converted["compression"], rel=1e-12)
    assert out["total_compression"] == pytest.approx(out["fp32_bytes"] / out["total_bytes"])
    # the validated calibration gap (drift judges its calibration alarm against it) is the artifact's
    # mean prediction over the float model's on the evaluation window: calibration = Σp / Σy
    calib = {}
    for name, path in (("float", root / "model"), ("plan", tmp_path / "a")):
        e = CliRunner().invoke(main, ["eval", "--model", str(path), "--data", str(root / "data"), "--windows", "3",
                                      "--json"])
        calib[name] = json.loads(e.output.strip().splitlines()[-1])["calibration"]
    # (to 3e-4: eval's batches differ from validation's, and dynamic int8 activation ranges follow the batch)
    assert plan["validated"]["calibration_gap"] != 0
    assert plan["validated"]["calibration_gap"] == pytest.approx(calib["plan"] / calib["float"] - 1, abs=3e-4)


def test_overlapping_windows_and_bad_recipe_exit_2(setup, tmp_path):
    root, _, _, _ = setup
    args = ["search", "--model", str(root / "model"), "--data", str(root / "data"), "--out", str(tmp_path / "p.json")]
    r = CliRunner().invoke(main, args + ["--calib-windows", "2", "--eval-windows", "2-3"])
    assert r.exit_code == 2 and "overlap" in r.output
    bad = tmp_path / "r.toml"
    bad.write_text("[windows]\ncalibrate = '2'\n[budgets]\nmax_ne = 1\n")
    r = CliRunner().invoke(main, args + ["--recipe", str(bad)])
    assert r.exit_code == 2 and "max_ne" in r.output


def test_recipe_values_and_label_windows(setup, tmp_path):
    _, ds, _, _ = setup
    assert parse_fraction("0.1%", "x") == pytest.approx(0.001) and parse_fraction(0.002, "x") == 0.002
    assert resolve_windows("label:w1..w2", ds.meta, "evaluate", "--eval-windows") == [1, 2]
    assert resolve_windows("0-1", ds.meta, "evaluate", "--eval-windows") == [0, 1]
    with pytest.raises(InputError, match="^--eval-windows: 'label:1999' matches no window label"):
        resolve_windows("label:1999", ds.meta, "evaluate", "--eval-windows")
    for recipe in ("movielens", "synthetic", "criteo-kaggle"):
        assert load_recipe(f"calibration/{recipe}.toml")["windows"]["calibrate"]


def test_latency_objective_times_options_and_caches_them(setup, tmp_path, monkeypatch):
    root, ds, model, calib = setup
    monkeypatch.setenv("LOWPREC_CACHE", str(tmp_path / "cache"))
    built = []  # each table option's module is built once for timing, outside the timed calls
    real = Emulator.table_module
    monkeypatch.setattr(Emulator, "table_module",
                        lambda self, o, rm, full=False: built.append((o.key, full)) or real(self, o, rm, full))
    cfg = search_run.SearchConfig((2,), (3,), Budget(0.001, 0.001), SearchSpace(), objective="latency")
    result = search_run.search(root / "model", model, ds, cfg, calib)
    cached = json.loads((tmp_path / "cache" / "latency.json").read_text())
    table_options = [o.key for opts in result.items.values() for o in opts if o.kind == "table"]
    timed = [k for k, full in built if full and k in table_options]  # the timing pass builds full size
    # once for its timing (not once per timed call); sensitivity and, after a rejected round, the
    # leave-one-out emulation build the (cached-rows) modules too, which is not what this counts
    assert sorted(timed) == sorted(table_options)
    assert len(cached) == sum(len(v) for v in result.items.values())
    assert all(v > 0 for v in cached.values())
    assert result.plan.info.predicted_latency_us > 0 and result.validation.fits(0.001, 0.001)
    # the report shows each chosen item's time beside its fp32 time and its fastest option's
    from lowprec.search.driver import summarize
    from lowprec.search.report import write_report

    text = write_report(result, summarize(result, model), tmp_path / "rep").parent.joinpath("report.md").read_text()
    assert f"{result.plan.info.predicted_latency_us:,.0f} us against" in text
    assert "| item | choice | bytes | fp32 bytes | NE alone | AUC drop alone | us | fp32 us | fastest (us) |" in text
    item, o = next(iter(result.chosen.items()))
    assert f"| {item} | {o.key.split('|', 1)[1]} |" in text and f"{result.cost[o.key]:,.1f}" in text
    # other traffic (window 1's ids, same batch shape) is timed afresh: a table's cost depends on
    # its ids (before the ids were in the key, a 20-id-bag search reused one-hot timings)
    built.clear()
    search_run.search(root / "model", model, ds, replace(cfg, calib_windows=(1,)), calib)
    again = json.loads((tmp_path / "cache" / "latency.json").read_text())
    assert sorted(k for k, full in built if full and k in table_options) == sorted(table_options)
    assert len(again) == len(cached) + len(table_options)


def test_latency_search_times_plans_whole_and_takes_a_faster_uniform_plan(setup, tmp_path, monkeypatch):
    """The searched plan is timed whole beside the uniform plans that fit the budgets by prediction;
    one >= 3% faster (paired per repeat) that validates replaces it, as one more round."""
    root, ds, model, calib = setup
    monkeypatch.setenv("LOWPREC_CACHE", str(tmp_path / "cache"))
    cfg = search_run.SearchConfig((2,), (3,), Budget(0.001, 0.001), SearchSpace(), objective="latency")
    real = search_run.search(root / "model", model, ds, cfg, calib, scratch=tmp_path / "scratch")
    whole = real.plan.info.measured_latency_us  # the real path: each plan converted, loaded, called
    assert whole is not None and all(v > 0 for v in whole.values())
    alts = set(whole) - {"searched"}
    assert "searched" in whole and alts and all(n.split()[0] == "uniform" for n in alts)
    swapped = [r for r in real.rounds if "timed_whole" in r]  # this machine may find one faster: then it is taken
    assert all(r["timed_whole"].split(":")[0] in alts for r in swapped)
    assert not (tmp_path / "scratch").exists()  # the converted plans are gone
    assert json.loads(json.dumps(real.plan.to_json()))["measured_latency_us"] == whole
    assert set(real.plan.info.whole_speedup) == alts and all(r > 0 for r in real.plan.info.whole_speedup.values())
    assert Plan.from_json(json.loads(json.dumps(real.plan.to_json()))).info.whole_speedup == real.plan.info.whole_speedup
    name = sorted(alts)[0]
    precision = name.split()[1]

    def fake(times):
        def time_plans(model_dir, plans, calibration, batches, hotness, scratch, repeats=9):
            assert set(plans) == set(whole)
            return {n: [times.get(n, 100.0)] * 3 for n in plans}
        return time_plans
    monkeypatch.setattr(whole_check, "time_plans", fake({"searched": 100.0, name: 50.0}))
    faster = search_run.search(root / "model", model, ds, cfg, calib)
    assert {o.precision.value for item, o in faster.chosen.items() if item.startswith("table:")} == {precision}
    assert "timed whole" in faster.rounds[-1]["timed_whole"] and faster.rounds[-1]["fits"]
    assert faster.validation.fits(0.001, 0.001) and faster.plan.info.measured_latency_us[name] == 50.0
    assert faster.plan.info.whole_speedup[name] == 2.0  # the paired ratio the 3% margin was applied to
    from lowprec.search.driver import summarize
    from lowprec.search.report import write_report

    text = write_report(faster, summarize(faster, model), tmp_path / "rep").parent.joinpath("report.md").read_text()
    assert "searched 100 us" in text and f"{name} 50 us" in text
    assert f"{name} ran 2.00x the searched plan's speed" in text
    monkeypatch.setattr(whole_check, "time_plans", fake({"searched": 100.0, name: 98.0}))  # within 3%: kept
    kept = search_run.search(root / "model", model, ds, cfg, calib)
    assert not any("timed_whole" in r for r in kept.rounds) and kept.plan.info.measured_latency_us[name] == 98.0
    assert kept.plan.info.whole_speedup[name] == pytest.approx(100 / 98, abs=1e-4)
    # the searched plan kept (a uniform plan equal to it is never an alternative)
    assert {o.precision.value for item, o in kept.chosen.items() if item.startswith("table:")} != {precision}


def test_whole_plan_timing_is_skipped_when_off_or_the_disk_is_short(setup, tmp_path, monkeypatch):
    from collections import namedtuple

    root, ds, model, calib = setup
    monkeypatch.setenv("LOWPREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(whole_check, "time_plans", lambda *a, **k: pytest.fail("timed although off"))
    cfg = search_run.SearchConfig((2,), (3,), Budget(0.001, 0.001), SearchSpace(), objective="latency",
                                  time_whole=False)
    assert search_run.search(root / "model", model, ds, cfg, calib).plan.info.measured_latency_us is None
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(whole_check.shutil, "disk_usage", lambda where: usage(10**6, 10**6 - 1000, 1000))
    with pytest.warns(InputWarning, match="plans not timed whole: converting them needs"):
        short = search_run.search(root / "model", model, ds, replace(cfg, time_whole=True), calib)
    assert short.plan.info.measured_latency_us is None


def test_latency_timing_skips_a_fresh_modules_slow_first_calls(monkeypatch):
    """A call costs 1 unit (here: 1 ms of fake clock) only after WARMUP_CALLS slow first calls of
    100 units each, as a freshly built table does: the timed median sees the steady cost alone."""
    from lowprec.search import latency

    clock, calls = [0.0], [0]

    def fn():
        calls[0] += 1
        clock[0] += 0.1 if calls[0] <= latency.WARMUP_CALLS else 0.001

    monkeypatch.setattr(latency, "time", type("FakeTime", (), {"perf_counter": staticmethod(lambda: clock[0])}))
    us = latency._median_us(fn, 5)
    assert calls[0] == latency.WARMUP_CALLS + 5 and us == pytest.approx(1000.0)


def test_table_latency_is_the_batch_minus_one_sample(setup, tmp_path, monkeypatch):
    """A table option's cost is its marginal time in a model call: the batch's lookup minus its
    first sample's (the call's fixed cost is paid once per model call, not once per table). With
    a lookup time of 30 us fixed + 0.01 us an id, a table option costs 0.01 us x its ids in B - 1 samples."""
    from lowprec.search import latency
    from lowprec.serve.runtime import QuantizedEmbeddings

    root, ds, model, calib = setup
    monkeypatch.setenv("LOWPREC_CACHE", str(tmp_path / "cache"))
    last = []
    real = QuantizedEmbeddings.lookup_ids
    monkeypatch.setattr(QuantizedEmbeddings, "lookup_ids",
                        lambda self, ids, ranked=False: last.append(ids.indices.numel()) or real(self, ids, ranked))

    def median_us(fn, repeats):
        last.clear()
        fn()
        return 30.0 + 0.01 * last[-1] if last else 7.0  # tables: affine in the ids; layers: 7 us
    monkeypatch.setattr(latency, "_median_us", median_us)
    cfg = search_run.SearchConfig((2,), (3,), Budget(0.001, 0.001), SearchSpace(), objective="latency")
    result = search_run.search(root / "model", model, ds, cfg, calib)
    cached = json.loads((tmp_path / "cache" / "latency.json").read_text())
    hot = {t.name: t.hotness for t in model.config.tables}
    for key, us in cached.items():
        if key.endswith("|marginal"):  # B samples of `hotness` ids, minus the first sample's
            b, name = int(key.split("|b=")[1].split("|")[0]), key.split("|table:")[1].split("|")[0]
            want = 0.01 * hot[name] * (b - 1)
        else:
            want = 7.0
        assert us == pytest.approx(want), key
    assert result.plan.info.predicted_latency_us > 0


def _fits_everything():
    """A validation inside any budget, on the point estimate and the interval."""
    from lowprec.plan import Validation

    return Validation(0.0, (0.0, 0.0), 0.0, (0.0, 0.0), 0.5, 0.7, 0.5, 0.7, 0, 0, 1000)


@pytest.mark.parametrize("objective", ["bytes", "latency"])
def test_refine_returns_the_cheapest_validated_plan_by_the_objective(objective):
    """Two plans validate: {L int8, T int2} (fewest bytes) and, with more budget, {L int8, T fp16}
    (fastest). The latency objective must return the fastest, the bytes objective the smallest."""
    L, T = "layer:L", "table:T"
    opts = {L: [Option(L, Precision.FP32, bytes=100), Option(L, Precision.INT8, bytes=25)],
            T: [Option(T, Precision.FP32, bytes=1000), Option(T, Precision.FP16, bytes=500),
                Option(T, Precision.INT2, bytes=100)]}
    loss = {f"{L}|fp32": 0.0, f"{L}|int8": 0.4, f"{T}|fp32": 0.0, f"{T}|fp16": 1.0, f"{T}|int2": 0.0}
    micros = {f"{L}|fp32": 10.0, f"{L}|int8": 2.0, f"{T}|fp32": 5.0, f"{T}|fp16": 1.0, f"{T}|int2": 4.0}
    sens = {k: Sensitivity(v, 0.0) for k, v in loss.items()}
    cfg = search_run.SearchConfig((0,), (1,), Budget(1.0, 1.0), objective=objective)
    best, rounds = search_run.refine(opts, sens, cfg, micros if objective == "latency" else None,
                                     lambda chosen, n: _fits_everything())
    got = {o.item: o.precision.value for o in best[0].values()}
    if objective == "latency":
        assert len(rounds) == 2  # both plans were validated; the faster one wins
        assert got == {L: "int8", T: "fp16"}
    else:
        assert got == {L: "int8", T: "int2"}


def test_latency_savings_within_noise_are_priced_as_none():
    from lowprec.search.latency import significant_costs

    L, T = "layer:L", "table:T"
    items = {L: [Option(L, Precision.FP32), Option(L, Precision.INT8)],
             T: [Option(T, Precision.FP32), Option(T, Precision.INT2), Option(T, Precision.FP16)]}
    cost = {f"{L}|fp32": 1000.0, f"{L}|int8": 200.0,   # saves 80% of the model's time: kept
            f"{T}|fp32": 50.0, f"{T}|int2": 47.0,       # saves 3 us of 1050 (< 0.5%): no saving
            f"{T}|fp16": 60.0}                          # slower than fp32: stays slower
    got = significant_costs(cost, items, share=0.005)
    assert got == {f"{L}|fp32": 1000.0, f"{L}|int8": 200.0, f"{T}|fp32": 50.0, f"{T}|int2": 50.0,
                   f"{T}|fp16": 60.0}
    # priced alike, the solver's tie-break keeps the precise option
    sens = {k: Sensitivity(0.0 if k.endswith("fp32") else 0.1, 0.0) for k in cost}
    chosen = solve(items, sens, Budget(1.0, 1.0), got)
    assert {o.item: o.precision.value for o in chosen.values()} == {L: "int8", T: "fp32"}


def test_a_plan_with_fp8_tables_warns_about_their_lookup_speed(setup, tmp_path):
    """fp8 lookups run ~20-30x slower than fp32 on FBGEMM's CPU path (reports/fp8_lookup.md): a
    bytes search that picks fp8 says so (summary, CLI, report), and so does `convert`; without fp8
    neither says anything."""
    from lowprec.precision import Precision
    from lowprec.search.driver import summarize

    root, ds, model, calib = setup
    for precisions, warns in (((Precision.FP32, Precision.FP8), True), ((Precision.FP32, Precision.INT8), False)):
        cfg = search_run.SearchConfig((2,), (3,), Budget(0.05, 0.05), SearchSpace(table_precisions=precisions))
        result = search_run.search(root / "model", model, ds, cfg, calib)
        warnings = summarize(result, model)["warnings"]
        picked = any(o.precision is Precision.FP8 for o in result.chosen.values())
        assert picked == warns and bool(warnings) == warns
        if warns:
            assert "fp8" in warnings[0] and "slower than fp32" in warnings[0]
    r = CliRunner().invoke(main, ["search", "--model", str(root / "model"), "--data", str(root / "data"),
                                  "--calib-windows", "2", "--eval-windows", "3", "--precisions", "fp32,fp8",
                                  "--max-ne-increase", "5%", "--max-auc-drop", "0.05", "--out", str(tmp_path / "p.json"),
                                  "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "slower than fp32" in r.stderr and "slower than fp32" in (tmp_path / "rep" / "report.md").read_text()
    for precision, warns in (("fp8", True), ("int8", False)):  # `convert` says it of the artifact it writes
        r = CliRunner().invoke(main, ["convert", "--model", str(root / "model"), "--precision", precision,
                                      "--out", str(tmp_path / f"a-{precision}")])
        assert r.exit_code == 0 and ("slower than fp32" in r.stderr) == warns, r.output


def test_a_hash_models_search_compression_is_the_one_inspect_reports(tmp_path):
    """QA 6d item 4: for hash/QR/ROBE models the report's "tables alone Nx, as `inspect` reports them"
    divided by the model's own (already shared) fp32 bytes: 6.72x where inspect said 53.6x for the
    same artifact. Both divide dense fp32 tables now."""
    from helpers import trained_tiny
    from lowprec.train import TrainConfig

    trained_tiny(tmp_path, TrainConfig(windows=(0,), epochs=1, embedding="hash:ratio=4"), windows=3, rows=600,
                 tables=(200, 30, 8))
    r = CliRunner().invoke(main, ["search", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"),
                                  "--calib-windows", "1", "--eval-windows", "2", "--out", str(tmp_path / "plan.json"),
                                  "--precisions", "fp16,int8", "--layer-precisions", "fp32",
                                  "--max-ne-increase", "5%", "--max-auc-drop", "0.05", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    r = CliRunner().invoke(main, ["convert", "--model", str(tmp_path / "model"), "--plan", str(tmp_path / "plan.json"),
                                  "--out", str(tmp_path / "a"), "--json"])
    assert r.exit_code == 0, r.output
    assert out["compression"] == pytest.approx(json.loads(r.output.strip().splitlines()[-1])["compression"], rel=1e-12)
    assert out["compression"] > out["fp32_table_bytes"] / out["table_bytes"]  # (what it said before)
