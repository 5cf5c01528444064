"""Batched sweeps (``batch`` > 1): workers claim bundles of grid points, train them together and
record one trial per point as one-at-a-time workers do; kills, Ctrl-C and failures are handled
point by point (none lost, none run twice)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState
from sweeps import (
    CLI,
    FOREGROUND_CLI,
    GRID,
    SLOW,
    SLOW_GRID,
    TINY,
    TINY_GRID,
    assert_complete_once,
    grid_trials,
    lines_until,
    new_database,
    sweep,
    together,
)
from typer.testing import CliRunner

import mup2.sweep.builtin
import mup2.sweep.engine
from mup2.batched import BatchError, train_batched
from mup2.cli import app
from mup2.config import ConfigError, TrainConfig
from mup2.sweep import (
    expand,
    open_sweep,
    parse_sweep_config,
    prepare,
    run_sweep,
    run_worker,
    sweep_state,
)
from mup2.sweep.owner import OWNER, requeue
from mup2.train import RunResult

Bundles = list[list[TrainConfig]]


@pytest.fixture
def bundles(monkeypatch: pytest.MonkeyPatch) -> Bundles:
    """The configs of every bundle the sweep engine trains in this process (trained for real)."""
    seen: Bundles = []

    def spy(configs: Sequence[TrainConfig], **kw: Any) -> list[RunResult]:
        seen.append(list(configs))
        return train_batched(configs, **kw)

    monkeypatch.setattr(mup2.sweep.builtin, "train_batched", spy)
    return seen


def by_point(trials: list[FrozenTrial]) -> dict[tuple[Any, ...], FrozenTrial]:
    return {tuple(sorted(t.params.items())): t for t in trials}


@pytest.mark.parametrize("value", [1, 4, "auto", "4"])
def test_batch_is_a_whole_number_or_auto(value: Any) -> None:
    cfg = parse_sweep_config(sweep("b", batch=value))
    assert cfg.batch == (value if value == "auto" else int(value))
    assert parse_sweep_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize("value", [0, -2, "fast", True, 1.5, None])
def test_a_bad_batch_is_an_error_naming_it(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"batch: .* is not a bundle size: .* or 'auto'"):
        parse_sweep_config(sweep("b", batch=value))


@pytest.mark.parametrize("value", ["0", "fast", "2.5"])
def test_a_bad_batch_option_is_a_usage_error(tmp_path: Path, value: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep("b")))
    runner = CliRunner()
    for argv in (
        ["sweep", str(path), "--run-dir", str(tmp_path / "run"), "--batch", value],
        ["worker", "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--study", "b", "--batch", value],
    ):
        res = runner.invoke(app, argv)
        assert res.exit_code == 2 and "--batch" in res.output, res.output
        assert "is not a bundle size" in res.output, res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "x.db").exists()


def test_batch_may_change_when_a_study_is_reopened(tmp_path: Path) -> None:
    """`batch` says how fast, not what: a study is reopened with any batch, and a worker may
    override the config's."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    _, points = prepare(parse_sweep_config(sweep("re", train=TINY, grid=TINY_GRID)), url)
    prepare(parse_sweep_config(sweep("re", train=TINY, grid=TINY_GRID, batch=4)), url)
    prepare(parse_sweep_config(sweep("re", train=TINY, grid=TINY_GRID, batch="auto")), url)
    with pytest.raises(ConfigError, match="made by a different sweep config"):
        prepare(parse_sweep_config(sweep("re", train={**TINY, "epochs": 2}, grid=TINY_GRID)), url)
    assert run_worker(url, "re", batch=3, max_trials=3) == 3  # the store's config says 1
    assert run_worker(url, "re", batch="auto") == len(points) - 3
    assert_complete_once(url, "re", len(points), only=True)


def test_a_batched_sweep_records_what_the_serial_one_does(
    tmp_path: Path, float64: None, bundles: Bundles
) -> None:
    """Bundles of up to 4 points of one width; every point gets one trial with the same state,
    status, attributes and (float64) value as one run at a time, unstable runs included."""
    grid = {**GRID, "lr": [0.05, 1e30]}  # 1e30 diverges at the third step
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    _, points = prepare(parse_sweep_config(sweep("serial", grid=grid)), url)
    prepare(parse_sweep_config(sweep("batched", grid=grid, batch=4)), url)
    assert run_worker(url, "serial") == len(points) and not bundles
    assert run_worker(url, "batched") == len(points)

    assert sorted(len(b) for b in bundles) == [2, 2, 4, 4, 4, 4]  # 10 points per width
    assert all(len({c.model.width for c in b}) == 1 for b in bundles)
    for name in ("serial", "batched"):
        assert_complete_once(url, name, len(points), only=True)
    serial, batched = by_point(grid_trials(url, "serial")), by_point(grid_trials(url, "batched"))
    assert serial.keys() == batched.keys() and len(serial) == len(points)
    statuses = {t.user_attrs["status"] for t in serial.values()}
    assert statuses == {"ok", "unstable"}
    for key, a in serial.items():
        b = batched[key]
        assert a.state == b.state == TrialState.COMPLETE
        assert a.user_attrs.keys() == b.user_attrs.keys()
        assert a.user_attrs["grid"] == b.user_attrs["grid"]
        assert a.user_attrs["status"] == b.user_attrs["status"]
        assert a.value is not None and b.value is not None and abs(a.value - b.value) <= 1e-9
        ma, mb = a.user_attrs["metrics"], b.user_attrs["metrics"]
        assert [m["epoch"] for m in ma] == [m["epoch"] for m in mb]
        for x, y in zip(ma, mb):
            assert abs(x["test_loss"] - y["test_loss"]) <= 1e-9
        if a.user_attrs["status"] == "unstable" and not ma:
            assert a.value == b.value == 0.0  # no finite epoch


def test_auto_sizes_each_bundle_by_auto_bundle_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundles: Bundles
) -> None:
    asked: list[int] = []

    def fits(config: TrainConfig, free_bytes: int | None = None) -> int:
        asked.append(config.model.width)
        return 3

    monkeypatch.setattr(mup2.sweep.builtin, "auto_bundle_size", fits)
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    _, points = prepare(parse_sweep_config(sweep("auto", train=TINY, grid=TINY_GRID)), url)
    assert run_worker(url, "auto", batch="auto") == len(points)
    assert [len(b) for b in bundles] == [3, 3, 2] and asked == [16, 16, 16]
    assert_complete_once(url, "auto", len(points), only=True)


def test_a_failing_bundle_fails_its_trials_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_at_16(configs: Sequence[TrainConfig], **kw: Any) -> list[RunResult]:
        if configs[0].model.width == 16:
            raise RuntimeError("broken on purpose")
        return train_batched(configs, **kw)

    monkeypatch.setattr(mup2.sweep.builtin, "train_batched", broken_at_16)
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    study, points = prepare(parse_sweep_config(sweep("fails")), url)
    assert run_worker(url, "fails", batch=4) == len(points)
    trials = grid_trials(url, "fails")
    assert len(trials) == len(points)  # failed, not retried
    for t in trials:
        if t.params["width"] == 16:
            assert t.state == TrialState.FAIL
            assert t.user_attrs["error"] == "RuntimeError: broken on purpose"
        else:
            assert t.state == TrialState.COMPLETE and t.user_attrs["status"] == "ok"
    state = sweep_state(study, points)
    assert state.done and state.failed == state.complete == len(points) // 2


def test_heartbeats_cover_every_trial_of_a_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle trains for longer than a trial may stay silent; another worker then looks for
    lost trials and finds none: each trial of the bundle had its heartbeat."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    cfg = parse_sweep_config(sweep("beat", train=TINY, grid=TINY_GRID, heartbeat_seconds=1))
    _, points = prepare(cfg, url)
    other, _, _ = open_sweep(url, "beat")

    def slow(configs: Sequence[TrainConfig], **kw: Any) -> list[RunResult]:
        time.sleep(4.5)  # > 3 heartbeat intervals: silent trials would be stale by now
        mup2.sweep.engine._fail_lost(other, url, cfg)  # what another worker does
        assert len(other.get_trials(states=(TrialState.RUNNING,))) == len(configs)
        return train_batched(configs, **kw)

    monkeypatch.setattr(mup2.sweep.builtin, "train_batched", slow)
    assert run_worker(url, "beat", batch=len(points)) == len(points)
    assert_complete_once(url, "beat", len(points), only=True)


def test_an_unbatchable_sweep_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    adam = {**TINY, "optimizer": {"name": "adamw", "lr": 1e-3}, "scheme": "mup-adam"}
    cfg = parse_sweep_config(sweep("adam", train=adam, grid=TINY_GRID, batch=2))
    with pytest.raises(BatchError, match=r"'adam' cannot train its runs in bundles \(batch = 2\)"):
        run_sweep(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "sweep.db").exists()
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    study, points = prepare(cfg.model_copy(update={"batch": 1}), url)
    with pytest.raises(BatchError, match=r"batch = 'auto'.*optimizer\.name"):
        run_worker(url, "adam", batch="auto")
    assert sweep_state(study, points).waiting == len(points)  # no trial was touched
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep("adam", train=adam, grid=TINY_GRID)))
    res = CliRunner().invoke(app, ["sweep", str(path), "--run-dir", str(tmp_path / "cli"),
                                   "--batch", "3"])  # fmt: skip
    assert res.exit_code == 2 and "use batch = 1" in res.output, res.output
    assert not (tmp_path / "cli" / "sweep.db").exists()


def test_two_batched_workers_take_whole_bundles(tmp_path: Path) -> None:
    """Two `mup2 worker --batch 4` start at one instant on 8 points of one width: each bundle
    is claimed whole (under the store's lock), every point runs once."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    _, points = prepare(parse_sweep_config(sweep("two", train=TINY, grid=TINY_GRID)), url)
    results = together(
        [["worker", "--storage", url, "--study", "two", "--batch", "4"]] * 2, tmp_path
    )
    ran = []
    for code, log in results:
        assert code == 0 and "Traceback" not in log, log
        ran.append(int(re.findall(r"ran (\d+) trials", log)[0]))
    assert sum(ran) == len(points) == 8 and set(ran) <= {0, 4, 8}
    assert_complete_once(url, "two", len(points), only=True)


def _storage(store: str, tmp_path: Path, request: pytest.FixtureRequest, name: str) -> str:
    if store == "sqlite":
        return f"sqlite:///{tmp_path / 'sweep.db'}"
    return new_database(request.getfixturevalue("postgres"), name, tables=False)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_kill_9_in_a_bundle_then_resume_runs_every_point_once(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """kill -9 of a worker while it trains its second bundle (2 points of width 128): both
    trials stay running with a dead owner; a new worker requeues and runs exactly those, and
    keeps the first bundle's."""
    url = _storage(store, tmp_path, request, "kill_batch")
    cfg = parse_sweep_config(sweep("kill", train=SLOW, grid=SLOW_GRID, heartbeat_seconds=60))
    study, points = prepare(cfg, url)
    args = [*CLI, "worker", "--storage", url, "--study", "kill", "--batch", "2"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert first.stdout is not None
    found = list(lines_until(first.stdout, r"trial \d+ complete", *[r"trial (\d+) started"] * 2))
    os.kill(first.pid, signal.SIGKILL)  # it printed both after claiming them
    first.wait()
    first.stdout.close()
    started = {int(m[1]) for m in found[1:]}
    before = {t.number: t.value for t in grid_trials(url, "kill") if t.state.is_finished()}
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert len(before) == 2 and {t.number for t in running} == started
    assert {t.user_attrs["grid"]["width"] for t in running} == {128}
    assert {t.system_attrs[OWNER]["pid"] for t in running} == {first.pid}

    second = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "ran 2 trials" in second.stdout, second.stdout
    assert_complete_once(url, "kill", len(points))
    after = {t.number: t.value for t in grid_trials(url, "kill") if t.state.is_finished()}
    assert {n: after[n] for n in before} == before  # finished work kept, not rerun
    lost = [t for t in grid_trials(url, "kill") if t.state == TrialState.FAIL]
    assert {t.number for t in lost} == started
    assert all(t.user_attrs["error"] == "its worker died" for t in lost)


def _start_batched(cfg: dict[str, Any], tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    """``mup2 sweep`` of ``cfg`` with one worker, as a foreground process in its own session
    (signals go to its group), printing a line per trial; the process and its store's URL."""
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [*FOREGROUND_CLI, "sweep", str(path), "--run-dir", str(tmp_path / "run"), "--no-report",
         "--no-progress", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    return proc, f"sqlite:///{tmp_path / 'run' / 'sweep.db'}"


def test_ctrl_c_then_resume_with_bundles(tmp_path: Path) -> None:
    """Ctrl-C while a bundle trains: the driver stops its worker, which queues every point of
    the bundle again at once (not counted as a retry); a resume finishes the sweep."""
    cfg = sweep("ctrlc", train=SLOW, grid=SLOW_GRID, batch=2)
    proc, url = _start_batched(cfg, tmp_path)
    assert proc.stdout is not None
    found = list(lines_until(proc.stdout, r"trial \d+ complete", *[r"trial (\d+) started"] * 2))
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    assert "Traceback" not in err, err
    study, _, points = open_sweep(url, "ctrlc")
    state = sweep_state(study, points)
    assert (state.complete, state.running, state.waiting) == (2, 0, 2)
    interrupted = [t for t in grid_trials(url, "ctrlc") if t.state == TrialState.FAIL]
    assert {t.number for t in interrupted} == {int(m[1]) for m in found[1:]}
    assert all(t.user_attrs["error"] == "interrupted" for t in interrupted)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert all(t.system_attrs["retry_history"] == [] for t in waiting)  # not counted
    before = {t.number: t.value for t in grid_trials(url, "ctrlc") if t.state.is_finished()}

    parsed = parse_sweep_config(cfg)
    storage, final = run_sweep(parsed, tmp_path / "run", progress=False)
    assert final.finished
    assert_complete_once(storage, "ctrlc", len(expand(parsed)))
    after = {t.number: t.value for t in grid_trials(url, "ctrlc") if t.state.is_finished()}
    assert {n: after[n] for n in before} == before


@pytest.mark.parametrize("batch", [1, 4])
def test_an_interrupted_point_keeps_its_place_in_grid_order(tmp_path: Path, batch: int) -> None:
    """A point queued again after an interruption gets a new trial at the back of the store,
    but workers claim in grid order, so it runs before the points after it in the grid (a GPU
    window cut short resumes with the points the config put first)."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    cfg = parse_sweep_config(sweep("order", train=TINY, grid=TINY_GRID))
    study, points = prepare(cfg, url)
    first = next(t for t in study.get_trials() if t.user_attrs["grid"] == points[0].params())
    study._storage.set_trial_state_values(first._trial_id, state=TrialState.RUNNING)
    frozen = study.tell(first.number, state=TrialState.FAIL)
    requeue(study, frozen, cfg.max_retries, count=False)
    assert run_worker(url, "order", batch=batch, max_trials=1) == 1
    done = [t for t in grid_trials(url, "order") if t.state == TrialState.COMPLETE]
    assert [t.user_attrs["grid"] for t in done] == [points[0].params()]


def test_sigusr1_drains_a_batched_sweep(tmp_path: Path) -> None:
    """SIGUSR1 to the sweep's process group (as experiments/gpu/run.py sends it before its
    deadline): the running bundle finishes and is recorded, nothing more is claimed, nothing is
    interrupted or requeued, and the rest stays waiting for the next run."""
    cfg = sweep("drain", train=SLOW, grid=SLOW_GRID, batch=2)
    proc, url = _start_batched(cfg, tmp_path)
    assert proc.stdout is not None
    found = list(lines_until(proc.stdout, *[r"trial (\d+) started"] * 2))
    os.killpg(proc.pid, mup2.sweep.engine.DRAIN_SIGNAL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "runs did not finish" in err, err
    assert "Traceback" not in err, err
    study, _, points = open_sweep(url, "drain")
    state = sweep_state(study, points)
    assert (state.complete, state.running, state.waiting) == (2, 0, len(points) - 2)
    done = {t.number for t in grid_trials(url, "drain") if t.state == TrialState.COMPLETE}
    assert done == {int(m[1]) for m in found}
    assert not [t for t in grid_trials(url, "drain") if t.state == TrialState.FAIL]
