"""Shared by the data-parallel tests: a tiny dataset, a float model and an int8 artifact (dynamic
int8 layers, whose activation ranges depend on which rows share a batch), and runners that start
`python -m lowprec` as one process or as ranks on 127.0.0.1 with every wait bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lowprec.cli import main
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
