"""Faults of a 2-rank job: a killed rank fails the job with a named error and exit code 3 within
the collective timeout, writing nothing; ranks with different inputs are refused at start (exit 2).

The ranks are started by hand with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT) so the test knows each rank's pid; every wait is bounded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.distributed.conftest import (RANK_TIMEOUT_S, WAIT_S, env, in_process, kill_rank_when, lowprec, start_ranks,
                                        wait_for)
from tests.helpers import REPO, make_tiny_dataset


def test_killed_rank_fails_the_drift_job_cleanly(work, tmp_path):
    data = make_tiny_dataset(tmp_path / "big", windows=3, rows=30000, tables=(60, 25, 9), hotness=(1, 3, 1))
    db, report = tmp_path / "drift.sqlite", tmp_path / "report"
    args = ("drift", "--reference", work["model"], "--candidate", work["art"], "--data", data,
            "--windows", "0-2", "--db", db, "--report", report, "--batch-size", "1024")
    procs = start_ranks([args, args], tmp_path)
    waited = kill_rank_when(procs, lambda: wait_for(tmp_path / "rank0.err", "drift window 0", WAIT_S))  # rank 0 scores
    err = (tmp_path / "rank0.err").read_text()
    assert procs[0].returncode == 3, err[-3000:]
    assert "RankFailure" in err and "rank 0 of 2" in err
    assert waited < 2 * float(RANK_TIMEOUT_S)  # bounded by the collective timeout, not by WAIT_S
    assert not report.exists()  # the report is written only after every window
    # A rerun completes; the database holds every window once.
    again = lowprec(*args, "--json", nproc=2)
    assert again.returncode in (0, 1), again.stderr[-3000:]
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert [w["window"] for w in result["windows"]] == [0, 1, 2]
    assert not list(tmp_path.glob(".drift.sqlite.spill-*"))


def test_ranks_with_different_inputs_are_refused(work, tmp_path):
    other = tmp_path / "model-copy"
    shutil.copytree(work["model"], other)
    cfg = other / "config.json"
    cfg.write_text(cfg.read_text() + "\n")  # same model, one byte more: a different file
    args = [("eval", "--model", m, "--data", work["data"], "--windows", "1") for m in (work["model"], other)]
    procs = start_ranks(args, tmp_path)
    for p in procs:
        p.communicate(timeout=WAIT_S)
    for r, p in enumerate(procs):
        err = (tmp_path / f"rank{r}.err").read_text()
        assert p.returncode == 2, err[-2000:]
        assert "rank 1 differs from rank 0 in inputs" in err and "config.json" in err


def test_a_rank_leaves_with_its_exit_code_and_flushed_output():
    """Under torchrun (WORLD_SIZE > 1) `python -m lowprec` ends with os._exit after the command, so
    a gloo thread freeing a finished collective cannot meet the interpreter's finalisation (a rank
    abort seen ~1 run in 3 beside other work): the exit code and the printed output must survive."""
    e = {**env(), "WORLD_SIZE": "2"}
    ok = subprocess.run([sys.executable, "-m", "lowprec", "--help"], capture_output=True, text=True, env=e,
                        cwd=REPO, timeout=WAIT_S)
    assert ok.returncode == 0 and "Usage:" in ok.stdout and ok.stdout.rstrip().splitlines()[-1].split()[0] == "train"
    bad = subprocess.run([sys.executable, "-m", "lowprec", "inspect", "/nonexistent"], capture_output=True, text=True,
                         env=e, cwd=REPO, timeout=WAIT_S)
    assert bad.returncode == 2 and "does not run data-parallel" in bad.stderr


def test_nproc_hands_on_the_ranks_exit_codes(work, tmp_path):
    """torchrun exits 1 whenever a rank fails, so bad input (2) under --nproc looked like a drift
    alarm (1) to a scheduler. The launcher now returns what one process would."""
    from lowprec.distributed import job_exit_code

    bad = lowprec("eval", "--model", work["model"], "--data", work["data"], "--windows", "99", nproc=2)
    assert bad.returncode == 2, bad.stderr[-2000:]
    one = in_process("eval", "--model", tmp_path / "nonexistent", "--data", work["data"], "--windows", "1")
    assert one.exit_code == 2 and "FileNotFoundError" not in one.output, one.output
    # drift: rank 1 opened the missing dataset before rank 0's word and died, so rank 0's broadcast of
    # its InputError failed and a RankFailure (gloo's "Connection reset by peer") replaced it, then
    # rank 1's own error followed: two lines. Now only rank 0 checks the inputs first: its one line.
    args = ("drift", "--reference", work["model"], "--candidate", work["art"], "--data", tmp_path / "nonexistent",
            "--windows", "1", "--db", tmp_path / "d.sqlite", "--report", tmp_path / "report")
    missing = lowprec(*args, nproc=2)
    assert missing.returncode == 2 and "FileNotFoundError" not in missing.stderr, missing.stderr[-2000:]
    assert missing.stderr.strip() == in_process(*args).output.strip(), missing.stderr  # one process's line
    for r in (bad, missing):  # one `Error:` line for the job, not one a rank, nor torchrun's traceback and box
        assert r.stderr.count("Error") == 1 and "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr, r.stderr
        assert "exitcode" not in r.stderr and r.stdout == "", r.stderr
    usage = lowprec("eval", "--bogus", "1", nproc=2)  # bad usage: refused before any rank starts
    assert usage.returncode == 2 and usage.stderr.count("No such option '--bogus'") == 1, usage.stderr
    assert job_exit_code(1, {0: 1, 1: 0}, 2) == 1  # rank 0's drift alarm
    assert job_exit_code(1, {0: 3, 1: 2}, 2) == 2
    assert job_exit_code(1, {0: 3}, 2) == 3  # rank 1 died without a word
    assert job_exit_code(-9, {}, 2) == 3 and job_exit_code(0, {0: 0, 1: 0}, 2) == 0


def test_the_launcher_prints_each_error_once():
    from lowprec.distributed import job_errors

    assert job_errors({0: "bad window", 1: "bad window", 2: "bad window"}) == ["Error: bad window"]
    assert job_errors({0: "rank 2 failed", 1: "shard 1 unreadable", 2: "shard 1 unreadable", 3: "x"}) == [
        "Error: rank 2 failed", "Error (ranks 1, 2): shard 1 unreadable", "Error (rank 3): x"]
    assert job_errors({1: "y"}) == ["Error (rank 1): y"]  # rank 0 stopped before a word


def test_drift_ranks_leave_bad_input_to_rank_0(monkeypatch):
    """Rank 0 checks drift's inputs and tells the others the windows, or that it stopped: they then
    end without an error of their own ("rank 0 refused the job" was a second `Error:` line), and rank
    0's error stays the job's even when its word cannot reach them (it was replaced by a RankFailure)."""
    import pytest

    from lowprec import distributed as dist
    from lowprec.drift.follower import lead, rank0_windows
    from lowprec.errors import InputError

    monkeypatch.setattr(dist, "active", lambda: True)
    said = []

    def broadcast(obj, what):
        said.append(obj)
        return obj

    monkeypatch.setattr(dist, "broadcast_json", broadcast)

    def refuse(announce):
        raise InputError("--windows: window 9 not in the dataset")

    with pytest.raises(InputError, match="window 9"):
        lead(refuse)
    monkeypatch.setattr(dist, "broadcast_json", lambda obj, what: said[-1])  # what rank 1 hears
    assert rank0_windows() is None
    said.append({"todo": [2, 3]})
    assert rank0_windows() == [2, 3]

    def peer_gone(obj, what):
        raise dist.RankFailure("rank 0 of 2: collective 'drift plan' failed: Connection reset by peer")

    monkeypatch.setattr(dist, "broadcast_json", peer_gone)
    with pytest.raises(InputError, match="window 9"):
        lead(refuse)


def test_under_the_launcher_rank_0_leaves_its_error_to_it(tmp_path, monkeypatch, capsys):
    """torchrun stops the other ranks as soon as one fails: rank 0 stopped between recording its
    error and printing it left a `--nproc` job that exited 2 in silence. Ranks record, the launcher
    prints."""
    from lowprec.cli import BadInput
    from lowprec.distributed import EXIT_DIR

    monkeypatch.setenv(EXIT_DIR, str(tmp_path))
    monkeypatch.setenv("RANK", "0")
    BadInput("window 99 not in the data").show()
    assert capsys.readouterr().err == ""
    assert (tmp_path / "error0").read_text() == "window 99 not in the data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["error0"]  # no partial file left
