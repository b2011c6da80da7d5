"""The training loop: output-bias init, validation epoch choice / early stopping, determinism,
unchanged checkpoint keys, and the CLI's new options."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import make_tiny_dataset, run_cli as run
from lowprec.checkpoint.float_model import load_float_model
from lowprec.data.dataset import Dataset, window_files
from lowprec.evaluation.scoring import evaluate
from lowprec.model.dlrm import DLRM
from lowprec.train import TrainConfig, model_config_for, positive_rate, train

MIXED = {"t0": "hash:ratio=3", "t1": "qr:ratio=2", "t2": "robe:ratio=2,z=8"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Windows 0-1 train; window 2's labels are inverted, so what training learns hurts there."""
    root = make_tiny_dataset(tmp_path_factory.mktemp("d") / "tiny", windows=4, rows=800, hotness=(1, 3, 1))
    labels = np.load(window_files(root, 2)["labels"], mmap_mode="r+")
    labels[:] = 1 - labels
    labels.flush()
    return Dataset(root)


def test_output_bias_starts_at_the_training_prior(tiny):
    labels = np.concatenate([np.asarray(tiny.arrays(w)[2]) for w in (0, 1)])
    assert positive_rate(tiny, (0, 1)) == pytest.approx(labels.mean())
    cfg = TrainConfig(windows=(0, 1), epochs=1, lr=1e-9, sparse_lr=1e-9)
    model, info = train(tiny, cfg)
    rate = labels.mean()
    assert info["train_positive_rate"] == pytest.approx(rate)
    assert float(model.top[-1].bias.detach()) == pytest.approx(math.log(rate / (1 - rate)), abs=1e-5)
    torch.manual_seed(0)
    fresh = DLRM(model_config_for(tiny.meta, cfg))
    assert abs(float(fresh.top[-1].bias.detach()) - math.log(rate / (1 - rate))) > 1e-3  # it was not already
    kept, _ = train(tiny, TrainConfig(windows=(0, 1), epochs=1, lr=1e-9, sparse_lr=1e-9, init_bias=False))
    assert float(kept.top[-1].bias.detach()) == pytest.approx(float(fresh.top[-1].bias.detach()), abs=1e-5)


@pytest.mark.parametrize("optimizer", ["rowwise-adagrad", "sparse-adam"])
def test_validation_keeps_the_best_epoch(tiny, optimizer):
    cfg = TrainConfig(windows=(0, 1), epochs=3, patience=3, val_windows=(2,), optimizer=optimizer,
                      embedding="dense", table_embedding=MIXED if optimizer == "rowwise-adagrad" else {})
    model, info = train(tiny, cfg)
    val_ne = [h["validation"]["ne"] for h in info["history"]]
    assert info["epochs_run"] == 3 and len(val_ne) == 3
    assert info["best_epoch"] == 1 + int(np.argmin(val_ne)) < 3  # inverted labels: later is worse
    kept = evaluate(model, tiny, [2]).overall
    assert kept.ne == pytest.approx(info["metrics"]["validation"]["ne"], rel=1e-6)
    assert kept.ne == pytest.approx(min(val_ne), rel=1e-6)
    assert info["metrics"]["train"]["ne"] == info["history"][info["best_epoch"] - 1]["train"]["ne"]


def test_patience_stops_early(tiny):
    cfg = TrainConfig(windows=(0, 1), epochs=5, patience=1, val_windows=(2,))
    _, info = train(tiny, cfg)
    assert info["epochs_run"] == info["best_epoch"] + 1 < 5


def test_training_is_deterministic_per_seed_and_keys_unchanged(tiny):
    cfg = TrainConfig(windows=(0, 1), epochs=1, table_embedding=MIXED)
    a, _ = train(tiny, cfg)
    b, _ = train(tiny, cfg)
    c, _ = train(tiny, TrainConfig(windows=(0, 1), epochs=1, table_embedding=MIXED, seed=1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    old, _ = train(tiny, TrainConfig(windows=(0, 1), epochs=1, table_embedding=MIXED, optimizer="sparse-adam"))
    fresh = DLRM(model_config_for(tiny.meta, cfg)).state_dict()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in old.state_dict().items()} \
        == {k: v.shape for k, v in fresh.items()}
    assert "embeddings.1.q.weight" in sa and "embeddings.2.shared.bag.weight" in sa


def test_cli_validation_from_recipe_reports_ne(tiny, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[windows]\ntrain = "0-1"\nvalidate = "3"\n')
    r = run("train", "--data", tiny.root, "--recipe", recipe, "--out", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["train"]["windows"] == [0, 1] and out["train"]["val_windows"] == [3]
    assert out["train"]["optimizer"] == "rowwise-adagrad"
    for part in ("train", "validation"):
        assert 0 < out["metrics"][part]["ne"] < 1 and 0.5 < out["metrics"][part]["auc"] <= 1
    _, saved = load_float_model(tmp_path / "m")
    assert saved["metrics"] == out["metrics"] and saved["best_epoch"] == out["best_epoch"]
    r = run("train", "--data", tiny.root, "--windows", "0-1", "--val-windows", "1", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "also training windows" in r.output and "(--val-windows)" in r.output
    recipe.write_text('[windows]\ntrain = "0-1"\nvalidate = "1"\n')  # the message names the recipe's keys
    r = run("train", "--data", tiny.root, "--recipe", recipe, "--out", tmp_path / "x")
    assert r.exit_code == 2 and f"({recipe}: [windows] validate) are also training windows ({recipe}: [windows] train)" in r.output
    r = run("train", "--data", tiny.root, "--windows", "0", "--embedding-dim", "6", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "multiple of 4" in r.output
    r = run("train", "--data", tiny.root, "--windows", "0", "--embedding-dim", "6", "--out", tmp_path / "x",
            "--optimizer", "sparse-adam", "--epochs", "1")
    assert r.exit_code == 0, r.output


def test_validation_before_the_training_windows_is_warned(tiny, tmp_path):
    """Overlap is refused; a validation window older than a training one was taken in silence, and
    the kept epoch was then chosen on data older than some the model learned from."""
    assert TrainConfig(windows=(0, 1), val_windows=(2,)).validation_order_warning is None
    assert TrainConfig(windows=(0, 2), val_windows=(3,)).validation_order_warning is None
    said = TrainConfig(windows=(1, 2), val_windows=(0, 3)).validation_order_warning
    assert said.startswith("validation window(s) 0 come before training window 2")
    r = run("train", "--data", tiny.root, "--windows", "1", "--val-windows", "0", "--epochs", "1",
            "--out", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    assert "warning: validation window(s) 0 come before training window 1" in r.output
    assert json.loads(r.output.strip().splitlines()[-1])["warnings"] == [
        TrainConfig(windows=(1,), val_windows=(0,)).validation_order_warning]
    r = run("train", "--data", tiny.root, "--windows", "0", "--val-windows", "1", "--epochs", "1",
            "--out", tmp_path / "n", "--json")
    assert r.exit_code == 0 and "warning:" not in r.output, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["warnings"] == []


def test_default_epochs_one_or_early_stopping_with_validation(tiny):
    from lowprec.train import MAX_VALIDATED_EPOCHS

    assert TrainConfig(windows=(0, 1)).max_epochs == 1
    assert TrainConfig(windows=(0, 1), val_windows=(2,)).max_epochs == MAX_VALIDATED_EPOCHS
    assert TrainConfig(windows=(0, 1), val_windows=(2,), epochs=2).max_epochs == 2
    _, info = train(tiny, TrainConfig(windows=(0, 1)))
    assert info["epochs_run"] == 1 and info["train"]["epochs"] == 1
    _, info = train(tiny, TrainConfig(windows=(0, 1), val_windows=(2,)))
    assert info["epochs_run"] == min(info["best_epoch"] + 1, MAX_VALIDATED_EPOCHS)


def test_cli_embedding_prior_trains_both_optimizers_and_is_recorded(tiny, tmp_path):
    """--embedding-prior reaches the step (the weights differ from a run without it) on the fused and
    the SparseAdam path, and the model's config.json records it; a negative value is refused."""
    for opt in ("rowwise-adagrad", "sparse-adam"):
        outs = {}
        for prior in ("0", "50"):
            out = tmp_path / f"{opt}-{prior}"
            r = run("train", "--data", tiny.root, "--windows", "0-1", "--out", out, "--optimizer", opt,
                    "--embedding-prior", prior, "--json")
            assert r.exit_code == 0, r.output
            assert json.loads(r.output.strip().splitlines()[-1])["train"]["embedding_prior"] == float(prior)
            outs[prior] = load_float_model(out)[0].state_dict()
        assert any(not torch.equal(outs["0"][k], outs["50"][k]) for k in outs["0"] if k.startswith("embeddings."))
    r = run("train", "--data", tiny.root, "--windows", "0-1", "--out", tmp_path / "neg", "--embedding-prior", "-1")
    assert r.exit_code == 2
