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


def test_an_embedding_key_or_a_table_given_twice_is_refused(tiny, tmp_path):
    """qa-common 9: `--embedding hash:ratio=2,ratio=3` and `--table-embedding t1=hash:ratio=8
    --table-embedding t1=dense` trained with whichever came last, saying nothing."""
    r = run("train", "--data", tiny, "--windows", "0", "--out", tmp_path / "x", "--embedding", "hash:ratio=2, ratio=3")
    assert r.exit_code == 2 and "embedding SPEC 'hash:ratio=2, ratio=3': option 'ratio' is given twice" in r.output, \
        r.output
    r = run("train", "--data", tiny, "--windows", "0", "--out", tmp_path / "x",
            "--table-embedding", "t1=hash:ratio=8", "--table-embedding", "t1 = dense")
    assert r.exit_code == 2 and "--table-embedding gives 't1' twice ('hash:ratio=8' and 'dense')" in r.output, r.output
    assert not (tmp_path / "x").exists()


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


def strict_json(text):
    """The last stdout line as strict JSON: a bare NaN / Infinity token fails."""
    def refuse(token):
        raise AssertionError(f"bare {token} in --json output")

    return json.loads(text.strip().splitlines()[-1], parse_constant=refuse)


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """Windows 0-1 ordinary (the tiny data's), 2 without rows, 3 all negatives, 4 all positives, 5
    window 0's negatives and 7 of its positives; a model trained on 0-1."""
    import numpy as np

    from lowprec.data.dataset import Dataset, DatasetWriter
    from lowprec.fileio import atomic_dir

    root = tmp_path_factory.mktemp("odd")
    src = Dataset(make_tiny_dataset(root / "src", windows=2, rows=800))
    with atomic_dir(root / "data") as tmp:
        writer = DatasetWriter(tmp, list(src.meta.dense_names), list(src.meta.sparse))
        for w, keep in ((0, None), (1, None), (0, slice(0, 0)), (0, "neg"), (1, "pos"), (0, "few")):
            dense, sparse, labels = (np.asarray(a) for a in src.arrays(w))
            if keep == "few":
                rows = (labels == 0) | (np.cumsum(labels == 1) <= 7) & (labels == 1)
                dense, sparse, labels = dense[rows], sparse[rows], labels[rows]
            elif keep is not None:
                rows = slice(0, 0) if isinstance(keep, slice) else (labels == (keep == "pos"))
                dense, sparse, labels = dense[rows], sparse[rows], labels[rows]
            ww = writer.window(label=f"w{len(writer.windows)}")
            ww.append(dense, sparse, labels)
            writer.add_window(ww)
        writer.finish()
    r = run("train", "--data", root / "data", "--windows", "0-1", "--out", root / "model")
    assert r.exit_code == 0, r.output
    return root / "data", root / "model"


def test_a_window_without_rows_is_refused_alone_and_skipped_beside_others(odd, tmp_path):
    data, model = odd
    for args in (("eval", "--model", model), ("train", "--out", tmp_path / "t"),
                 ("calibrate", "--model", model, "--out", tmp_path / "c.json"),
                 ("compare", "--reference", model, "--candidate", model)):
        r = run(*args, "--data", data, "--windows", "2")
        assert r.exit_code == 2 and "windows: window(s) 2 ('w2') hold no rows" in r.output, (args, r.output)
    assert not (tmp_path / "t").exists() and not (tmp_path / "c.json").exists()
    r = run("eval", "--model", model, "--data", data, "--windows", "0-2", "--json")
    assert r.exit_code == 0, r.output
    assert "warning: --windows: skipping window(s) 2 ('w2'): they hold no rows" in r.stderr
    assert [w["window"] for w in strict_json(r.stdout)["windows"]] == [0, 1]


def test_train_refuses_windows_with_one_label_class(odd, tmp_path):
    data, _ = odd
    r = run("train", "--data", data, "--windows", "3", "--out", tmp_path / "t", "--json")
    assert r.exit_code == 2 and "training windows 3 of" in r.output and "hold no positive label" in r.output
    r = run("train", "--data", data, "--windows", "0", "--val-windows", "4", "--out", tmp_path / "t")
    assert r.exit_code == 2 and "validation windows 4 of" in r.output and "no negative label" in r.output
    assert not (tmp_path / "t").exists()


def test_eval_reports_an_undefined_auc_as_null_with_a_warning(odd):
    data, model = odd
    r = run("eval", "--model", model, "--data", data, "--windows", "3", "--json")
    assert r.exit_code == 0, r.output
    out = strict_json(r.stdout)
    assert out["auc"] is None and out["windows"][0]["auc"] is None and out["calibration"] is None
    assert out["ne"] is None and out["windows"][0]["ne"] is None  # was ~1e5: log-loss over H(0) clipped
    assert "warning: AUC is undefined (n/a; null in --json) on window(s) [3] and overall" in r.stderr
    r = run("eval", "--model", model, "--data", data, "--windows", "3")
    assert r.stdout.splitlines()[1].split()[3] == "n/a"  # the table's NE column
    r = run("eval", "--model", model, "--data", data, "--windows", "0,3")
    assert r.exit_code == 0 and "on window(s) [3]:" in r.stderr
    assert [line.split()[-2] for line in r.stdout.splitlines()[1:]] != ["n/a"] * 3  # overall is defined


def test_eval_warns_when_an_auc_rests_on_few_labels_of_a_class(odd):
    data, model = odd
    r = run("eval", "--model", model, "--data", data, "--windows", "0,5", "--json")
    assert r.exit_code == 0, r.output
    assert "warning: the AUC of window(s) 5 (7 positive) rests on fewer than 30 labels of a class" in r.stderr
    assert strict_json(r.stdout)["windows"][1]["auc"] is not None  # still reported: it is defined
    assert "rests on fewer" not in run("eval", "--model", model, "--data", data, "--windows", "0").stderr
    # QA 6a item 9: an overall AUC pooled from windows that together hold few labels of a class
    r = run("eval", "--model", model, "--data", data, "--windows", "3,5")
    assert r.exit_code == 0 and "and of all windows pooled (7 positive) rests on fewer than 30" in r.stderr, r.stderr


def test_eval_says_which_windows_the_model_learned_from(odd):
    data, model = odd  # trained on windows 0-1; window 5 holds some of window 0's rows (QA 7: said too)
    r = run("eval", "--model", model, "--data", data, "--windows", "0,1,5", "--json")
    assert r.exit_code == 0, r.output
    assert ("warning: window(s) 0 (training), 1 (training), 5 (training) hold data --model " + str(model)
            + " learned from: their metrics are not held-out ones") in r.stderr
    art = model.parent / "art-int8"  # the record travels into the artifact's manifest
    if not art.exists():
        assert run("convert", "--model", model, "--precision", "int8", "--out", art).exit_code == 0
    r = run("eval", "--model", art, "--data", data, "--windows", "1,5")
    assert r.exit_code == 0 and "warning: window(s) 1 (training), 5 (training) hold data --model " + str(art) in r.stderr


def test_eval_says_nothing_of_held_out_windows(tiny, tmp_path):
    model = train(tiny, tmp_path / "m")  # windows 0-1
    assert "learned from" not in run("eval", "--model", model, "--data", tiny, "--windows", "2").stderr
    assert "0 (training), 1 (training) hold data" in run("eval", "--model", model, "--data", tiny,
                                                         "--windows", "0-2").stderr


def test_scarce_class_boundaries():
    from lowprec.evaluation.metrics import MIN_CLASS_LABELS, scarce_class

    assert scarce_class(MIN_CLASS_LABELS - 1, 1000) == f"{MIN_CLASS_LABELS - 1} positive"
    assert scarce_class(MIN_CLASS_LABELS, 1000) is None
    assert scarce_class(1000 - 3, 1000) == "3 negative"
    assert scarce_class(2, 4) == "2 positive and 2 negative"  # said "(2 negative)" only
    assert scarce_class(0, 1000) is None and scarce_class(1000, 1000) is None  # one class: undefined, said elsewhere
    assert scarce_class(float("nan"), 0) is None


@pytest.mark.parametrize("option,value,says", [
    ("--lr", "nan", "is not a finite number"), ("--lr", "0", "x>0"), ("--sparse-lr", "inf", "finite"),
    ("--sparse-lr", "-1", "x>0"), ("--adagrad-init", "nan", "finite"), ("--embedding-l2", "inf", "finite"),
    ("--embedding-prior", "-inf", "finite"),
])
def test_train_refuses_non_finite_and_meaningless_settings(tiny, tmp_path, option, value, says):
    r = run("train", "--data", tiny, "--windows", "0", "--out", tmp_path / "m", option, value)
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.output and says in r.output
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("option", ["--lr", "--sparse-lr"])
def test_training_that_diverges_stops_and_writes_nothing(tiny, tmp_path, option):
    r = run("train", "--data", tiny, "--windows", "0-1", "--out", tmp_path / "m", option, "1e30")
    assert r.exit_code == 2, r.output
    assert "training diverged at epoch 1 step" in r.output and "NaN or Inf; lower --lr" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "m").exists()


def test_eval_names_a_model_whose_predictions_overflow(tiny, tmp_path):
    import torch

    from lowprec.checkpoint.float_model import load_float_model, save_float_model

    model = load_float_model(train(tiny, tmp_path / "m"), writable=True)[0]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("top") and p.dim() == 2:
                p.copy_(p * 1e37)  # finite weights, overflowing outputs
    save_float_model(model, tmp_path / "huge")
    r = run("eval", "--model", tmp_path / "huge", "--data", tiny, "--windows", "2")
    assert r.exit_code == 2, r.output
    assert f"--model {tmp_path / 'huge'} on window 2: 1,500 of 1,500 predictions are NaN or Inf" in r.output
