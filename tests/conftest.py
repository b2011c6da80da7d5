"""Suite-wide fixtures.

The suite runs on two pytest-xdist workers (`make test`), which hand tests out in an order that
changes from run to run. A test that draws from a global random generator (torch's, numpy's,
Python's) without seeding it would then see different numbers on every run; each test starts
from the same seeded state instead, whatever ran before it in its worker.
"""

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
