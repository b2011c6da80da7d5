"""Delayed labels end to end: label-free records for windows without labels, the fill-in when the
labels arrive (one record per window, both histories kept), its atomicity (a failing or SIGKILLed
fill-in leaves the window pending) and the label-free alarm rule."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import make_tiny_dataset
from lowprec.drift.alarm import DriftConfig, load_config
from lowprec.drift.dbfile import history_tag
from lowprec.drift.estimate_rule import EstimateThresholds, decide_estimate
from lowprec.drift.store import DriftStore
from lowprec.errors import InputError

from .conftest import cli, drift_cmd, kill_after_first_window, last_json


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("delayed_pair")
    data = make_tiny_dataset(root / "data", windows=5, rows=3000)
    r = cli("train", "--data", data, "--windows", "0-1", "--out", root / "ref", "--seed", 0, "--epochs", 1)
    assert r.exit_code == 0, r.output
    r = cli("convert", "--model", root / "ref", "--precision", "int4", "--out", root / "cand")
    assert r.exit_code == 0, r.output
    return root


def drift(root, db, data, windows="2-4", *extra):
    return cli("drift", "--reference", root / "ref", "--candidate", root / "cand", "--data", data,
               "--windows", windows, "--db", db, "--report", db.with_suffix(".report"), "--json", *extra)


def hide_labels(data, windows):
    for w in windows:
        (data / f"day_{w}_labels.npy").rename(data / f"later_{w}_labels.npy")


def labels_arrive(data, w):
    (data / f"later_{w}_labels.npy").rename(data / f"day_{w}_labels.npy")


def test_pending_windows_get_label_free_records_then_fill_in(pair, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pair / "data", data)
    hide_labels(data, [3, 4])
    db = tmp_path / "h.sqlite"
    r = drift(pair, db, data)
    assert r.exit_code in (0, 1), r.output
    out = last_json(r)
    assert [w["window"] for w in out["windows"]] == [2]  # only window 2 has labels
    assert out["labels_pending"] == [3, 4] and out["processed"] == [2, 3, 4]
    html = (tmp_path / "h.report" / "index.html").read_text()
    assert (tmp_path / "h.report" / "estimate.png").is_file() and "Before the labels" in html
    assert html.count("<td>pending</td>") == 2 and "2 still awaiting their labels" in html
    # the label-free record does not depend on the labels: the same window scored with labels
    full = tmp_path / "full.sqlite"
    assert drift(pair, full, pair / "data").exit_code in (0, 1)
    with DriftStore(db) as a, DriftStore(full) as b:
        pending, labelled = a.labelfree(), b.labelfree()
        for x, y in zip(pending, labelled):
            for k in ("est_gap", "est_lo", "est_hi", "kendall_tau", "abs_p99", "psi", "est_ne_diff"):
                assert x[k] == pytest.approx(y[k], rel=1e-9, abs=1e-15), k
        assert [r["has_labels"] for r in pending] == [1, 0, 0]
        assert len(a.attributions()) == len(b.attributions()) > 0
        before = {r["window"]: r for r in pending}
    labels_arrive(data, 3)
    r = drift(pair, db, data)
    out = last_json(r)
    assert out["processed"] == [3] and out["labels_pending"] == [4]
    assert [w["window"] for w in out["windows"]] == [2, 3]
    assert any("labels arrived for windows [3]" in n for n in out["notes"])
    with DriftStore(db) as s, DriftStore(full) as f:
        lf = {r["window"]: r for r in s.labelfree()}
        assert sorted(lf) == [2, 3, 4]  # one label-free record per window, never rewritten
        for k in ("recorded", "est_gap", "est_reason", "run_id"):
            assert lf[3][k] == before[3][k]
        assert lf[3]["filled_run_id"] is not None and lf[4]["filled_run_id"] is None
        assert [r["window"] for r in s.windows()] == [2, 3]
        filled = {r["window"]: r for r in s.windows()}[3]
        ref = {r["window"]: r for r in f.windows()}[3]
        for k in ("ref_ne", "cand_ne", "ne_gap", "auc_diff", "psi"):
            assert filled[k] == pytest.approx(ref[k], rel=1e-9), k
        ev = [(e["window"], e["kind"]) for e in s.events()]
        assert ev == [(2, "estimate"), (2, "labels"), (3, "estimate"), (4, "estimate"), (3, "labels")]
        assert len(s.table_errors()) == len({(t["window"], t["table_name"]) for t in s.table_errors()})
    r = drift(pair, db, data)  # nothing new: no window is scored twice
    assert last_json(r)["processed"] == []


def test_a_failing_fill_in_rolls_back(pair, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(pair / "data", data)
    hide_labels(data, [2])
    db = tmp_path / "h.sqlite"
    assert drift(pair, db, data, "2").exit_code in (0, 1)
    labels_arrive(data, 2)
    real = DriftStore.insert

    def failing(self, table, rows):
        if table == "window_events" and rows and rows[0]["kind"] == "labels":
            raise OSError("disk full")
        return real(self, table, rows)

    monkeypatch.setattr(DriftStore, "insert", failing)
    r = drift(pair, db, data, "2")
    assert r.exit_code == 4 and "OSError: disk full" in r.output  # (an errno-less OSError: a bug's exit 4)
    monkeypatch.setattr(DriftStore, "insert", real)
    with DriftStore(db) as s:
        assert s.windows() == [] and s.labelfree()[0]["filled_run_id"] is None
        assert [e["kind"] for e in s.events()] == ["estimate"]
    assert last_json(drift(pair, db, data, "2"))["processed"] == [2]


def test_sigkill_during_fill_in_leaves_one_record_per_window(pair, tmp_path):
    data = make_tiny_dataset(tmp_path / "big", windows=4, rows=20_000)
    hide_labels(data, range(4))
    db = tmp_path / "h.sqlite"
    assert drift(pair, db, data, "all").exit_code in (0, 1)  # label-free records only
    cmd = drift_cmd(pair, data, db, tmp_path / "rep", "--json")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for w in range(4):
        labels_arrive(data, w)
    kill_after_first_window(cmd, db)
    with DriftStore(db) as s:
        done = {r["window"] for r in s.windows()}
        assert 1 <= len(done) < 4
        assert {r["window"] for r in s.labelfree() if r["filled_run_id"] is not None} == done
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(out["processed"]) == sorted(set(range(4)) - done) and out["labels_pending"] == []
    with DriftStore(db) as s:
        assert [r["window"] for r in s.windows()] == list(range(4))
        assert [r["window"] for r in s.labelfree()] == list(range(4))
        kinds = [(e["window"], e["kind"]) for e in s.events()]
        assert sorted(kinds) == sorted({(w, k) for w in range(4) for k in ("estimate", "labels")})


def _est(gap, se=1e-5, window=5, **kw):
    return {"window": window, "est_gap": gap, "est_se_rows": se, "est_lo": gap - 0.001, "est_hi": gap + 0.001, **kw}


def test_estimate_rule():
    t = EstimateThresholds()
    base = _est(0.0005, window=1)
    ok = decide_estimate(_est(0.0008), base, t)
    assert not ok.alarm and ok.reason.startswith("healthy (estimate)") and ok.shift == pytest.approx(0.0003)
    shift = decide_estimate(_est(0.0016), base, t)  # +0.11% since baseline: beyond 0.05% + 3 se
    assert shift.alarm and shift.triggers == ("estimate_shift",) and "ALARM (estimate, no labels read)" in shift.reason
    noisy = decide_estimate(_est(0.0016, se=3e-4), base, t)  # the same shift within the noise
    assert not noisy.alarm
    limit = decide_estimate(_est(0.004), None, t)  # no baseline: the absolute limit still holds
    assert limit.triggers == ("estimate_limit",) and limit.shift is None
    warn = decide_estimate(_est(0.0005, kendall_tau=0.5, abs_p99=0.2, psi=0.3), base, t)
    assert not warn.alarm and len(warn.warnings) == 3 and all(w.startswith("estimate:") for w in warn.warnings)
    assert not decide_estimate({"est_gap": None}, base, t).alarm


def test_estimate_rule_does_not_judge_too_few_rows():
    """One row's KL/H with a row-sampling se of 0 was "beyond the limit"; a 1-row baseline made every
    later window's growth test compare against it. Below 100 rows neither is judged."""
    t = EstimateThresholds()
    one = decide_estimate(_est(0.01, se=0.0, rows=1), None, t)
    assert not one.alarm and one.reason.startswith("estimate: too few rows: 1 (minimum 100)"), one.reason
    assert decide_estimate(_est(0.01, se=0.0, rows=100), None, t).triggers == ("estimate_limit",)
    tiny_base = decide_estimate(_est(0.0016, rows=5000), _est(0.0, se=0.0, window=1, rows=1), t)
    assert not tiny_base.alarm and tiny_base.shift is None and "baseline window 1 has too few rows (1)" in tiny_base.reason


def test_estimate_thresholds_from_toml(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text("[estimate]\ngap_allowance = 0.001\nz = 2\n")
    cfg = load_config(p)
    assert cfg.estimate.gap_allowance == 0.001 and cfg.estimate.z == 2.0
    assert DriftConfig.from_json(cfg.to_json()) == cfg
    p.write_text("[estimate]\nz = -1\n")
    with pytest.raises(InputError, match="estimate.z"):
        load_config(p)
    p.write_text("[estimate]\nnope = 1\n")
    with pytest.raises(InputError, match="nope"):
        load_config(p)


def test_thresholds_are_recorded_when_a_window_is_judged_and_only_real_rejudges_are_said(pair, tmp_path):
    """Thresholds changed between a window's label-free record and its labels: the fill-in judges it
    with the new ones, so those are what its source row records; the note names only labelled
    windows judged with other thresholds, not the window judged now nor one still without labels."""
    data = tmp_path / "data"
    shutil.copytree(pair / "data", data)
    hide_labels(data, [3, 4])
    db = tmp_path / "h.sqlite"
    assert drift(pair, db, data).exit_code in (0, 1)
    labels_arrive(data, 3)
    cfg = tmp_path / "t.toml"
    cfg.write_text("[alarm]\nne_gap_limit = 0.5\nne_gap_allowance = 0.2\n")
    for _ in range(2):  # the fill-in run, then a run with nothing new
        out = last_json(drift(pair, db, data, "2-4", "--config", cfg))
        said = [n for n in out["notes"] if "[alarm] thresholds" in n]
        assert len(said) == 1 and said[0].startswith("windows [2] were judged with other [alarm] thresholds"), said
    with DriftStore(db) as s:
        src = {w: json.loads(r["thresholds"]) if r["thresholds"] else None for w, r in s.sources().items()}
    assert src[3]["alarm"]["ne_gap_limit"] == 0.5 and src[2]["alarm"]["ne_gap_limit"] == 0.002 and src[4] is None
    assert src[2]["bootstrap"]["replicates"] == 200
    # [bootstrap] sets the gaps' intervals and [estimate] judges the label-free records: changes to
    # either were not said (window 4's estimate was made without labels, window 3's labels came later)
    cfg.write_text("[alarm]\nne_gap_limit = 0.5\nne_gap_allowance = 0.2\n[bootstrap]\nreplicates = 50\n"
                   "[estimate]\nz = 2.0\n")
    notes = last_json(drift(pair, db, data, "2-4", "--config", cfg))["notes"]
    assert any(n.startswith("windows [2, 3] were judged with other [bootstrap] settings") for n in notes), notes
    assert any(n.startswith("windows [2, 3, 4] had their label-free estimate judged with other [estimate]")
               for n in notes), notes
    # a history written before [bootstrap] was recorded holds the [alarm] thresholds alone: no false note
    with DriftStore(db) as s, s.transaction():
        s.conn.execute("UPDATE window_sources SET thresholds = ? WHERE \"window\" = 3", (json.dumps(src[3]["alarm"]),))
        s.conn.execute("UPDATE window_sources SET estimate_thresholds = NULL")
    cfg.write_text("[alarm]\nne_gap_limit = 0.5\nne_gap_allowance = 0.2\n[bootstrap]\nreplicates = 50\n")
    notes = last_json(drift(pair, db, data, "2-4", "--config", cfg))["notes"]
    assert not any("[estimate]" in n for n in notes) and any("windows [2] were judged with other [bootstrap]" in n
                                                            for n in notes), notes
    assert not any("windows [2, 3]" in n or "[3]" in n for n in notes), notes


def test_an_estimate_alarm_prints_what_its_test_compared():
    """The limit test compares gap - z·se (row sampling) with the limit; the reason printed the wider
    interval with label noise ("[CI -4.851%, +29.430%] is beyond the +0.200% limit" while it held 0).
    A window whose labels were there is not said to have had none read."""
    t = EstimateThresholds()
    e = {"window": 5, "est_gap": 0.12, "est_se_rows": 0.01, "est_lo": -0.04851, "est_hi": 0.2943}
    d = decide_estimate(e, None, t)
    assert d.triggers == ("estimate_limit",) and d.reason.startswith("ALARM (estimate, no labels read): ")
    assert "+12.000% - 3 x se +1.000% (row sampling) = +9.000% is beyond the +0.200% limit" in d.reason
    assert "-4.851%" not in d.reason and "CI" not in d.reason
    shift = decide_estimate(_est(0.0016), _est(0.0005, window=1), t, has_labels=True)
    assert shift.triggers == ("estimate_shift",) and "no labels read" not in shift.reason
    assert shift.reason.startswith("ALARM (estimate, from scores only")
    assert "allowance = +0.060% > 3 x se +0.001% (row sampling of both estimates) = +0.004%" in shift.reason


def test_an_estimate_only_alarm_is_named_where_the_exit_code_is_explained(pair, tmp_path):
    """An estimate alarm exits 1; the summary said "first alarm: none", --json had first_alarm null and
    alarms [], and the report "0 in alarm; no alarm". All three now name the estimate alarm."""
    cfg = tmp_path / "t.toml"
    cfg.write_text("[alarm]\nne_gap_limit = 0.5\nne_gap_allowance = 0.2\ncusum_h = 1000\ncusum_cap = 1000\n"
                   "auc_drop_limit = 1\ncalibration_gap_limit = 1\n[estimate]\ngap_limit = 0\nz = 1e-9\n")
    db = tmp_path / "h.sqlite"
    r = drift(pair, db, pair / "data", "2-4", "--config", cfg)
    out = last_json(r)
    assert r.exit_code == 1 == out["exit_code"], r.output
    assert [w["alarm"] for w in out["windows"]] == [False] * 3 and out["labelled_alarms"] == []
    assert out["estimate_alarms"] == [2, 3, 4] and out["alarms"] == [2, 3, 4] and out["first_alarm"] == 2
    md = (tmp_path / "h.report" / "report.md").read_text()
    assert "3 windows recorded, 0 in alarm, 3 in estimate alarm; first alarm: window 2 (w2, by the label-free " \
           "estimate); latest window 4 (w4): ALARM, by the label-free estimate." in md
    r = cli("drift", "--reference", pair / "ref", "--candidate", pair / "cand", "--data", pair / "data",
            "--windows", "2-4", "--db", db, "--report", db.with_suffix(".report"), "--config", cfg)
    assert r.exit_code == 1 and "first alarm: 2 (label-free estimate);" in r.stdout, r.stdout


def test_recalibration_outputs_are_checked_before_any_window(pair, tmp_path, monkeypatch):
    """A foreign file where a recalibration would write its calibration (or a foreign directory where
    it would write its artifact, or a read-only directory) failed after scoring and after writing
    the artifact, saying "--out" (drift has none). Now: exit 2 naming the path before any window,
    nothing written."""
    for name in ("ref", "cand"):
        shutil.copytree(pair / name, tmp_path / name)
    db = tmp_path / "h.sqlite"

    def run():
        return cli("drift", "--reference", tmp_path / "ref", "--candidate", tmp_path / "cand", "--data",
                   pair / "data", "--windows", "2-4", "--db", db, "--report", tmp_path / "rep",
                   "--on-alarm", "recalibrate", "--recalibrate-on", "both")

    def nothing_written():
        return not db.exists() and not (tmp_path / "rep").exists() and \
            sorted(p.name for p in tmp_path.iterdir()) == sorted(["cand", "ref"] + extra)

    extra = [f"cand.recal-w3.{history_tag(db)}.calib.json"]
    (tmp_path / extra[0]).write_text('{"mine": true}')
    r = run()
    assert r.exit_code == 2 and f"the recalibration's calibration {tmp_path / extra[0]} exists and is not a " \
        "lowprec calibration" in r.output and "--out" not in r.output, r.output
    assert nothing_written()
    (tmp_path / extra[0]).unlink()
    extra = [f"cand.recal-w4-alarmed.{history_tag(db)}"]
    (tmp_path / extra[0]).mkdir()
    (tmp_path / extra[0] / "notes.txt").write_text("mine")
    r = run()
    assert r.exit_code == 2 and f"the recalibrated artifact {tmp_path / extra[0]} exists" in r.output, r.output
    assert nothing_written() and "--out" not in r.output
    shutil.rmtree(tmp_path / extra[0])
    extra = []
    import lowprec.drift.recalibration as recalibration

    real = os.access  # no directory writable (root writes through a chmod)
    monkeypatch.setattr(recalibration.os, "access", lambda path, mode, **kw: not mode & os.W_OK and real(path, mode, **kw))
    r = run()
    assert r.exit_code == 2 and f"in {tmp_path}, which is not writable" in r.output, r.output
    assert nothing_written()


def test_two_histories_of_one_candidate_never_replace_each_others_recalibration(pair, tmp_path, monkeypatch):
    """The recalibrated artifact was named by the candidate and the alarm window alone: a second --db
    (a new history after revised labels, other [recalibrate] settings) wrote the same path and
    replaced the artifact the first history recorded, with no message. Now each history's artifacts
    carry its name: both stay, each matching the sha256 its history recorded; a rerun of a history
    through a symlink and a relative path finds its own; a new history does not replace a file a
    deleted history at its path left."""
    from lowprec.fileio import sha256_file

    for name in ("ref", "cand"):
        shutil.copytree(pair / name, tmp_path / name)
    alarm = "[alarm]\nne_gap_limit = 1e-9\nne_gap_allowance = 0\ncusum_h = 0.001\n[bootstrap]\nreplicates = 50\n"
    (tmp_path / "a.toml").write_text(alarm)
    (tmp_path / "b.toml").write_text(alarm + '[recalibrate]\nmethod = "percentile"\npercentile = 99.0\n')

    def run(db, cfg):
        return cli("drift", "--reference", tmp_path / "ref", "--candidate", tmp_path / "cand", "--data",
                   pair / "data", "--windows", "2-3", "--db", db, "--report", tmp_path / f"{cfg}.report",
                   "--config", tmp_path / f"{cfg}.toml", "--on-alarm", "recalibrate", "--recalibrate-on",
                   "alarmed", "--json")

    recorded, first_inode = {}, None
    for db, cfg in ((tmp_path / "a.sqlite", "a"), (tmp_path / "b.sqlite", "b")):
        r = run(db, cfg)
        assert r.exit_code == 1 and last_json(r)["first_alarm"] == 2, r.output
        (recal,) = last_json(r)["recalibrations"]
        recorded[db.name] = recal
        first_inode = first_inode or (Path(recal["artifact"]) / "manifest.json").stat().st_ino
    a, b = recorded["a.sqlite"], recorded["b.sqlite"]
    # int4 minmax tables with fp32 layers do not depend on the calibration: the two artifacts may hold
    # the same bytes (they did when both runs fell in one second), so "not replaced" is said by paths
    # and by the first artifact's manifest being the very file the first history wrote
    assert a["artifact"] != b["artifact"]
    assert (Path(a["artifact"]) / "manifest.json").stat().st_ino == first_inode
    for db, x in ((tmp_path / "a.sqlite", a), (tmp_path / "b.sqlite", b)):
        with DriftStore(db) as s:
            (row,) = s.recalibrations()
        assert row["artifact"] == x["artifact"] and Path(x["artifact"]).name.startswith("cand.recal-w2-alarmed.")
        assert sha256_file(Path(row["artifact"]) / "manifest.json") == row["artifact_sha256"]
        assert Path(row["calibration"]).is_file()
    # the same history through a symlink, by a relative path: nothing redone, no new name
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "link.sqlite").symlink_to(tmp_path / "a.sqlite")
    monkeypatch.chdir(tmp_path / "elsewhere")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run(Path("link.sqlite"), "a")
    assert r.exit_code == 1 and last_json(r)["recalibrations"][0]["id"] == a["id"], r.output
    assert history_tag(Path("link.sqlite")) == history_tag(tmp_path / "a.sqlite")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # a history deleted, a new one at its path: what the old one recorded is not replaced
    for p in tmp_path.glob("a.sqlite*"):
        p.unlink()
    r = run(tmp_path / "a.sqlite", "a")
    assert r.exit_code == 2 and f"{a['artifact']} exists, but --db" in r.output, r.output
    assert not (tmp_path / "a.sqlite").exists()
    assert sha256_file(Path(a["artifact"]) / "manifest.json") == a["artifact_sha256"]
