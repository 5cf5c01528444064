"""Sweeps of a user's own function from Python (``mup2.sweep.run``): the point and its helpers,
the record, divergence, two workers on SQLite and PostgreSQL, a grown grid, a changed
fingerprint, bad entry points, a killed worker, Ctrl-C. The objectives are in objectives.py."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import objectives
import optuna
import pytest
import torch
from optuna.trial import TrialState
from sweeps import assert_complete_once, grid_trials, lines_until, new_database

import mup2
from mup2.config import ConfigError
from mup2.sweep import (
    Diverged,
    EntryPointError,
    GridPoint,
    Point,
    Reporter,
    expand,
    load_objective,
    open_sweep,
    parse_sweep_config,
    prepare,
    run,
    run_worker,
    sweep_state,
)
from mup2.sweep.launch import entry_point
from mup2.sweep.user import final_metrics

HERE = Path(__file__).resolve().parent
GRID: dict[str, Any] = {
    "widths": [16, 32],
    "lr": [0.05, 0.1, 0.2],
    "rho": [0.0, 0.05],
    "parametrizations": ["mup2", "sp-naive"],
}
#: 8 points, all at rho > 0: 2 widths x 2 lr x 2 rho, one parametrization.
SMALL = {"widths": [16, 32], "lr": [0.05, 0.2], "rho": [0.05, 0.1], "parametrizations": ["mup2"]}


def user(name: str, objective: str = "objectives:bowl", **train: Any) -> dict[str, Any]:
    """A user sweep config mapping over :data:`GRID` (``train`` keys replace the section's)."""
    section = {
        "objective": objective,
        "metric": "loss",
        "direction": "minimize",
        "version": "v1",
        "root": str(HERE),
    } | train
    return {"name": name, "heartbeat_seconds": 1, "train": section, "grid": GRID}


def test_a_point_gives_the_scheme_scaling_rule_parametrization_and_sam() -> None:
    grid = GridPoint("mup2", 64, 0.1, 0.05, 3)
    point = Point.of(grid, {"k": 1}, "sgd")
    assert (point.scheme, point.scaling, point.rule, point.grid) == ("mup-sgd", "mup2", "sam", grid)
    assert Point.of(grid, optimizer="adamw").scheme == "mup-adam"
    sp = Point.of(GridPoint("sp-naive", 64, 0.1, 0.05, 3))
    assert (sp.scheme, sp.scaling) == ("sp", "naive")
    readout = Point.of(GridPoint("mup-readout", 64, 0.1, 0.05, 3))
    assert (readout.scheme, readout.scaling, readout.rule) == ("mup-sgd", "mup2", "sam-readout")
    assert point.settings == {"k": 1} and point == Point.of(grid)  # settings do not count

    def net(width: int) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 3)
        )

    model = net(64)
    with torch.device("meta"):
        base = net(16)
    p = point.parametrize(model, base)
    assert p.scheme.name == "mup-sgd" and p.width_mult == 4
    same = net(64)
    point.parametrize(same, base)  # the init is drawn from point.seed
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True)
    )
    opt = point.sam(model, p, momentum=0.9)
    assert isinstance(opt, mup2.SAM) and isinstance(opt.base_optimizer, torch.optim.SGD)
    assert {g["lr"] for g in opt.param_groups} == {0.1}
    assert {(g["rho"], g["scaling"]) for g in opt.param_groups} == {(0.05, "mup2")}
    assert opt.param_groups[0]["momentum"] == 0.9
    adam = Point.of(grid, optimizer="adamw").sam(list(model.parameters()), weight_decay=0.1)
    assert isinstance(adam.base_optimizer, torch.optim.AdamW)
    with pytest.raises(TypeError, match=r"point\.sam\(model\) needs the model's parametrization"):
        point.sam(model)
    point.seed_everything()
    a = torch.rand(3)
    point.seed_everything()
    assert torch.equal(a, torch.rand(3))


def test_a_reporter_records_steps_and_stops_at_a_non_finite_value() -> None:
    report = Reporter("loss")
    report(2.0, 0)
    report.log(step=0, grad_norm=1.5)
    report.report(torch.tensor(1.0), 1)  # type: ignore[arg-type]
    assert report.metrics == [
        {"step": 0, "loss": 2.0},
        {"step": 0, "grad_norm": 1.5},
        {"step": 1, "loss": 1.0},
    ]
    with pytest.raises(Diverged, match=r"loss = nan at step 2"):
        report(math.nan, 2)
    with pytest.raises(TypeError, match=r"step must be an integer >= 0, got 1.5"):
        report(1.0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"loss must be a number, got '1'"):
        report("1", 3)  # type: ignore[arg-type]
    assert final_metrics(0.5, "acc") == {"acc": 0.5}
    assert final_metrics({"acc": 1, "loss": 2.0}, "acc") == {"acc": 1.0, "loss": 2.0}
    with pytest.raises(
        ValueError,
        match=r"returned the metrics \['loss'\], without the sweep's "
        r"metric 'acc'; return it too, or set train.metric",
    ):
        final_metrics({"loss": 2.0}, "acc")
    with pytest.raises(TypeError, match=r"returned None; return the metric 'acc'"):
        final_metrics(None, "acc")


def test_a_sweep_records_the_metric_its_steps_and_the_direction(tmp_path: Path) -> None:
    """One worker in this process: the store contract the report reads (see mup2.sweep.user)."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    cfg = parse_sweep_config(user("bowl"))
    study, points = prepare(cfg, url)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs["sweep"]["train"]["metric"] == "loss"
    assert study.user_attrs["sweep"]["train"]["direction"] == "minimize"
    assert run_worker(url, "bowl") == len(points) == 2 * 2 * 3 * 2  # schemes, widths, lr, rho
    assert_complete_once(url, "bowl", len(points), only=True, accuracy=False)
    for t in grid_trials(url, "bowl"):
        x = math.log2(t.user_attrs["grid"]["lr"] / 0.1)
        loss = x * x + 100 * (t.user_attrs["grid"]["rho"] - 0.05) ** 2 + 1 / t.params["width"]
        assert t.value == pytest.approx(loss)
        assert t.user_attrs["status"] == "ok"
        assert t.user_attrs["final"] == {
            "loss": t.value,
            "accuracy": pytest.approx(1 / (1 + loss)),
            "width": t.params["width"],
        }
        assert t.user_attrs["metrics"][:2] == [
            {"step": 0, "loss": pytest.approx(3 * loss)},
            {"step": 0, "grad_norm": 1.0},
        ]
        assert t.intermediate_values == pytest.approx({0: 3 * loss, 1: 2 * loss, 2: loss})
        assert {"seconds", "worker"} <= set(t.user_attrs)
    best = study.best_trial.user_attrs["grid"]
    assert (best["lr"], best["rho"], best["width"]) == (0.1, 0.05, 32)


def test_divergence_is_recorded_unstable_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """A NaN return, a reported inf and a raised Diverged: complete, unstable, the worst value
    for the direction; the other runs are ok."""
    grid = {"widths": [16], "lr": [0.5, 1.0, 2.0, 4.0], "rho": [0.05], "parametrizations": ["mup2"]}
    for direction, worst in (("maximize", -math.inf), ("minimize", math.inf)):
        name = f"div-{direction}"
        cfg = user(name, "objectives:diverging", metric="value", direction=direction)
        result = run(
            config=parse_sweep_config(cfg | {"grid": grid}),
            run_dir=tmp_path / name,
            progress=False,
            say=None,
        )
        assert result.state.finished and result.state.unstable == 3
        trials = {t.params["lr"]: t for t in grid_trials(result.storage, name)}
        assert all(t.state == TrialState.COMPLETE for t in trials.values())
        assert trials[0.5].value == 2.0 and trials[0.5].user_attrs["status"] == "ok"
        for lr, why in (
            (1.0, "returned value = nan"),
            (2.0, "value = inf at step 1"),
            (4.0, "the loss blew up at step 7"),
        ):
            assert trials[lr].value == worst
            assert trials[lr].user_attrs["status"] == "unstable"
            assert trials[lr].user_attrs["diverged"] == why
        assert trials[2.0].user_attrs["metrics"] == [
            {"step": 0, "value": 0.5},
            {"step": 1, "value": math.inf},
        ]


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_two_workers_run_each_point_once_and_a_resume_is_a_no_op(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'sweep.db'}"
        if store == "sqlite"
        else new_database(request.getfixturevalue("postgres"), "user_two", tables=False)
    )
    kw: dict[str, Any] = dict(
        name="two",
        grid=SMALL,
        direction="maximize",
        version="v1",
        settings={"seconds": 0.5},
        storage=url,
        heartbeat_seconds=1,
    )
    result = run(objectives.slow, workers=2, run_dir=tmp_path, progress=False, say=None, **kw)
    assert result.state.finished and result.storage == url
    assert result.config.train.objective == "objectives:slow"  # type: ignore[union-attr]
    assert_complete_once(url, "two", 8, only=True)
    trials = grid_trials(url, "two")
    assert len(Counter(t.user_attrs["worker"] for t in trials)) == 2  # both took part
    assert all(t.value == pytest.approx(t.params["lr"] + t.params["rho"]) for t in trials)
    said: list[str] = []
    again = run(objectives.slow, workers=2, run_dir=tmp_path, progress=False, say=said.append, **kw)
    assert again.state.finished and len(grid_trials(url, "two")) == 8
    assert said[0].startswith("resuming: 8 of 8 runs finished in")


def test_a_grown_grid_runs_only_the_new_points(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(
        name="grow",
        direction="minimize",
        metric="loss",
        version="v1",
        run_dir=tmp_path,
        progress=False,
        say=None,
    )
    small = run(objectives.bowl, grid={**GRID, "widths": [16]}, **kw)
    before = {t.number: t.value for t in grid_trials(small.storage, "grow")}
    said: list[str] = []
    big = run(
        objectives.bowl, grid={**GRID, "extra": [{"seeds": [1]}]}, **kw | {"say": said.append}
    )
    assert said == [
        f"resuming: {len(before)} of {len(expand(big.config))} runs finished in "
        f"{tmp_path / 'sweep.db'} (the grid grew from {len(before)} points)"
    ]
    assert big.state.finished
    assert_complete_once(big.storage, "grow", len(expand(big.config)), only=True, accuracy=False)
    after = {t.number: t.value for t in grid_trials(big.storage, "grow")}
    assert {n: after[n] for n in before} == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "v2"}, r"train\.version: \"v1\" in the store, \"v2\" here"),
        ({"settings": {"seconds": 2}}, r"train\.settings\.seconds: null in the store, 2 here"),
        ({"objective": "objectives:value"}, r"train\.objective: \"objectives:bowl\" in the store"),
        ({"direction": "maximize"}, r"train\.direction: \"minimize\" in the store, \"maximize\""),
        ({"metric": "accuracy"}, r"train\.metric: \"loss\" in the store, \"accuracy\" here"),
    ],
)
def test_a_changed_training_setup_is_refused(
    change: dict[str, Any], message: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    prepare(parse_sweep_config(user("same")), url)
    with pytest.raises(
        ConfigError,
        match=r"study 'same' in .* was made by a different sweep "
        rf"config: {message}.*Only the grid may grow",
    ):
        prepare(parse_sweep_config(user("same", **change)), url)
    moved = user("same", root="/elsewhere") | {"workers": 3}  # where it runs, not what
    prepare(parse_sweep_config(moved), url)


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        ("no_such_module:f", r"'no_such_module:f': no module named 'no_such_module'"),
        ("objectives:bowel", r"objectives has no 'bowel'; did you mean 'bowl'"),
        (
            "objectives:one_argument",
            r"takes \(point: 'Point'\) -> 'float', but a sweep calls it "
            r"as objective\(point, report\)",
        ),
        ("objectives:NOT_A_FUNCTION", r"'objectives:NOT_A_FUNCTION' is int, not a function"),
        ("missing.py:f", r"no file .*missing\.py"),
        (f"{HERE / 'objectives.py'}:nope", r"objectives\.py has no 'nope'"),
    ],
)
def test_a_bad_entry_point_is_refused_before_anything_is_written(
    objective: str, message: str, tmp_path: Path
) -> None:
    db = tmp_path / "sweep.db"
    cfg = parse_sweep_config(user("bad", objective) | {"storage": f"sqlite:///{db}"})
    with pytest.raises(EntryPointError, match=message):
        run(config=cfg, run_dir=tmp_path / "run", progress=False, say=None)
    assert not db.exists()


def test_a_worker_refuses_a_bad_entry_point_before_claiming(tmp_path: Path) -> None:
    """The store holds an objective this worker cannot import: it claims nothing."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    study, points = prepare(parse_sweep_config(user("gone", "objectives_gone:f")), url)
    with pytest.raises(EntryPointError, match=r"no module named 'objectives_gone'"):
        run_worker(url, "gone")
    assert sweep_state(study, points).waiting == len(points)


def test_what_no_worker_could_import_is_refused(tmp_path: Path) -> None:
    def nested(point: Point, report: Reporter) -> float:
        return 0.0

    kw: dict[str, Any] = dict(
        name="x", grid=SMALL, direction="maximize", version="v1", run_dir=tmp_path
    )
    for bad in (nested, lambda point, report: 0.0):
        with pytest.raises(
            TypeError,
            match=r"must be a function defined at the top level of a "
            r"module or script, got .*<.*: every worker imports it by name",
        ):
            run(bad, **kw)
    with pytest.raises(
        ConfigError,
        match=r"train\.direction: Input should be 'maximize' or "
        r"'minimize'.*\n  train\.version: Field required",
    ):
        run(objectives.value, **kw | {"direction": "up", "version": None})
    with pytest.raises(
        ConfigError,
        match=r"batch: 2, but a sweep of a user objective trains "
        r"one grid point at a time",
    ):
        parse_sweep_config(user("b") | {"batch": 2})
    with pytest.raises(ConfigError, match=r"train.optimizer: 'adam' is not one of sgd, adamw"):
        parse_sweep_config(user("b", optimizer="adam"))
    with pytest.raises(ConfigError, match=r"train.objective: 'objectives' is not an entry point"):
        parse_sweep_config(user("b", "objectives"))
    assert not (tmp_path / "sweep.db").exists()


DRIVER = '''
import signal, sys
import mup2.sweep
from mup2.sweep import Point, Reporter


def objective(point: Point, report: Reporter) -> float:
    """Sleeps in short steps (a worker imports this file, driver.py:objective)."""
    import time
    for step in range(int(point.settings["steps"])):
        time.sleep(0.05)
        report(point.lr, step)
    return point.lr + point.rho


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal's foreground
    try:
        result = mup2.sweep.run(
            objective, name="drv", direction="maximize", version="v1",
            grid={"widths": [16, 32], "lr": [0.05, 0.2], "rho": [0.05],
                  "parametrizations": ["mup2"]},
            settings={"steps": 20}, heartbeat_seconds=60, workers=int(sys.argv[1]),
            run_dir=sys.argv[2], progress=False,
        )
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    print(f"done {result.state.complete}/{result.state.total}", flush=True)
'''


def _driver(tmp_path: Path, workers: int) -> subprocess.Popen[str]:
    (tmp_path / "driver.py").write_text(DRIVER)
    return subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(workers), str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_killed_worker_of_a_script_is_replaced_and_its_point_runs_again(tmp_path: Path) -> None:
    """A script's sweep (its objective in the script itself); kill -9 of its worker while a
    trial runs: the driver starts another, which requeues the dead one's trial at once; every
    point runs to completion exactly once, finished ones are not rerun."""
    proc = _driver(tmp_path, 1)
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"worker (\d+): trial (\d+) started", line)
        if m and int(m[2]) == 1:  # the second: the first has finished
            break
    else:
        pytest.fail(f"the sweep ended before its worker could be killed: {proc.stderr}")
    os.kill(int(m[1]), signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and "done 4/4" in out, err
    url = f"sqlite:///{tmp_path / 'run' / 'sweep.db'}"
    assert_complete_once(url, "drv", 4)
    (lost,) = [t for t in grid_trials(url, "drv") if t.state == TrialState.FAIL]
    assert lost.number == 1 and lost.user_attrs["error"] == "its worker died"
    study = optuna.load_study(study_name="drv", storage=url)
    assert study.user_attrs["sweep"]["train"]["objective"] == "driver.py:objective"
    assert study.user_attrs["sweep"]["train"]["root"] == str(tmp_path)


@pytest.mark.slow
def test_ctrl_c_of_a_script_then_a_resume_keeps_the_finished_runs(tmp_path: Path) -> None:
    proc = _driver(tmp_path, 2)
    assert proc.stdout is not None
    list(lines_until(proc.stdout, r"trial \d+ complete", r"trial \d+ started"))
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in out, err
    url = f"sqlite:///{tmp_path / 'run' / 'sweep.db'}"
    study, _, points = open_sweep(url, "drv")
    state = sweep_state(study, points)
    assert state.complete >= 1 and state.running == 0 and state.complete < 4
    before = {t.number: t.value for t in grid_trials(url, "drv") if t.state.is_finished()}
    again = _driver(tmp_path, 1)
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0 and "done 4/4" in out, err
    assert_complete_once(url, "drv", 4)
    after = {t.number: t.value for t in grid_trials(url, "drv") if t.state.is_finished()}
    assert {n: after[n] for n in before} == before


def test_load_objective_finds_a_relative_file_in_the_root(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text("def f(point, report):\n    return 1.0\n")
    fn = load_objective("mine.py:f", str(tmp_path))
    assert fn(Point.of(GridPoint("mup2", 16, 0.1, 0.0, 0)), Reporter()) == 1.0
    assert load_objective(f"{tmp_path / 'mine.py'}:f") is fn  # one module per file


def test_an_entry_point_names_the_module_or_the_script() -> None:
    assert entry_point(objectives.bowl) == ("objectives:bowl", os.getcwd())
    with pytest.raises(TypeError, match=r"objective must be a function objective\(point, report\)"):
        entry_point(3)  # type: ignore[arg-type]


def test_a_module_run_with_python_m_is_named_by_its_module(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "job.py").write_text(
        "from mup2.sweep.launch import entry_point\n\n\ndef objective(point, report):\n"
        "    return 0.0\n\n\nif __name__ == '__main__':\n    print(entry_point(objective)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pkg.job"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "pkg.job:objective"


def test_a_sweep_hands_over_settings_and_the_scheme_of_its_optimizer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    grid = {"widths": [16], "lr": [0.1], "rho": [0.05], "parametrizations": ["mup2", "sp-naive"]}
    cfg = user(
        "echo", "objectives:settings_echo", metric="value", optimizer="adamw", settings={"k": 7}
    ) | {"grid": grid}
    prepare(parse_sweep_config(cfg), url)
    assert run_worker(url, "echo") == 2
    finals = {
        t.user_attrs["grid"]["parametrization"]: t.user_attrs["final"]
        for t in grid_trials(url, "echo")
    }
    assert finals == {
        "mup2": {"value": 7.0, "sp": 0.0, "adam": 1.0},
        "sp-naive": {"value": 7.0, "sp": 1.0, "adam": 0.0},
    }


def test_a_real_model_trains_through_the_points_helpers(tmp_path: Path) -> None:
    """A small MLP per point (point.parametrize, point.sam): at the base width μP² is SP with
    plain SAM, so both give the same loss; wider, they differ; every run is ok and finite."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    grid = {
        "widths": [16, 64],
        "lr": [0.1],
        "rho": [0.0, 0.05],
        "parametrizations": ["mup2", "sp-naive", "mup-readout"],
    }
    cfg = user("mlp", "objectives:mlp", settings={"steps": 4}) | {"grid": grid}
    _, points = prepare(parse_sweep_config(cfg), url)
    assert run_worker(url, "mlp") == len(points)
    loss = {tuple(t.user_attrs["grid"].values()): t.value for t in grid_trials(url, "mlp")}
    assert all(t.user_attrs["status"] == "ok" for t in grid_trials(url, "mlp"))
    assert all(math.isfinite(v) for v in loss.values())
    for rho in (0.0, 0.05):
        assert loss[("mup2", 16, 0.1, rho, 0)] == loss[("sp-naive", 16, 0.1, rho, 0)]
        assert loss[("mup2", 64, 0.1, rho, 0)] != loss[("sp-naive", 64, 0.1, rho, 0)]
    assert loss[("mup-readout", 64, 0.1, 0.05, 0)] != loss[("mup2", 64, 0.1, 0.05, 0)]
