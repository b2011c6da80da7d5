"""Drift results that cannot mislead: too few labels, the validated gap said aloud, staleness in the
right direction, no "better" beside a significant AUC drop, and a --db reused with other data.

The rule tests call `decide` on hand-made signals (the rule is pure); the database tests run the
real job on two tiny datasets whose windows carry the same labels."""


import json

import pytest

from helpers import make_tiny_dataset
from lowprec.drift.alarm import CusumState, Signals, Thresholds, decide

from .conftest import cli, last_json

T = Thresholds()


def signals(gap=0.0, lo=None, hi=None, se=0.001, auc_diff=0.0, p_drop=0.5, expected=0.0, pos=None, neg=None,
            stale=None):
    lo = gap - 0.002 if lo is None else lo
    hi = gap + 0.002 if hi is None else hi
    return Signals(gap, lo, hi, se, auc_diff, p_drop, 0.0, -0.001, 0.001, 0.0, {}, stale, None, expected, pos, neg)


def test_too_few_labels_raise_no_label_based_alarm():
    bad = dict(gap=0.05, lo=0.03, hi=0.07, auc_diff=-0.05, p_drop=1e-6)
    assert decide(signals(**bad, pos=500, neg=500), CusumState(), T).alarm
    prev = CusumState(4.0, 0.0)
    d = decide(signals(**bad, pos=4, neg=900), prev, T)
    assert not d.alarm and d.state == prev and "too few labels: 4 positives / 900 negatives" in d.reason
    assert not decide(signals(**bad, pos=900, neg=2), prev, T).alarm
    # the minimum is configurable
    assert decide(signals(**bad, pos=4, neg=900), prev, Thresholds(min_positives=3)).alarm
    # the calibration gap is not label-based: it still alarms
    s = Signals(0.05, 0.03, 0.07, 0.001, 0.0, 0.5, 0.2, 0.1, 0.3, 0.0, {}, None, None, 0.0, 4, 900)
    d = decide(s, prev, T)
    assert d.triggers == ("calibration_gap",) and any("too few labels" in w for w in d.warnings)


def test_reason_says_when_the_validated_gap_was_subtracted():
    # measured CI [+0.27%, +0.97%], plan validated at +0.60%: judged as [-0.33%, +0.37%] -> ok
    e = 0.006
    d = decide(signals(0.0062 - e, 0.0027 - e, 0.0097 - e, expected=e), CusumState(), T)
    assert not d.alarm
    assert "+0.62% [CI +0.27%, +0.97%] minus the plan's validated gap +0.60%" in d.reason
    assert "within ±0.20%" in d.reason
    plain = decide(signals(0.0005), CusumState(), T)
    assert "validated gap" not in plain.reason


def test_staleness_direction():
    worse = decide(signals(stale=0.05), CusumState(), T).staleness
    better = decide(signals(stale=-0.05), CusumState(), T).staleness
    assert len(worse) == 1 and "retrain" in worse[0]
    assert len(better) == 1 and "retrain" not in better[0].replace("no retraining", "") and "better" in better[0]


def test_lower_ne_with_a_significant_auc_drop_is_not_called_better():
    d = decide(signals(-0.01, -0.015, -0.005, auc_diff=-0.01, p_drop=1e-5), CusumState(), T)
    assert d.alarm and "(better)" not in d.reason and "not better" in d.reason
    d = decide(signals(-0.01, -0.015, -0.005, auc_diff=0.001, p_drop=0.9), CusumState(), T)
    assert d.alarm and "(better)" in d.reason


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift_trust")
    make_tiny_dataset(root / "a", windows=3, rows=600, seed=0)
    make_tiny_dataset(root / "b", windows=3, rows=700, seed=5)  # same window labels w0..w2
    make_tiny_dataset(root / "a_grown", windows=4, rows=600, seed=0)  # a, and one more window
    for name, seed in (("ref", 0), ("cand", 1)):
        r = cli("train", "--data", root / "a", "--windows", 0, "--out", root / name, "--seed", seed, "--epochs", 1)
        assert r.exit_code == 0, r.output
    return root


def run(root, data, db, thresholds="", json_out=True, report=None):
    cfg = db.with_name(f"cfg{len(thresholds)}.toml")
    cfg.write_text(f"[bootstrap]\nreplicates = 20\n{thresholds}")
    return cli("drift", "--reference", root / "ref", "--candidate", root / "cand", "--data", root / data,
               "--windows", "1-2", "--db", db, "--report", report or db.with_suffix(".report"), "--config", cfg,
               "--allow-unrelated-candidate", *(["--json"] if json_out else []))  # cand: another training


def test_db_reused_with_other_data_is_refused_and_threshold_changes_are_said(two_datasets, tmp_path):
    root, db = two_datasets, tmp_path / "h.sqlite"
    first = run(root, "a", db)
    assert first.exit_code in (0, 1), first.output
    r = run(root, "b", db)
    assert r.exit_code == 2 and "window 1 was computed from another window data" in r.output, r.output
    assert "new --db" in r.output
    again = run(root, "a", db)
    assert again.exit_code == first.exit_code and last_json(again)["notes"] == []
    other = "[alarm]\nne_gap_limit = 0.5\nne_gap_allowance = 0.2\n"
    notes = last_json(run(root, "a", db, other))["notes"]
    assert len(notes) == 1 and "windows [1, 2]" in notes[0] and "NOT re-judged" in notes[0]
    assert "note: windows [1, 2]" in run(root, "a", db, other, json_out=False, report=tmp_path / "r2").stderr
    # QA 8c item 4: with --json too (a cron job logs stderr and parses stdout)
    assert "note: windows [1, 2]" in run(root, "a", db, other, report=tmp_path / "r3").stderr


def test_db_refuses_new_windows_of_another_dataset(two_datasets, tmp_path):
    """QA 8c item 2: a history of dataset a took dataset b's windows that it had not recorded (only a
    recorded window asked for again was compared), mixing two datasets in one series."""
    root, db = two_datasets, tmp_path / "n.sqlite"
    cfg = tmp_path / "c.toml"
    cfg.write_text("[bootstrap]\nreplicates = 20\n")

    def drift(data, windows):
        return cli("drift", "--reference", root / "ref", "--candidate", root / "cand", "--data", root / data,
                   "--windows", windows, "--db", db, "--report", tmp_path / "rep", "--config", cfg,
                   "--allow-unrelated-candidate", "--json")

    assert drift("a", "1").exit_code in (0, 1)
    r = drift("b", "2")
    assert r.exit_code == 2 and f"--db {db} follows another dataset: it recorded window 1" in r.output, r.output
    assert drift("a", "2").exit_code in (0, 1)  # the same dataset's next window


def test_db_follows_a_dataset_that_grows_by_a_window(two_datasets, tmp_path):
    """The scheduled job's case: tomorrow's dataset.json lists one more window; the recorded
    windows' data did not change, so their history stands and only the new window is scored."""
    root, db = two_datasets, tmp_path / "g.sqlite"
    first = run(root, "a", db)
    assert first.exit_code in (0, 1), first.output
    cfg = db.with_name("cfg0.toml")
    r = cli("drift", "--reference", root / "ref", "--candidate", root / "cand", "--data", root / "a_grown",
            "--windows", "1-3", "--db", db, "--report", tmp_path / "g.report", "--config", cfg, "--json",
            "--allow-unrelated-candidate")
    assert r.exit_code in (0, 1), r.output
    out = last_json(r)
    assert [w["window"] for w in out["windows"]] == [1, 2, 3]
    assert [w["window"] for w in out["windows"] if w["processed"]] == [3], out["windows"]


def test_a_db_inside_an_input_is_refused(two_datasets, tmp_path):
    """A database inside the candidate would be deleted by the next convert to that artifact, and
    drift promises never to modify its inputs."""
    root = two_datasets
    for inside in (root / "cand" / "history.sqlite", root / "a" / "h.sqlite"):
        before = sorted(p.name for p in inside.parent.iterdir())
        r = cli("drift", "--reference", root / "ref", "--candidate", root / "cand", "--data", root / "a",
                "--windows", "1-2", "--db", inside, "--report", tmp_path / "rep")
        assert r.exit_code == 2 and "is inside the input" in r.output, r.output
        assert sorted(p.name for p in inside.parent.iterdir()) == before


def test_a_malformed_calibration_is_refused_before_any_window(two_datasets, tmp_path):
    root = two_datasets
    for body, says in (({"layers": "x"}, "layers"), ({"layers": {}, "method": "bogus"}, "method 'bogus'")):
        calib = tmp_path / "c.json"
        calib.write_text(json.dumps({"format": "lowprec-calibration", "version": 1, **body}))
        db = tmp_path / f"{len(says)}.sqlite"
        r = cli("drift", "--reference", root / "ref", "--candidate", root / "cand", "--data", root / "a",
                "--windows", "1-2", "--db", db, "--report", tmp_path / "rep", "--calibration", calib)
        assert r.exit_code == 2 and str(calib) in r.output and says in r.output, r.output
        assert not db.exists()


def own_copy(root, tmp_path):
    """tmp_path/link: the pair's models and a copy of dataset a (as "data") whose files a test may
    change; returns the copy."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(root / "a", data)
    (tmp_path / "link").mkdir()
    for name in ("ref", "cand"):
        (tmp_path / "link" / name).symlink_to(root / name)
    (tmp_path / "link" / "data").symlink_to(data)
    return data


def test_labels_revised_after_a_window_was_recorded_are_said_not_hidden(two_datasets, tmp_path):
    """Late conversions revise a window's labels after its labelled record: the next run says which
    windows' recorded metrics came from other labels (they stand, not recomputed), every run until a
    new --db; a window whose labels file went away is said too. Unchanged labels say nothing."""
    import numpy as np

    root, db = two_datasets, tmp_path / "l.sqlite"
    data = own_copy(root, tmp_path)
    first = run(tmp_path / "link", "data", db)
    assert first.exit_code in (0, 1), first.output
    assert last_json(run(tmp_path / "link", "data", db))["notes"] == []
    labels = data / "day_1_labels.npy"
    y = np.load(labels)
    np.save(labels, 1 - y)  # every label of window 1 revised
    for _ in range(2):
        again = run(tmp_path / "link", "data", db)
        assert again.exit_code == first.exit_code, again.output
        notes = last_json(again)["notes"]
        assert len(notes) == 1 and "windows [1] have labels that are not the ones" in notes[0]
        assert "NOT recomputed" in notes[0] and "new --db" in notes[0]
        assert [w["processed"] for w in last_json(again)["windows"]] == [False, False]
        report = (db.with_suffix(".report") / "report.md").read_text()
        assert "Notes from the latest run" in report and "windows [1] have labels" in report
    (data / "day_2_labels.npy").unlink()
    notes = last_json(run(tmp_path / "link", "data", db))["notes"]
    assert len(notes) == 1 and "windows [1, 2] have labels" in notes[0]
    labels.write_bytes((root / "a" / "day_1_labels.npy").read_bytes())  # (the file's bytes are fingerprinted)
    (data / "day_2_labels.npy").write_bytes((root / "a" / "day_2_labels.npy").read_bytes())
    assert last_json(run(tmp_path / "link", "data", db))["notes"] == []  # restored: nothing to say
    assert "Notes from the latest run" not in (db.with_suffix(".report") / "report.md").read_text()


def test_a_labels_file_is_fingerprinted_again_only_when_its_stat_changes(two_datasets, tmp_path, monkeypatch):
    """Each run fingerprinted every recorded window's labels file (exact up to 256 MiB): a daily job
    over a year of windows re-read all of them every run. While a file's size, mtime and ctime are
    the recorded ones it is not read; a rewrite changes its ctime even when its size and mtime are
    put back, and a touched file with the same bytes is read once, then trusted again."""
    import os

    import numpy as np

    from lowprec.drift import sources

    root, db = two_datasets, tmp_path / "s.sqlite"
    data = own_copy(root, tmp_path)
    read = []
    real = sources.window_labels_sha
    monkeypatch.setattr(sources, "window_labels_sha", lambda ds, w, **kw: read.append(w) or real(ds, w, **kw))
    assert run(tmp_path / "link", "data", db).exit_code in (0, 1)
    read.clear()
    assert last_json(run(tmp_path / "link", "data", db))["notes"] == [] and read == []  # unchanged: not read
    labels = data / "day_1_labels.npy"
    os.utime(labels)  # touched, same bytes: read once, no note, then trusted again
    assert last_json(run(tmp_path / "link", "data", db))["notes"] == [] and read == [1]
    read.clear()
    assert last_json(run(tmp_path / "link", "data", db))["notes"] == [] and read == []
    before = labels.stat()
    np.save(labels, 1 - np.load(labels))  # revised, then its size and mtime put back
    os.utime(labels, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert labels.stat().st_size == before.st_size and labels.stat().st_mtime_ns == before.st_mtime_ns
    notes = last_json(run(tmp_path / "link", "data", db))["notes"]
    assert read == [1] and len(notes) == 1 and "windows [1] have labels that are not the ones" in notes[0]


def test_an_older_historys_sampled_labels_fingerprint_is_replaced_by_a_whole_file_one(two_datasets, tmp_path,
                                                                                      monkeypatch):
    """A labels file beyond 256 MiB was fingerprinted by its size and first and last 4 MiB, so one
    late conversion in its middle went unseen. Labels are now hashed whole; a record in the old form
    (made here small by a small sample) is compared in its own form once, then replaced, so the
    middle is watched from then on: the edit the old form cannot see is said."""
    import functools

    import numpy as np

    from lowprec.drift import sources
    from lowprec.drift.store import DriftStore
    from lowprec.fileio import file_fingerprint, sha256_file

    root, db = two_datasets, tmp_path / "o.sqlite"
    data = own_copy(root, tmp_path)
    assert run(tmp_path / "link", "data", db).exit_code in (0, 1)
    labels = data / "day_1_labels.npy"
    old_form = functools.partial(file_fingerprint, full_limit=0, sample=128)  # (the real one: 256 MiB / 4 MiB)
    monkeypatch.setattr(sources, "file_fingerprint", old_form)
    with DriftStore(db) as s:  # as an older lowprec recorded it, before the stat was recorded
        s.conn.execute('UPDATE window_labels SET labels_sha256 = ?, labels_stat = NULL WHERE "window" = 1',
                       ("labels:" + old_form(labels),))
        s.conn.commit()
    assert last_json(run(tmp_path / "link", "data", db))["notes"] == []  # the same bytes: nothing to say
    with DriftStore(db) as s:
        assert s.label_sources()[1][0] == "labels:" + sha256_file(labels)  # the whole-file form now
    before = old_form(labels)
    y = np.load(labels, mmap_mode="r+")  # (in place: the file's header bytes stay as they are)
    y[len(y) // 2] = 1 - y[len(y) // 2]  # one late conversion mid-file, beyond the old form's ends
    y.flush()
    del y
    assert old_form(labels) == before  # what the old fingerprint could not see
    notes = last_json(run(tmp_path / "link", "data", db))["notes"]
    assert len(notes) == 1 and "windows [1] have labels that are not the ones" in notes[0]


def test_a_float_candidate_other_than_the_reference_is_refused(two_datasets, tmp_path):
    """Two different float models differ by more than quantization: drift alarmed on a spurious gap
    (exit 1) where an artifact converted from another model is refused. Same refusal, same flag;
    a copy of the reference is the same model."""
    import shutil

    root = two_datasets

    def drift(candidate, name, *extra):
        return cli("drift", "--reference", root / "ref", "--candidate", candidate, "--data", root / "a",
                   "--windows", "1", "--db", tmp_path / f"{name}.sqlite", "--report", tmp_path / name, *extra)

    r = drift(root / "cand", "a")
    assert r.exit_code == 2 and f"--candidate {root / 'cand'} is a float model with weights sha256" in r.output
    assert "--allow-unrelated-candidate" in r.output and not (tmp_path / "a.sqlite").exists()
    assert drift(root / "cand", "b", "--allow-unrelated-candidate").exit_code in (0, 1)
    shutil.copytree(root / "ref", tmp_path / "ref-copy")
    same = drift(tmp_path / "ref-copy", "c")
    assert same.exit_code == 0, same.output


@pytest.mark.parametrize("first", ["3 positives", "one label class"])
def test_the_staleness_baseline_is_the_first_window_with_enough_labels(two_datasets, tmp_path, first):
    """A first window with 3 positives (NE ~50) made every later window "-98%: the data got easier";
    one of a single label class (NE undefined) made staleness null for the life of the database. The
    baseline is the first recorded window with enough labels of each class and a finite NE; until
    then staleness says it has none."""
    import shutil

    import numpy as np

    root = two_datasets
    data = tmp_path / "data"
    shutil.copytree(root / "a_grown", data)
    y = np.zeros(600, dtype=np.int32)
    if first == "3 positives":
        y[:3] = 1
    np.save(data / "day_1_labels.npy", y)
    db = tmp_path / "h.sqlite"
    r = cli("drift", "--reference", root / "ref", "--candidate", root / "cand", "--data", data, "--windows", "1-3",
            "--db", db, "--report", tmp_path / "rep", "--allow-unrelated-candidate", "--json")
    assert r.exit_code in (0, 1), r.output
    w = {x["window"]: x for x in last_json(r)["windows"]}
    assert w[1]["stale_ne"] is None and w[1]["stale_calibration"] is None
    assert any(s.startswith("no staleness baseline yet: window 1") for s in w[1]["staleness"]), w[1]["staleness"]
    assert w[2]["stale_ne"] == 0.0 and not any("baseline yet" in s for s in w[2]["staleness"])
    assert w[3]["stale_ne"] == pytest.approx(w[3]["ref_ne"] / w[2]["ref_ne"] - 1, rel=1e-9)
    assert abs(w[3]["stale_ne"]) < 0.5  # against a window like it, not against NE ~50
    from lowprec.drift.store import DriftStore

    with DriftStore(db) as s:
        assert s.meta("baseline_window") == "2" and s.baseline()["window"] == 2
        assert [r["baseline_window"] for r in s.windows()] == [None, 2, 2]
    assert "Model staleness (float model vs baseline window 2)" in (tmp_path / "rep" / "report.md").read_text()


def test_an_edited_history_meta_row_is_bad_input(two_datasets, tmp_path):
    """QA 8c item 3: `baseline_window = '7x'` in the meta table ended in exit 4 (int() of it)."""
    import sqlite3

    root, db = two_datasets, tmp_path / "m.sqlite"
    cfg = tmp_path / "c.toml"
    cfg.write_text("[bootstrap]\nreplicates = 20\n")

    def drift(windows):
        return cli("drift", "--reference", root / "ref", "--candidate", root / "cand", "--data", root / "a",
                   "--windows", windows, "--db", db, "--report", tmp_path / "rep", "--config", cfg,
                   "--allow-unrelated-candidate")

    assert drift("1").exit_code in (0, 1)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value = '7x' WHERE key = 'baseline_window'")
    r = drift("1-2")
    assert r.exit_code == 2 and "its meta row baseline_window is '7x', not a window number" in r.output, r.output
