"""Shared by the sweep tests: small sweep configs, reading a study's trials, the no-gaps,
no-duplicates check, following a process's output, mup2 commands started at one instant, and a
new PostgreSQL database (the server is the ``postgres`` fixture of conftest.py)."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import select
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import optuna
import pytest
from optuna.trial import TrialState

from mup2.sweep import GridPoint, sweep_state

TRAIN: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 64,
    "model": {"name": "mlp", "width": 16, "base_width": 16},
    "data": {"name": "synthetic", "train_size": 256, "test_size": 128},
    "optimizer": {"name": "sgd", "lr": 0.1},
}
GRID: dict[str, Any] = {
    "widths": [16, 32],
    "lr": [0.05, 0.2],
    "rho": [0.0, 0.05],
    "seeds": [0],
    "parametrizations": ["sp-naive", "mup-global", "mup2"],
}


def sweep(name: str, **kw: Any) -> dict[str, Any]:
    """A sweep config mapping of :data:`TRAIN` and :data:`GRID`, with ``kw`` replacing keys."""
    return {"name": name, "heartbeat_seconds": 1, "train": TRAIN, "grid": GRID} | kw


def grid_trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of grid points in study ``name``."""
    study = optuna.load_study(study_name=name, storage=storage)
    return [t for t in study.get_trials() if "grid" in t.user_attrs]


def assert_complete_once(
    storage: str, name: str, n_points: int, *, only: bool = False, accuracy: bool = True
) -> None:
    """No gaps, no duplicates: every grid point has exactly one finished trial, and every trial
    is a grid point's (no bookkeeping trials); ``only``: and no other trial (no retries);
    ``accuracy``: every value lies in [0, 1] (mup2's own training records accuracies)."""
    every = optuna.load_study(study_name=name, storage=storage).get_trials()
    trials = grid_trials(storage, name)
    assert len(trials) == len(every), [t.user_attrs for t in every if "grid" not in t.user_attrs]
    if only:
        assert len(trials) == n_points, Counter(t.state.name for t in trials)
    done = Counter(tuple(sorted(t.params.items())) for t in trials if t.state.is_finished()
                   and t.state == TrialState.COMPLETE)  # fmt: skip
    assert len(done) == n_points and set(done.values()) == {1}
    if accuracy:
        assert all(0.0 <= t.value <= 1.0 for t in trials if t.state == TrialState.COMPLETE)  # type: ignore[operator]


#: 4 points of 1-3 s each: a trial seen starting is still running when the test reacts (within
#: milliseconds, even on a loaded 2-core machine); at 3 epochs a trial took 0.16 s.
SLOW = {**TRAIN, "epochs": 30, "data": {"name": "synthetic", "train_size": 2048, "test_size": 64}}
SLOW_GRID = {**GRID, "widths": [64, 128], "parametrizations": ["mup2"], "rho": [0.05]}
#: 8 quick points, all at rho > 0.
TINY = {**TRAIN, "data": {"name": "synthetic", "train_size": 128, "test_size": 64}}
TINY_GRID = {"widths": [16], "lr": [0.05, 0.2], "rho": [0.05, 0.1],
             "parametrizations": ["mup2", "mup-global"]}  # fmt: skip
CLI = [sys.executable, "-m", "mup2.cli"]
#: The CLI as a terminal's foreground process runs it: Ctrl-C raises KeyboardInterrupt. A child
#: inherits an ignored SIGINT (a suite started in the background with `&` ignores it), and Python
#: then leaves it ignored, as a program run with nohup should.
FOREGROUND_CLI = [
    sys.executable,
    "-c",
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from mup2.cli import main; sys.argv[0] = 'mup2'; main()",
]


def lines_until(stream: IO[str], *patterns: str) -> Iterator[re.Match[str]]:
    """Read ``stream`` line by line (blocking: the process's own output is the signal), yielding
    the match of each pattern in turn."""
    for pattern in patterns:
        for line in stream:
            if m := re.search(pattern, line):
                yield m
                break
        else:
            pytest.fail(f"the output ended before a line matching {pattern!r}")


def kill_a_worker_then_rerun(
    url: str, name: str, study: optuna.Study, points: list[GridPoint]
) -> None:
    """``mup2 worker`` on study ``name`` (prepared with ``points``) is killed with SIGKILL while
    it runs a trial, after one finished: that trial stays running. A second worker runs every
    other point exactly once, keeps the finished values and marks the killed trial failed
    ("its worker died")."""
    args = [*CLI, "worker", "--storage", url, "--study", name]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert first.stdout is not None
    _, started = lines_until(first.stdout, r"trial \d+ complete", r"trial (\d+) started")
    os.kill(first.pid, signal.SIGKILL)  # it holds a running trial: it printed so after claiming
    first.wait()
    first.stdout.close()
    before = {t.number: t.value for t in grid_trials(url, name) if t.state.is_finished()}
    assert before and sweep_state(study, points).running == 1

    second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"ran {len(points) - len(before)} trials" in second.stdout
    assert_complete_once(url, name, len(points))
    after = {t.number: t.value for t in grid_trials(url, name) if t.state.is_finished()}
    assert {n: after[n] for n in before} == before  # finished work kept, not rerun
    (lost,) = [t for t in grid_trials(url, name) if t.state == TrialState.FAIL]
    assert lost.number == int(started[1]) and lost.user_attrs["error"] == "its worker died"


def wait_exit(pid: int, timeout: float = 120) -> None:
    """Wait until ``pid`` (not our child) has exited."""
    fd = os.pidfd_open(pid)
    try:
        assert select.select([fd], [], [], timeout)[0], f"process {pid} is still running"
    finally:
        os.close(fd)


def new_database(postgres: str, name: str, *, tables: bool) -> str:
    """A new database ``name`` on the ``postgres`` server; ``tables``: with Optuna's tables."""
    import psycopg2

    url = postgres.rsplit("/", 1)[0] + f"/{name}"
    conn = psycopg2.connect(postgres.replace("postgresql+psycopg2", "postgresql"))
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    if tables:  # another study made them: the tables exist, this sweep's study does not
        optuna.create_study(study_name="other", storage=url)
    return url


def _cli_child(barrier: Any, argv: list[str], log: str) -> None:
    """One mup2 command in a process of its own, started when all the others are ready."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from mup2.cli import main

    sys.argv = ["mup2", *argv]
    barrier.wait()  # every process has imported everything: they open the store together
    main()


def together(argvs: list[list[str]], logs: Path) -> list[tuple[int | None, str]]:
    """Run mup2 commands in processes released at one instant; (exit code, output) of each."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(argvs))
    files = [logs / f"process-{i}.log" for i in range(len(argvs))]
    procs = [
        ctx.Process(target=_cli_child, args=(barrier, argv, str(f)))
        for argv, f in zip(argvs, files, strict=True)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    return [(p.exitcode, f.read_text()) for p, f in zip(procs, files, strict=True)]
