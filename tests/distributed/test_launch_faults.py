"""Faults `lowprec --nproc N` (lowprec.launch) must survive or say in one line: a port taken under
it, a rank killed while a dataset is staged, a rank that hangs. Every wait is bounded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowprec import launch
from tests.distributed.conftest import RANK_TIMEOUT_S, REPO, WAIT_S, env, last_json


def _job_env(monkeypatch) -> None:
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LOWPREC_DIST_TIMEOUT", RANK_TIMEOUT_S)


@pytest.fixture
def held_port():
    """A port some other process holds (another job's gloo connection took it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_port_taken_meanwhile_does_not_fail_the_job(work, monkeypatch, capfd, held_port):
    """qa-1b 8: the launcher chose a free port, released it and torchrun bound it seconds later; a
    port taken in between failed the job (exit 3) with torchrun's traceback. torchrun now binds port
    0 itself: a port the launcher would have chosen may be held by anyone."""
    _job_env(monkeypatch)
    monkeypatch.setattr(launch, "free_port", lambda: held_port)
    code = launch.launch(2, ["eval", "--model", str(work["model"]), "--data", str(work["data"]), "--windows", "1",
                             "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    assert last_json(out)["windows"] and "Traceback" not in err


def test_a_rendezvous_that_cannot_start_is_one_line_without_a_traceback(work, monkeypatch, capfd, held_port):
    """qa-1b 8: whatever stops torchrun's own start (here its store's port taken, as the static
    rendezvous on a chosen port could meet) is said in one line, never as torchrun's traceback."""
    _job_env(monkeypatch)
    monkeypatch.setattr(launch, "RENDEZVOUS", ("--master-addr", "127.0.0.1", "--master-port", str(held_port)))
    code = launch.launch(2, ["eval", "--model", str(work["model"]), "--data", str(work["data"]), "--windows", "1"])
    _, err = capfd.readouterr()
    assert code == 3, err[-3000:]
    assert "Traceback" not in err and err.strip().count("\n") == 0 and err.strip().startswith("Error: "), err[-3000:]
    assert "torchrun could not start the job's ranks (DistNetworkError" in err and "no rank said why" not in err


def _rank_pid(rank: int, marker: str, seconds: float) -> int:
    """The pid of rank `rank` of a `--nproc` job whose command line holds `marker` (bounded wait)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmdline, environ = (d / "cmdline").read_bytes(), (d / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in cmdline and f"RANK={rank}".encode() in environ and \
                    any(e.startswith(b"LOWPREC_EXIT_DIR=") for e in environ):
                return int(d.name)
        time.sleep(0.05)
    raise AssertionError(f"no rank {rank} of a job holding {marker}")


def test_a_killed_rank_of_a_nproc_prepare_leaves_nothing_behind(tmp_path):
    """qa-1b 10: rank 1 killed while the ranks read: torchrun stopped rank 0 with SIGTERM mid-way,
    which left `.c3.tmp-HOST-PID-*/.parts/` and the parent `new/` the run had made, and the launcher
    said "nothing was written". The launcher now removes what the dead ranks left, and says so."""
    from tests.distributed.test_ingest import SCHEMA, write_log

    src = write_log(tmp_path / "a.csv", 60_000)
    (tmp_path / "s.toml").write_text(SCHEMA)
    out = tmp_path / "new" / "c3"
    cmd = [sys.executable, "-m", "lowprec", "--nproc", "2", "data", "prepare", "--format", "csv", "--input", src,
           "--schema", tmp_path / "s.toml", "--out", out]
    code, err = _kill_rank_1_mid_read(cmd, tmp_path, "new/.c3.tmp-*/.parts/part-000001.json", str(out))
    assert code == 3, err[-3000:]
    assert not (tmp_path / "new").exists(), list((tmp_path / "new").rglob("*"))
    assert "nothing was written" not in err and "Traceback" not in err, err[-3000:]
    assert "no temporary file of it is left" in err or "RankFailure" in err, err[-3000:]


def _kill_rank_1_mid_read(cmd: list, root, part_glob: str, arg: str) -> tuple[int, str]:
    """Run `cmd` (a `--nproc 2` ingest), SIGKILL rank 1 (the process whose command line holds `arg`)
    once a staged part matching `part_glob` under `root` appears; (exit code, stderr), every wait bounded."""
    proc = subprocess.Popen(list(map(str, cmd)), cwd=REPO, env=env(LOWPREC_CSV_PART_BYTES="200000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while not list(root.glob(part_glob)) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(_rank_pid(1, arg, WAIT_S), signal.SIGKILL)
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        proc.kill()
        proc.wait(timeout=WAIT_S)
    return proc.returncode, err

def test_a_killed_rank_of_a_nproc_append_leaves_the_dataset_alone_and_no_staging(tmp_path):
    """qa-1b 10, the daily job: `--nproc 2 data append` with rank 1 killed left `.ds.tmp-HOST-PID-*/`
    (its staging parts) beside the dataset until the next write to it."""
    from tests.distributed.conftest import in_process
    from tests.distributed.test_ingest import SCHEMA, write_log

    (tmp_path / "s.toml").write_text(SCHEMA)
    ds = tmp_path / "ds"
    made = in_process("data", "prepare", "--format", "csv", "--input", write_log(tmp_path / "d0.csv", 200),
                      "--schema", tmp_path / "s.toml", "--out", ds, "--window", "day")
    assert made.exit_code == 0, made.output
    before = {p.name: p.read_bytes() for p in ds.iterdir()}
    day = write_log(tmp_path / "d1.csv", 60_000, t0=1_700_200_000)
    cmd = [sys.executable, "-m", "lowprec", "--nproc", "2", "data", "append", "--data", ds, "--input", day]
    code, err = _kill_rank_1_mid_read(cmd, tmp_path, ".ds.tmp-*/**/part-000001.json", str(day))
    assert code == 3, err[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d0.csv", "d1.csv", "ds", "s.toml"], err[-3000:]
    assert {p.name: p.read_bytes() for p in ds.iterdir()} == before
    assert "nothing was written" not in err and "Traceback" not in err, err[-3000:]


def _job_processes(marker: str) -> list[int]:
    """The running processes of a `--nproc` job (LOWPREC_EXIT_DIR set) whose command line holds `marker`."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            cmdline, environ = (d / "cmdline").read_bytes(), (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if d.name.isdigit() and marker.encode() in cmdline and any(e.startswith(b"LOWPREC_EXIT_DIR=") for e in environ):
            found.append(int(d.name))
    return found


def test_torchrun_killed_outright_leaves_no_rank_running_and_nothing_published(tmp_path):
    """qa-5 2: torchrun SIGKILLed (or OOM-killed) left its ranks running: the launcher said "the job
    failed" (exit 3) and the ranks published --out seconds later. The launcher now stops them first."""
    from tests.distributed.test_ingest import SCHEMA, write_log

    src = write_log(tmp_path / "a.csv", 60_000)
    (tmp_path / "s.toml").write_text(SCHEMA)
    out = tmp_path / "new" / "c4"
    cmd = [sys.executable, "-m", "lowprec", "--nproc", "2", "data", "prepare", "--format", "csv", "--input", src,
           "--schema", tmp_path / "s.toml", "--out", out]
    proc = subprocess.Popen(list(map(str, cmd)), cwd=REPO, env=env(LOWPREC_CSV_PART_BYTES="200000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while not list(tmp_path.glob("new/.c4.tmp-*/.parts/part-000001.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
        _rank_pid(1, str(out), WAIT_S)
        torchrun = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and
                    (d / "stat").exists() and _ppid(d) == proc.pid]
        assert len(torchrun) == 1, torchrun
        os.kill(torchrun[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        proc.kill()
        proc.wait(timeout=WAIT_S)
        survivors = _job_processes(str(out))
        for pid in survivors:  # (what the launcher did not stop: not left behind by the test)
            os.kill(pid, signal.SIGKILL)
    assert survivors == [], err[-3000:]
    assert proc.returncode == 3, err[-3000:]
    time.sleep(3)  # (a rank left running publishes its output within seconds)
    assert not out.exists() and not (tmp_path / "new").exists(), list(tmp_path.rglob("*"))
    assert "Traceback" not in err and "the job failed" in err, err[-3000:]


def _ppid(d: Path) -> int:
    try:
        return int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_clean_up_removes_dead_writers_temporaries_and_the_parents_made(tmp_path):
    """What the launcher removes after a failed job, and what it leaves: a live writer's temporary,
    a parent holding something else."""
    from lowprec.launchclean import clean_up, output_paths

    out = tmp_path / "a" / "b" / "c3"
    assert output_paths(["data", "prepare", "--out", str(out), "--input", "x", "--report=r"]) == [
        out, Path(os.path.abspath("r"))]
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=WAIT_S).stdout.strip()
    (out.parent / f".c3.tmp-{host}-{dead}-xyz12345" / ".parts").mkdir(parents=True)
    (out.parent / f".c3.tmp-{host}-{os.getpid()}-live1234").mkdir()
    assert clean_up({out: [out.parent, out.parent.parent]}) == []
    assert [p.name for p in out.parent.iterdir()] == [f".c3.tmp-{host}-{os.getpid()}-live1234"]  # (a live writer's)
    (out.parent / f".c3.tmp-{host}-{os.getpid()}-live1234").rmdir()
    assert clean_up({out: [out.parent, out.parent.parent]}) == [] and not (tmp_path / "a").exists()


def test_clean_up_leaves_another_hosts_temporary_whose_host_extends_ours(tmp_path, monkeypatch):
    """qa-5 1: a failed job on host `vm` removed `.out.tmp-vm-11-4242-abcd` of a live writer on host
    `vm-11` (parsed as PID 11 of this host, absent here). Not this host's: never touched."""
    from lowprec.launchclean import clean_up

    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=WAIT_S).stdout.strip()
    out = tmp_path / "out"
    theirs = [tmp_path / f".out.tmp-vm-{dead}-4242-abcd", tmp_path / f".out.tmp-vm-{dead}-4242-abcdefgh"]
    for d in theirs:
        d.mkdir()
        (d / "weights").write_text("precious")
    ours = tmp_path / f".out.tmp-vm-{dead}-abcdefgh"
    ours.mkdir()
    assert clean_up({out: []}) == []
    assert all((d / "weights").read_text() == "precious" for d in theirs) and not ours.exists()


def test_clean_up_looks_where_a_symlinked_output_is_written(tmp_path):
    """qa-5 3: `--out LINK` (LINK -> tgt/ds): the writer builds `.ds.tmp-*` beside the target; the
    clean-up looked beside the link, left it and said "it left no temporary files"."""
    from lowprec.launchclean import clean_up, output_paths

    (tmp_path / "tgt" / "ds").mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(tmp_path / "tgt" / "ds")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    outs = output_paths(["data", "prepare", "--out", str(tmp_path / "lnk"), f"--report={tmp_path / 'loop'}"])
    assert outs == [tmp_path / "tgt" / "ds", tmp_path / "loop"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=WAIT_S).stdout.strip()
    (tmp_path / "tgt" / f".ds.tmp-{socket.gethostname()}-{dead}-abcdefgh" / ".parts").mkdir(parents=True)
    assert clean_up({o: [] for o in outs}) == []
    assert os.listdir(tmp_path / "tgt") == ["ds"]


def test_clean_up_removes_a_dead_drift_ranks_recalibration_temporaries_beside_the_candidate(tmp_path):
    """qa-5 4: `--nproc drift --on-alarm recalibrate` killed left `.cand.recal-w3-alarmed.h-XXXX.tmp-*`
    beside --candidate (no output option names it) and said "it left no temporary files"."""
    from lowprec.launchclean import clean_up, named_outputs

    cand = tmp_path / "c[1]"
    cand.mkdir()
    args = ["drift", "--reference", "m", "--candidate", str(cand), "--db", str(tmp_path / "h.sqlite"),
            "--on-alarm", "recalibrate"]
    db = tmp_path / "h.sqlite"
    assert named_outputs(args) == [(cand, "c[[]1].recal-*"), (db, "h.sqlite.spill-w*")]
    assert named_outputs(["eval", "--candidate", "x"]) == []
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=WAIT_S).stdout.strip()
    gone = [tmp_path / f".c[1].recal-w3-alarmed.h-cc9b0ce4.tmp-{host}-{dead}-abcdefgh",
            tmp_path / f".c[1].recal-w3.h-cc9b0ce4.calib.json.tmp-{host}-{dead}-abcdefg_"]
    kept = [tmp_path / f".c[1].recal-w3.h-cc9b0ce4.tmp-{host}-{os.getpid()}-abcdefgh",  # (a live writer's)
            tmp_path / f".c[1].recal-w3.h-cc9b0ce4.tmp-{host}-{dead}-4242-abcdefgh",  # (another host's)
            tmp_path / f".c[1].tmp-{host}-{dead}-abcdefgh"]  # (not a recalibration's: not this job's)
    for d in gone + kept:
        d.mkdir()
    assert clean_up({}, named_outputs(args)) == []
    assert not any(d.exists() for d in gone) and all(d.exists() for d in kept)


def test_a_hung_rank_is_said_to_have_not_answered(monkeypatch):
    """qa-1b 16: a rank stopped (SIGSTOP) or hung does not stop at torchrun's SIGTERM and is killed
    with SIGKILL after the others' collective timed out; it was described as killed "by hand, or out
    of memory?". Rank 0's RankFailure now says the collective timed out, and the launcher says so."""
    from lowprec import distributed as dist
    from lowprec.launch import job_errors

    monkeypatch.setenv("LOWPREC_DIST_TIMEOUT", "0.05")
    with pytest.raises(dist.RankFailure) as exc:
        with dist.guarded("x"):
            time.sleep(0.06)
            raise RuntimeError("[gloo] Timed out waiting 50ms for recv operation to complete")
    assert dist.timed_out(str(exc.value)) and "a peer rank hung or was stopped" in str(exc.value)
    with pytest.raises(dist.RankFailure) as exc:
        with dist.guarded("x"):
            raise RuntimeError("Connection closed by peer")
    assert not dist.timed_out(str(exc.value)) and "a peer rank died" in str(exc.value)
    timed = f"RankFailed: RankFailure: rank 0 of 2: collective 'barrier x' {dist.TIMED_OUT} 20s (...): ..."
    assert job_errors({0: timed}, {1: -9}, {0: 3})[1] == (
        "Error: rank 1 did not answer within the timeout (hung, or stopped with SIGSTOP?) and torchrun killed it: "
        "the job stopped; no temporary file of it is left (any a stopped rank left were removed)")
    assert job_errors({0: "RankFailed: RankFailure: ... failed (a peer rank died ...)"}, {1: -9}, {0: 3})[1] == (
        "Error: rank 1 ended without a word (killed by SIGKILL: by hand, or out of memory?): "
        "the job stopped; no temporary file of it is left (any a stopped rank left were removed)")


def test_clean_up_removes_a_dead_ranks_drift_spill_and_search_scratch(tmp_path):
    """QA 8d items 2 and 3: a killed rank left drift's score spill beside --db and search's
    validation scratch beside --out, and the launcher said "it left no temporary files". Both are
    temporary siblings by name now (lowprec.tmpnames), which the launcher removes."""
    from lowprec.launchclean import clean_up, named_outputs

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=WAIT_S).stdout.strip()
    db, plan = tmp_path / "h.sqlite", tmp_path / "p.json"
    gone = [tmp_path / f".h.sqlite.spill-w5.tmp-{host}-{dead}-abcdefgh",
            tmp_path / f".p.json.validate.tmp-{host}-{dead}-abcdefgh"]
    kept = [tmp_path / f".h.sqlite.spill-w5.tmp-{host}-{os.getpid()}-abcdefgh",  # (a live writer's)
            tmp_path / f".p.json.validate.tmp-{host}-{os.getpid()}-abcdefgh"]
    for p in gone + kept:
        p.mkdir()
    named = named_outputs(["drift", "--db", str(db)]) + named_outputs(["search", "--out", str(plan)])
    assert named == [(db, "h.sqlite.spill-w*"), (plan, "p.json.validate")]
    assert clean_up({}, named) == []
    assert not any(p.exists() for p in gone) and all(p.exists() for p in kept)

