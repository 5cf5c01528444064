"""Run a sweep on this machine: local worker processes, a progress bar, resumption."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal

import optuna
from tqdm import tqdm

from mup2.errors import USER_ERROR, UserError, check_integer
from mup2.progress import StatusLine, progress_bar
from mup2.sweep.config import SweepConfig, check_sweep_config, parse_batch
from mup2.sweep.engine import (
    SweepState,
    default_storage,
    make_objective,
    prepare,
    run_worker,
    sweep_state,
)
from mup2.sweep.signals import DRAIN_SIGNAL, stop_on_signals

__all__ = ["run_sweep"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: How often the progress bar re-reads the study while workers run.
_BAR_SECONDS = 5.0


def _worker_main(
    storage: str, study: str, threads: int, batch: int | Literal["auto"], parent: int, log: bool
) -> None:
    """A local worker: stops (requeueing its trial) on SIGTERM or when the driver dies; Ctrl-C
    reaches the driver, which stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_on_signals(signal.SIGTERM):
            if sys.platform.startswith("linux"):  # SIGTERM when the driver dies, even kill -9
                ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # it died before that
                return
            run_worker(
                storage,
                study,
                threads=threads,
                batch=batch,
                parent=parent,
                say=(lambda line: print(f"worker {os.getpid()}: {line}", flush=True))
                if log
                else None,
            )
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGTERM)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR)


def run_sweep(
    cfg: SweepConfig,
    run_dir: str | Path,
    *,
    workers: int | None = None,
    threads: int = 1,
    batch: int | Literal["auto"] | None = None,
    progress: bool = True,
    poll_seconds: float = 1.0,
    mkdir: bool = False,
    say: Callable[[str], object] | None = None,
) -> tuple[str, SweepState]:
    """Run (or resume) the sweep with ``workers`` local processes (default ``cfg.workers``)
    until no grid point is waiting or running; returns ``(storage URL, final state)``
    (``state.finished``: every point completed). ``batch``: grid points each worker trains at
    once (default ``cfg.batch``; see :data:`~mup2.sweep.config.BatchSize`).

    The device and dataset are checked first (the dataset loaded once), and with ``batch`` > 1
    that the runs can be batched (:func:`~mup2.sweep.builtin.check_batches`); for a user sweep
    that its objective imports and takes ``(point, report)``
    (:func:`~mup2.sweep.user.load_objective`). So a missing one, or a sweep that cannot be
    batched, is an error before anything is written.
    Other machines may join at any time with :func:`mup2.sweep.run_worker` on the same storage.
    Ctrl-C stops the workers, whose running trials are queued again; running the same sweep
    again resumes it: finished trials are kept. :data:`~mup2.sweep.engine.DRAIN_SIGNAL` (SIGUSR1,
    to the driver or its process group) drains: the workers finish and record the trials they
    run, and the sweep returns with the rest waiting. Without ``progress`` each worker prints a line
    per trial instead of the progress bar; outside a terminal there is no bar but a status line
    at most every minute (:mod:`mup2.progress`).

    ``run_dir`` is made if missing; the directory of a ``storage`` elsewhere only with
    ``mkdir`` (:func:`~mup2.sweep.store.open_storage`). ``say`` is called with the line that
    says what the store held (:func:`~mup2.sweep.engine.store_line`).
    """
    check_sweep_config(cfg)
    optuna.logging.set_verbosity(logging.WARNING)  # the store line says what its INFO would
    check_integer("workers", workers, optional=True)
    check_integer("threads", threads)
    if (workers if workers is not None else cfg.workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    size = parse_batch(cfg.batch if batch is None else batch)
    make_objective(cfg).check(size)  # the device and dataset, or the user's entry point
    storage = default_storage(cfg, run_dir)
    study, points = prepare(cfg, storage, mkdir=mkdir, say=say)
    n = workers or cfg.workers
    ctx = mp.get_context("spawn")
    state = sweep_state(study, points)
    procs: list[BaseProcess] = []
    drained = threading.Event()

    def drain(_signum: int, _frame: object) -> None:  # finish what runs, start nothing new
        drained.set()
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, DRAIN_SIGNAL)

    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(DRAIN_SIGNAL, drain) if main else None
    with (
        progress_bar(
            enabled=progress, total=state.total, desc=f"sweep {cfg.name}", unit="run"
        ) as bar,
        contextlib.ExitStack() as restore,
    ):
        status = _Status(bar, StatusLine(progress and bool(bar.disable)), cfg.name)
        if main:
            restore.callback(signal.signal, DRAIN_SIGNAL, old)
        for _ in range(1 + cfg.max_retries + 1):
            if not (state.waiting or state.running) or drained.is_set():
                break
            before = state
            args = (storage, cfg.name, threads, size, os.getpid(), not progress)
            procs[:] = [ctx.Process(target=_worker_main, args=args) for _ in range(n)]
            for p in procs:
                p.start()
            try:
                shown = time.monotonic()
                while any(p.is_alive() for p in procs):
                    time.sleep(poll_seconds)
                    # reading every trial costs a core's tenth on a large study: only for the bar
                    if progress and time.monotonic() - shown >= _BAR_SECONDS:
                        state, shown = status.show(sweep_state(study, points)), time.monotonic()
            finally:  # Ctrl-C or an error here: stop the workers; they requeue their trials
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                for p in procs:
                    p.join()
            state = status.show(sweep_state(study, points))
            crashed = [p.exitcode for p in procs if p.exitcode]
            stuck = state.complete == before.complete and (state.waiting or state.running)
            if crashed and stuck and not drained.is_set():
                raise RuntimeError(
                    f"every worker stopped without finishing a trial (exit codes {crashed}); "
                    "see their messages above"
                )
    return storage, state


class _Status:
    """The sweep's progress: its bar in a terminal, else a status line now and then."""

    def __init__(self, bar: tqdm[Any], line: StatusLine, name: str) -> None:
        self.bar, self.line, self.name = bar, line, name

    def show(self, state: SweepState) -> SweepState:
        """Show ``state``; return it."""
        self.bar.n = state.complete + state.failed
        self.bar.set_postfix(running=state.running, unstable=state.unstable, failed=state.failed)
        self.bar.refresh()
        self.line.show(
            f"sweep {self.name}: {state.complete + state.failed}/{state.total} runs done "
            f"({state.running} running, {state.unstable} unstable, {state.failed} failed)"
        )
        return state
