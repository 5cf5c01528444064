"""Test-wide settings: one torch thread (the suite runs on 2-core machines, often beside other
work, where torch's default thread pool mostly waits on itself), and every test starts from
the same global RNG state, so that none depends on which tests ran before it."""

import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    yield
