"""(width x lr x rho x seed x parametrization) sweeps on Optuna storages."""

from mup2.sweep.config import (
    PARAMETRIZATIONS,
    GridConfig,
    SweepConfig,
    load_sweep_config,
    parse_sweep_config,
)
from mup2.sweep.engine import SweepState, default_storage, prepare, run_worker, sweep_state
from mup2.sweep.grid import GridPoint, expand, trial_config
from mup2.sweep.local import run_sweep

__all__ = [
    "PARAMETRIZATIONS",
    "GridConfig",
    "GridPoint",
    "SweepConfig",
    "SweepState",
    "default_storage",
    "expand",
    "load_sweep_config",
    "parse_sweep_config",
    "prepare",
    "run_sweep",
    "run_worker",
    "sweep_state",
    "trial_config",
]
