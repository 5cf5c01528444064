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

What a worker runs for a point is an :class:`~mup2.sweep.objective.Objective`
(:func:`make_objective`): mup2's own training (:mod:`mup2.sweep.builtin`) or the user's function
(:mod:`mup2.sweep.user`), checked before the worker claims anything; the claiming, heartbeats,
requeueing and stopping here are the same for both.

With ``batch`` > 1 (or ``"auto"``; mup2's own training only) a worker claims a *bundle*: up to
``batch`` waiting points whose training configs share a :func:`~mup2.batched.bundle_key` (one
width and architecture), each claimed, owned and heartbeaten as a single trial is, and trains
them together with :func:`~mup2.batched.train_batched`. Each point keeps its own trial and
record, so a killed or interrupted bundle is requeued point by point exactly as single trials
are.

Trial record: ``params`` = :class:`~mup2.sweep.grid.GridPoint` (also in the user attribute
``grid``, set when it is enqueued); ``value`` and the user attributes are the objective's record
(:func:`mup2.sweep.builtin.record_of`: final test accuracy, ``status`` (``ok``/``unstable``),
``test_accuracy``, ``test_loss``, ``seconds``, ``metrics`` one dict per epoch; a user sweep:
see :mod:`mup2.sweep.user`), plus ``worker`` (host:pid) and, for a failed trial, ``error``. The
study's direction is ``maximize`` (a user sweep: its ``direction``); its user attributes hold
the sweep config (``sweep``) and ``parametrizations`` (name -> scheme and scaling, so the ρ = 0
runs shared by one scheme can be found).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from mup2.config import ConfigError
from mup2.errors import check_instance, check_integer
from mup2.sweep.builtin import TrainObjective, check_batches
from mup2.sweep.config import (
    PARAMETRIZATIONS,
    SweepConfig,
    check_sweep_config,
    parse_batch,
    parse_sweep_config,
)
from mup2.sweep.grid import (
    GRID_KEYS,
    GridPoint,
    expand,
    scheme_of,
    suggest_parametrization,
    trial_config,
)
from mup2.sweep.objective import Objective, Record
from mup2.sweep.owner import OWNER, is_dead, me, requeue
from mup2.sweep.signals import (
    DRAIN_SIGNAL,
    draining,
    interruptible,
    stop_if_asked,
    stop_on_signals,
    wait_unless_stopped,
)
from mup2.sweep.store import (
    StoreError,
    open_storage,
    redact,
    sqlite_path,
    store_errors,
    store_lock,
)
from mup2.sweep.user import UserObjective

__all__ = [
    "DRAIN_SIGNAL",
    "SweepState",
    "check_batches",
    "default_storage",
    "make_objective",
    "open_sweep",
    "prepare",
    "run_worker",
    "stop_on_signals",
    "store_line",
    "sweep_state",
]


def default_storage(cfg: SweepConfig, run_dir: str | Path) -> str:
    """``cfg.storage``, else an SQLite file ``sweep.db`` in ``run_dir`` (made if missing: the
    sweep's own directory)."""
    check_sweep_config(cfg)
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


def prepare(
    cfg: SweepConfig,
    storage: str,
    *,
    mkdir: bool = False,
    say: Callable[[str], object] | None = None,
) -> tuple[optuna.Study, list[GridPoint]]:
    """Create (or reopen) the sweep's study and enqueue every grid point that has no finished,
    waiting or running trial, under the store's lock (any number of drivers may start at once:
    each point is queued once). Every point's training config is validated first, so an invalid
    sweep fails before anything is written. A study may be reopened with its grid grown (more
    widths, η, ρ, seeds, parametrizations or ``extra`` blocks: every old point still in it),
    which records the new config; any other change of the config is an error naming the keys.

    ``mkdir``: make the directory of a new SQLite store if it is missing (otherwise an error,
    :func:`~mup2.sweep.store.open_storage`). ``say``: called with one line saying what was
    found, ``new store at PATH`` or ``resuming: N of M runs finished in PATH``
    (:func:`store_line`)."""
    check_sweep_config(cfg)
    check_instance("storage", storage, str, "a database URL such as sqlite:///sweep.db")
    points = expand(cfg)
    if cfg.user is None:
        for point in points:
            trial_config(cfg, point)  # raises ConfigError naming the point
    direction = "maximize" if cfg.user is None else cfg.user.direction
    store = open_storage(storage, cfg.heartbeat_seconds, cfg.max_retries, create=True, mkdir=mkdir)
    with store_lock(storage):
        names = optuna.get_all_study_names(storage=store)
        study = optuna.create_study(
            study_name=cfg.name, storage=store, direction=direction, load_if_exists=True
        )
        saved = study.user_attrs.get("sweep")
        old = None if saved is None else parse_sweep_config(saved)
        if old is None or _grows(old, cfg, storage):
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
    if say is not None:
        before = None if cfg.name not in names else len(points) if old is None else len(expand(old))
        others = sorted(n for n in names if n != cfg.name)
        say(store_line(storage, sweep_state(study, points), before, others))
    return study, points


def store_line(storage: str, state: SweepState, before: int | None, others: Sequence[str]) -> str:
    """The line a sweep starts with: ``new store at PATH`` (``before`` is ``None``: the study
    is new; ``others``: the studies already in that store), or ``resuming: N of M runs finished
    in PATH`` (``before``: the grid's points when it was last run, fewer if it grew). ``PATH``:
    an SQLite store's file, or the URL without its password."""
    path = sqlite_path(storage)
    where = str(path) if path is not None else redact(storage)
    if before is None:
        if not others:
            return f"new store at {where}"
        listed = ", ".join(repr(n) for n in others)
        return f"new sweep in the store at {where} (beside {listed})"
    grew = f" (the grid grew from {before} points)" if before < state.total else ""
    return f"resuming: {state.complete} of {state.total} runs finished in {where}{grew}"


def open_sweep(storage: str, name: str) -> tuple[optuna.Study, SweepConfig, list[GridPoint]]:
    """The study of the sweep ``name`` in an existing ``storage``, its config and grid points;
    :class:`~mup2.sweep.store.StoreError` when there is no such sweep."""
    check_instance("storage", storage, str, "a database URL such as sqlite:///sweep.db")
    check_instance("name", name, str, "the sweep's name")
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


def _grows(old: SweepConfig, new: SweepConfig, storage: str) -> bool:
    """Whether ``new`` differs from ``old`` (raises :class:`ConfigError` naming the differing
    keys unless only the grid grew; ``workers``, ``batch``, ``storage`` and a user sweep's
    ``train.root`` may always differ)."""
    ignore = {"workers": 0, "batch": 1, "storage": None, "grid": None}  # where, how fast: not what
    changed = _differences(_what(old) | ignore, _what(new) | ignore)
    if changed:
        shown = "; ".join(
            f"{key}: {json.dumps(a)} in the store, {json.dumps(b)} here"
            for key, a, b in changed[:5]
        )
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise ConfigError(
            f"study {new.name!r} in {redact(storage)} was made by a different sweep config: "
            f"{shown}{more}. Only the grid may grow; to resume the sweep, set those keys as "
            "they were, or give this sweep another name (or storage) to start a new one"
        )
    lost = set(expand(old)) - set(expand(new))
    if lost:
        raise ConfigError(
            f"study {new.name!r}: the grid may only grow, and this config drops "
            f"{len(lost)} of its points (e.g. {min(lost).params()}); keep them in the grid"
        )
    return old.grid != new.grid


def _what(cfg: SweepConfig) -> dict[str, Any]:
    """``cfg`` as a dict without a user sweep's ``train.root`` (where its file is found on this
    machine, not what it computes)."""
    d = cfg.to_dict()
    if cfg.user is not None:
        d["train"].pop("root", None)
    return d


def _differences(a: Any, b: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` of every leaf where the JSON trees differ (a key
    missing on one side reads ``None``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in _differences(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        ]
    return [] if a == b else [(key, a, b)]


def make_objective(cfg: SweepConfig) -> Objective:
    """What a worker runs for the sweep ``cfg``: mup2's training
    (:class:`~mup2.sweep.builtin.TrainObjective`) or the user's function
    (:class:`~mup2.sweep.user.UserObjective`)."""
    return UserObjective(cfg) if cfg.user is not None else TrainObjective(cfg)


class _Queue:
    """The study's waiting trials in grid order (the order of :func:`~mup2.sweep.grid.expand`,
    the config's priority): a point queued again after an interruption keeps its place instead
    of going to the back of the queue."""

    def __init__(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        self._rank: dict[GridPoint, int] | None = None

    def waiting(self, study: optuna.Study) -> list[FrozenTrial]:
        if self._rank is None:
            self._rank = {point: i for i, point in enumerate(expand(self.cfg))}
        rank, last = self._rank, len(self._rank)
        trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))

        def position(t: FrozenTrial) -> tuple[int, int]:
            point = _point(t)
            return (last if point is None else rank.get(point, last), t.number)

        return sorted(trials, key=position)


def _run_objective(
    objective: Objective, trials: Sequence[optuna.Trial], *, batched: bool
) -> list[float]:
    """Run the trials' points with ``objective`` (interruptibly), record each result on its
    trial and return the values. An exception is recorded on every trial and raised."""
    try:
        points = [_suggest(t, GridPoint(**t.user_attrs["grid"])) for t in trials]
        with interruptible():
            records = objective.run(trials, points, batched=batched)
        if len(records) != len(trials):
            raise RuntimeError(f"{len(trials)} runs trained, {len(records)} results")
    except Exception as exc:  # recorded; the trials fail and the sweep goes on
        for trial in trials:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        raise
    return [_record(trial, record) for trial, record in zip(trials, records, strict=True)]


def _record(trial: optuna.Trial, record: Record) -> float:
    """Store ``record`` on ``trial`` (its user attributes and this worker); the trial's
    value."""
    for name, value in record.attrs.items():
        trial.set_user_attr(name, value)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    return record.value


def _suggest(trial: optuna.Trial, point: GridPoint) -> GridPoint:
    """Record the enqueued point as the trial's parameters. Numbers get one-point ranges, whose
    distributions stay compatible however the grid grows (Optuna refuses a categorical
    parameter whose choices change within a study; hence
    :func:`~mup2.sweep.grid.suggest_parametrization`)."""
    return GridPoint(
        suggest_parametrization(trial, point.parametrization),
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
    batch: int | Literal["auto"] | None = None,
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

    ``threads``: torch threads for this process (1 per worker on a shared CPU); ``batch``:
    grid points trained at once (default: the sweep config's; see
    :data:`~mup2.sweep.config.BatchSize`), ``"auto"`` sizing each bundle by
    :func:`~mup2.batched.auto_bundle_size`; ``say``: called with one line per trial started and
    finished; ``parent``: a process ID, the worker stops (between trials) once it is no longer
    this process's parent. An interruption (:class:`KeyboardInterrupt`, see
    :func:`stop_on_signals`) requeues the running trials and propagates."""
    check_integer("threads", threads)
    check_integer("max_trials", max_trials, optional=True)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(logging.WARNING)
    study, cfg, _ = open_sweep(storage, study_name)
    size = parse_batch(cfg.batch if batch is None else batch)
    objective = make_objective(cfg)
    objective.check(size)
    queue = _Queue(cfg)
    ran = 0
    with store_errors(storage):
        while max_trials is None or ran < max_trials:
            stop_if_asked()
            if draining() or (parent is not None and os.getppid() != parent):
                break
            _fail_lost(study, storage, cfg)
            left = None if max_trials is None else max_trials - ran
            if size == 1:
                claimed = _claim(study, queue)
                trial_ids = [] if claimed is None else [claimed]
            else:
                assert isinstance(objective, TrainObjective)  # check() refused the others
                trial_ids = _claim_bundle(study, storage, queue, objective, size, left)
            if not trial_ids:
                if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    break
                wait_unless_stopped(cfg.heartbeat_seconds)  # others' trials: finish or go stale
                continue
            for frozen in _run_trials(study, storage, trial_ids, objective, say, size != 1):
                ran += 1
                if on_trial is not None:
                    on_trial(frozen)
    return ran


def _claim(study: optuna.Study, queue: _Queue) -> int | None:
    """Claim the first waiting trial in grid order (see :func:`_claim_one`); ``None`` when none
    is waiting. Unlike ``Study.ask``, never makes a trial of its own."""
    for t in queue.waiting(study):
        if _claim_one(study, t._trial_id):
            return int(t._trial_id)
    return None


def _claim_one(study: optuna.Study, trial_id: int) -> bool:
    """Claim the waiting trial ``trial_id`` (WAITING -> RUNNING, which one process wins), beat
    its heart once and record this process as its owner; ``False`` when another took it."""
    store: Any = study._storage  # Optuna's cache over the RDB storage, with heartbeats
    try:
        if not store.set_trial_state_values(trial_id, state=TrialState.RUNNING):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    store.record_heartbeat(trial_id)
    store.set_trial_system_attr(trial_id, OWNER, me())
    return True


def _claim_bundle(
    study: optuna.Study,
    storage: str,
    queue: _Queue,
    objective: TrainObjective,
    batch: int | Literal["auto"],
    most: int | None,
) -> list[int]:
    """Claim a bundle (see :func:`_claim_one`): the first waiting grid point and up to
    ``batch - 1`` (``"auto"``: :func:`~mup2.batched.auto_bundle_size` of the first, at most
    ``most`` in all) more waiting points of its bundle key, in grid order. Under the store's
    lock, so workers that start together take whole bundles; ``[]`` when none is waiting."""
    claimed: list[int] = []
    key, size = "", 1
    with store_lock(storage):
        for t in queue.waiting(study):
            point = _point(t)
            if point is None or (claimed and objective.bundle_key(point) != key):
                continue
            if not claimed:  # this point may start the bundle: its key and size
                key = objective.bundle_key(point)
                size = objective.bundle_size(point, batch)
                size = size if most is None else min(size, most)
            if _claim_one(study, t._trial_id):
                claimed.append(int(t._trial_id))
                if len(claimed) >= size:
                    break
    return claimed


def _run_trials(
    study: optuna.Study,
    storage: str,
    trial_ids: list[int],
    objective: Objective,
    say: Callable[[str], object] | None,
    batched: bool,
) -> list[FrozenTrial]:
    """Run the claimed trials (one, or a bundle when ``batched``) while their hearts beat, and
    tell each its result; every trial fails when the run raises. An interruption
    requeues them (:func:`_requeue_if_interrupted`) and propagates."""
    trials = [optuna.Trial(study, trial_id) for trial_id in trial_ids]
    try:
        for trial in trials:
            _say(say, f"trial {trial.number} started: {trial.user_attrs.get('grid')}")
        with (
            _requeue_if_interrupted(study, storage, trials, objective.cfg.max_retries),
            _heartbeat(study._storage, trial_ids, objective.cfg.heartbeat_seconds),
        ):
            values = _run_objective(objective, trials, batched=batched)
    except Exception:
        done = [study.tell(t, state=TrialState.FAIL, skip_if_finished=True) for t in trials]
    else:
        pairs = zip(trials, values, strict=True)
        done = [study.tell(t, v, skip_if_finished=True) for t, v in pairs]
    for frozen in done:
        failed = frozen.state == TrialState.FAIL
        what = frozen.user_attrs.get("error" if failed else "status", "")
        line = f"trial {frozen.number} {frozen.state.name.lower()}: {what}, value {frozen.value}"
        _say(say, line)
    return done


@contextlib.contextmanager
def _requeue_if_interrupted(
    study: optuna.Study, storage: str, trials: Sequence[optuna.Trial], max_retries: int
) -> Iterator[None]:
    """When the body is interrupted (a :class:`BaseException` that is no :class:`Exception`),
    fail every one of ``trials`` still running (``error`` = ``interrupted``) and queue its
    point again at once, not counted as a retry; then propagate."""
    try:
        yield
    except Exception:
        raise
    except BaseException:
        with store_lock(storage):
            for trial in trials:
                if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                    trial.set_user_attr("error", "interrupted")
                    frozen = study.tell(trial, state=TrialState.FAIL)
                    requeue(study, frozen, max_retries, count=False)
        raise


def _say(say: Callable[[str], object] | None, line: str) -> None:
    """Log a line; a closed log (the driver's pipe, gone) is no reason to fail a run."""
    if say is not None:
        with contextlib.suppress(OSError):
            say(line)


@contextlib.contextmanager
def _heartbeat(store: Any, trial_ids: Sequence[int], seconds: int) -> Iterator[None]:
    """Record each trial's heartbeat every ``seconds`` while the body runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(seconds):
            for trial_id in trial_ids:
                with contextlib.suppress(Exception):  # a missed beat is retried; the store's
                    store.record_heartbeat(trial_id)  # failure shows in the trial's own writes

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_ids[0]}", daemon=True)
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
