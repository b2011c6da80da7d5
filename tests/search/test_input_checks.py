"""`lowprec search` refuses bad options before it loads or measures anything, naming the flag or the
recipe file and key; its own scratch (the measurement and latency caches) never crashes it; the plan
and report land together; a plan file's errors name the file once.

The option checks point --model at a path that does not exist: a message about the option (not
"model not found") shows the option was checked before anything was loaded."""

import json

import pytest

from helpers import run_cli, trained_tiny
from lowprec.data.dataset import Dataset
from lowprec.errors import InputError, InputWarning
from lowprec.plan import Budget, Plan
from lowprec.precision import Precision
from lowprec.search import latency
from lowprec.search import run as search_run
from lowprec.search.sensitivity import Emulator, FloatCache
from lowprec.search.space import Option, SearchSpace, options_for
from lowprec.train import TrainConfig


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_inputs")
    trained_tiny(root, TrainConfig(windows=(0,), epochs=1), windows=3, rows=600, tables=(200, 30, 8))
    return root


def search(root, out, *extra, model=None):
    return run_cli("search", "--model", model or root / "model", "--data", root / "data", "--calib-windows", 1,
                   "--eval-windows", 2, "--out", out, "--precisions", "fp16,int8", "--layer-precisions", "fp32,int8",
                   "--json", *extra)


@pytest.mark.parametrize("args, message", [
    (["--memory-budget", "-5"], "'--memory-budget': -5 is not in the range x>=0"),
    (["--max-rows", "0"], "'--max-rows': 0 is not in the range x>=1"),
    (["--max-rows", "-5"], "'--max-rows': -5 is not in the range x>=1"),
    (["--max-auc-drop", "nan"], "--max-auc-drop: 'nan' is not a finite number"),
    (["--max-ne-increase", "inf"], "--max-ne-increase: 'inf' is not a finite number"),
    (["--max-ne-increase", "-1%"], "--max-ne-increase: '-1%' is negative; budgets must be >= 0"),
    (["--precisions", ""], "--precisions: '' names nothing"),
    (["--layer-precisions", " , "], "--layer-precisions: ' , ' names nothing"),
    (["--sharing-ratios", ""], "--sharing-ratios: '' names nothing"),
    (["--sharing-ratios", "nan"], "--sharing-ratios: sharing ratios must be finite numbers > 1"),
    (["--tier-layouts", ";;"], "--tier-layouts: ';;' names no tier layout"),
    (["--tier-layouts", "2:fp16/int4"], "--tier-layouts: '2:fp16/int4': tier shares [2.0] must each be in (0, 1]"),
    (["--precisions", "fp32", "--layer-precisions", "fp32"], "--precisions and --layer-precisions leave nothing"),
    (["--layer-precisions", "int4"], "--layer-precisions: layers cannot take ['int4']"),
])
def test_bad_option_values_are_refused_before_anything_is_loaded(tiny, tmp_path, args, message):
    r = search(tiny, tmp_path / "p.json", *args, model=tmp_path / "no-model")
    assert r.exit_code == 2 and message in r.output, r.output
    assert "table '" not in r.output and "Traceback" not in r.output
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("text, message", [
    ('[budgets]\nmax_ne_increase = "lots"\n', "[budgets] max_ne_increase: 'lots' is not a number or percentage"),
    ('[budgets]\nmax_auc_drop = "inf"\n', "[budgets] max_auc_drop: 'inf' is not a finite number"),
    ('[budgets]\nmax_auc_drop = nan\n', "[budgets] max_auc_drop = nan: expected a number >= 0 or a percentage"),
    ('[budgets]\nmax_auc_drop = -0.5\n', "[budgets] max_auc_drop = -0.5: expected a number >= 0 or a percentage"),
    ('[candidates]\ntable_precisions = []\n', "[candidates] table_precisions: [] names nothing"),
    ('[candidates]\ntier_layouts = ["2:fp16/int4"]\n', "[candidates] tier_layouts: '2:fp16/int4': tier shares"),
    ('[candidates]\nsharing_precisions = ["int9"]\n', "[candidates] sharing_precisions: unknown precision 'int9'"),
    ('[search]\nmax_rows = 0\n', "[search] max_rows: 0 is not a whole number >= 1"),
    ('[search]\nmax_rounds = 0\n', "[search] max_rounds: 0 is not a whole number >= 1"),
    ('[search]\nmargin = 2\n', "[search] margin: 2 must be in (0, 1]"),
    ('[search]\nrange_method = "x"\n', "[search] range_method: 'x' is not one of minmax, l2"),
    ('[calibrate]\nmax_rows = 0\n', "[calibrate] max_rows: 0 is not a whole number >= 1"),
    ('[calibrate]\nmethod = "percentile"\npercentile = 200\n', "[calibrate]: percentile must be in (50, 100]"),
    ('[calibrate]\nmethod = "bogus"\n', "[calibrate]: calibration method 'bogus' is not one of"),
])
def test_recipe_values_are_refused_naming_the_file_and_key(tiny, tmp_path, text, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    r = run_cli("search", "--model", tmp_path / "no-model", "--data", tiny / "data", "--recipe", recipe,
                "--calib-windows", 1, "--eval-windows", 2, "--out", tmp_path / "p.json")
    assert r.exit_code == 2 and f"{recipe}: {message}" in r.output, r.output
    assert "--max-" not in r.output  # the recipe's value is not reported as a flag's


@pytest.mark.parametrize("text, message", [
    ('[calibrate]\nmethod = "magic"\n', "[calibrate]: calibration method 'magic' is not one of"),
    ('[calibrate]\nmax_rows = 0\n', "[calibrate] max_rows: 0 is not a whole number >= 1"),
    ('[calibrate]\nmethod = "percentile"\npercentile = 20\n', "[calibrate]: percentile must be in (50, 100]"),
])
def test_recipe_calibrate_values_are_checked_whenever_the_recipe_is_read(tiny, tmp_path, text, message):
    """Not only when the search calibrates inline: with --calibration the [calibrate] section is unused,
    and a bad value there is still an error (as is one in a recipe `train` reads)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(text + '[windows]\ntrain = "0"\n')
    r = run_cli("search", "--model", tmp_path / "no-model", "--data", tiny / "data", "--recipe", recipe,
                "--calib-windows", 1, "--eval-windows", 2, "--calibration", tmp_path / "c.json",
                "--out", tmp_path / "p.json")
    assert r.exit_code == 2 and f"{recipe}: {message}" in r.output, r.output
    r = run_cli("train", "--data", tiny / "data", "--recipe", recipe, "--out", tmp_path / "m")
    assert r.exit_code == 2 and f"{recipe}: {message}" in r.output, r.output
    assert not (tmp_path / "m").exists()


def test_a_zero_memory_budget_is_applied_before_measuring(tiny, tmp_path):
    """0 bytes is a budget (not "none"); no plan fits it, which is known before the sensitivity pass."""
    r = search(tiny, tmp_path / "p.json", "--memory-budget", "0")
    assert r.exit_code == 2 and "no plan meets the budgets within --memory-budget 0 bytes" in r.output, r.output
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "p.cache.json").exists()
    recipe = tmp_path / "r.toml"
    recipe.write_text("[budgets]\nmemory_budget = 0\n")
    r = search(tiny, tmp_path / "p.json", "--recipe", recipe)
    assert r.exit_code == 2 and "memory_budget" in r.output and not (tmp_path / "p.cache.json").exists()
    items = {"table:a": [Option("table:a", Precision.FP32, bytes=400), Option("table:a", Precision.INT8, bytes=100)]}
    search_run.check_memory(items, Budget(0.001, 0.001, 100))  # fits exactly
    search_run.check_memory(items, Budget(0.001, 0.001, None))  # no budget
    with pytest.raises(InputError, match="takes 100 bytes"):
        search_run.check_memory(items, Budget(0.001, 0.001, 99))
    with pytest.raises(InputError, match="finite"):
        search_run.SearchConfig((1,), (2,), Budget(float("nan"), 0.001))


@pytest.mark.parametrize("content", [
    '{"fingerprint": "f", "measurements": 5}',
    '{"fingerprint": "f", "measurements": {"float": 3}}',
    '{"fingerprint": "f", "measurements": {"float": {"ne": "x", "auc": 0.7, "rows": 10, "ne_se": 0}}}',
])
def test_a_corrupt_measurement_cache_is_ignored_with_a_warning(tmp_path, content):
    path = tmp_path / "p.cache.json"
    path.write_text(content, encoding="latin-1")
    with pytest.warns(InputWarning, match="p.cache.json: ignoring the search's measurement cache"):
        cache = search_run.MeasurementCache(path, "f")
    assert cache.data == {} and cache.get("float") is None
    cache.record({"float": {"ne": 1.0, "auc": 0.7, "rows": 10.0, "ne_se": 0.0}})
    assert json.loads(path.read_text())["measurements"]["float"]["ne"] == 1.0  # rebuilt


@pytest.mark.parametrize("content", ["[]", "not json", "\xff", '{"notes": "mine"}'])
def test_a_file_lowprec_did_not_write_is_left_as_it_is(tmp_path, content):
    """A user's file where the cache goes (not JSON, or no "fingerprint") is not overwritten: the
    search warns, naming it, and keeps no cache."""
    path = tmp_path / "p.cache.json"
    path.write_text(content, encoding="latin-1")
    before = path.read_bytes()
    with pytest.warns(InputWarning, match="p.cache.json: .*not lowprec's measurement cache: left as it is"):
        cache = search_run.MeasurementCache(path, "f")
    cache.record({"float": {"ne": 1.0, "auc": 0.7, "rows": 10.0, "ne_se": 0.0}})
    assert path.read_bytes() == before and cache.get("float")["ne"] == 1.0  # kept in memory only


def test_a_file_beside_out_that_is_not_a_cache_survives_the_cli(tiny, tmp_path):
    (tmp_path / "p.cache.json").write_text("[]")
    r = search(tiny, tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    lines = [x for x in r.stderr.splitlines() if "p.cache.json" in x]
    assert lines == [f"warning: {tmp_path / 'p.cache.json'}: a JSON list without a 'fingerprint', so not "
                     f"lowprec's measurement cache: left as it is, and this search keeps no cache (an "
                     f"interrupted run starts over; choose another --out to keep one)"]
    assert (tmp_path / "p.cache.json").read_text() == "[]"
    assert json.loads((tmp_path / "p.json").read_text())["format"] == "lowprec-plan"


@pytest.mark.parametrize("content", ["[1, 2]", '{"a": "slow"}'])
def test_a_corrupt_latency_cache_is_ignored_and_rebuilt(tiny, tmp_path, monkeypatch, content):
    from lowprec.checkpoint.float_model import load_float_model

    monkeypatch.setenv("LOWPREC_CACHE", str(tmp_path))
    (tmp_path / "latency.json").write_text(content)
    model, _ = load_float_model(tiny / "model")
    emulator = Emulator(model, FloatCache(model, Dataset(tiny / "data"), [1], 200), None)
    items = options_for(model.config, SearchSpace((Precision.INT8,), (Precision.FP32,)))
    with pytest.warns(InputWarning, match="latency.json: ignoring the latency cache"):
        cost = latency.measure_costs(emulator, items, "l2", repeats=1)
    assert all(v > 0 for v in cost.values())
    rebuilt = json.loads((tmp_path / "latency.json").read_text())
    assert isinstance(rebuilt, dict) and "a" not in rebuilt and len(rebuilt) == len(cost)


def test_a_report_that_cannot_be_written_leaves_no_plan(tiny, tmp_path, monkeypatch):
    from lowprec.search import report

    def fail(*args, **kwargs):
        raise InputError("cannot write rep: No space left on device [ENOSPC]; nothing was replaced")

    monkeypatch.setattr(report, "write_report", fail)
    r = search(tiny, tmp_path / "p.json", "--report", tmp_path / "rep")
    assert r.exit_code == 2 and "ENOSPC" in r.output, r.output
    assert not (tmp_path / "p.json").exists()


def test_outputs_under_a_regular_file_are_refused_before_the_search(tiny, tmp_path):
    (tmp_path / "afile").write_text("x")
    for extra in (["--out", tmp_path / "afile" / "p.json"], ["--report", tmp_path / "afile" / "rep"]):
        r = search(tiny, tmp_path / "p.json", *extra, model=tmp_path / "no-model")
        assert r.exit_code == 2 and "is not a directory" in r.output, r.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("entry, message", [
    ({"tables": {"cat_0": {"precision": "int9"}}}, "table 'cat_0': unknown precision 'int9'"),
    ({"tables": {"cat_0": {"precision": "int4", "sharing": {"kind": "bogus"}}}},
     "table 'cat_0': unknown sharing kind 'bogus'"),
    ({"tables": {"cat_0": {"precision": "int4", "sharing": {"kind": "hot"}}}}, "table 'cat_0': sharing"),
    ({"tables": {"cat_0": {"precision": "int4", "sharing": {"kind": "tiered", "tiers": [[2, "fp16"]]}}}},
     "table 'cat_0': tier shares [2.0]"),
    ({"tables": {"cat_0": {"range_method": "x"}}}, "table 'cat_0': range_method 'x'"),
    ({"tables": {"cat_0": "int4"}}, "table 'cat_0': must be an object"),
    ({"layers": {"top.0": {"precision": "int4"}}}, "layer 'top.0': layers take"),
    ({"layers": {"top.0": {"precision": "int9"}}}, "layer 'top.0': unknown precision 'int9'"),
])
def test_plan_file_errors_name_the_file_once(tmp_path, entry, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"format": "lowprec-plan", "version": 1} | entry))
    with pytest.raises(InputError) as exc:
        Plan.load(path)
    assert str(exc.value).startswith(f"{path}: {message}") and str(exc.value).count("p.json") == 1, exc.value


def test_an_evaluation_window_with_one_label_class_is_refused(tiny, tmp_path):
    """AUC is undefined there: every plan was rejected with 'AUC drop nan' and advice to loosen the budget."""
    import shutil

    import numpy as np

    shutil.copytree(tiny / "data", tmp_path / "data")
    labels = tmp_path / "data" / "day_2_labels.npy"
    np.save(labels, np.zeros_like(np.load(labels)))
    r = run_cli("search", "--model", tiny / "model", "--data", tmp_path / "data", "--calib-windows", 1,
                "--eval-windows", 2, "--out", tmp_path / "p.json")
    assert r.exit_code == 2 and "--eval-windows 2" in r.output and "AUC are undefined" in r.output, r.output
    assert not (tmp_path / "p.json").exists()
    # a one-class calibration window made every option's NE increase NaN and the solver failed (exit 4)
    r = run_cli("search", "--model", tiny / "model", "--data", tmp_path / "data", "--calib-windows", 2,
                "--eval-windows", 1, "--out", tmp_path / "p.json")
    assert r.exit_code == 2 and "--calib-windows 2 of" in r.output and "hold no positive label" in r.output, r.output
    assert not list(p for p in tmp_path.iterdir() if p.name != "data")  # no plan, no cache
    r = run_cli("search", "--model", tiny / "model", "--data", tmp_path / "data", "--calib-windows", 7,
                "--eval-windows", 1, "--out", tmp_path / "p.json")  # windows errors name their flag
    assert r.exit_code == 2 and "--calib-windows: window(s) [7] not in the dataset" in r.output, r.output


def test_a_plan_inside_the_report_directory_is_refused(tiny, tmp_path):
    """The report directory is written whole: a plan (and its cache) inside it would be replaced."""
    r = search(tiny, tmp_path / "rep" / "p.json", "--report", tmp_path / "rep")
    assert r.exit_code == 2 and "--out" in r.output and "is inside --report" in r.output, r.output
    assert not (tmp_path / "rep").exists()


def test_sharing_options_that_apply_to_no_table_are_said(tiny, tmp_path):
    """--sharing-ratios and --tier-layouts apply to dense tables of >= 1,000 rows; tiny's have
    200 or fewer: the search runs without them and says so."""
    r = search(tiny, tmp_path / "p.json", "--sharing-ratios", "4", "--tier-layouts", "0.1:fp16/int4")
    assert r.exit_code == 0, r.output
    assert ("warning: the sharing ratios and tier layouts requested are not considered: no table is a "
            "dense table of >= 1,000 rows") in r.stderr
    plan = json.loads((tmp_path / "p.json").read_text())
    assert all(t["sharing"] is None for t in plan["tables"].values())


def test_a_calibration_measured_on_the_judged_windows_or_edited_is_refused(tiny, tmp_path):
    """Counts from the evaluation windows rank rows with the very lookups validation scores (hot
    sharing validated as nearly free); an edited `windows` or a short count vector were exit 4."""
    import torch
    from safetensors.torch import save_file

    from lowprec.fileio import sha256_file

    calib = tmp_path / "c.json"
    assert run_cli("calibrate", "--model", tiny / "model", "--data", tiny / "data", "--windows", 2,
                   "--out", calib).exit_code == 0
    r = search(tiny, tmp_path / "p.json", "--calibration", calib)
    assert r.exit_code == 2 and f"--calibration {calib} was measured on windows [2]" in r.output, r.output
    obj = json.loads(calib.read_text())
    for windows in ("x", [True], [-1]):
        calib.write_text(json.dumps(obj | {"windows": windows}))
        r = search(tiny, tmp_path / "p.json", "--calibration", calib)
        assert r.exit_code == 2 and "`windows` must list the window numbers" in r.output, r.output
    side = calib.with_name(obj["row_counts"]["file"])
    save_file({"t0": torch.ones(100)}, str(side))  # t0 has 200 rows
    calib.write_text(json.dumps(obj | {"windows": [1], "row_counts": {"file": side.name, "sha256": sha256_file(side)}}))
    r = search(tiny, tmp_path / "p.json", "--calibration", calib)
    assert r.exit_code == 2 and "table 't0' has 100 row counts, the model's table 200 rows" in r.output, r.output
    assert not (tmp_path / "p.json").exists()


def test_the_measurement_cache_is_not_reused_after_the_inline_calibration_changes(tiny, tmp_path, monkeypatch):
    """Without --calibration the search calibrates on the recipe's [calibrate] settings, and its
    measurements depend on what that produced: the cache's fingerprint must change with every
    setting (a percentile of 51 reused the int8 layers' measurements taken at 99.99). The search
    itself is stubbed: the fingerprint is what decides whether PLAN.cache.json is reused."""
    from lowprec.search import driver

    seen = []

    def fingerprint_only(model_dir, model, ds, cfg, calibration, calib_sha, *rest):
        seen.append(search_run.fingerprint(model_dir, ds, cfg, calib_sha))
        raise InputError("stopped before measuring")
    monkeypatch.setattr(driver, "search", fingerprint_only)
    settings = ['method = "percentile"\npercentile = 99.99', 'method = "percentile"\npercentile = 99.99',
                'method = "percentile"\npercentile = 51', 'method = "percentile"\npercentile = 99.99\nmax_rows = 100',
                'method = "minmax"']
    for i, calibrate in enumerate(settings):
        recipe = tmp_path / f"r{i}.toml"
        recipe.write_text(f'[windows]\ncalibrate = "1"\nevaluate = "2"\n[calibrate]\n{calibrate}\n')
        r = run_cli("search", "--model", tiny / "model", "--data", tiny / "data", "--recipe", recipe,
                    "--out", tmp_path / "p.json")
        assert r.exit_code == 2 and "stopped before measuring" in r.output, r.output
    assert seen[0] == seen[1]  # the same settings reuse the cache
    assert len(set(seen)) == len(settings) - 1, seen  # any other setting measures afresh


def test_the_measurement_cache_is_not_reused_for_other_data_at_the_same_path(tiny, tmp_path):
    """QA 6d item 2: the cache's fingerprint held the dataset's path and dataset.json windows, not
    their contents: data regenerated in place (another seed, same shapes) reused every measurement
    (cached float NE 0.909 against 1.063 measured). The measured windows' data and labels are in it."""
    import shutil

    import numpy as np

    from lowprec.data.dataset import window_files

    shutil.copytree(tiny / "data", tmp_path / "data")
    cfg = search_run.SearchConfig((1,), (2,), search_run.Budget(0.01, 0.01), search_run.SearchSpace())

    def fp():
        return search_run.fingerprint(tiny / "model", Dataset(tmp_path / "data"), cfg, None)

    before = fp()
    assert fp() == before  # the same data: the cache is reused
    labels = window_files(tmp_path / "data", 1)["labels"]
    y = np.load(labels)
    np.save(labels, 1 - y)  # new labels, same shapes and dataset.json
    revised = fp()
    assert revised != before
    dense = window_files(tmp_path / "data", 1)["dense"]
    x = np.load(dense)
    np.save(dense, x[::-1].copy())  # the same rows in another order: other data
    assert fp() not in (before, revised)
