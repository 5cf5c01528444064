"""examples/plain_loop_sweep.py: the plain-loop template sweeps a tiny grid."""

from __future__ import annotations

from pathlib import Path

from example_sweeps import sweep_example


def test_plain_loop_example_sweeps(tmp_path: Path) -> None:
    grid = {
        "parametrizations": ["mup2"],
        "widths": [32, 64],
        "lr": [0.1],
        "rho": [0.0, 0.1],
        "seeds": [0],
    }
    trials = sweep_example(
        tmp_path,
        "plain_loop_sweep.py",
        grid=grid,
        metric="accuracy",
        direction="maximize",
        settings={"epochs": 2},
    )
    assert len(trials) == 4
    assert {(t.params["width"], t.params["rho"]) for t in trials} == {
        (w, r) for w in (32, 64) for r in (0.0, 0.1)
    }
    for t in trials:
        assert 0.3 < t.value <= 1.0  # 10 classes: well above chance after 2 epochs
        assert sorted(t.intermediate_values) == [0, 1]
        assert set(t.user_attrs["final"]) == {"accuracy", "loss"}
