"""Faults `lowprec --nproc N` (lowprec.launch) must survive or say in one line: a port taken under
it, a rank killed while a dataset is staged, a rank that hangs. Every wait is bounded."""

from __future__ import annotations

import socket

import pytest

from lowprec import launch
from tests.distributed.conftest import RANK_TIMEOUT_S, last_json


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
    assert "Traceback" not in err and err.strip().count("\n") == 0 and err.startswith("Error: "), err[-3000:]
    assert "torchrun could not start the job's ranks (DistNetworkError" in err and "no rank said why" not in err
