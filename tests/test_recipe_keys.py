"""Issue 15, recipes: every key is used or refused. [windows] train reaches `train`, [windows] monitor
reaches `drift`, [candidates] sharing_precisions reaches the search space; unknown keys and values of
the wrong type are refused naming the key and the file; eval takes `label:` windows like search."""

import json
import re

import pytest

from helpers import make_tiny_dataset, run_cli as run
from lowprec.data.dataset import Dataset
from lowprec.precision import Precision
from lowprec.search.driver import SearchRequest, build_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("recipe") / "data", windows=4, rows=300)


def recipe(tmp_path, text, name="r.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_train_takes_the_recipes_train_windows(data, tmp_path):
    r = run("train", "--data", data, "--recipe", recipe(tmp_path, '[windows]\ntrain = "1-2"\n'),
            "--out", tmp_path / "m", "--epochs", 1, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["windows"] == [1, 2]
    r = run("train", "--data", data, "--recipe", recipe(tmp_path, '[windows]\ntrain = "label:w0..w1"\n'),
            "--windows", "3", "--out", tmp_path / "m", "--epochs", 1, "--json")  # the flag wins
    assert json.loads(r.output.strip().splitlines()[-1])["windows"] == [3]
    r = run("train", "--data", data, "--out", tmp_path / "m2")
    assert r.exit_code == 2 and "no train windows" in r.output


def test_drift_takes_the_recipes_monitor_windows(data, tmp_path):
    assert run("train", "--data", data, "--windows", "0", "--out", tmp_path / "m", "--epochs", 1).exit_code == 0
    r = run("drift", "--reference", tmp_path / "m", "--candidate", tmp_path / "m", "--data", data,
            "--recipe", recipe(tmp_path, '[windows]\nmonitor = "3"\n'), "--db", tmp_path / "d.sqlite",
            "--report", tmp_path / "rep", "--json")
    assert r.exit_code in (0, 1), r.output
    assert [w["window"] for w in json.loads(r.output.strip().splitlines()[-1])["windows"]] == [3]
    r = run("drift", "--reference", tmp_path / "m", "--candidate", tmp_path / "m", "--data", data,
            "--db", tmp_path / "e.sqlite", "--report", tmp_path / "rep2")
    assert r.exit_code == 2 and "no windows to monitor" in r.output


def test_sharing_precisions_reach_the_search_space(data, tmp_path):
    p = recipe(tmp_path, '[windows]\ncalibrate = "1"\nevaluate = "2"\n'
                         '[candidates]\nsharing_ratios = [4]\nsharing_precisions = ["int8"]\n')
    cfg, _ = build_config(SearchRequest(model_dir=tmp_path, data_dir=data, out=tmp_path / "p.json",
                                        recipe=str(p)), Dataset(data))
    assert cfg.space.sharing_precisions == (Precision.INT8,) and cfg.space.sharing_ratios == (4.0,)


def test_shared_tables_take_only_precisions_tables_may_take(data, tmp_path):
    """--precisions fp16,int8 --sharing-ratios 16 gave int4 hot-shared tables (the default sharing
    precisions are int8 and int4): now they take int8 only; with no --precisions, both as before."""
    from dataclasses import replace

    from lowprec.model.config import DLRMConfig, TableConfig
    from lowprec.search.space import options_for

    def space(**flags):
        req = SearchRequest(model_dir=tmp_path, data_dir=data, out=tmp_path / "p.json", calib_windows="1",
                            eval_windows="2", sharing_ratios="16", **flags)
        return build_config(req, Dataset(data))[0].space

    restricted = space(precisions="fp16,int8")
    assert restricted.sharing_precisions == (Precision.INT8,)
    config = DLRMConfig(4, (TableConfig("big", 5000, 1, "dense"),), 8, (16, 8), (16, 8), ("a", "b", "c", "d"))
    shared = [o for o in options_for(config, replace(restricted, sharing_min_rows=1), sharing=True)["table:big"]
              if o.sharing is not None]
    assert shared and {o.precision for o in shared} == {Precision.INT8}
    assert space().sharing_precisions == (Precision.INT8, Precision.INT4)
    p = recipe(tmp_path, '[candidates]\ntable_precisions = ["fp16", "int4"]\n')  # a recipe's table precisions too
    assert space(recipe=str(p)).sharing_precisions == (Precision.INT4,)


@pytest.mark.parametrize("flags, text, message", [
    (["--precisions", "fp16,int8"], '[candidates]\nsharing_precisions = ["int8", "int4"]\n',
     "[candidates] sharing_precisions: ['int4'] not among the table precisions (--precisions fp16,int8)"),
    (["--precisions", "fp16", "--sharing-ratios", "4"], "",
     "--sharing-ratios: hot-shared tables take int8 or int4 unless a recipe's [candidates] sharing_precisions "
     "names others, and the table precisions (--precisions fp16) allow none of them"),
    ([], '[candidates]\ntable_precisions = ["fp16"]\nsharing_ratios = [4]\n',
     ("[candidates] sharing_ratios: hot-shared tables take int8 or int4 unless a recipe's [candidates] "
      "sharing_precisions names others, and the table precisions (",
      "r.toml: [candidates] table_precisions = [fp16]) allow none of them")),
])
def test_sharing_precisions_tables_may_not_take_are_refused_naming_both(data, tmp_path, flags, text, message):
    p = recipe(tmp_path, '[windows]\ncalibrate = "1"\nevaluate = "2"\n' + text)
    r = run("search", "--model", tmp_path / "none", "--data", data, "--recipe", p, "--out", tmp_path / "p.json",
            *flags)
    assert r.exit_code == 2 and all(m in r.output for m in ((message,) if isinstance(message, str) else message)), r.output
    assert not list(tmp_path.glob("p*.json"))


@pytest.mark.parametrize("text,message", [
    ('[windows]\ntrian = "0"\n', "unknown key(s) ['trian'] in [windows]"),
    ('[extra]\nx = 1\n', "unknown section [extra]"),
    ('[budgets]\nmemory_budget = "lots"\n', '[budgets] memory_budget = "lots": expected a whole number of bytes >= 0'),
    ('[candidates]\nsharing_precisions = ["int9"]\n', "unknown precision 'int9'"),
    ('[candidates]\nsharing_ratios = "4,x"\n', "sharing ratios must be numbers"),
    ('[windows]\ncalibrate = ["1"]\n', '[windows] calibrate = ["1"]: expected a window SPEC such as "0-3"'),
    ('[candidates]\nsharing_ratios = [true]\n', "[candidates] sharing_ratios = [true]: expected a list of numbers > 1"),
    ('[candidates]\nsharing_ratios = [0.5, 4]\n', "sharing_ratios = [0.5, 4]: expected a list of numbers > 1"),
    ('[search]\naccept = "median"\n', "[search] accept must be one of interval, point, not 'median'"),
])
def test_unknown_keys_and_bad_values_are_refused_naming_key_and_file(data, tmp_path, text, message):
    p = recipe(tmp_path, '[windows]\ncalibrate = "1"\nevaluate = "2"\n' * ("[windows]" not in text) + text)
    r = run("search", "--model", tmp_path / "none", "--data", data, "--recipe", p, "--out", tmp_path / "p.json")
    assert r.exit_code == 2 and message in r.output, r.output
    assert str(p) in r.output or message.startswith(("unknown precision", "sharing ratios"))


def test_every_recipe_key_says_what_it_takes_in_tomls_words(tmp_path):
    """QA 3b item 4: `sharing_ratios = [true]` was refused as "[True]: expected a finite, non-negative
    str or list": Python's words, and not what the key takes. Every key's message now says it in TOML's."""
    from lowprec.errors import InputError
    from lowprec.recipe import SCHEMA, TAKES, load_recipe

    for section, keys in SCHEMA.items():
        for key in keys:
            assert f"{section}.{key}" in TAKES or section in ("windows", "recipe"), (section, key)
            for value, text in ((True, "true"), ([False], "[false]"), ({"a b": -1.5}, '{"a b" = -1.5}')):
                p = recipe(tmp_path, f"[{section}]\n{key} = {text}\n")
                with pytest.raises(InputError) as e:
                    load_recipe(p)
                msg = str(e.value)
                assert f"[{section}] {key} = {text}: expected " in msg, msg
                assert not re.search(r"True|False|\bstr\b|\blist\b or|non-negative|'", msg), msg


def test_eval_accepts_label_windows_like_search(data, tmp_path):
    assert run("train", "--data", data, "--windows", "0", "--out", tmp_path / "m", "--epochs", 1).exit_code == 0
    r = run("eval", "--model", tmp_path / "m", "--data", data, "--windows", "label:w2..w3", "--json")
    assert r.exit_code == 0, r.output
    assert [w["window"] for w in json.loads(r.output.strip().splitlines()[-1])["windows"]] == [2, 3]
