"""SIGTERM (kill, `timeout`, cron, systemd) to a one-process command: one `Error:` line, exit 143, and
the cleanup Ctrl-C gets (before: a silent exit 143 that left the temporary directory, possibly GBs
of spooled windows, until a later run wrote the same --out). Not in a rank of a data-parallel job,
where torchrun's SIGTERM stops the surviving ranks and the launcher reports the rank that failed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import lowprec.cli
from lowprec.cli import main

ROOT = Path(lowprec.cli.__file__).resolve().parents[2]  # the lowprec this test imported


def test_sigterm_stops_a_command_cleanly_with_one_line_and_exit_143(tmp_path):
    """`data prepare` blocked reading a schema that is a FIFO (no writer): a command that has made
    its temporary output directory (and the parents of --out) and waits, without loading a model."""
    (tmp_path / "day.csv").write_text("ts,clicked,price,user\n1700000000,1,1.5,u1\n")
    os.mkfifo(tmp_path / "schema.toml")
    out = tmp_path / "new1" / "new2" / "out"
    proc = subprocess.Popen([sys.executable, "-m", "lowprec", "data", "prepare", "--format", "csv", "--input",
                             str(tmp_path / "day.csv"), "--schema", str(tmp_path / "schema.toml"), "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (out.parent.is_dir() and any(out.parent.iterdir())) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert [p.name.startswith(".out.tmp-") for p in out.parent.iterdir()] == [True]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "Error: stopped by SIGTERM (kill, timeout, cron or systemd) before the command finished " \
                        "(exit 143)" and err.count("Error") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day.csv", "schema.toml"]  # no tmp dir, no new1/new2


def _catches_sigterm(pid: int) -> bool:
    """Whether process `pid` has a handler for SIGTERM (/proc's SigCgt mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.parametrize("how", ["python -m lowprec", "console script"])
@pytest.mark.parametrize("signum, code, said", [
    (signal.SIGINT, 130, "Error: interrupted (Ctrl-C, SIGINT) before the command finished (exit 130)"),
    (signal.SIGTERM, 143, "Error: stopped by SIGTERM (kill, timeout, cron or systemd) before the command finished "
                          "(exit 143)")])
def test_a_signal_while_lowprec_starts_is_the_same_one_line(how, signum, code, said):
    """qa-common 4: in the ~5 s `import lowprec` spends loading torch and fbgemm_gpu, Ctrl-C was a
    traceback from inside torch and SIGTERM killed the process without a word. The handlers are now
    installed before those imports (lowprec.stopping), in the CLI's process: `--version` never
    reaches the command's own handling, so what answers here is start-up's."""
    script = Path(sys.executable).parent / "lowprec"
    if how == "console script" and not script.is_file():
        pytest.skip("no lowprec console script beside this python")
    cmd = [sys.executable, "-m", "lowprec", "--version"] if how == "python -m lowprec" else [str(script), "--version"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not _catches_sigterm(proc.pid):  # start-up's handler is in: lowprec is importing torch
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err) == (code, "", said + "\n")


def test_sigterm_raises_only_in_one_process_and_ctrl_c_is_unchanged(monkeypatch):
    """The handler is installed for the command and put back after it; never under WORLD_SIZE > 1
    (torchrun's ranks). A Terminated (a KeyboardInterrupt) is exit 143; Ctrl-C stays exit 130."""
    seen = []

    def setup():
        seen.append(signal.getsignal(signal.SIGTERM))
        return False

    monkeypatch.setattr(lowprec.cli.dist, "setup", setup)
    before = signal.getsignal(signal.SIGTERM)
    CliRunner().invoke(main, ["eval"])
    assert seen[-1] is lowprec.cli._raise_terminated and signal.getsignal(signal.SIGTERM) is before
    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    CliRunner().invoke(main, ["eval"])
    assert seen[-1] is before and len(seen) == 2
    monkeypatch.delenv("WORLD_SIZE")

    for raised, code, said in ((lowprec.cli.Terminated, 143, "stopped by SIGTERM"),
                               (KeyboardInterrupt, 130, "interrupted (Ctrl-C, SIGINT)")):
        def stop(raised=raised):
            raise raised()

        monkeypatch.setattr(lowprec.cli, "keep_buffers_in_heap", stop)
        r = CliRunner().invoke(main, ["inspect", "x"])
        assert r.exit_code == code and r.output.startswith(f"Error: {said}") and "Aborted" not in r.output, r.output


def test_a_closed_output_pipe_ends_quietly_with_141_not_as_a_bug(tmp_path):
    """`lowprec eval ... | head -1`: the reader goes away and the next write raises BrokenPipeError,
    which ended as exit 4, "internal error, a bug in lowprec". Now as Unix tools end on SIGPIPE:
    nothing said, exit 141; the command's work (here a dataset) is whole."""
    proc = subprocess.Popen([sys.executable, "-m", "lowprec", "data", "synth", "--out", str(tmp_path / "d"),
                             "--windows", "1", "--rows-per-window", "100"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc.stdout.close()  # the reader gone before the command writes its line
    try:
        err = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 141, err
    assert "Error" not in err and "Traceback" not in err, err
    assert (tmp_path / "d" / "dataset.json").is_file()
