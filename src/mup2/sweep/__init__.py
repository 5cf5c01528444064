"""(width x lr x rho x seed x parametrization) sweeps on Optuna storages."""

from mup2.sweep.config import (
    PARAMETRIZATIONS,
    GridConfig,
    SweepConfig,
    load_sweep_config,
    parse_sweep_config,
)
from mup2.sweep.engine import (
    SweepState,
    default_storage,
    open_sweep,
    prepare,
    run_worker,
    stop_on_signals,
    sweep_state,
)
from mup2.sweep.grid import GRID_KEYS, GridPoint, expand, trial_config
from mup2.sweep.local import run_sweep
from mup2.sweep.store import StoreError, open_storage

__all__ = [
    "GRID_KEYS",
    "PARAMETRIZATIONS",
    "GridConfig",
    "GridPoint",
    "StoreError",
    "SweepConfig",
    "SweepState",
    "default_storage",
    "expand",
    "load_sweep_config",
    "open_storage",
    "open_sweep",
    "parse_sweep_config",
    "prepare",
    "run_sweep",
    "run_worker",
    "stop_on_signals",
    "sweep_state",
    "trial_config",
]
