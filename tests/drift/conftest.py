"""Shared by the drift tests: one torch thread (two cores shared with other jobs: torch's intra-op
threads only add contention here), the CLI runner and the --json line reader."""

import json

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
