"""Shared by the drift tests: one torch thread (two cores shared with other jobs: torch's intra-op
threads only add contention here), the CLI runner and the --json line reader."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from helpers import run_cli as cli  # noqa: F401 (the drift tests import it from here)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


def drift_cmd(pair, data, db, report, *extra) -> list[str]:
    """`lowprec drift` of pair/ref vs pair/cand as a child-process command line (cand may be another
    training of the float model: --allow-unrelated-candidate)."""
    return [sys.executable, "-c", "from lowprec.cli import main; main()", "drift", "--reference", str(pair / "ref"),
            "--candidate", str(pair / "cand"), "--data", str(data), "--windows", "all", "--db", str(db),
            "--report", str(report), "--allow-unrelated-candidate", *extra]


def kill_after_first_window(cmd: list[str], db, timeout: float = 120.0) -> int:
    """Start `cmd` (a drift job) and SIGKILL it as soon as `db` holds a committed window row; returns
    the rows seen. Fails if the job ended before it could be killed."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed, deadline = 0, time.time() + timeout
    while committed < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
                committed = con.execute("SELECT count(*) FROM windows").fetchone()[0]
        except sqlite3.OperationalError:
            pass
    assert proc.poll() is None, "the job ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return committed
