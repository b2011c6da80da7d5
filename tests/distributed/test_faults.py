"""Faults of a 2-rank job: a killed rank fails the job with a named error and exit code 3 within
the collective timeout, writing nothing; ranks with different inputs are refused at start (exit 2).

The ranks are started by hand with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT) so the test knows each rank's pid; every wait is bounded."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

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
    from lowprec.drift.store import DriftStore

    with DriftStore(db) as s:  # a lost peer is a stop, not bad input or a bug (QA 9b item 4)
        assert [r["status"] for r in s.runs()] == ["interrupted"]
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
    # torchrun's whole environment (WORLD_SIZE alone is refused as stale); neither command joins the group
    e = {**env(), "WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    ok = subprocess.run([sys.executable, "-m", "lowprec", "--help"], capture_output=True, text=True, env=e,
                        cwd=REPO, timeout=WAIT_S)
    assert ok.returncode == 0 and "Usage:" in ok.stdout and ok.stdout.rstrip().splitlines()[-1].split()[0] == "train"
    bad = subprocess.run([sys.executable, "-m", "lowprec", "inspect", "/nonexistent"], capture_output=True, text=True,
                         env=e, cwd=REPO, timeout=WAIT_S)
    assert bad.returncode == 2 and "does not run data-parallel" in bad.stderr


def test_nproc_hands_on_the_ranks_exit_codes(work, tmp_path):
    """torchrun exits 1 whenever a rank fails, so bad input (2) under --nproc looked like a drift
    alarm (1) to a scheduler. The launcher now returns what one process would."""
    from lowprec.launch import job_exit_code

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
    usage = in_process("--nproc", "2", "eval", "--bogus", "1")  # bad usage: refused before any rank starts
    assert usage.exit_code == 2 and usage.output.count("No such option '--bogus'") == 1, usage.output
    assert job_exit_code(1, {0: 1, 1: 0}, 2) == 1  # rank 0's drift alarm
    assert job_exit_code(1, {0: 3, 1: 2}, 2) == 2
    assert job_exit_code(1, {0: 3}, 2) == 3  # rank 1 died without a word
    assert job_exit_code(-9, {}, 2) == 3 and job_exit_code(0, {0: 0, 1: 0}, 2) == 0


def test_the_launcher_prints_each_error_once():
    from lowprec.launch import job_errors

    assert job_errors({0: "bad window", 1: "bad window", 2: "bad window"}) == ["Error: bad window"]
    assert job_errors({0: "rank 2 failed", 1: "shard 1 unreadable", 2: "shard 1 unreadable", 3: "x"}) == [
        "Error: rank 2 failed", "Error (ranks 1, 2): shard 1 unreadable", "Error (rank 3): x"]
    assert job_errors({1: "y"}) == ["Error (rank 1): y"]  # rank 0 stopped before a word
    # rank 0 refused its input mid-job (drift scoring a window): rank 1 lost it, a consequence left unsaid
    lost = "RankFailed: rank 1 of 2: collective 'window 3' failed (a peer rank died ...)"
    assert job_errors({0: "window 3: bad", 1: lost}, codes={0: 2, 1: 3}) == ["Error: window 3: bad"]
    assert job_errors({0: "x", 1: lost}, codes={0: 3, 1: 3}) == ["Error: x", f"Error (rank 1): {lost}"]


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
    from lowprec.launch import EXIT_DIR

    monkeypatch.setenv(EXIT_DIR, str(tmp_path))
    monkeypatch.setenv("RANK", "0")
    BadInput("window 99 not in the data").show()
    assert capsys.readouterr().err == ""
    assert (tmp_path / "error0").read_text() == "window 99 not in the data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["error0"]  # no partial file left


def test_a_bad_timeout_is_refused_naming_the_variable(monkeypatch):
    """1e30 and inf overflowed in timedelta (an internal error), nan passed `<= 0` ("within nans"),
    0 came from one rank only: now exit 2 naming LOWPREC_DIST_TIMEOUT, checked by the launcher
    before any rank starts and by every rank under plain torchrun (`timeout_s`)."""
    import pytest

    from lowprec.distributed import TIMEOUT_ENV, InputError, timeout_s
    from lowprec.launch import launch

    for raw in ("1e30", "inf", "-inf", "nan", "0", "-1", "abc", "86401"):
        monkeypatch.setenv(TIMEOUT_ENV, raw)
        with pytest.raises(InputError, match=f"{TIMEOUT_ENV}='{raw}': give a number of seconds"):
            timeout_s()
        with pytest.raises(InputError, match=TIMEOUT_ENV):
            launch(2, ["eval", "--help"])  # refused before torchrun starts
    for raw, value in (("0.5", 0.5), ("86400", 86400.0), ("", 120.0)):
        monkeypatch.setenv(TIMEOUT_ENV, raw)
        assert timeout_s() == value


def test_a_stale_torchrun_environment_is_refused(monkeypatch):
    """WORLD_SIZE=2 left in a shell made one process wait for a rendezvous and fail with c10d's
    words (exit 3), and ignore --nproc; WORLD_SIZE=abc was a traceback."""
    from lowprec.cli import main

    for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    cases = [({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK, MASTER_ADDR and MASTER_PORT are not"),
             ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a number of processes"),
             ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK='2' is not a rank")]
    for e, message in cases:
        r = CliRunner().invoke(main, ["eval", "--model", "m", "--data", "d", "--windows", "0"], env=e)
        assert r.exit_code == 2 and message in r.output, r.output
    full = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    r = CliRunner().invoke(main, ["--nproc", "2", "eval", "--model", "m", "--data", "d", "--windows", "0"], env=full)
    assert r.exit_code == 2 and "--nproc 2 starts torchrun, but this process already runs under one" in r.output
    e = {**env(), "WORLD_SIZE": "abc"}  # `python -m lowprec` checks it before the CLI runs, too
    bad = subprocess.run([sys.executable, "-m", "lowprec", "inspect", "x"], capture_output=True, text=True, env=e,
                         cwd=REPO, timeout=WAIT_S)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "WORLD_SIZE='abc'" in bad.stderr, bad.stderr


def test_a_bug_on_one_rank_stays_exit_4():
    from lowprec.launch import job_exit_code

    assert job_exit_code(1, {0: 4}, 2) == 4  # rank 1 stopped without a word after rank 0's bug
    assert job_exit_code(1, {0: 0, 1: 4}, 2) == 4 and job_exit_code(1, {0: 3, 1: 4}, 2) == 4
    assert job_exit_code(1, {0: 2, 1: 4}, 2) == 2  # refused input first


def test_ranks_with_different_command_lines_are_refused(work, tmp_path, monkeypatch):
    """Rank 0 with --batch-size 4096 and rank 1 with 300 under plain torchrun gave wrong numbers with
    exit 0 (check_same compared software and input files only); different --windows ended in "peer
    died". The ranks' parsed command lines must match too; paths count only as given or not (hosts
    may mount the same files elsewhere: their contents are compared)."""
    from lowprec import distributed as dist
    from lowprec.cli import main

    lines = []

    def capture(inputs):
        lines.append(dist.command_line())
        raise SystemExit(0)

    monkeypatch.setattr(dist, "check_same", capture)
    other = tmp_path / "model-elsewhere"
    shutil.copytree(work["model"], other)
    for model, extra in ((work["model"], ["--batch-size", "4096"]), (other, ["--batch-size=300"]),
                         (other, ["--batch-size", "4096"])):
        r = CliRunner().invoke(main, ["eval", "--model", str(model), "--data", str(work["data"]), "--windows", "1",
                                      *extra])
        assert r.exit_code == 0, r.output
    assert lines[0]["command"] == "eval" and lines[0]["--model"] == "(a path)" and lines[0]["--batch-size"] == 4096

    def ranks(*commands):
        return [{"software": {"lowprec": "0.1"}, "command line": c, "inputs": {"input 1": "sha"}} for c in commands]

    assert dist.first_difference(ranks(lines[0], lines[2])) is None  # same options, the model at another path
    assert dist.first_difference(ranks(lines[0], lines[1])) == (
        "rank 1 differs from rank 0 in command line: --batch-size is 300 on rank 1, 4096 on rank 0")
    assert dist.first_difference(ranks(lines[0], {**lines[0], "command": "calibrate"})) == (
        "rank 1 differs from rank 0 in command line: command is 'calibrate' on rank 1, 'eval' on rank 0")
    assert dist.command_line() == {}  # outside a command


def _ranks_under(tmp: Path) -> list[int]:
    """Pids of the ranks whose launcher records their codes under `tmp` (its TMPDIR)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(v.startswith(f"LOWPREC_EXIT_DIR={tmp}/".encode()) for v in environ) and \
                any(v.startswith(b"RANK=") for v in environ):
            pids.append(int(proc.name))
    return pids


def test_a_stopped_launcher_stops_its_job(work, tmp_path):
    """SIGTERM (timeout, cron, systemd) or Ctrl-C to `lowprec --nproc N` left torchrun and the ranks
    running: they finished the job and wrote its outputs after the launcher had ended, and
    /tmp/lowprec-exit-* stayed behind. Now torchrun is stopped with its ranks, the temporary
    directory removed, and the launcher exits 128 + the signal (never 1) with one line."""
    out = tmp_path / "calib.json"
    cmd = [sys.executable, "-m", "lowprec", "--nproc", "2", "calibrate", "--model", work["model"], "--data",
           work["data"], "--windows", "0-3", "--out", out]
    proc = subprocess.Popen(list(map(str, cmd)), env=env(TMPDIR=str(tmp_path)), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while len(ranks := _ranks_under(tmp_path)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ranks) == 2 and proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        proc.kill()
        proc.wait(timeout=WAIT_S)
    assert proc.returncode == 143, err
    assert err.count("Error") == 1 and "stopped by SIGTERM" in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("lowprec-exit-*"))
    deadline = time.monotonic() + WAIT_S  # torchrun waited for its ranks; they are gone, or going
    while any(Path(f"/proc/{pid}").exists() for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks)
    assert not out.exists()


def test_a_rank_that_ended_without_a_word_is_named(tmp_path, monkeypatch):
    """A rank killed mid-run (SIGKILL, SIGTERM, the OOM killer) records nothing: the job exited 3 with
    an empty stderr. torchrun's wrapper records how the first failed ranks ended (torchrun lists the
    ranks it stopped itself with SIGTERM too), and the launcher prints one line for them."""
    import pytest
    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from lowprec.launch import EXIT_DIR, first_failures, job_errors, torchrun

    def fails(*_):
        raise ChildFailedError("lowprec", {1: ProcessFailure(1, 11, -9, "<N/A>"), 0: ProcessFailure(0, 10, -15, "<N/A>")})

    monkeypatch.setenv(EXIT_DIR, str(tmp_path))
    monkeypatch.setattr(torch.distributed.run, "run", fails)
    with pytest.raises(SystemExit) as exc:
        torchrun(["x"])
    assert exc.value.code == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["ended1"]
    assert (tmp_path / "ended1").read_text() == "-9"
    assert first_failures({1: -15, 0: -15}) == {1: -15} and first_failures({0: 2, 1: -15}) == {0: 2}

    def stopped(*_):
        raise SignalException("stop", signal.SIGTERM)

    monkeypatch.setattr(torch.distributed.run, "run", stopped)
    with pytest.raises(SystemExit) as exc:
        torchrun(["x"])
    assert exc.value.code == 143
    assert job_errors({}, {1: -9}) == [
        "Error: rank 1 ended without a word (killed by SIGKILL: by hand, or out of memory?): the job stopped; no "
        "temporary file of it is left (any a stopped rank left were removed)"]
    assert job_errors({0: "RankFailure: ..."}, {1: -15, 2: -15}) == ["Error: RankFailure: ...", (
        "Error: ranks 1, 2 ended without a word (killed by SIGTERM: by hand, or out of memory?): the job stopped; no "
        "temporary file of it is left (any a stopped rank left were removed)")]


def test_ctrl_c_exits_130_not_the_alarm_code(monkeypatch):
    """Ctrl-C became click's "Aborted!" with exit 1, which a scheduled drift job reads as an alarm."""
    import lowprec.cli
    from lowprec.cli import main

    def interrupt():
        raise KeyboardInterrupt

    monkeypatch.setattr(lowprec.cli, "keep_buffers_in_heap", interrupt)
    r = CliRunner().invoke(main, ["inspect", "x"])
    assert r.exit_code == 130 and "Aborted" not in r.output
    assert r.output.strip() == "Error: interrupted (Ctrl-C, SIGINT) before the command finished (exit 130)"


def test_the_launcher_starts_its_lines_on_a_fresh_line():
    """A rank stopped mid-way leaves its progress bar's line unfinished: on a terminal the launcher's
    `Error` line began in the middle of it. A log file gets no escape codes, a line break instead."""
    import io

    from lowprec.launch import say

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, log = Terminal("eval:  40%|####"), io.StringIO("eval:  40%|####")
    for stream in (tty, log):
        stream.seek(0, io.SEEK_END)
        say(["Error: x"], stream)
        say([], stream)
    assert tty.getvalue() == "eval:  40%|####\r\x1b[KError: x\n"
    assert log.getvalue() == "eval:  40%|####\nError: x\n"  # (QA 9b item 2: `grep '^Error:'` finds it)


def test_the_launcher_refuses_bad_usage_once_before_any_rank_starts(tmp_path, monkeypatch):
    """`--nproc` took `--nproc` from anywhere in argv (`--nproc=2 eval --nproc 2` ran), parsed only the
    `data` group (so `data synth` and bad `data prepare` options were refused once per rank), and
    click.UsageError raised by a command was printed by every rank."""
    from lowprec import launch as launcher
    from lowprec.cli import main

    def launch(nproc, args):
        raise AssertionError(f"launched {args}")

    monkeypatch.setattr(launcher, "launch", launch)
    r = CliRunner().invoke(main, ["--nproc=2", "eval", "--nproc", "2", "--model", "m", "--data", "d", "--windows", "0"])
    assert r.exit_code == 2 and "No such option '--nproc'" in r.output, r.output
    r = CliRunner().invoke(main, ["--nproc", "2", "data", "synth", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "`data synth` does not run data-parallel" in r.output, r.output
    r = CliRunner().invoke(main, ["--nproc", "2", "data", "prepare", "--format", "csv", "--input", "a.csv"])
    assert r.exit_code == 2 and "Missing option '--out'" in r.output, r.output
    # A rank of a launched job records a command's usage error for the launcher, which prints it once.
    r = CliRunner().invoke(main, ["data", "prepare", "--format", "csv", "--input", "a.csv", "--out", str(tmp_path / "o")],
                           env={launcher.EXIT_DIR: str(tmp_path), "RANK": "1"})
    assert r.exit_code == 2 and "--schema" not in r.output, r.output
    assert (tmp_path / "error1").read_text() == "--format csv needs --schema FILE.toml (see docs/csv-schema.md)"


def test_nproc_far_beyond_the_cores_warns(monkeypatch):
    import os

    from lowprec import launch as launcher
    from lowprec.cli import main

    launched = []
    monkeypatch.setattr(launcher, "launch", lambda nproc, args: launched.append(args) or 0)
    cores = len(os.sched_getaffinity(0))
    args = ["eval", "--model", "m", "--data", "d", "--windows", "0"]
    r = CliRunner().invoke(main, ["--nproc", str(4 * cores), *args])
    assert r.exit_code == 0 and f"warning: --nproc {4 * cores} starts {4 * cores} processes on {cores} core" in r.output
    r = CliRunner().invoke(main, ["--nproc", "2", *args])
    assert r.exit_code == 0 and "warning" not in r.output and launched == [args, args]


def test_a_launcher_killed_outright_takes_its_child_with_it(tmp_path):
    """`lowprec --nproc N` killed with SIGKILL (`timeout -s KILL`, the out-of-memory killer) cannot
    forward anything: torchrun and its ranks ran on and wrote the job's outputs. torchrun is started
    with a parent-death signal (lowprec.launch.stop_with_parent); here a stand-in launcher starts a
    sleeping child the same way and is killed outright."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import functools, os, subprocess, time; from lowprec.launch import stop_with_parent; "
         "c = subprocess.Popen(['sleep', '300'], start_new_session=True, "
         "preexec_fn=functools.partial(stop_with_parent, os.getpid())); print(c.pid, flush=True); time.sleep(300)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _running(child)
        parent.kill()
        parent.wait(timeout=WAIT_S)
        deadline = time.monotonic() + WAIT_S
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child)
    finally:
        parent.kill()
        parent.wait(timeout=WAIT_S)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever reaps it: not always soon in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
