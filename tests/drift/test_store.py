"""The SQLite history: atomic windows, the run lock, one pair per database."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from lowprec.drift.alarm import CusumState
from lowprec.drift.store import DriftStore, lock_path
from lowprec.errors import InputError


def window_row(w, run_id, up=0.0, baseline=None):
    return {"window": w, "run_id": run_id, "label": f"w{w}", "rows": 10, "ref_ne": 0.9, "cand_ne": 0.91,
            "baseline_window": baseline,
            "ne_gap": 0.01, "cusum_up": up, "cusum_down": 0.0, "alarm": 0, "reason": "healthy",
            "triggers": [], "warnings": ["w"], "staleness": []}


def test_windows_commit_whole_or_not_at_all(tmp_path):
    db = tmp_path / "h.sqlite"
    with DriftStore(db) as s:
        run = s.start_run({"reference": "r"})
        s.record_window(window_row(3, run, up=1.5, baseline=3), [{"window": 3, "layer": "bottom.0", "clip_rate": 0.1}],
                        [{"window": 3, "table_name": "t0", "rel": 1e-4}])
        dup = [{"window": 4, "layer": "x"}, {"window": 4, "layer": "x"}]  # violates the primary key
        with pytest.raises(sqlite3.IntegrityError):
            s.record_window(window_row(4, run), dup, [])
        assert s.recorded() == {3}
        assert [c["layer"] for c in s.clipping()] == ["bottom.0"]
        assert s.previous_state(9) == CusumState(1.5, 0.0) and s.previous_state(3) == CusumState()
        assert s.baseline()["window"] == 3
        assert s.windows()[0]["warnings"] == ["w"]


def test_a_database_from_before_the_columns_added_later_gains_them(tmp_path):
    """window_labels rows written before `labels_stat` keep their fingerprint and read a None stat
    (so their labels are fingerprinted, then their stat recorded); window_sources rows written
    before `estimate_thresholds` read None (not compared)."""
    db = tmp_path / "h.sqlite"
    with DriftStore(db) as s:
        s.start_run({"reference": "r"})
    con = sqlite3.connect(db)
    con.executescript('DROP TABLE window_labels; CREATE TABLE window_labels ("window" INTEGER PRIMARY KEY, '
                      'labels_sha256 TEXT); INSERT INTO window_labels VALUES (3, \'labels:abc\');'
                      'DROP TABLE window_sources; CREATE TABLE window_sources ("window" INTEGER PRIMARY KEY, '
                      'data_sha256 TEXT, rows INTEGER, reference_sha256 TEXT, candidate_sha256 TEXT, thresholds TEXT);'
                      'INSERT INTO window_sources VALUES (3, \'window:x\', 10, \'r\', \'c\', NULL);')
    con.close()
    with DriftStore(db) as s:
        assert s.label_sources() == {3: ("labels:abc", None)}
        s.set_label_sources([(3, "labels:abc", "10:1:2")])
        assert s.label_sources() == {3: ("labels:abc", "10:1:2")}
        assert s.sources()[3]["estimate_thresholds"] is None and s.sources()[3]["rows"] == 10


def test_second_opener_is_refused_until_the_first_closes(tmp_path):
    db = tmp_path / "h.sqlite"
    first = DriftStore(db)
    with pytest.raises(InputError, match=r"in use by another `lowprec drift` run \(pid"):
        DriftStore(db)
    first.close()
    DriftStore(db).close()


def test_lock_dies_with_a_killed_process(tmp_path):
    db = tmp_path / "h.sqlite"
    code = textwrap.dedent(f"""
        import time
        from lowprec.drift.store import DriftStore
        s = DriftStore({str(db)!r})
        s.start_run({{}})
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"pid {proc.pid}"):
            DriftStore(db)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert lock_path(db).exists()  # the file stays; the lock does not
    with DriftStore(db) as s:  # opens at once (the lock is non-blocking) and sees the dead run
        assert [r["status"] for r in s.runs()] == ["interrupted"]


def test_the_lock_holds_whatever_path_reaches_the_database(tmp_path):
    """A symlink or a hard link to a database in use is the same database: refused with the holder's
    pid (it used to take a lock file of its own name and crash on a duplicate window), and no
    second lock file is made beside the other name."""
    db = tmp_path / "h.sqlite"
    DriftStore(db).close()
    (tmp_path / "other").mkdir()
    soft, hard = tmp_path / "other" / "soft.sqlite", tmp_path / "other" / "hard.sqlite"
    soft.symlink_to(db)
    os.link(db, hard)
    code = textwrap.dedent(f"""
        import time
        from lowprec.drift.store import DriftStore
        s = DriftStore({str(db)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        for other in (soft, hard):
            with pytest.raises(InputError, match=rf"in use by another `lowprec drift` run \(pid {proc.pid}\b"):
                DriftStore(other)
        assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["hard.sqlite", "soft.sqlite"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    for other in (soft, hard):  # once the holder is gone, every name opens (the lock was not stale)
        DriftStore(other).close()
    with DriftStore(hard):  # and the other way round
        with pytest.raises(InputError, match=rf"in use by another `lowprec drift` run \(pid {os.getpid()}\b"):
            DriftStore(db)


def test_a_database_holds_one_pair(tmp_path):
    db = tmp_path / "h.sqlite"
    with DriftStore(db) as s:
        s.check_pair("ref", "aaa", "cand", "bbb")
        s.check_pair("moved/ref", "aaa", "moved/cand", "bbb")  # same files elsewhere: fine
        with pytest.raises(InputError, match="another pair.*candidate differ"):
            s.check_pair("ref", "aaa", "cand2", "ccc")


def test_not_a_database(tmp_path):
    bad = tmp_path / "x.sqlite"
    bad.write_text("this is not sqlite " * 100)
    for _ in range(2):  # the second time proves the failed open released its lock
        with pytest.raises(InputError, match="not a usable SQLite database"):
            DriftStore(bad)


def test_a_users_sqlite_file_is_refused_untouched(tmp_path):
    """A --db that is someone else's SQLite file must not gain our 14 tables (nor crash on a table
    that happens to be called `windows`); a refused open leaves no lock file behind."""
    for tables in (["users(name text)"], ["windows(x)"]):
        db = tmp_path / f"app-{len(tables[0])}.sqlite"
        with sqlite3.connect(db) as conn:
            for t in tables:
                conn.execute(f"CREATE TABLE {t}")
        before = db.read_bytes()
        with pytest.raises(InputError, match="not a lowprec drift history"):
            DriftStore(db)
        assert db.read_bytes() == before and not lock_path(db).exists()
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with DriftStore(empty) as s:  # an empty file is a new history
        assert s.meta("schema_version") is not None


def test_another_apps_file_with_a_meta_table_is_refused_untouched(tmp_path):
    """A `meta(key, value)` table with a schema_version row is common: it does not make a file a drift
    history. Such a file (with a `windows` table of its own, or nothing else) is refused untouched;
    a drift history is known by its own tables and columns and the `format` row lowprec writes."""
    cases = {"meta+windows": ["windows(id INTEGER, title TEXT)"], "meta only": [], "runs, windows of ours, other format": None}
    for name, extra in cases.items():
        db = tmp_path / f"{name}.sqlite"
        if extra is None:  # a complete drift history whose meta says it is something else
            DriftStore(db).close()
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE meta SET value = 'someone-elses' WHERE key = 'format'")
        else:
            with sqlite3.connect(db) as conn:
                conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
                conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
                for t in extra:
                    conn.execute(f"CREATE TABLE {t}")
        before, locked = db.read_bytes(), lock_path(db).exists()
        with pytest.raises(InputError, match="is a SQLite database but not a lowprec drift history"):
            DriftStore(db)
        assert db.read_bytes() == before and lock_path(db).exists() == locked, name


def test_a_history_from_before_the_format_row_opens_and_gains_it(tmp_path):
    db = tmp_path / "old.sqlite"
    with DriftStore(db) as s:
        s.record_window(window_row(3, s.start_run({})), [], [])
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'format'")
    with DriftStore(db) as s:
        assert s.meta("format") == "lowprec-drift-history" and s.recorded() == {3}


def test_a_db_under_a_regular_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="afile is not a directory"):
        DriftStore(tmp_path / "afile" / "h.sqlite")
