"""(width x lr x rho x seed x parametrization) sweeps on Optuna storages: of mup2's own training
(:func:`run_sweep` of a config file's :class:`~mup2.config.TrainConfig`) or of the user's own
training function (:func:`run`, with :class:`Point`, :class:`Reporter` and :class:`Diverged`)."""

from mup2.sweep.config import (
    PARAMETRIZATIONS,
    GridConfig,
    SweepConfig,
    UserTrain,
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
from mup2.sweep.launch import SweepResult, run
from mup2.sweep.local import run_sweep
from mup2.sweep.point import Point
from mup2.sweep.store import StoreError, open_storage
from mup2.sweep.user import Diverged, EntryPointError, Reporter, load_objective

__all__ = [
    "GRID_KEYS",
    "PARAMETRIZATIONS",
    "Diverged",
    "EntryPointError",
    "GridConfig",
    "GridPoint",
    "Point",
    "Reporter",
    "StoreError",
    "SweepConfig",
    "SweepResult",
    "SweepState",
    "UserTrain",
    "default_storage",
    "expand",
    "load_objective",
    "load_sweep_config",
    "open_storage",
    "open_sweep",
    "parse_sweep_config",
    "prepare",
    "run",
    "run_sweep",
    "run_worker",
    "stop_on_signals",
    "sweep_state",
    "trial_config",
]
