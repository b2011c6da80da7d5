"""Shared by the drift tests: one torch thread (two cores shared with other jobs: torch's intra-op
threads only add contention here), the CLI runner and the --json line reader."""

import json

import pytest
import torch
from click.testing import CliRunner

from lowprec.cli import main


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])
