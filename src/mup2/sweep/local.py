"""Run a sweep on this machine: local worker processes, a progress bar, resumption."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import optuna
from tqdm import tqdm

from mup2.sweep.config import SweepConfig
from mup2.sweep.engine import (
    SweepState,
    default_storage,
    prepare,
    run_worker,
    sweep_state,
    wait_for_stale,
)

__all__ = ["run_sweep"]


def _worker_main(storage: str, study: str, threads: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(storage, study, threads=threads)


def run_sweep(
    cfg: SweepConfig,
    run_dir: str | Path,
    *,
    workers: int | None = None,
    threads: int = 1,
    progress: bool = True,
    poll_seconds: float = 1.0,
) -> tuple[str, SweepState]:
    """Run (or resume) the sweep with ``workers`` local processes (default ``cfg.workers``)
    until every grid point is finished; returns ``(storage URL, final state)``.

    Other machines may join at any time with :func:`mup2.sweep.run_worker` on the same storage.
    Ctrl-C stops the workers; running the same sweep again resumes it: finished trials are kept,
    interrupted ones run again once their heartbeat is stale (``3 * heartbeat_seconds``).
    """
    storage = default_storage(cfg, run_dir)
    study, points = prepare(cfg, storage)
    n = workers or cfg.workers
    ctx = mp.get_context("spawn")
    state = sweep_state(study, points)
    with tqdm(total=state.total, desc=f"sweep {cfg.name}", unit="run", disable=not progress) as bar:
        for _ in range(1 + cfg.max_retries + 1):
            procs = [
                ctx.Process(target=_worker_main, args=(storage, cfg.name, threads), daemon=True)
                for _ in range(n)
            ]
            for p in procs:
                p.start()
            try:
                while any(p.is_alive() for p in procs):
                    time.sleep(poll_seconds)
                    state = _show(bar, sweep_state(study, points))
            except KeyboardInterrupt:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.join()
                raise
            before, state = state, _show(bar, sweep_state(study, points))
            if state.done:
                break
            crashed = [p.exitcode for p in procs if p.exitcode]
            if crashed and state.complete == before.complete:
                raise RuntimeError(
                    f"every worker stopped without finishing a trial (exit codes {crashed}); "
                    "see their messages above"
                )
            if state.running:  # left by workers that died: fail them once stale, and retry
                wait_for_stale(study, cfg)
    return storage, state


def _show(bar: tqdm, state: SweepState) -> SweepState:  # type: ignore[type-arg]
    bar.n = state.complete + state.failed
    bar.set_postfix(running=state.running, unstable=state.unstable, failed=state.failed)
    bar.refresh()
    return state
