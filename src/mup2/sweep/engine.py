"""Sweeps on Optuna: one study per sweep, one enqueued trial per grid point, workers that drain it.

The storage is the record of every run. Each grid point is enqueued once with its parameters
fixed (under the store's lock, :func:`mup2.sweep.store.store_lock`, so two drivers starting
together queue it once); workers (processes on any machine that reaches the storage) claim
waiting trials until none is waiting or running. A worker records itself on the trial it claims
(:mod:`mup2.sweep.owner`) and sends heartbeats; a running trial whose worker is gone (certainly
dead on this machine, or silent for :data:`~mup2.sweep.store.STALE_HEARTBEATS` heartbeat
intervals) is failed and enqueued again, up to ``max_retries`` times, and an interrupted one is
enqueued again at once. A finished trial is never rerun: resuming enqueues only the points with
no finished, waiting or running trial. No trial is made but for a grid point.

Trial record: ``params`` = :class:`~mup2.sweep.grid.GridPoint` (also in the user attribute
``grid``, set when it is enqueued); ``value`` = final test accuracy (the last finite epoch's, 0
if none); user attributes ``status`` (``ok``/``unstable``), ``test_accuracy``, ``test_loss``,
``seconds``, ``metrics`` (one dict per epoch), ``worker`` (host:pid) and, for a failed trial,
``error``. The study's user attributes hold the sweep config (``sweep``) and
``parametrizations`` (name -> scheme and scaling, so the ρ = 0 runs shared by one scheme can be
found).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from mup2.config import ConfigError, TrainConfig
from mup2.data import DataSplits
from mup2.sweep.config import PARAMETRIZATIONS, SweepConfig, parse_sweep_config
from mup2.sweep.grid import GRID_KEYS, GridPoint, expand, scheme_of, trial_config
from mup2.sweep.owner import OWNER, is_dead, me, requeue
from mup2.sweep.store import StoreError, open_storage, redact, store_errors, store_lock
from mup2.train import load_data, resolve_device, train

__all__ = [
    "SweepState",
    "default_storage",
    "open_sweep",
    "prepare",
    "run_worker",
    "stop_on_signals",
    "sweep_state",
]


def default_storage(cfg: SweepConfig, run_dir: str | Path) -> str:
    """``cfg.storage``, else an SQLite file ``sweep.db`` in ``run_dir``."""
    if cfg.storage:
        return cfg.storage
    path = Path(run_dir).resolve() / "sweep.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _point(trial: FrozenTrial) -> GridPoint | None:
    grid = trial.user_attrs.get("grid")
    return GridPoint(**{k: grid[k] for k in GRID_KEYS}) if isinstance(grid, dict) else None


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
        """Nothing is left to run (some points may have failed)."""
        return self.complete + self.failed >= self.total and not (self.running or self.waiting)

    @property
    def finished(self) -> bool:
        """Every grid point has a completed trial."""
        return self.complete == self.total


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
    waiting or running trial, under the store's lock (any number of drivers may start at once:
    each point is queued once). Every point's training config is validated first, so an invalid
    sweep fails before anything is written. A study may be reopened with its grid grown (more
    widths, η, ρ, seeds, parametrizations or ``extra`` blocks: every old point still in it),
    which records the new config; any other change of the config is an error."""
    points = expand(cfg)
    for point in points:
        trial_config(cfg, point)  # raises ConfigError naming the point
    store = open_storage(storage, cfg.heartbeat_seconds, cfg.max_retries, create=True)
    with store_lock(storage):
        study = optuna.create_study(
            study_name=cfg.name, storage=store, direction="maximize", load_if_exists=True
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


def open_sweep(storage: str, name: str) -> tuple[optuna.Study, SweepConfig, list[GridPoint]]:
    """The study of the sweep ``name`` in an existing ``storage``, its config and grid points;
    :class:`~mup2.sweep.store.StoreError` when there is no such sweep."""
    probe = open_storage(storage)
    with store_errors(storage):
        names = optuna.get_all_study_names(storage=probe)
        if name not in names:
            listed = ", ".join(repr(n) for n in sorted(names)) or "none"
            raise StoreError(
                f"no sweep {name!r} in {redact(storage)} (studies there: {listed}); check "
                "--study, or start the sweep with `mup2 sweep CONFIG`"
            )
        saved = optuna.load_study(study_name=name, storage=probe).user_attrs.get("sweep")
        probe.engine.dispose()
        if not isinstance(saved, dict):
            raise StoreError(
                f"study {name!r} in {redact(storage)} is not a mup2 sweep (it has no sweep "
                "config); check --study"
            )
        cfg = parse_sweep_config(saved)
        study = optuna.load_study(
            study_name=name,
            storage=open_storage(storage, cfg.heartbeat_seconds, cfg.max_retries),
            sampler=optuna.samplers.RandomSampler(),
        )
    return study, cfg, expand(cfg)


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
        self._data: dict[str, DataSplits] = {}

    def data(self, config: TrainConfig) -> DataSplits:
        """The dataset of ``config`` (loaded on first use)."""
        key = json.dumps(config.data.model_dump(mode="json"), sort_keys=True)
        if key not in self._data:
            self._data[key] = load_data(config.data)
        return self._data[key]

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            point = _suggest(trial, GridPoint(**trial.user_attrs["grid"]))
            config = trial_config(self.cfg, point)
            data = self.data(config)
            _INTERRUPTIBLE.set()
            try:
                _stop_if_asked()
                result = train(config, data=data, on_epoch=_stop_if_asked)
            finally:
                _INTERRUPTIBLE.clear()
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
    say: Callable[[str], object] | None = None,
    parent: int | None = None,
) -> int:
    """Run waiting grid points of ``study_name`` until none is waiting or running (or
    ``max_trials`` ran); returns how many this worker ran. While other workers' trials run it
    waits, and takes over any whose worker died (see the module docstring). The device and
    dataset are checked before any trial is claimed, so a missing one fails here and leaves the
    sweep as it was.

    ``threads``: torch threads for this process (1 per worker on a shared CPU); ``say``: called
    with one line per trial started and finished; ``parent``: a process ID, the worker stops
    (between trials) once it is no longer this process's parent. An interruption
    (:class:`KeyboardInterrupt`, see :func:`stop_on_signals`) requeues the running trial and
    propagates."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(logging.WARNING)
    study, cfg, points = open_sweep(storage, study_name)
    objective = _Objective(cfg)
    resolve_device(cfg.train.device)
    objective.data(trial_config(cfg, points[0]))
    ran = 0
    with store_errors(storage):
        while max_trials is None or ran < max_trials:
            _stop_if_asked()
            if parent is not None and os.getppid() != parent:
                break
            _fail_lost(study, storage, cfg)
            trial_id = _claim(study)
            if trial_id is None:
                if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    break
                _STOP.wait(cfg.heartbeat_seconds)  # others' trials run: finish or go stale
                continue
            frozen = _run_trial(study, storage, trial_id, objective, say)
            ran += 1
            if on_trial is not None:
                on_trial(frozen)
    return ran


#: Set by :func:`stop_on_signals`: the worker stops, requeueing a trial it interrupts.
_STOP = threading.Event()
#: Set while a trial trains: a stop request interrupts it at once. Elsewhere (store writes) the
#: worker stops at the next safe point, never inside a write.
_INTERRUPTIBLE = threading.Event()


@contextlib.contextmanager
def stop_on_signals(*signals: signal.Signals) -> Iterator[None]:
    """While the body runs, ``signals`` (default SIGTERM and SIGINT) stop the worker: a training
    run is interrupted at once (:class:`KeyboardInterrupt`) and its trial requeued; otherwise the
    worker stops before its next store operation, never inside one. Repeats change nothing (a
    driver killed with ``kill -9`` can send its parent-death signal once per thread). The old
    handlers come back after. Main thread only."""

    def stop(_signum: int, _frame: Any) -> None:
        if not _STOP.is_set() and _INTERRUPTIBLE.is_set():
            _STOP.set()
            raise KeyboardInterrupt
        _STOP.set()

    chosen = signals or (signal.SIGTERM, signal.SIGINT)
    old = {sig: signal.signal(sig, stop) for sig in chosen}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _STOP.clear()


def _stop_if_asked(*_: object) -> None:
    if _STOP.is_set():
        raise KeyboardInterrupt


def _claim(study: optuna.Study) -> int | None:
    """Claim a waiting trial (WAITING -> RUNNING, which one process wins), beat its heart once
    and record this process as its owner; ``None`` when none is waiting. Unlike
    ``Study.ask``, never makes a trial of its own."""
    store: Any = study._storage  # Optuna's cache over the RDB storage, with heartbeats
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not store.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        store.record_heartbeat(t._trial_id)
        store.set_trial_system_attr(t._trial_id, OWNER, me())
        return int(t._trial_id)
    return None


def _run_trial(
    study: optuna.Study,
    storage: str,
    trial_id: int,
    objective: _Objective,
    say: Callable[[str], object] | None,
) -> FrozenTrial:
    trial = optuna.Trial(study, trial_id)
    try:
        _say(say, f"trial {trial.number} started: {trial.user_attrs.get('grid')}")
        with _heartbeat(study._storage, trial_id, objective.cfg.heartbeat_seconds):
            value = objective(trial)
    except Exception:
        frozen = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    except BaseException:  # interrupted: queue the point again at once, uncounted
        with store_lock(storage):
            if study._storage.get_trial(trial_id).state == TrialState.RUNNING:
                trial.set_user_attr("error", "interrupted")
                frozen = study.tell(trial, state=TrialState.FAIL)
                requeue(study, frozen, objective.cfg.max_retries, count=False)
        raise
    else:
        frozen = study.tell(trial, value, skip_if_finished=True)
    failed = frozen.state == TrialState.FAIL
    what = frozen.user_attrs.get("error" if failed else "status", "")
    _say(say, f"trial {frozen.number} {frozen.state.name.lower()}: {what}, value {frozen.value}")
    return frozen


def _say(say: Callable[[str], object] | None, line: str) -> None:
    """Log a line; a closed log (the driver's pipe, gone) is no reason to fail a run."""
    if say is not None:
        with contextlib.suppress(OSError):
            say(line)


@contextlib.contextmanager
def _heartbeat(store: Any, trial_id: int, seconds: int) -> Iterator[None]:
    """Record the trial's heartbeat every ``seconds`` while the body runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(seconds):
            with contextlib.suppress(Exception):  # a missed beat is retried; the store's
                store.record_heartbeat(trial_id)  # failure shows in the trial's own writes

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _fail_lost(study: optuna.Study, storage: str, cfg: SweepConfig) -> None:
    """Fail and requeue (counted against ``max_retries``) every running trial whose worker is
    gone: dead on this machine, silent for :data:`~mup2.sweep.store.STALE_HEARTBEATS` heartbeat
    intervals (Optuna's stale trials), or never recorded as owned ``10 * heartbeat_seconds`` after
    it was claimed (a worker that died within its claim)."""
    store = study._storage
    now = datetime.now()
    with store_lock(storage):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.system_attrs.get(OWNER)
            started = t.datetime_start or now
            unowned = owner is None and (now - started).total_seconds() > 10 * cfg.heartbeat_seconds
            if not (unowned or (isinstance(owner, dict) and is_dead(owner))):
                continue
            try:
                store.set_trial_user_attr(t._trial_id, "error", "its worker died")
                if not store.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            requeue(study, store.get_trial(t._trial_id), cfg.max_retries)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
