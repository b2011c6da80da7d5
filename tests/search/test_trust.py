"""A search that cannot pass off noise as compression, or "no compression" as success.

Unit level (hand-made sensitivities, the real MILP and `refine`): an int2 option that improved
calibration NE by chance is priced at least at that improvement, not as free; a failing plan backs off
the choice with the largest validated contribution, not the largest (lucky) prediction. End to end
(the CLI on a tiny model): an impossible budget returns all fp32 with a warning on stderr and a
`message` in --json; --test-windows reports the plan on windows the search never saw, with whether the
budget holds for the point estimate and for the whole interval."""

import json

import pytest
from click.testing import CliRunner

from helpers import trained_tiny
from lowprec.cli import main
from lowprec.plan import Validation
from lowprec.precision import Precision
from lowprec.search import run as search_run
from lowprec.search.solver import Budget, Sensitivity, ne_price, solve
from lowprec.search.space import Option
from lowprec.train import TrainConfig

A, B = "table:A", "table:B"


def items():
    return {A: [Option(A, Precision.FP32, bytes=1000), Option(A, Precision.INT8, bytes=250)],
            B: [Option(B, Precision.FP32, bytes=1000), Option(B, Precision.INT8, bytes=250),
                Option(B, Precision.INT2, bytes=63)]}


def sens(int2_ne=-0.003, int2_se=0.0005):
    return {f"{A}|fp32": Sensitivity(0.0, 0.0), f"{A}|int8": Sensitivity(0.0004, 0.0, 0.0001),
            f"{B}|fp32": Sensitivity(0.0, 0.0), f"{B}|int8": Sensitivity(0.0002, 0.0, 0.0001),
            f"{B}|int2": Sensitivity(int2_ne, 0.0, int2_se)}


def test_a_lucky_improvement_is_not_free():
    s = sens()
    assert ne_price(s[f"{B}|int2"]) == pytest.approx(0.003)  # the improvement is priced as noise
    assert ne_price(s[f"{A}|int8"]) == pytest.approx(0.0005)  # loss plus one standard error
    chosen = solve(items(), s, Budget(0.001, 0.001))
    assert {k: o.precision.value for k, o in chosen.items()} == {A: "int8", B: "int8"}
    # a real, precisely measured improvement well inside the budget is still taken
    chosen = solve(items(), sens(int2_ne=-0.0001, int2_se=0.0001), Budget(0.001, 0.001))
    assert chosen[B].precision is Precision.INT2


def _val(ok):
    """A validation inside the 0.1% budget (point and interval) or well over it."""
    ne = 0.0 if ok else 0.01
    return Validation(ne, (ne, ne), 0.0, (0.0, 0.0), 0.5, 0.7, 0.5 * (1 + ne), 0.7, 0, 0, 1000)


def test_back_off_by_validated_contribution():
    """B int2 priced cheap (a tiny measured improvement) fails validation; A int8 looks costlier.
    Back-off must forbid B's int2 (its validated contribution), after which a plan validates."""
    s = sens(int2_ne=-0.0001, int2_se=0.0001)
    validated = []

    def check(chosen, n):
        validated.append({k: o.precision.value for k, o in chosen.items()})
        return _val(chosen[B].precision is not Precision.INT2)

    def contribution(chosen):
        return {o.key: Sensitivity(0.01 if o.precision is Precision.INT2 else 0.0001, 0.0) for o in chosen.values()}

    cfg = search_run.SearchConfig((0,), (1,), Budget(0.001, 0.001), max_rounds=4)
    best, rounds = search_run.refine(items(), s, cfg, None, check, contribution)
    assert validated[0] == {A: "int8", B: "int2"} and not rounds[0]["fits"]
    assert best is not None and best[0][B].precision is Precision.INT8 and rounds[-1]["fits"]
    assert all(v[B] != "int2" for v in validated[1:])
    # without contributions the priced share decides: A int8 (0.0005) over B int2 (0.0001)
    forbidden = search_run.back_off({A: items()[A][1], B: items()[B][2]}, items(), s, cfg.budget)
    assert forbidden == {f"{A}|int8"}


def test_no_compression_message_says_why_and_what_to_try():
    cfg = search_run.SearchConfig((0,), (1,), Budget(0.001, 0.001))
    rounds = [{"round": 1, "fits": False, "validated": {"ne_increase": 0.004, "ne_increase_ci": [0.002, 0.006],
                                                        "auc_drop": 0.0001}},
              {"round": 2, "fits": False, "validated": {"ne_increase": 0.002, "ne_increase_ci": [0.001, 0.003],
                                                        "auc_drop": 0.0}}]
    msg = search_run.no_compression_message(rounds, cfg)
    assert "none of the 2 quantized plans validated" in msg and "round 2" in msg and "+0.200%" in msg
    assert "--max-ne-increase" in msg and "--precisions fp16,int8,int4" in msg
    assert "priced loss" in search_run.no_compression_message([], cfg)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_trust")
    trained_tiny(root, TrainConfig(windows=(0,), epochs=2), windows=4, rows=1500, tables=(200, 30, 8))
    return root


def search(root, tmp_path, *extra):
    return CliRunner().invoke(main, ["search", "--model", str(root / "model"), "--data", str(root / "data"),
                                     "--calib-windows", "1", "--eval-windows", "2", "--out", str(tmp_path / "p.json"),
                                     "--precisions", "fp16,int8,int2", "--layer-precisions", "fp32,int8",
                                     "--json", *extra])


def test_impossible_budget_says_no_compression(tiny, tmp_path):
    r = search(tiny, tmp_path, "--max-ne-increase", "0", "--max-auc-drop", "0")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["compression"] == pytest.approx(1.0) and out["message"].startswith("no compression")
    assert "warning: no compression" in r.stderr and "Try" in r.stderr
    assert json.loads((tmp_path / "p.json").read_text())["notes"] == out["message"]


def test_test_windows_are_reported_and_never_selected_on(tiny, tmp_path):
    r = search(tiny, tmp_path, "--max-ne-increase", "2%", "--max-auc-drop", "0.02", "--test-windows", "3")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["message"] is None:
        t = out["tested"]
        assert t is not None and t["rows"] == 1500
        assert set(out["tested_fits"]) == {"point", "interval"}
        assert out["validated_fits"]["interval"] == (out["validated"]["ne_increase_ci"][1] <= 0.02
                                                     and out["validated"]["auc_drop_ci"][1] <= 0.02)
        plan = json.loads((tmp_path / "p.json").read_text())
        assert plan["windows"]["test"] == [3] and plan["tested"]["rows"] == 1500
    else:  # nothing compressed: nothing to test, and it says so
        assert out["tested"] is None and "no compression" in r.stderr
    r = search(tiny, tmp_path, "--test-windows", "2")
    assert r.exit_code == 2 and "never sees" in r.output


def _counted(positives, negatives):
    v = _val(True)
    return Validation(**{**v.to_json(), "rows": positives + negatives, "positives": positives, "negatives": negatives})


def test_too_few_labels_of_a_class_to_judge_the_auc_budget_are_warned():
    from lowprec.evaluation.metrics import MIN_CLASS_LABELS as MIN_LABELS
    from lowprec.search.driver import few_labels

    assert few_labels(_counted(MIN_LABELS, 5000), "evaluation") == []
    w = few_labels(_counted(MIN_LABELS - 1, 5000), "evaluation")
    assert len(w) == 1 and w[0].startswith(f"the evaluation windows hold only {MIN_LABELS - 1} positive label(s) "
                                           f"in {MIN_LABELS - 1 + 5000:,} rows")
    # every row of the evaluation and test windows is scored: only more or longer windows add labels
    assert w[0].endswith("judge it on more or longer evaluation windows (--eval-windows) before trusting it")
    assert "--max-rows" not in w[0]
    t = few_labels(_counted(5000, 3), "test")[0]
    assert "3 negative" in t and "(--test-windows)" in t and "--max-rows" not in t
    assert few_labels(_val(True), "evaluation") == []  # a plan from before the counts: nothing to say
    assert few_labels(None, "test") == []


def test_a_float_model_worse_than_the_base_rate_is_warned(tiny, tmp_path):
    """A search on a model no better than the constant base rate on the evaluation windows (NE
    1.004, AUC 0.53 on a 0.26%-positive CSV log) validated its budget "within 0.1% of it" and said
    nothing: the plan is as useless as the model, however well it fits the budget."""
    import torch

    from lowprec.checkpoint.float_model import load_float_model, save_float_model
    from lowprec.search.driver import weak_reference

    assert weak_reference(_val(True), "evaluation") == [] and weak_reference(None, "test") == []
    model, info = load_float_model(tiny / "model", writable=True)
    with torch.no_grad():
        model.top[-1].bias.fill_(6.0)  # predicts a click almost always
    save_float_model(model, tmp_path / "bad", info)
    r = CliRunner().invoke(main, ["search", "--model", str(tmp_path / "bad"), "--data", str(tiny / "data"),
                                  "--calib-windows", "1", "--eval-windows", "2", "--test-windows", "3",
                                  "--out", str(tmp_path / "p.json"), "--precisions", "fp16,int8",
                                  "--layer-precisions", "fp32", "--max-ne-increase", "2%", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    said = [w for w in out["warnings"] if w.startswith("the float model scores NE ")]
    assert [w.split(" >= 1 on the ")[1].split(" windows")[0] for w in said] == ["evaluation", "test"]
    assert out["validated"]["float_ne"] >= 1 and f"warning: {said[0]}" in r.stderr


def test_the_plan_records_label_counts_and_plans_without_them_load(tiny, tmp_path):
    from lowprec.plan import PlanInfo

    r = search(tiny, tmp_path, "--max-ne-increase", "2%", "--max-auc-drop", "0.02")
    assert r.exit_code == 0, r.output
    plan = json.loads((tmp_path / "p.json").read_text())
    v = plan["validated"]
    if v is not None:
        assert v["positives"] > 0 and v["negatives"] > 0 and v["positives"] + v["negatives"] == v["rows"]
        del v["positives"], v["negatives"]  # as a plan written before the counts
        old = PlanInfo.from_json({k: plan[k] for k in plan if k in {f for f in PlanInfo.__dataclass_fields__}}, "p")
        assert old.validated.positives is None
    text = CliRunner().invoke(main, ["search", "--model", str(tiny / "model"), "--data", str(tiny / "data"),
                                     "--calib-windows", "1", "--eval-windows", "2", "--out", str(tmp_path / "q.json"),
                                     "--precisions", "fp16,int8,int2", "--max-ne-increase", "2%"])
    assert text.exit_code == 0, text.output
    q = json.loads((tmp_path / "q.json").read_text())["validated"]
    if q is not None:  # signed once, by the number: "NE -0.0123%", never "NE +-0.0123%"
        assert f"rows: NE {100 * q['ne_increase']:+.4f}% [" in text.stdout
    assert "NE +-" not in text.stdout


def test_windows_the_model_learned_from_are_refused_as_evaluation_or_test(tiny, tmp_path):
    """The budget must be judged on held-out windows: the model's training window is refused as an
    evaluation or a test window, recognised by its data (here in a copy of the dataset), not its index."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny / "data", copy)
    for extra, what in ((["--data", str(copy), "--eval-windows", "0"], "evaluation"),
                        (["--eval-windows", "2", "--test-windows", "0"], "test")):
        r = CliRunner().invoke(main, ["search", "--model", str(tiny / "model"), "--data", str(tiny / "data"),
                                      "--calib-windows", "1", "--out", str(tmp_path / "p.json"), *extra])
        assert r.exit_code == 2, r.output
        assert f"{what} windows [0] hold data --model {tiny / 'model'} learned from (window 0: its training data)" in r.output
        assert not (tmp_path / "p.json").exists()


def test_seen_in_training_needs_the_record():
    from lowprec.train import seen_in_training

    assert seen_in_training({}, None, [0, 1]) == {} and seen_in_training(None, None, [0]) == {}
    assert seen_in_training({"window_fingerprints": {"train": [], "val": []}}, None, [0]) == {}


def test_the_rows_the_model_learned_from_are_refused_at_any_window_number(tiny, tmp_path):
    """QA 6d item 1: the held-out check compared window fingerprints, which hold the window's index,
    label and times: a dataset prepared again from a later day (the training day now window 0 of
    another dataset), or a training window's files copied into another window, passed as held-out.
    The model also records its windows' row fingerprints (rows alone); a model without them is
    judged by window fingerprints as before."""
    import shutil

    from lowprec.data.dataset import Dataset, window_files
    from lowprec.checkpoint.float_model import load_float_model
    from lowprec.train import seen_in_training

    copy = tmp_path / "copy"
    shutil.copytree(tiny / "data", copy)
    assert Dataset(copy).meta.window(3).rows == Dataset(copy).meta.window(0).rows
    for kind, src in window_files(copy, 0).items():
        shutil.copyfile(src, window_files(copy, 3)[kind])  # window 3 holds window 0's rows
    r = CliRunner().invoke(main, ["search", "--model", str(tiny / "model"), "--data", str(copy), "--calib-windows", "1",
                                  "--eval-windows", "3", "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "evaluation windows [3] hold data" in r.output and "window 3: its training data" in r.output
    _, info = load_float_model(tiny / "model")
    older = {k: v for k, v in info.items() if k not in ("row_fingerprints", "row_sample")}  # trained before either
    assert seen_in_training(info, Dataset(copy), [1, 2, 3]) == {3: "training"}
    assert seen_in_training(older, Dataset(copy), [1, 2, 3]) == {}


def test_a_window_cut_anew_around_the_training_rows_is_refused(tiny, tmp_path):
    """QA 7: an evaluation window holding every training row plus a few more (the log prepared again
    with other windows) passed as held-out: fingerprints match whole windows only. The model keeps a
    sample of its rows' hashes (lowprec.data.rowsample), and its artifacts carry it."""
    import numpy as np

    from lowprec.data.dataset import Dataset, DatasetWriter
    from lowprec.fileio import atomic_dir

    src = Dataset(tiny / "data")
    (d0, s0, l0), (d1, s1, l1) = src.arrays(0), src.arrays(1)
    with atomic_dir(tmp_path / "recut") as tmp:
        writer = DatasetWriter(tmp, list(src.meta.dense_names), list(src.meta.sparse), {"source": "tests"})
        for dense, sparse, labels in ((np.concatenate([d0, d1[:20]]), np.concatenate([s0, s1[:20]]),
                                       np.concatenate([l0, l1[:20]])), (d1[20:], s1[20:], l1[20:])):
            ww = writer.window()
            ww.append(np.asarray(dense), np.asarray(sparse), np.asarray(labels))
            writer.add_window(ww)
        writer.finish()
    r = CliRunner().invoke(main, ["search", "--model", str(tiny / "model"), "--data", str(tmp_path / "recut"),
                                  "--calib-windows", "1", "--eval-windows", "0", "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 2 and "window 0: its training data" in r.output, r.output
    art = tmp_path / "art"
    r = CliRunner().invoke(main, ["convert", "--model", str(tiny / "model"), "--precision", "int8", "--out", str(art)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["eval", "--model", str(art), "--data", str(tmp_path / "recut"), "--windows", "0-1"])
    assert r.exit_code == 0 and "window(s) 0 (training) hold data" in r.stderr, r.output
