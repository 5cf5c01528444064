"""examples/lightning_sweep.py: the Lightning ConvNet sweeps a tiny grid (synthetic images of
Fashion-MNIST's shape, so that it runs without the data set)."""

from __future__ import annotations

from pathlib import Path

import pytest
from example_sweeps import sweep_example

pytest.importorskip("lightning")


def test_lightning_example_sweeps(tmp_path: Path) -> None:
    settings = {"data": "synthetic", "train_size": 256, "test_size": 128, "epochs": 2, "batch": 64}
    grid = {
        "parametrizations": ["mup2"],
        "widths": [8, 16],
        "lr": [0.03],
        "rho": [0.0, 0.1],
        "seeds": [0],
    }
    trials = sweep_example(
        tmp_path,
        "lightning_sweep.py",
        grid=grid,
        metric="accuracy",
        direction="maximize",
        settings=settings,
    )
    assert len(trials) == 4
    for t in trials:
        assert 0.0 <= t.value <= 1.0
        assert sorted(t.intermediate_values) == [0, 1]  # one accuracy per epoch
