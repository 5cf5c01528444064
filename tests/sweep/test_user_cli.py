"""Sweeps of a user's own function from the command line: a config whose ``train`` section names
an entry point, run by ``mup2 sweep`` and ``mup2 worker`` (the objectives are objectives.py,
copied beside each test's config as ``myobj.py`` and named by a path relative to it)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from sweeps import (
    CLI,
    FOREGROUND_CLI,
    assert_complete_once,
    grid_trials,
    kill_a_worker_then_rerun,
    lines_until,
    new_database,
)
from typer.testing import CliRunner

from mup2.cli import app
from mup2.sweep import expand, load_sweep_config, open_sweep, prepare, sweep_state

HERE = Path(__file__).resolve().parent
SMALL = {"widths": [16, 32], "lr": [0.05, 0.2], "rho": [0.05], "parametrizations": ["mup2"]}


def config(folder: Path, name: str, objective: str, **keys: Any) -> Path:
    """``folder/sweep.yaml``: a user sweep of ``myobj.py:OBJECTIVE`` (objectives.py copied into
    ``folder``) over :data:`SMALL`; ``keys`` replace top-level keys, ``train`` merges."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "objectives.py", folder / "myobj.py")
    train = {"objective": f"myobj.py:{objective}", "direction": "maximize", "version": "v1"}
    train |= keys.pop("train", {})
    data = {"name": name, "heartbeat_seconds": 1, "train": train, "grid": SMALL} | keys
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_mup2_sweep_runs_a_user_objective_grows_and_refuses_a_new_version(tmp_path: Path) -> None:
    """Two local workers; divergence recorded unstable (the sweep goes on); a grown grid runs
    only the new points; another version under the same name is refused, nothing run."""
    grid = {**SMALL, "widths": [16], "lr": [0.5, 1.0, 2.0, 4.0]}
    path = config(tmp_path / "exp", "div", "diverging", grid=grid)
    run_dir = tmp_path / "run"
    argv = ["sweep", str(path), "--run-dir", str(run_dir), "--workers", "2", "--no-progress"]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    db = run_dir / "sweep.db"
    assert res.stdout.splitlines()[0] == f"new store at {db}"
    assert (
        f"sweep div: 4/4 runs finished (3 unstable, 0 failed); store: sqlite:///{db}" in res.stdout
    )
    assert re.search(r"^report: ", res.stdout, re.M), res.stdout  # written, or skipped saying why
    url = f"sqlite:///{db}"
    trials = {t.params["lr"]: t for t in grid_trials(url, "div")}
    assert [trials[lr].user_attrs["status"] for lr in (0.5, 1.0, 2.0, 4.0)] == [
        "ok",
        "unstable",
        "unstable",
        "unstable",
    ]
    assert trials[0.5].value == 2.0 and trials[4.0].value == float("-inf")
    before = {t.number: t.value for t in grid_trials(url, "div")}

    config(tmp_path / "exp", "div", "diverging", grid={**grid, "lr": [0.25, 0.5, 1.0, 2.0, 4.0]})
    res = CliRunner().invoke(app, [*argv, "--no-report"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == (
        f"resuming: 4 of 5 runs finished in {db} (the grid grew from 4 points)"
    )
    after = {t.number: t.value for t in grid_trials(url, "div")}
    assert len(after) == 5 and {n: after[n] for n in before} == before

    config(tmp_path / "exp", "div", "diverging", grid=grid, train={"version": "v2"})
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2
    assert re.search(
        r"error: study 'div' in .* was made by a different sweep config: "
        r"train\.version: \"v1\" in the store, \"v2\" here",
        res.stderr,
    )
    assert len(grid_trials(url, "div")) == 5


@pytest.mark.slow
def test_two_mup2_workers_on_postgresql_import_the_objective_from_elsewhere(
    postgres: str, tmp_path: Path
) -> None:
    """The sweep is queued from its config; two `mup2 worker` started in another folder find the
    objective's file through the stored config (relative to the config's folder)."""
    url = new_database(postgres, "user_cli_two", tables=False)
    path = config(tmp_path / "exp", "pg", "slow", storage=url, train={"settings": {"seconds": 0.5}})
    study, points = prepare(load_sweep_config(path), url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    workers = [
        subprocess.Popen(
            [*CLI, "worker", "--storage", url, "--study", "pg"],
            cwd=elsewhere,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [w.communicate(timeout=240) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    assert sweep_state(study, points).finished
    assert_complete_once(url, "pg", len(points), only=True)
    assert len(Counter(t.user_attrs["worker"] for t in grid_trials(url, "pg"))) == 2


@pytest.mark.slow
def test_a_killed_mup2_worker_loses_no_run_and_repeats_none(tmp_path: Path) -> None:
    path = config(
        tmp_path, "kill", "slow", heartbeat_seconds=60, train={"settings": {"seconds": 1}}
    )
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    study, points = prepare(load_sweep_config(path), url)
    kill_a_worker_then_rerun(url, "kill", study, points)


@pytest.mark.slow
def test_ctrl_c_of_mup2_sweep_then_a_resume(tmp_path: Path) -> None:
    path = config(tmp_path, "ctrlc", "slow", workers=2, train={"settings": {"seconds": 1}})
    run_dir = tmp_path / "run"
    argv = ["sweep", str(path), "--run-dir", str(run_dir), "--no-report", "--no-progress"]
    proc = subprocess.Popen(
        [*FOREGROUND_CLI, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    list(lines_until(proc.stdout, r"trial \d+ complete", r"trial \d+ started"))
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    assert "Traceback" not in err, err
    url = f"sqlite:///{run_dir / 'sweep.db'}"
    study, _, points = open_sweep(url, "ctrlc")
    state = sweep_state(study, points)
    assert 1 <= state.complete < len(points) and state.running == 0
    before = {t.number: t.value for t in grid_trials(url, "ctrlc") if t.state.is_finished()}
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    assert_complete_once(url, "ctrlc", len(expand(load_sweep_config(path))))
    after = {t.number: t.value for t in grid_trials(url, "ctrlc") if t.state.is_finished()}
    assert {n: after[n] for n in before} == before


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        ("gone.py:bowl", r"objective 'gone\.py:bowl': no file .*/gone\.py"),
        ("myobj.py:bowel", r"myobj\.py has no 'bowel'; did you mean 'bowl'"),
        ("myobj.py:one_argument", r"but a sweep calls it as objective\(point, report\)"),
    ],
)
def test_mup2_worker_refuses_a_bad_entry_point_before_claiming(
    objective: str, message: str, tmp_path: Path
) -> None:
    path = config(tmp_path, "bad", "bowl")
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    cfg = load_sweep_config(path)
    train = cfg.train.model_copy(update={"objective": objective})
    study, points = prepare(cfg.model_copy(update={"train": train}), url)
    res = CliRunner().invoke(app, ["worker", "--storage", url, "--study", "bad"])
    assert res.exit_code == 2 and re.search(message, res.stderr), res.stderr
    assert sweep_state(study, points).waiting == len(points)  # nothing claimed
