"""Training and evaluation through the CLI, determinism, and bad model files."""

import json

import pytest
from safetensors.torch import load_file, save_file

from helpers import make_tiny_dataset, run_cli as run
from lowprec.fileio import sha256_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", windows=3, rows=1500,
                             hotness=(1, 3, 1))


def train(tiny, out, seed=0):
    r = run("train", "--data", tiny, "--windows", "0-1", "--out", out, "--seed", seed, "--epochs", 3)
    assert r.exit_code == 0, r.output
    return out


def test_train_is_deterministic_and_learns(tiny, tmp_path):
    a = train(tiny, tmp_path / "a")
    b = train(tiny, tmp_path / "b")
    c = train(tiny, tmp_path / "c", seed=1)
    assert sha256_file(a / "model.safetensors") == sha256_file(b / "model.safetensors")
    assert sha256_file(a / "model.safetensors") != sha256_file(c / "model.safetensors")
    r = run("eval", "--model", a, "--data", tiny, "--windows", "2", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["auc"] > 0.75 and out["ne"] < 0.99
    assert [w["window"] for w in out["windows"]] == [2]


def test_eval_overall_merges_windows(tiny, tmp_path):
    model = train(tiny, tmp_path / "m")
    r = run("eval", "--model", model, "--data", tiny, "--windows", "all", "--json")
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["rows"] == sum(w["rows"] for w in out["windows"]) == 4500
    assert min(w["auc"] for w in out["windows"]) <= out["auc"] <= max(w["auc"] for w in out["windows"]) + 0.01


def test_tampered_and_nan_models_exit_2(tiny, tmp_path):
    model = train(tiny, tmp_path / "m")
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    r = run("eval", "--model", model, "--data", tiny, "--windows", "2")
    assert r.exit_code == 2 and "sha256 does not match" in r.output
    model2 = train(tiny, tmp_path / "m2")
    state = load_file(str(model2 / "model.safetensors"))
    state["top.0.weight"][3, 1] = float("nan")
    save_file(state, str(model2 / "model.safetensors"))
    cfg = json.loads((model2 / "config.json").read_text())
    cfg["sha256"]["model.safetensors"] = sha256_file(model2 / "model.safetensors")
    (model2 / "config.json").write_text(json.dumps(cfg))
    r = run("eval", "--model", model2, "--data", tiny, "--windows", "2")
    assert r.exit_code == 2 and "'top.0.weight' holds NaN" in r.output


def test_bad_usage_exits_2(tiny, tmp_path):
    assert run("train", "--data", tiny, "--windows", "7", "--out", tmp_path / "x").exit_code == 2
    assert not (tmp_path / "x").exists()
    r = run("train", "--data", tiny, "--windows", "0", "--out", tmp_path / "x",
            "--table-embedding", "nosuch=dense")
    assert r.exit_code == 2 and "nosuch" in r.output
    r = run("eval", "--model", tmp_path / "missing", "--data", tiny, "--windows", "0")
    assert r.exit_code == 2 and "model not found" in r.output


def test_model_dataset_mismatch_is_named(tiny, tmp_path):
    model = train(tiny, tmp_path / "m")
    other = make_tiny_dataset(tmp_path / "other", windows=1, rows=100, tables=(50, 21, 8))
    r = run("eval", "--model", model, "--data", other, "--windows", "0")
    assert r.exit_code == 2 and "table 't1'" in r.output


def test_failed_write_keeps_previous_model(tiny, tmp_path, monkeypatch):
    model = train(tiny, tmp_path / "m")
    before = sha256_file(model / "model.safetensors")
    import lowprec.checkpoint.float_model as fm

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fm, "write_json", boom)
    r = run("train", "--data", tiny, "--windows", "0", "--out", model, "--seed", 3)
    assert r.exit_code != 0
    assert sha256_file(model / "model.safetensors") == before
    assert sorted(p.name for p in model.parent.iterdir()) == ["m"]
