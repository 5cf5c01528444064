"""Every committed experiment config validates, with its grid and every trial's training
config (or, for a sweep of a user objective, the objective's entry point), so that a config
prepared for a GPU machine is known good before it gets one."""

from __future__ import annotations

from pathlib import Path

import pytest

from mup2.sweep.config import load_sweep_config
from mup2.sweep.grid import expand, trial_config
from mup2.sweep.user import load_objective

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments").rglob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_and_every_trial_validate(path: Path) -> None:
    cfg = load_sweep_config(path)
    points = expand(cfg)
    assert len(points) == len(set(points)) > 0
    if cfg.user is None:
        for point in points:
            trial_config(cfg, point)  # raises ConfigError on an invalid trial
    else:  # a user objective: it imports and can be called as objective(point, report)
        load_objective(cfg.user.objective, cfg.user.root)
    if path.parent.name == "figure1":  # the width studies
        widths = sorted({p.width for p in points})
        assert len(widths) >= 4 and widths[-1] / widths[0] >= 8
