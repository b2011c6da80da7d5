"""The drift history: one SQLite file (stdlib sqlite3), one transaction per window, one run at a time.

Guarantees:
- a window is either fully recorded (its row, its layer-clipping rows and its table-error rows,
  committed in one `BEGIN IMMEDIATE ... COMMIT`) or absent: SQLite's rollback journal undoes a
  transaction cut short by a SIGKILL the next time the file is opened;
- one run at a time: `fcntl.flock(LOCK_EX | LOCK_NB)` on `FILE.sqlite.lock` beside the file the
  path resolves to (and on the file itself when it has other hard links: lowprec.drift.dbfile),
  held for the whole run, whatever path (symlink, hard link) reaches the file. The kernel drops the
  lock when the process dies (even on SIGKILL), so there is never a stale lock; a second run
  meanwhile is refused with the holder's pid;
- one (reference, candidate) pair per database, identified by the sha256 of the reference's
  model.safetensors and of the candidate's manifest.json (which lists the sha256 of its weights);
  a run for another pair is refused rather than mixed into the history.

Schema (version 1): `meta` (key/value: schema version, the pair, the baseline window), `runs`
(one row per invocation: paths, hashes, start/finish, status, config JSON), `windows` (one row per
window: both models' metrics, the paired gaps with intervals, DeLong, PSI, staleness, CUSUM state,
decision and reason), `layer_clipping` and `table_error` (per window x layer / table),
`recalibrations` (artifacts written by --on-alarm recalibrate and how they score), `tier_share` and
`recal_tier_share` (tiered tables: each tier's share of a window's lookups, for the deployed
artifact per window and for a recalibrated one on its alarmed window), `window_sources`
(per window what it was computed from: the sha256 of the dataset's dataset.json and the window's row
count, both models' sha256, the [alarm] and [bootstrap] settings its labelled row was judged with
and the [estimate] thresholds its label-free record was, as JSON), `window_labels`
(per labelled window the fingerprint of the labels file its labelled row was computed from); and the
label-free side (lowprec.drift.delayed): `labelfree` (one row per window: the estimate, rank
agreement, |Δp|, PSI, the estimate rule's decision, whether labels were there and when they were
filled in), `attribution` (per window x part) and `window_events` (the history: one row per record
written, label-free or labelled, with its decision). Databases from before a table gain it on open;
their windows have no source row and are not checked. What makes a file a drift history, and the
lock, are lowprec.drift.dbfile's.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

from lowprec.drift.alarm import CusumState
from lowprec.drift.dbfile import FORMAT, acquire_lock, check_ours, lock_path
from lowprec.errors import InputError, user_os_errors
from lowprec.fileio import check_parent

SCHEMA_VERSION = 1
WINDOW_COLUMNS = (
    "window", "run_id", "recorded", "label", "start", "end", "rows",
    "ref_ne", "ref_logloss", "ref_auc", "ref_calibration", "ctr",
    "cand_ne", "cand_logloss", "cand_auc", "cand_calibration",
    "ne_gap", "ne_gap_lo", "ne_gap_hi", "ne_gap_se", "ne_gap_se_delta",
    "auc_diff", "auc_se", "auc_z", "auc_p", "auc_p_drop",
    "cal_gap", "cal_gap_lo", "cal_gap_hi", "psi",
    "baseline_window", "stale_ne", "stale_calibration",
    "cusum_up", "cusum_down", "alarm", "triggers", "reason", "warnings", "staleness", "seconds",
)
CLIP_COLUMNS = ("window", "layer", "clip_rate", "calib_clip_rate", "clipped", "elements",
                "range_lo", "range_hi", "observed_min", "observed_max")
TABLE_COLUMNS = ("window", "table_name", "lookups", "mse", "rel", "sqnr_db", "note")
TIER_COLUMNS = ("window", "table_name", "tier", "lookups", "share")  # lowprec.drift.tiers
RECAL_TIER_COLUMNS = ("alarm_window", "source", "table_name", "tier", "lookups", "share")
SOURCE_COLUMNS = ("window", "data_sha256", "rows", "reference_sha256", "candidate_sha256", "thresholds",
                  "estimate_thresholds")
# the labels a window's labelled row was computed from, and the file's size, mtime and ctime then
# (`sources.labels_stat`: while they hold, the fingerprint is not recomputed)
LABELS_COLUMNS = ("window", "labels_sha256", "labels_stat")
LABELFREE_COLUMNS = (
    "window", "run_id", "recorded", "label", "start", "end", "rows", "has_labels", "filled_run_id", "filled",
    "est_gap", "est_lo", "est_hi", "est_se", "est_se_rows", "est_ne_diff", "base_rate", "ref_mean",
    "cand_mean", "abs_mean", "abs_p50", "abs_p90", "abs_p99", "abs_max", "kendall_tau", "spearman",
    "rank_rows", "psi", "baseline_window", "est_baseline", "est_shift", "est_alarm", "est_triggers",
    "est_reason", "est_warnings",
)
ATTRIBUTION_COLUMNS = ("window", "part", "kl", "share", "rows")
EVENT_COLUMNS = ("window", "run_id", "recorded", "kind", "alarm", "reason")
RECAL_COLUMNS = ("run_id", "recorded", "alarm_window", "source", "calib_windows", "method", "artifact",
                 "artifact_sha256", "calibration", "ne_gap", "ne_gap_lo", "ne_gap_hi", "auc_diff",
                 "cal_gap", "alarm", "closes", "reason")
_TEXT = {"recorded", "label", "start", "end", "triggers", "reason", "warnings", "staleness", "layer",
         "table_name", "note", "source", "calib_windows", "method", "artifact", "artifact_sha256",
         "calibration", "data_sha256", "reference_sha256", "candidate_sha256", "thresholds", "estimate_thresholds", "filled", "labels_sha256", "labels_stat",
         "est_triggers", "est_reason", "est_warnings", "part", "kind"}
_INT = {"id", "window", "run_id", "rows", "tier", "lookups", "baseline_window", "alarm", "clipped", "elements",
        "alarm_window", "closes", "has_labels", "filled_run_id", "rank_rows", "est_alarm"}


def _coltype(c: str) -> str:
    return "TEXT" if c in _TEXT else "INTEGER" if c in _INT else "REAL"


def _create(table: str, cols: tuple[str, ...], tail: str = "", primary: str | None = None) -> str:
    body = ", ".join(f'"{c}" {_coltype(c)}{" PRIMARY KEY" if c == primary else ""}' for c in cols)
    return f"CREATE TABLE IF NOT EXISTS {table} ({body}{', ' + tail if tail else ''})"


SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started TEXT NOT NULL, "
    "finished TEXT, status TEXT NOT NULL, pid INTEGER, reference TEXT, reference_sha256 TEXT, "
    "candidate TEXT, candidate_sha256 TEXT, data TEXT, windows TEXT, calibration TEXT, config TEXT, "
    "lowprec_version TEXT)",
    _create("windows", WINDOW_COLUMNS, primary="window"),
    _create("layer_clipping", CLIP_COLUMNS, 'PRIMARY KEY ("window", layer)'),
    _create("table_error", TABLE_COLUMNS, 'PRIMARY KEY ("window", table_name)'),
    _create("window_sources", SOURCE_COLUMNS, primary="window"),
    _create("window_labels", LABELS_COLUMNS, primary="window"),
    _create("tier_share", TIER_COLUMNS, 'PRIMARY KEY ("window", table_name, tier)'),
    _create("recal_tier_share", RECAL_TIER_COLUMNS, "PRIMARY KEY (alarm_window, source, table_name, tier)"),
    _create("recalibrations", ("id",) + RECAL_COLUMNS, "UNIQUE (alarm_window, source)", primary="id"),
    _create("labelfree", LABELFREE_COLUMNS, primary="window"),
    _create("attribution", ATTRIBUTION_COLUMNS, 'PRIMARY KEY ("window", part)'),
    _create("window_events", ("id",) + EVENT_COLUMNS, primary="id"),
]


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# columns a history written by an older lowprec may lack: added on open
ADDED_LATER = {"window_labels": {"labels_stat"}, "window_sources": {"estimate_thresholds"}}


class DriftStore:
    """An open, locked drift database. Use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise InputError(f"--db {self.path} exists and is not a file")
        check_parent(self.path, "--db")
        check_ours(self.path, SCHEMA, ADDED_LATER)
        lock = lock_path(self.path)
        new_lock = not lock.exists()
        with user_os_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock_fd, self._db_fd = acquire_lock(lock, self.path)
        except BaseException:
            if new_lock:  # a refused run leaves nothing behind
                lock.unlink(missing_ok=True)
            raise
        try:
            self.conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            self.conn.row_factory = sqlite3.Row
            self._init_schema()
        except BaseException as exc:
            self._unlock()
            if new_lock:  # a refused run leaves nothing behind
                lock.unlink(missing_ok=True)
            if isinstance(exc, sqlite3.DatabaseError):
                raise InputError(f"--db {self.path}: not a usable SQLite database ({exc})") from exc
            raise

    def __enter__(self) -> "DriftStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._lock_fd is not None:
            self.conn.close()
            self._unlock()

    def _unlock(self) -> None:
        for fd in (self._db_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)  # releases the flock
        self._lock_fd = self._db_fd = None

    def _init_schema(self) -> None:
        with self.transaction():
            for stmt in SCHEMA:
                self.conn.execute(stmt)
            for table, columns in ADDED_LATER.items():  # older databases
                have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
                for c in sorted(columns - have):
                    self.conn.execute(f'ALTER TABLE {table} ADD COLUMN "{c}" {_coltype(c)}')
            version = self.meta("schema_version")
            if version is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            elif version != str(SCHEMA_VERSION):
                raise InputError(f"{self.path}: drift database schema version {version} is not "
                                 f"supported (this lowprec writes version {SCHEMA_VERSION})")
            if self.meta("format") is None:  # what identifies a drift history (lowprec.drift.dbfile)
                self.set_meta("format", FORMAT)
            # We hold the lock, so a run still marked running was killed.
            self.conn.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")

    def transaction(self) -> "_Transaction":
        return _Transaction(self.conn)

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def check_pair(self, reference: str, reference_sha: str, candidate: str, candidate_sha: str) -> None:
        """Bind an empty database to this pair, or refuse a different pair."""
        with self.transaction():
            ref, cand = self.meta("reference_sha256"), self.meta("candidate_sha256")
            if ref is None and cand is None:
                for k, v in (("reference", reference), ("reference_sha256", reference_sha),
                             ("candidate", candidate), ("candidate_sha256", candidate_sha)):
                    self.set_meta(k, v)
                return
        if (ref, cand) != (reference_sha, candidate_sha):
            which = [w for w, a, b in (("reference", ref, reference_sha), ("candidate", cand, candidate_sha))
                     if a != b]
            raise InputError(
                f"--db {self.path} holds the history of another pair (reference {self.meta('reference')}, "
                f"candidate {self.meta('candidate')}); this run's {' and '.join(which)} differ(s) by sha256. "
                f"Use a new --db for a new pair instead of mixing histories.{self._identity_note(ref, which)}")

    def _identity_note(self, ref: str | None, which: list[str]) -> str:
        """Why an unchanged sharded reference may differ: an older lowprec's identity (float_model)."""
        from lowprec.checkpoint.float_model import identity_note

        return identity_note(self.meta("reference") or "", ref) if "reference" in which else ""

    def start_run(self, info: dict[str, Any]) -> int:
        cols = ("started", "status", "pid", "reference", "reference_sha256", "candidate",
                "candidate_sha256", "data", "windows", "calibration", "config", "lowprec_version")
        row = {"started": now(), "status": "running", "pid": os.getpid(), **info}
        with self.transaction():
            cur = self.conn.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [row.get(c) for c in cols])
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str) -> None:
        with self.transaction():
            self.conn.execute("UPDATE runs SET finished = ?, status = ? WHERE id = ?", (now(), status, run_id))

    def recorded(self) -> set[int]:
        return {r[0] for r in self.conn.execute('SELECT "window" FROM windows')}

    def windows(self) -> list[dict[str, Any]]:
        rows = self.conn.execute('SELECT * FROM windows ORDER BY "window"').fetchall()
        out = [dict(r) for r in rows]
        for r in out:
            for k in ("triggers", "warnings", "staleness"):
                r[k] = json.loads(r[k]) if r[k] else []
        return out

    def previous_state(self, window: int) -> CusumState:
        row = self.conn.execute('SELECT cusum_up, cusum_down FROM windows WHERE "window" < ? '
                                'ORDER BY "window" DESC LIMIT 1', (window,)).fetchone()
        return CusumState() if row is None else CusumState(row[0] or 0.0, row[1] or 0.0)

    def baseline(self) -> dict[str, Any] | None:
        """The float model's staleness baseline: the first recorded window that could be one (enough
        labels, finite NE; chosen in lowprec.drift.record), None until there is one."""
        b = self.meta("baseline_window")
        if b is None:
            return None
        if not re.fullmatch(r"[0-9]+", b):
            raise InputError(f"{self.path}: its meta row baseline_window is {b!r}, not a window number: the "
                             f"history was edited; start a new --db (or restore this one from a copy)")
        row = self.conn.execute('SELECT * FROM windows WHERE "window" = ?', (int(b),)).fetchone()
        return None if row is None else dict(row)

    def sources(self) -> dict[int, dict[str, Any]]:
        """Window -> what it was computed from (windows recorded before this table have none)."""
        return {r["window"]: dict(r) for r in self.conn.execute("SELECT * FROM window_sources")}

    def label_sources(self) -> dict[int, tuple[str | None, str | None]]:
        """Window -> (the fingerprint of the labels its labelled row was computed from, the labels
        file's stat then); windows recorded before this table have none, before the stat None."""
        return {r["window"]: (r["labels_sha256"], r["labels_stat"])
                for r in self.conn.execute("SELECT * FROM window_labels")}

    def set_label_sources(self, sources: list[tuple[int, str, str]]) -> None:
        """(window, fingerprint, stat) of labels files whose bytes are still the recorded ones: their
        new stat, and the fingerprint in its current form (an older history's sampled one replaced)."""
        with self.transaction():
            self.conn.executemany('UPDATE window_labels SET labels_sha256 = ?, labels_stat = ? WHERE "window" = ?',
                                  [(sha, st, w) for w, sha, st in sources])

    def record_window(self, row: dict[str, Any], clipping: list[dict[str, Any]],
                      tables: list[dict[str, Any]], source: dict[str, Any] | None = None,
                      tiers: list[dict[str, Any]] = (), also: Any = None) -> None:
        """All of one window (and what it was computed from, and its tiers' lookup shares) in one
        transaction; `also(store)` writes more in the same transaction (the label-free record,
        lowprec.drift.delayed)."""
        row = dict(row, recorded=now())
        for k in ("triggers", "warnings", "staleness"):
            row[k] = json.dumps(list(row.get(k) or []))
        with self.transaction():
            _insert(self.conn, "windows", WINDOW_COLUMNS, [row])
            _insert(self.conn, "layer_clipping", CLIP_COLUMNS, clipping)
            _insert(self.conn, "table_error", TABLE_COLUMNS, tables)
            _insert(self.conn, "tier_share", TIER_COLUMNS, list(tiers))
            if source is not None:
                _insert(self.conn, "window_sources", SOURCE_COLUMNS, [dict(source, window=row["window"])])
            if row.get("baseline_window") == row["window"]:  # it is its own: the first that can be
                self.set_meta("baseline_window", str(row["window"]))  # (lowprec.drift.signals.baseline_problem)
            if also is not None:
                also(self)

    def tier_windows(self) -> set[int]:
        return {r[0] for r in self.conn.execute('SELECT DISTINCT "window" FROM tier_share')}

    def tier_shares(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute('SELECT * FROM tier_share ORDER BY "window", rowid')]

    def clipping(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute('SELECT * FROM layer_clipping ORDER BY "window", rowid')]

    def table_errors(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute('SELECT * FROM table_error ORDER BY "window", rowid')]

    def recalibration(self, alarm_window: int, source: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM recalibrations WHERE alarm_window = ? AND source = ?",
                                (alarm_window, source)).fetchone()
        return None if row is None else dict(row)

    def recalibrations(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM recalibrations ORDER BY alarm_window, id")]

    def record_recalibration(self, row: dict[str, Any], tiers: list[dict[str, Any]] = ()) -> None:
        """A recalibration and its artifact's tier shares on the alarmed window, in one transaction."""
        with self.transaction():
            _insert(self.conn, "recalibrations", RECAL_COLUMNS, [dict(row, recorded=now())])
            _insert(self.conn, "recal_tier_share", RECAL_TIER_COLUMNS,
                    [dict(t, alarm_window=row["alarm_window"], source=row["source"]) for t in tiers])

    def recal_tier_shares(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM recal_tier_share ORDER BY alarm_window, rowid")]

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Rows into one of the label-free tables or `tier_share` (inside the caller's transaction)."""
        cols = {"labelfree": LABELFREE_COLUMNS, "attribution": ATTRIBUTION_COLUMNS, "window_events": EVENT_COLUMNS,
                "window_sources": SOURCE_COLUMNS, "window_labels": LABELS_COLUMNS, "tier_share": TIER_COLUMNS}[table]
        rows = [{k: json.dumps(list(v)) if isinstance(v, (list, tuple)) else v for k, v in r.items()} for r in rows]
        _insert(self.conn, table, cols, [dict(r, recorded=r.get("recorded") or now()) if "recorded" in cols else r
                                         for r in rows])

    def labelfree(self) -> list[dict[str, Any]]:
        """The label-free record of every window that has one, with `labelled` = its labelled row exists."""
        rows = [dict(r) for r in self.conn.execute(
            'SELECT l.*, w."window" IS NOT NULL AS labelled FROM labelfree l LEFT JOIN windows w '
            'ON w."window" = l."window" ORDER BY l."window"')]
        for r in rows:
            for k in ("est_triggers", "est_warnings"):
                r[k] = json.loads(r[k]) if r[k] else []
        return rows

    def attributions(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute('SELECT * FROM attribution ORDER BY "window", rowid')]

    def events(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM window_events ORDER BY id")]

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY id")]


def _insert(conn: sqlite3.Connection, table: str, cols: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    names = ", ".join(f'"{c}"' for c in cols)
    conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(cols))})",
                     [[r.get(c) for c in cols] for r in rows])


class _Transaction:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
