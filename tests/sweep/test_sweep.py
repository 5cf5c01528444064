"""Sweeps on real stores (SQLite; PostgreSQL started on 127.0.0.1): completeness, kills, resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sweeps import (
    CLI,
    FOREGROUND_CLI,
    GRID,
    SLOW,
    SLOW_GRID,
    TINY,
    TINY_GRID,
    TRAIN,
    assert_complete_once,
    grid_trials,
    kill_a_worker_then_rerun,
    lines_until,
    new_database,
    sweep,
    together,
    wait_exit,
)
from typer.testing import CliRunner

import mup2.sweep.builtin
import mup2.sweep.engine
from mup2.cli import app
from mup2.config import ConfigError
from mup2.sweep import (
    expand,
    load_sweep_config,
    open_sweep,
    parse_sweep_config,
    prepare,
    run_sweep,
    run_worker,
    sweep_state,
)
from mup2.sweep.owner import OWNER


def test_grid_is_expanded_once_with_shared_base_runs() -> None:
    cfg = parse_sweep_config(sweep("g"))
    points = expand(cfg)
    # rho > 0: 3 parametrizations x 2 widths x 2 lr; rho = 0: once per scheme (sp, mup)
    assert len(points) == 3 * 2 * 2 + 2 * 2 * 2
    assert len(set(points)) == len(points)
    assert {p.parametrization for p in points if p.rho == 0} == {"sp-naive", "mup-global"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grid": {**GRID, "lr": [0.2, 0.05]}}, r"grid\.lr: \[0\.2, 0\.05\] must be strictly"),
        ({"grid": {**GRID, "widths": []}}, r"grid\.widths: List should have at least 1 item"),
        ({"gird": {}}, r"gird: unknown key"),
        ({"grid": {**GRID, "parametrizations": ["mup3"]}}, r"grid\.parametrizations\.0: "),
        (
            {"train": {**TRAIN, "optimizer": {"name": "sgd", "lr": 0.1, "momentun": 0.9}}},
            r"train\.optimizer\.momentun: unknown key; did you mean 'momentum'",
        ),
        ({"name": "has space"}, r"name: String should match pattern"),
    ],
)
def test_invalid_sweep_configs_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_sweep_config(sweep("bad") | change)


def test_invalid_grid_point_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    vit = {"name": "vit", "width": 16, "base_width": 16, "depth": 1, "d_head": 8}
    cfg = parse_sweep_config(
        sweep("vit", train={**TRAIN, "model": vit}, grid={**GRID, "widths": [16, 20]})
    )
    db = tmp_path / "sweep.db"
    with pytest.raises(
        ConfigError, match=r"(?s)grid point .*'width': 20.*not a multiple of d_head"
    ):
        prepare(cfg, f"sqlite:///{db}")
    assert not db.exists()


def test_two_workers_no_duplicates_no_gaps_and_resume_is_a_no_op(tmp_path: Path) -> None:
    cfg = parse_sweep_config(sweep("two", workers=2))
    storage, state = run_sweep(cfg, tmp_path, progress=False)
    assert state.done and state.complete == len(expand(cfg))
    assert_complete_once(storage, "two", len(expand(cfg)))
    numbers = sorted(t.number for t in grid_trials(storage, "two"))
    storage2, again = run_sweep(cfg, tmp_path, progress=False)  # nothing left to do
    assert storage2 == storage and again.complete == state.complete
    assert sorted(t.number for t in grid_trials(storage, "two")) == numbers
    t = grid_trials(storage, "two")[0]
    assert {"status", "test_accuracy", "test_loss", "seconds", "metrics"} <= set(t.user_attrs)
    assert t.user_attrs["metrics"][0]["epoch"] == 1


def test_a_different_config_cannot_reuse_a_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    prepare(parse_sweep_config(sweep("same")), url)
    other = {**TRAIN, "epochs": 2, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5}}
    with pytest.raises(
        ConfigError,
        match=r"study 'same' in sqlite:///.*sweep\.db was made by a different sweep config: "
        r"train\.epochs: 1 in the store, 2 here; train\.optimizer\.momentum: 0\.9 in the store, "
        r"0\.5 here\. Only the grid may grow; to resume the sweep, set those keys as they were",
    ):
        prepare(parse_sweep_config(sweep("same", train=other)), url)
    with pytest.raises(ConfigError, match=r"may only grow.*drops 10 of its points"):
        prepare(parse_sweep_config(sweep("same", grid={**GRID, "lr": [0.05]})), url)
    moved = f"sqlite:///{tmp_path / 'moved.db'}"  # run-time choices: how, not what
    prepare(parse_sweep_config(sweep("same", workers=2, batch=4, storage=moved)), url)


def test_the_store_line_says_what_the_store_held(tmp_path: Path) -> None:
    db = tmp_path / "sweep.db"
    url, said = f"sqlite:///{db}", list[str]()
    cfg = parse_sweep_config(sweep("count", train=TINY, grid=TINY_GRID))
    prepare(cfg, url, say=said.append)
    assert run_worker(url, "count", max_trials=3) == 3
    prepare(cfg, url, say=said.append)
    grown = {**TINY_GRID, "lr": [0.05, 0.2, 0.4]}
    prepare(parse_sweep_config(sweep("count", train=TINY, grid=grown)), url, say=said.append)
    prepare(parse_sweep_config(sweep("other", train=TINY, grid=TINY_GRID)), url, say=said.append)
    assert said == [
        f"new store at {db}",
        f"resuming: 3 of 8 runs finished in {db}",
        f"resuming: 3 of 12 runs finished in {db} (the grid grew from 8 points)",
        f"new sweep in the store at {db} (beside 'count')",
    ]


def test_a_store_in_a_missing_directory_is_made_only_when_asked(tmp_path: Path) -> None:
    """`mup2 sweep` on a config whose storage lies in a directory that does not exist: an error
    that names it, nothing made; with --mkdir a new store (the first line says so); again,
    without the flag, the store resumed. No terminal: no progress bar, a status line."""
    db = tmp_path / "typo" / "sweep.db"
    grid = {**TINY_GRID, "lr": [0.05], "parametrizations": ["mup2"]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep("mk", storage=f"sqlite:///{db}", train=TINY, grid=grid)))
    argv = ["sweep", str(path), "--run-dir", str(tmp_path / "run"), "--workers", "1",
            "--no-report"]  # fmt: skip
    refused = CliRunner().invoke(app, argv)
    assert refused.exit_code == 2, refused.output
    assert refused.stderr == (
        f"error: no directory {db.parent} for the store 'sqlite:///{db}': to start a new sweep "
        "there, make it (`mup2 sweep CONFIG --mkdir`); to resume one, check the path\n"
    )
    assert not db.parent.exists() and not (tmp_path / "run").exists()
    made = CliRunner().invoke(app, [*argv, "--mkdir"])
    assert made.exit_code == 0, made.output
    assert made.stdout.splitlines()[0] == f"new store at {db}"
    assert "\r" not in made.stderr and re.search(r"^sweep mk: \d/2 runs done", made.stderr, re.M)
    again = CliRunner().invoke(app, argv)
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines()[0] == f"resuming: 2 of 2 runs finished in {db}"


def test_extra_blocks_add_points_once_with_shared_base_runs() -> None:
    extra = [
        {"widths": [32], "lr": [0.05], "seeds": [0, 1, 2]},  # more seeds on a slice
        {"parametrizations": ["mup2"], "lr": [0.8], "rho": [0.0, 0.05]},  # a wider η
    ]
    cfg = parse_sweep_config(sweep("x", grid={**GRID, "extra": extra}))
    points = expand(cfg)
    assert len(points) == len(set(points))
    main = expand(parse_sweep_config(sweep("x")))
    assert points[: len(main)] == main
    added = points[len(main) :]
    # block 1, per new seed: rho > 0 for 3 parametrizations, rho = 0 once per scheme (sp-naive;
    # mup-global for mup-global and mup2): 5; block 2: 2 widths x (mup2 at rho > 0, mup-global's
    # shared rho = 0 run)
    assert len(added) == 2 * 5 + 2 * 2
    assert {p.parametrization for p in added if p.rho == 0.0} == {"sp-naive", "mup-global"}
    assert {(p.width, p.lr, p.rho, p.seed) for p in added if p.parametrization == "mup2"} == {
        (32, 0.05, 0.05, 1),
        (32, 0.05, 0.05, 2),
        (16, 0.8, 0.05, 0),
        (32, 0.8, 0.05, 0),
    }


def test_a_grown_grid_runs_only_the_new_points(tmp_path: Path) -> None:
    small = parse_sweep_config(sweep("grow", grid={**GRID, "widths": [16]}))
    storage, state = run_sweep(small, tmp_path, progress=False)
    assert state.done
    before = {t.number: t.value for t in grid_trials(storage, "grow")}
    big = parse_sweep_config(sweep("grow", grid={**GRID, "extra": [{"seeds": [1]}]}))
    storage, state = run_sweep(big, tmp_path, progress=False)
    assert state.done and state.complete == len(expand(big))
    assert_complete_once(storage, "grow", len(expand(big)))
    after = {t.number: t.value for t in grid_trials(storage, "grow")}
    assert all(after[n] == v for n, v in before.items())  # finished trials are kept as they are
    study = optuna.load_study(study_name="grow", storage=storage)
    assert parse_sweep_config(study.user_attrs["sweep"]) == big


def test_a_diverging_run_is_stored_as_unstable_and_the_sweep_goes_on(tmp_path: Path) -> None:
    grid = {**GRID, "lr": [0.1, 1e6], "widths": [16, 32, 64]}
    cfg = parse_sweep_config(sweep("div", grid=grid))
    storage, state = run_sweep(cfg, tmp_path, progress=False)
    trials = grid_trials(storage, "div")
    assert state.done and all(t.state == TrialState.COMPLETE for t in trials)
    unstable = [t for t in trials if t.user_attrs["status"] == "unstable"]
    assert unstable and {t.params["lr"] for t in unstable} == {1e6}
    assert state.unstable == len(unstable)
    assert all(t.value is not None and t.value <= 0.3 for t in unstable)
    stable = [t for t in trials if t.params["lr"] == 0.1]
    assert all(t.user_attrs["status"] == "ok" for t in stable)


def test_a_restarted_worker_takes_over_its_killed_predecessors_trial(tmp_path: Path) -> None:
    """kill -9 while a trial runs; a new worker on the same host sees its owner is gone and
    runs it again at once (no wait for the heartbeat), keeping the finished ones."""
    cfg = parse_sweep_config(sweep("kill", train=SLOW, grid=SLOW_GRID, heartbeat_seconds=60))
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    study, points = prepare(cfg, url)
    kill_a_worker_then_rerun(url, "kill", study, points)


def test_workers_stop_when_their_driver_is_killed(tmp_path: Path) -> None:
    """kill -9 of `mup2 sweep`: its worker stops too, queueing its trial again; a resume
    finishes the sweep."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep("orphan", train=SLOW, grid=SLOW_GRID)))
    run = tmp_path / "run"
    driver = subprocess.Popen(
        [*CLI, "sweep", str(path), "--run-dir", str(run), "--workers", "1", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert driver.stdout is not None
    (started,) = lines_until(driver.stdout, r"worker (\d+): trial \d+ started")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    driver.stdout.close()
    wait_exit(int(started[1]))
    cfg = load_sweep_config(path)
    url = f"sqlite:///{run / 'sweep.db'}"
    study, _, points = open_sweep(url, "orphan")
    state = sweep_state(study, points)
    assert state.running == 0 and state.waiting == len(expand(cfg)) - state.complete
    storage, final = run_sweep(cfg, run, progress=False)
    assert final.finished
    assert_complete_once(storage, "orphan", len(expand(cfg)))


@pytest.mark.parametrize("store", ["sqlite", "postgresql", "postgresql-tables"])
def test_four_drivers_start_together_on_one_store(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Four `mup2 sweep` of one sweep (each with a worker) start at one instant on a new store:
    no crash, every point queued and run exactly once, no other trial."""
    if store == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        url = new_database(
            request.getfixturevalue("postgres"), f"four_{store[-6:]}", tables="-" in store
        )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep("four", storage=url, train=TINY, grid=TINY_GRID)))
    n = len(expand(load_sweep_config(path)))
    argvs = [
        ["sweep", str(path), "--run-dir", str(tmp_path / f"run{i}"), "--workers", "1",
         "--no-report", "--no-progress"]
        for i in range(4)
    ]  # fmt: skip
    for code, log in together(argvs, tmp_path):
        assert code == 0 and "Traceback" not in log, log
        assert f"sweep four: {n}/{n} runs finished" in log, log
    assert_complete_once(url, "four", n, only=True)


def test_four_workers_start_together(tmp_path: Path) -> None:
    """Four `mup2 worker` claim from one queue at one instant: each point runs once, all exit 0
    (the sweep finished) and no worker leaves a trial of its own."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    _, points = prepare(parse_sweep_config(sweep("claim", train=TINY, grid=TINY_GRID)), url)
    argvs = [["worker", "--storage", url, "--study", "claim"]] * 4
    results = together(argvs, tmp_path)
    for code, log in results:
        assert code == 0 and "Traceback" not in log, log
    ran = [int(re.findall(r"ran (\d+) trials", log)[0]) for _, log in results]
    assert sum(ran) == len(points)
    assert_complete_once(url, "claim", len(points), only=True)


def test_a_stale_trial_of_another_host_is_requeued(tmp_path: Path) -> None:
    """A running trial owned on another machine is judged by its heartbeat alone: once silent
    for 3 heartbeats it fails and runs again."""
    import sqlalchemy

    cfg = parse_sweep_config(sweep("stale", train=TINY, grid=TINY_GRID))
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    study, points = prepare(cfg, url)
    store: Any = study._storage
    first = study.get_trials(states=(TrialState.WAITING,))[0]
    assert store.set_trial_state_values(first._trial_id, state=TrialState.RUNNING)
    store.set_trial_system_attr(first._trial_id, OWNER, {"host": "elsewhere", "pid": 1})
    store.record_heartbeat(first._trial_id)
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:  # its last heartbeat, an hour ago
        conn.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = "
                                     "datetime(heartbeat, '-1 hour')"))  # fmt: skip
    engine.dispose()
    assert run_worker(url, "stale") == len(points)
    assert_complete_once(url, "stale", len(points))
    (lost,) = [t for t in grid_trials(url, "stale") if t.state == TrialState.FAIL]
    assert lost.number == first.number


def test_worker_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """0: the sweep finished; 1: runs failed; 3: stopped with runs left; 2: bad input."""
    runner = CliRunner()
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    _, points = prepare(parse_sweep_config(sweep("codes", train=TINY, grid=TINY_GRID)), url)
    args = ["worker", "--storage", url, "--study", "codes"]
    res = runner.invoke(app, [*args, "--max-trials", "1"])
    assert res.exit_code == 3 and "ran 1 trials" in res.output, res.output
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and f"{len(points)}/{len(points)} runs finished" in res.output

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(mup2.sweep.builtin, "train", broken)
    _, points = prepare(parse_sweep_config(sweep("fails", train=TINY, grid=TINY_GRID)), url)
    res = runner.invoke(app, ["worker", "--storage", url, "--study", "fails"])
    assert res.exit_code == 1 and f"({len(points)} failed, 0 left)" in res.output, res.output
    trial = grid_trials(url, "fails")[0]
    assert trial.user_attrs["error"] == "RuntimeError: broken on purpose"
    res = runner.invoke(app, ["worker", "--storage", url, "--study", "nope"])
    assert res.exit_code == 2 and "no sweep 'nope'" in res.output


def test_two_workers_on_postgresql(postgres: str) -> None:
    cfg = parse_sweep_config(sweep("pg", storage=postgres))
    study, points = prepare(cfg, postgres)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "mup2.cli", "worker", "--storage", postgres, "--study", "pg"]
        )
        for _ in range(2)
    ]
    assert [w.wait(timeout=240) for w in workers] == [0, 0]
    assert sweep_state(study, points).done
    assert_complete_once(postgres, "pg", len(points))
    ran = Counter(t.user_attrs["worker"] for t in grid_trials(postgres, "pg"))
    assert len(ran) == 2  # both workers took part


def test_worker_returns_at_once_when_nothing_is_waiting(tmp_path: Path) -> None:
    cfg = parse_sweep_config(sweep("idle"))
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    prepare(cfg, url)
    assert run_worker(url, "idle") == len(expand(cfg))
    assert run_worker(url, "idle") == 0


def test_ctrl_c_then_resume_keeps_finished_trials(tmp_path: Path) -> None:
    """Ctrl-C in a terminal reaches the driver and its workers (one process group); the driver
    stops the workers, which queue their trials again; a resume finishes the sweep."""
    cfg = sweep("ctrlc", train=SLOW, grid=SLOW_GRID, workers=2)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    url = f"sqlite:///{tmp_path / 'run' / 'sweep.db'}"
    proc = subprocess.Popen(
        [*FOREGROUND_CLI, "sweep", str(path), "--run-dir", str(tmp_path / "run"), "--no-report",
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    started, done = set(), False  # wait: both workers past start-up, one trial done, one running
    for line in proc.stdout:
        if m := re.search(r"worker (\d+): trial \d+ (started|complete)", line):
            started |= {m[1]} if m[2] == "started" else set()
            done |= m[2] == "complete"
            if done and len(started) == 2 and m[2] == "started":
                break
    else:
        pytest.fail("the sweep ended before it could be interrupted")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    assert "Traceback" not in err, err
    parsed = parse_sweep_config(cfg)
    study, _, points = open_sweep(url, "ctrlc")
    state = sweep_state(study, points)
    assert state.complete >= 1 and state.running == 0  # the interrupted trials wait again
    before = {t.number: t.value for t in grid_trials(url, "ctrlc") if t.state.is_finished()}

    storage, final = run_sweep(parsed, tmp_path / "run", progress=False)
    assert final.finished
    assert_complete_once(storage, "ctrlc", len(expand(parsed)))
    after = {t.number: t.value for t in grid_trials(url, "ctrlc") if t.state.is_finished()}
    assert {n: after[n] for n in before} == before


def test_relative_sqlite_storage_lives_beside_the_config(tmp_path: Path) -> None:
    path = tmp_path / "exp" / "s.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(sweep("rel", storage="sqlite:///store.db")))
    cfg = load_sweep_config(path)
    assert cfg.storage == f"sqlite:///{tmp_path / 'exp' / 'store.db'}"
    prepare(cfg, cfg.storage)
    # the same sweep from a clone elsewhere (another absolute path) reopens the study
    moved = cfg.model_copy(update={"storage": f"sqlite:///{tmp_path / 'elsewhere.db'}"})
    prepare(moved, cfg.storage)
