"""Stopping a sweep worker: signals that interrupt a training run at once but never a store write.

A worker's state is three flags of its process: *stop* (set by SIGTERM or SIGINT under
:func:`stop_on_signals`), *interruptible* (set while a training run, or the user's objective,
runs: a stop request then raises :class:`KeyboardInterrupt` at once) and *drain* (set by
:data:`DRAIN_SIGNAL`: finish what runs, claim nothing more). Outside an interruptible stretch a
stop request waits for the next :func:`stop_if_asked`, so it never lands inside a store write.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = [
    "DRAIN_SIGNAL",
    "draining",
    "interruptible",
    "stop_if_asked",
    "stop_on_signals",
    "uninterruptible",
    "wait_unless_stopped",
]

#: Set by :func:`stop_on_signals`: the worker stops, requeueing a trial it interrupts.
_STOP = threading.Event()
#: Set while a trial trains: a stop request interrupts it at once. Elsewhere (store writes) the
#: worker stops at the next safe point, never inside a write.
_INTERRUPTIBLE = threading.Event()
#: Set by :data:`DRAIN_SIGNAL` under :func:`stop_on_signals`: the worker finishes the trials it
#: runs and claims no more (a time budget that should not cut a bundle short).
_DRAIN = threading.Event()
#: The signal that drains a worker (and a :func:`mup2.sweep.run_sweep` driver with its workers).
DRAIN_SIGNAL = signal.SIGUSR1


@contextlib.contextmanager
def stop_on_signals(*signals: signal.Signals) -> Iterator[None]:
    """While the body runs, ``signals`` (default SIGTERM and SIGINT) stop the worker: a training
    run is interrupted at once (:class:`KeyboardInterrupt`) and its trial requeued; otherwise the
    worker stops before its next store operation, never inside one. Repeats change nothing (a
    driver killed with ``kill -9`` can send its parent-death signal once per thread).
    :data:`DRAIN_SIGNAL` (SIGUSR1) drains the worker instead: it finishes and records what it
    runs, then claims nothing more. The old handlers come back after. Main thread only."""

    def stop(_signum: int, _frame: Any) -> None:
        if not _STOP.is_set() and _INTERRUPTIBLE.is_set():
            _STOP.set()
            raise KeyboardInterrupt
        _STOP.set()

    def drain(_signum: int, _frame: Any) -> None:
        _DRAIN.set()

    chosen = signals or (signal.SIGTERM, signal.SIGINT)
    old = {sig: signal.signal(sig, stop) for sig in chosen}
    old[DRAIN_SIGNAL] = signal.signal(DRAIN_SIGNAL, drain)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _STOP.clear()
        _DRAIN.clear()


def stop_if_asked(*_: object) -> None:
    """Raise :class:`KeyboardInterrupt` if the worker was asked to stop (any arguments are
    ignored: it serves as a training run's per-epoch callback)."""
    if _STOP.is_set():
        raise KeyboardInterrupt


def draining() -> bool:
    """Whether :data:`DRAIN_SIGNAL` asked the worker to claim nothing more."""
    return _DRAIN.is_set()


def wait_unless_stopped(seconds: float) -> None:
    """Sleep ``seconds``, or less when a stop request comes."""
    _STOP.wait(seconds)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """The body (a training run) may be interrupted at once by a stop request; one that came
    before it stops it before it starts."""
    _INTERRUPTIBLE.set()
    try:
        stop_if_asked()
        yield
    finally:
        _INTERRUPTIBLE.clear()


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Inside an :func:`interruptible` stretch, hold a stop request back while the body (a store
    write) runs; it is raised right after."""
    was = _INTERRUPTIBLE.is_set()
    _INTERRUPTIBLE.clear()
    try:
        yield
    finally:
        if was:
            _INTERRUPTIBLE.set()
    stop_if_asked()
