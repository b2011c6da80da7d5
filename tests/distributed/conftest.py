"""Shared by the data-parallel tests: a tiny dataset, a float model and an int8 artifact (dynamic
int8 layers, whose activation ranges depend on which rows share a batch), and runners that start
`python -m lowprec` as one process or as ranks on 127.0.0.1 with every wait bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lowprec.cli import main
from lowprec.launch import free_port
from tests.helpers import REPO, make_tiny_dataset

WAIT_S = 240  # the longest any test waits for a process (start-up is ~3-10 s idle, 20-45 s at load 15 on 2 cores)
RANK_TIMEOUT_S = "20"  # LOWPREC_DIST_TIMEOUT of the ranks


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    out.update({"OMP_NUM_THREADS": "1", "LOWPREC_DIST_TIMEOUT": RANK_TIMEOUT_S, **extra})
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def lowprec(*args, nproc: int = 1) -> subprocess.CompletedProcess:
    """`python -m lowprec [--nproc N] ARGS` (torchrun when N > 1)."""
    cmd = [sys.executable, "-m", "lowprec", *(["--nproc", str(nproc)] if nproc > 1 else []), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_S, env=env(), cwd=REPO)


def in_process(*args) -> object:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        torch.set_num_threads(n)


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def start_ranks(args_of_rank, logs: Path) -> list[subprocess.Popen]:
    port = str(free_port())
    procs = []
    for r, args in enumerate(args_of_rank):
        e = env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(len(args_of_rank)), LOCAL_WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        err = open(logs / f"rank{r}.err", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "lowprec", *map(str, args)], env=e, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=err, text=True))
    return procs


def wait_for(path: Path, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}: {path.read_text()[-2000:]}")


def kill_rank_when(procs: list[subprocess.Popen], ready, victim: int = 1) -> float:
    """Once `ready()` returns, SIGKILL rank `victim` and wait (bounded) for rank 0 to leave; the
    seconds rank 0 took. Every rank is reaped, whatever fails."""
    try:
        ready()
        procs[victim].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        procs[0].communicate(timeout=WAIT_S)
        return time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=WAIT_S)


@pytest.fixture(scope="package")
def work(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dp")
    data = make_tiny_dataset(d / "data", windows=4, rows=6000, tables=(60, 25, 9), hotness=(1, 3, 1))
    r = in_process("train", "--data", data, "--windows", "0", "--out", d / "model", "--epochs", "1",
                   "--batch-size", "256")
    assert r.exit_code == 0, r.output
    r = in_process("convert", "--model", d / "model", "--precision", "int8", "--layer-precision", "int8",
                   "--out", d / "art")
    assert r.exit_code == 0, r.output
    return {"dir": d, "data": data, "model": d / "model", "art": d / "art"}
