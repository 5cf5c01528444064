"""Sweeps on Optuna: one study per sweep, one enqueued trial per grid point, workers that drain it.

The storage is the record of every run. Each grid point is enqueued once with its parameters
fixed; workers (processes on any machine that reaches the storage) pop waiting trials until none
is left. A worker's heartbeat marks its running trial; a trial whose heartbeat stops (its worker
was killed) is failed and enqueued again, up to ``max_retries`` times. A finished trial is never
rerun: resuming enqueues only the points with no finished, waiting or running trial.

Trial record: ``params`` = :class:`~mup2.sweep.grid.GridPoint` (also in the user attribute
``grid``, set when it is enqueued); ``value`` = final test accuracy (the last finite epoch's, 0
if none); user attributes ``status`` (``ok``/``unstable``),
``test_accuracy``, ``test_loss``, ``seconds``, ``metrics`` (one dict per epoch). The study's
user attributes hold the sweep config (``sweep``) and ``parametrizations`` (name -> scheme and
scaling, so the ρ = 0 runs shared by one scheme can be found).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from mup2.config import ConfigError
from mup2.data import DataSplits
from mup2.sweep.config import PARAMETRIZATIONS, SweepConfig, parse_sweep_config
from mup2.sweep.grid import GridPoint, expand, scheme_of, trial_config
from mup2.train import load_data, train

__all__ = [
    "SweepState",
    "default_storage",
    "open_storage",
    "prepare",
    "run_worker",
    "sweep_state",
    "wait_for_stale",
]

_KEYS = ("parametrization", "width", "lr", "rho", "seed")


def default_storage(cfg: SweepConfig, run_dir: str | Path) -> str:
    """``cfg.storage``, else an SQLite file ``sweep.db`` in ``run_dir``."""
    if cfg.storage:
        return cfg.storage
    path = Path(run_dir).resolve() / "sweep.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_storage(url: str, heartbeat_seconds: int = 10, max_retries: int = 2) -> RDBStorage:
    """An Optuna RDB storage with heartbeats; stale trials are retried up to ``max_retries``."""
    sqlite = url.startswith("sqlite")
    # SQLite ignores SELECT ... FOR UPDATE, so two workers could both pop one waiting trial:
    # take the database's write lock at the start of every transaction instead.
    kwargs = {"connect_args": {"timeout": 120, "isolation_level": None}} if sqlite else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=heartbeat_seconds,
            grace_period=3 * heartbeat_seconds,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retries),
        )
    if sqlite:
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        sqlalchemy.event.listen(
            storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE")
        )
        storage.engine.dispose()  # connections made before the listeners are dropped
    return storage


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never wait for the writer, and a commit needs no fsync of the database file.
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _point(trial: FrozenTrial) -> GridPoint | None:
    grid = trial.user_attrs.get("grid")
    return GridPoint(**{k: grid[k] for k in _KEYS}) if isinstance(grid, dict) else None


@dataclass(frozen=True)
class SweepState:
    """Grid points by the state of their newest trial."""

    total: int
    complete: int
    running: int
    waiting: int
    failed: int
    unstable: int

    @property
    def done(self) -> bool:
        return self.complete + self.failed >= self.total and not (self.running or self.waiting)


def sweep_state(study: optuna.Study, points: list[GridPoint]) -> SweepState:
    """Count grid points by state (a point with a finished trial counts as complete)."""
    best: dict[GridPoint, FrozenTrial] = {}
    rank = {TrialState.COMPLETE: 3, TrialState.RUNNING: 2, TrialState.WAITING: 1}
    for t in study.get_trials(deepcopy=False):
        p = _point(t)
        if p is not None and (p not in best or rank.get(t.state, 0) >= rank.get(best[p].state, 0)):
            best[p] = t
    states = [best[p].state if p in best else None for p in points]
    unstable = sum(
        1 for p in points if p in best and best[p].user_attrs.get("status") == "unstable"
    )
    return SweepState(
        total=len(points),
        complete=states.count(TrialState.COMPLETE),
        running=states.count(TrialState.RUNNING),
        waiting=states.count(TrialState.WAITING),
        failed=sum(1 for s in states if s in (TrialState.FAIL, None)),
        unstable=unstable,
    )


def prepare(cfg: SweepConfig, storage: str) -> tuple[optuna.Study, list[GridPoint]]:
    """Create (or reopen) the sweep's study and enqueue every grid point that has no finished,
    waiting or running trial. Every point's training config is validated first, so an invalid
    sweep fails before anything runs. A study may be reopened with its grid grown (more widths,
    η, ρ, seeds, parametrizations or ``extra`` blocks: every old point still in it), which
    records the new config; any other change of the config is an error."""
    points = expand(cfg)
    for point in points:
        trial_config(cfg, point)  # raises ConfigError naming the point
    study = optuna.create_study(
        study_name=cfg.name,
        storage=open_storage(storage, cfg.heartbeat_seconds, cfg.max_retries),
        direction="maximize",
        load_if_exists=True,
    )
    saved = study.user_attrs.get("sweep")
    if saved is None or _grows(parse_sweep_config(saved), cfg):
        study.set_user_attr("sweep", cfg.to_dict())
        study.set_user_attr(
            "parametrizations",
            {
                name: {"scheme": scheme_of(cfg, name), "scaling": PARAMETRIZATIONS[name][1]}
                for name in dict.fromkeys(p.parametrization for p in points)
            },
        )
    live = {TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING}
    have = {_point(t) for t in study.get_trials(deepcopy=False) if t.state in live}
    for point in points:
        if point not in have:
            study.enqueue_trial(point.params(), user_attrs={"grid": point.params()})
    return study, points


def _grows(old: SweepConfig, new: SweepConfig) -> bool:
    """Whether ``new`` differs from ``old`` (raises :class:`ConfigError` unless only by a grown
    grid; ``workers`` and ``storage`` may always differ)."""
    ignore = {"workers": 0, "storage": None, "grid": None}  # where and how fast, not what
    a, b = old.to_dict() | ignore, new.to_dict() | ignore
    if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
        raise ConfigError(
            f"study {new.name!r} was made by a different sweep config (only the grid may grow); "
            "give this sweep another name (or storage) to start a new one"
        )
    lost = set(expand(old)) - set(expand(new))
    if lost:
        raise ConfigError(
            f"study {new.name!r}: the grid may only grow, and this config drops "
            f"{len(lost)} of its points (e.g. {min(lost).params()}); keep them in the grid"
        )
    return old.grid != new.grid


class _Objective:
    """Runs enqueued grid points; loads each dataset once per worker process."""

    def __init__(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        self.data: dict[str, DataSplits] = {}

    def __call__(self, trial: optuna.Trial) -> float:
        if "grid" not in trial.user_attrs:  # another worker took the last waiting point
            trial.study.stop()
            raise optuna.TrialPruned("no grid point left")
        point = _suggest(trial, GridPoint(**trial.user_attrs["grid"]))
        try:
            config = trial_config(self.cfg, point)
            key = json.dumps(config.data.model_dump(mode="json"), sort_keys=True)
            if key not in self.data:
                self.data[key] = load_data(config.data)
            result = train(config, data=self.data[key])
        except Exception as exc:  # recorded; the trial fails and the sweep goes on
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        for name, value in result.to_dict().items():
            if name != "diverged_at":
                trial.set_user_attr(name, value)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return result.test_accuracy if result.test_accuracy is not None else 0.0


def _suggest(trial: optuna.Trial, point: GridPoint) -> GridPoint:
    """Record the enqueued point as the trial's parameters. Numbers get one-point ranges, whose
    distributions stay compatible however the grid grows (Optuna refuses a categorical
    parameter whose choices change within a study)."""
    return GridPoint(
        trial.suggest_categorical("parametrization", list(PARAMETRIZATIONS)),
        trial.suggest_int("width", point.width, point.width),
        trial.suggest_float("lr", point.lr, point.lr),
        trial.suggest_float("rho", point.rho, point.rho),
        trial.suggest_int("seed", point.seed, point.seed),
    )


def run_worker(
    storage: str,
    study_name: str,
    *,
    threads: int = 1,
    max_trials: int | None = None,
    on_trial: Callable[[FrozenTrial], None] | None = None,
) -> int:
    """Run waiting grid points of ``study_name`` until none is left (or ``max_trials``); returns
    how many this worker ran. Stale trials of dead workers are failed and re-enqueued as it goes.
    ``threads``: torch threads for this process (1 per worker on a shared CPU)."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(logging.WARNING)
    probe = optuna.load_study(study_name=study_name, storage=storage)
    cfg = parse_sweep_config(probe.user_attrs["sweep"])
    study = optuna.load_study(
        study_name=study_name,
        storage=open_storage(storage, cfg.heartbeat_seconds, cfg.max_retries),
        sampler=optuna.samplers.RandomSampler(),
    )
    _fail_stale(study)
    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return 0
    # No callback polls the queue (that costs a read of every waiting trial per trial): when it
    # is empty, Optuna hands out a fresh trial, which the objective prunes and stops on.
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = []
    if on_trial is not None:
        callbacks.append(lambda _s, t: on_trial(t))
    ran = 0

    def count(_s: optuna.Study, t: FrozenTrial) -> None:
        nonlocal ran
        ran += int(t.state != TrialState.PRUNED)

    study.optimize(
        _Objective(cfg),
        n_trials=max_trials,
        callbacks=[count, *callbacks],
        catch=(Exception,),
        gc_after_trial=False,
    )
    return ran


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def wait_for_stale(study: optuna.Study, cfg: SweepConfig) -> None:
    """Let running trials without a live worker go stale, then fail and re-enqueue them."""
    time.sleep(3 * cfg.heartbeat_seconds + 1)
    _fail_stale(study)
