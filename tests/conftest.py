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


@pytest.fixture
def float64() -> Iterator[None]:
    """Models built in float64 (torch's default dtype for the test): batched and separate runs,
    or a formula and its reference, then agree to rounding."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
