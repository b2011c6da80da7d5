"""Trust at the command line: provenance refusals, atomic convert+export, models worse than the base rate.

- `convert --calibration` refuses a calibration measured on another model (exit 2, --out untouched)
  unless --allow-calibration-mismatch;
- `drift` and `compare` refuse a candidate artifact not converted from --reference (it measured two
  models, not quantization: a spurious alarm) unless --allow-unrelated-candidate;
- `convert --export torchscript` that fails leaves nothing at --out;
- `eval` and `train` warn on stderr and set `worse_than_base_rate` in --json when NE >= 1 (train:
  the kept epoch on its validation windows, or the last epoch on its training data).
"""

import json

import pytest
import torch

from helpers import make_tiny_dataset, run_cli as cli
from lowprec.checkpoint.float_model import load_float_model, save_float_model
from lowprec.errors import InputError


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, r.output
    return r


def last_json(r):
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two trainings of one dataset, each calibrated and converted to int8."""
    root = tmp_path_factory.mktemp("trust")
    make_tiny_dataset(root / "data", windows=3, rows=800)
    for name, seed in (("ref", 0), ("other", 1)):
        ok("train", "--data", root / "data", "--windows", 0, "--out", root / name, "--seed", seed, "--epochs", 1)
        ok("calibrate", "--model", root / name, "--data", root / "data", "--windows", 1,
           "--out", root / f"{name}.calib.json")
        ok("convert", "--model", root / name, "--precision", "int8", "--layer-precision", "int8",
           "--calibration", root / f"{name}.calib.json", "--out", root / f"{name}.art")
    return root


def test_convert_refuses_a_calibration_of_another_model(two, tmp_path):
    r = cli("convert", "--model", two / "ref", "--precision", "int8", "--layer-precision", "int8",
            "--calibration", two / "other.calib.json", "--out", tmp_path / "art")
    assert r.exit_code == 2 and "--calibration was measured on model sha256" in r.output, r.output
    assert "--allow-calibration-mismatch" in r.output and not (tmp_path / "art").exists()
    ok("convert", "--model", two / "ref", "--precision", "int8", "--layer-precision", "int8",
       "--calibration", two / "other.calib.json", "--out", tmp_path / "art", "--allow-calibration-mismatch")


def test_shard_refuses_a_calibration_of_another_model(two, tmp_path):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(two / "ref.art", art)
    r = cli("shard", art, "--ranks", "2", "--calibration", two / "other.calib.json")
    assert r.exit_code == 2 and "--calibration was measured on model sha256" in r.output, r.output
    assert not (art / "shard-plan.json").exists()
    ok("shard", art, "--ranks", "2", "--calibration", two / "ref.calib.json")
    ok("shard", art, "--ranks", "2", "--calibration", two / "other.calib.json", "--allow-calibration-mismatch")


@pytest.mark.parametrize("command", ["drift", "compare"])
def test_candidate_not_converted_from_the_reference_is_refused(two, tmp_path, command):
    def args(candidate, db):
        extra = ["--db", tmp_path / f"{db}.sqlite", "--report", tmp_path / db] if command == "drift" else []
        return [command, "--reference", two / "ref", "--candidate", candidate, "--data", two / "data",
                "--windows", 2, *extra]
    r = cli(*args(two / "other.art", "a"))
    assert r.exit_code == 2 and "was converted from model sha256" in r.output, r.output
    assert not (tmp_path / "a.sqlite").exists()
    assert cli(*args(two / "other.art", "b"), "--allow-unrelated-candidate").exit_code in (0, 1)
    same = cli(*args(two / "ref.art", "c"))
    assert same.exit_code in (0, 1), same.output
    r = cli(*args(two / "other", "d"))  # a float model trained apart: drift and compare alike
    assert r.exit_code == 2 and "is a float model with weights sha256" in r.output, r.output
    assert cli(*args(two / "other", "e"), "--allow-unrelated-candidate").exit_code in (0, 1)


def test_failed_export_leaves_nothing_at_out(two, tmp_path, monkeypatch):
    """No plan fails to export today, so the failure is injected where the export saves its module."""
    def fail(module, path):
        raise InputError("this plan cannot be exported (injected)")

    monkeypatch.setattr(torch.jit, "save", fail)
    r = cli("convert", "--model", two / "ref", "--precision", "int4", "--out", tmp_path / "art",
            "--export", "torchscript")
    assert r.exit_code == 2 and "cannot be exported" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no artifact, no temporary sibling
    monkeypatch.undo()
    ok("convert", "--model", two / "ref", "--precision", "int4", "--out", tmp_path / "art", "--export", "torchscript")
    assert (tmp_path / "art" / "model.torchscript.pt").is_file()


def test_eval_flags_a_model_worse_than_the_base_rate(two, tmp_path):
    r = ok("eval", "--model", two / "ref", "--data", two / "data", "--windows", 2, "--json")
    assert last_json(r)["worse_than_base_rate"] is (last_json(r)["ne"] >= 1)
    model, info = load_float_model(two / "ref", writable=True)  # loaded weights are read-only mappings
    with torch.no_grad():
        model.top[-1].bias.fill_(6.0)  # predicts a click almost always
    save_float_model(model, tmp_path / "bad", info)
    r = ok("eval", "--model", tmp_path / "bad", "--data", two / "data", "--windows", 2, "--json")
    assert last_json(r)["ne"] > 1 and last_json(r)["worse_than_base_rate"] is True
    assert "worse than the constant base rate" in r.stderr
    r = ok("eval", "--model", tmp_path / "bad", "--data", two / "data", "--windows", 2)
    assert "warning: NE" in r.stderr


def test_every_warning_line_is_also_in_the_json(two, tmp_path):
    """`warning:` lines went to stderr only (InputWarnings and the ones commands say themselves), so a
    job reading --json never saw them: each is in the result's "warnings" now, once."""
    import re

    def said(r):  # (a progress bar's \r-ended frames share the lines)
        return [line[len("warning: "):] for line in re.split(r"[\r\n]", r.stderr) if line.startswith("warning: ")]

    plan = tmp_path / "plan.json"  # no rule for the bottom layers: an InputWarning
    plan.write_text(json.dumps({"format": "lowprec-plan", "version": 1, "tables": {"*": {"precision": "int4"}},
                                "layers": {"top.*": {"precision": "fp16"}}}))
    runs = [ok("eval", "--model", two / "ref", "--data", two / "data", "--windows", "0-1", "--json"),  # learned from 0
            ok("convert", "--model", two / "ref", "--plan", plan, "--out", tmp_path / "art", "--json")]
    for r in runs:
        assert said(r), r.stderr
        assert last_json(r)["warnings"] == list(dict.fromkeys(said(r)))
    assert any("learned from" in w for w in last_json(runs[0])["warnings"])
    assert any("no rule of the plan covers layer(s)" in w for w in last_json(runs[1])["warnings"])


def test_train_flags_a_model_worse_than_the_base_rate(two, tmp_path):
    # learning rates far too large: the training diverges to confident wrong scores
    r = ok("train", "--data", two / "data", "--windows", 0, "--out", tmp_path / "m", "--epochs", 2,
           "--lr", 30, "--sparse-lr", 300, "--json")
    j = last_json(r)
    assert j["final_epoch_ne"] >= 1 and j["worse_than_base_rate"] is True
    assert "worse than the constant base rate" in r.stderr
    assert any("worse than the constant base rate" in w for w in j["warnings"])  # (QA 6d item 5: it was [])


def test_train_judges_the_model_it_keeps_on_its_validation_windows(tmp_path):
    """With validation windows the saved model is the kept epoch; the warning looked at the last
    epoch's training NE instead. On a 0.26%-positive CSV log the kept epoch 1 had training NE 1.002
    and validation NE 1.002 while epoch 2 (overfit, not kept) trained to 0.98: nothing was said.
    Here the validation window's labels are flipped, so every epoch's validation NE is >= 1 while
    training NE falls below 1."""
    import numpy as np

    data = make_tiny_dataset(tmp_path / "data", windows=3, rows=800)
    labels = np.load(data / "day_2_labels.npy")
    np.save(data / "day_2_labels.npy", (1 - labels).astype(labels.dtype))
    r = ok("train", "--data", data, "--windows", "0-1", "--val-windows", 2, "--epochs", 2,
           "--out", tmp_path / "m", "--json")
    j = last_json(r)
    kept = j["history"][j["best_epoch"] - 1]
    assert j["final_epoch_ne"] < 1 <= kept["validation"]["ne"]
    assert j["worse_than_base_rate"] is True
    assert f"on its validation windows (kept epoch {j['best_epoch']})" in r.stderr
    r = ok("train", "--data", data, "--windows", 0, "--val-windows", 1, "--epochs", 2, "--out", tmp_path / "n",
           "--json")
    assert last_json(r)["worse_than_base_rate"] is False and "warning: NE" not in r.stderr


def test_bare_file_names_in_the_working_directory(two, tmp_path, monkeypatch):
    """Inputs and outputs named relative to the working directory ("plan.json", not "./x/plan.json")
    work in every command of the pipeline; an output naming no entry of its own (".") is refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps(
        {"format": "lowprec-plan", "version": 1, "tables": {"*": {"precision": "int4", "range_method": "l2"}},
         "layers": {"*": {"precision": "fp32"}}}))
    ok("train", "--data", two / "data", "--windows", 0, "--out", "model", "--epochs", 1)
    ok("calibrate", "--model", "model", "--data", two / "data", "--windows", 1, "--out", "calib.json")
    ok("convert", "--model", "model", "--plan", "plan.json", "--calibration", "calib.json", "--out", "art")
    ok("eval", "--model", "art", "--data", two / "data", "--windows", 2)
    r = cli("drift", "--reference", "model", "--candidate", "art", "--data", two / "data", "--windows", 2,
            "--db", "drift.sqlite", "--report", "report")
    assert r.exit_code in (0, 1), r.output
    assert (tmp_path / "drift.sqlite").is_file() and (tmp_path / "report").is_dir()
    before = sorted(p.name for p in tmp_path.iterdir())
    for out in (".", ".."):
        r = cli("convert", "--model", "model", "--plan", "plan.json", "--out", out)
        assert r.exit_code == 2 and "names no file or directory of its own" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _float_options():
    import click

    from lowprec.cli import main

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, path + [name])
        for p in cmd.params:
            if isinstance(p.type, click.types.FloatParamType):
                yield path, p

    return list(walk(main, []))


def test_every_float_option_of_every_command_refuses_nan_and_infinities():
    """click's FLOAT and FloatRange take 'nan' and 'inf' (`--lr nan` was a torch traceback,
    `compare --threshold-db nan` silently never flagged a tap): FiniteFloat is given to all of them."""
    import click

    found = _float_options()
    assert {(" ".join(path), p.name) for path, p in found} >= {("train", "lr"), ("compare", "threshold_db")}
    for path, p in found:
        for text in ("nan", "inf", "-inf", "NaN"):
            with pytest.raises(click.BadParameter, match="is not a finite number"):
                p.type.convert(text, p, None)
    r = cli("compare", "--reference", "m", "--candidate", "m", "--data", "d", "--windows", "0", "--threshold-db", "nan")
    assert r.exit_code == 2 and "'nan' is not a finite number" in r.output


def test_compare_marks_an_overflowing_candidate_and_refuses_an_overflowing_reference(two, tmp_path):
    """Taps holding NaN/Inf used to end in `math domain error`."""
    model, _ = load_float_model(two / "ref", writable=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("top") and p.dim() == 2:
                p.copy_(p * 1e37)
    save_float_model(model, tmp_path / "huge")
    common = ["--data", two / "data", "--windows", 2, "--allow-unrelated-candidate"]
    r = ok("compare", "--reference", two / "ref", "--candidate", tmp_path / "huge", *common, "--json")
    out = json.loads(r.stdout.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert out["first_below"] is not None and out["taps"][-1]["sqnr_db"] is None and out["taps"][-1]["non_finite"]
    r = cli("compare", "--reference", tmp_path / "huge", "--candidate", two / "ref", *common)
    assert r.exit_code == 2 and "--reference: its output" in r.output and "holds NaN or Inf" in r.output
