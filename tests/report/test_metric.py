"""The report on stores of sweeps around a user's function (written here with Optuna's API as
``mup2.sweep.run`` writes them, and one made by ``mup2.sweep.run`` itself): a minimized loss, a
maximized score that is not an accuracy, an accuracy of the user's; diverged runs at ±inf;
columns, verdicts and colour scales after the metric."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, create_trial
from stores import distributions
from typer.testing import CliRunner

from mup2.cli import app
from mup2.report import (
    TEST_ACCURACY,
    Metric,
    ReportError,
    analyze,
    cmap_name,
    load_sweep,
    make_report,
    optima_columns,
    sweep_metric,
    write_summary,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARS = ("mup2", "mup-naive", "sp-naive")
WIDTHS = (64, 128, 256)
LRS = (2.0**-6, 2.0**-5, 2.0**-4, 2.0**-3)
RHOS = (0.0, 2.0**-6, 2.0**-4, 2.0**-2)
DIST = distributions(PARS)


def user_config(metric: str, direction: str) -> dict[str, Any]:
    """The ``sweep`` user attribute of a user sweep (the store contract of ``mup2.sweep.run``)."""
    train = {
        "objective": "examples.gpt:objective",
        "metric": metric,
        "direction": direction,
        "version": "v3",
        "settings": {"steps": 40},
    }
    return {"name": f"{metric} fixture", "train": train, "grid": {"parametrizations": list(PARS)}}


def user_trial(
    p: str, w: int, lr: float, rho: float, seed: int, final: dict[str, float], metric: str
) -> FrozenTrial:
    """A finished trial: ``final`` the returned metrics; diverged when the objective is not
    finite (recorded at ±inf with status 'unstable')."""
    value = final[metric]
    ok = math.isfinite(value)
    point = {"parametrization": p, "width": w, "lr": lr, "rho": rho, "seed": seed}
    curve = [{"step": s, metric: value + 0.5 * (40 - s) / 40} for s in (10, 20, 30, 40)]
    attrs = {
        "status": "ok" if ok else "unstable",
        "final": final,
        "metrics": curve if ok else curve[:1],
        "grid": point,
        "seconds": 0.25,
    }
    return create_trial(params=point, distributions=DIST, value=value, user_attrs=attrs)


def loss(p: str, k: int, i: int, j: int) -> float:
    """Mean val loss of cell (LRS[i], RHOS[j]) at width WIDTHS[k]: mup2's optimum stays at
    (LRS[1], RHOS[2]) and its loss falls 0.1 per doubling; mup-naive's stays and rises 3% per
    doubling; sp-naive's η* moves one step per doubling and its loss rises 0.25% per doubling.
    ρ = 0 is 0.03 above the SAM optimum's row."""
    ii, jj, best = {
        "mup2": (1, 2, 2.0 - 0.1 * k),
        "mup-naive": (1, 1, 2.0 + 0.03 * k),
        "sp-naive": (3 - k, 2, 2.0 + 0.005 * k),
    }[p]
    if j == 0:
        return best + 0.03 + 0.05 * (i - ii) ** 2
    return best + 0.05 * (i - ii) ** 2 + 0.01 * (j - jj) ** 2


def diverged(p: str, k: int, i: int, j: int, seed: int) -> bool:
    """mup2 diverges at the largest (η, ρ) at every width, and at width 128, smallest η,
    largest ρ, seed 1."""
    return p == "mup2" and ((i, j) == (3, 3) or (k, i, j, seed) == (1, 0, 3, 1))


@pytest.fixture(scope="module")
def loss_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('user')}/user.db"
    study = optuna.create_study(study_name="gpt", storage=url, direction="minimize")
    study.set_user_attr("sweep", user_config("val_loss", "minimize"))
    trials = []
    for p in PARS:
        for k, w in enumerate(WIDTHS):
            for i, lr in enumerate(LRS):
                for j, rho in enumerate(RHOS):
                    for s in (0, 1):
                        v = loss(p, k, i, j) + (0.01 if s else -0.01)
                        v = math.inf if diverged(p, k, i, j, s) else v
                        final = {"val_loss": v, "val_accuracy": 0.5, "train_loss": v - 0.1}
                        trials.append(user_trial(p, w, lr, rho, s, final, "val_loss"))
    study.add_trials(trials)
    return url


def test_metric_from_the_store(loss_store: str) -> None:
    sweep = load_sweep(loss_store, "gpt")
    m = sweep.metric
    assert (m.name, m.direction, m.sign, m.percent) == ("val_loss", "minimize", -1, False)
    assert (sweep.objective, sweep.version) == ("examples.gpt:objective", "v3")
    assert sweep.final_metrics == ("val_loss", "val_accuracy", "train_loss")
    assert sweep.curve_axis == "step"
    r = next(r for r in sweep.runs if r.status == "unstable")
    assert r.value == math.inf and r.curve == ((10.0, math.inf),)
    assert m.score(r.value) == math.inf and m.diverged == math.inf
    assert cmap_name(m) == "viridis_r" and cmap_name(TEST_ACCURACY) == "viridis"


def test_minimized_optima_and_verdicts(loss_store: str) -> None:
    a = analyze(load_sweep(loss_store, "gpt"))
    assert (a.unstable_below, a.unstable_above, a.within, a.tolerance) == (None, None, 0.01, 0.01)
    for k, w in enumerate(WIDTHS):
        o = a.optimum("mup2", w)
        assert o is not None and (o.lr, o.rho) == (LRS[1], RHOS[2])  # the lowest loss
        assert o.value == pytest.approx(2.0 - 0.1 * k, abs=1e-12)
        assert o.base is not None and o.base.mean == pytest.approx(o.value + 0.03, abs=1e-12)
        # within 1% of the optimum (0.02 here, 0.019 at width 256): the ρ neighbours at 0.01
        assert {(c.lr, c.rho) for c in o.region} == {(LRS[1], RHOS[1]), (LRS[1], RHOS[2]),
                                                      (LRS[1], RHOS[3])}  # fmt: skip
    t = a.transfers
    assert (t["mup2"].verdict, t["mup2"].lr_steps, t["mup2"].rho_steps) == ("holds", 0, 0)
    assert t["mup2"].change == pytest.approx(-0.2)
    assert t["mup2"].reason == "η* moves 0, ρ* 0 grid step(s); val_loss -0.2 (-10.00%)"
    assert t["mup-naive"].verdict == "fails"
    assert t["mup-naive"].reason == "val_loss at the optimum worsens by 0.06 (3.00%), more than 1%"
    # sp-naive's loss rises 0.5% (within 1%); its η* moves 2 steps
    assert (t["sp-naive"].verdict, t["sp-naive"].reason) == ("fails", "η* moves 2 grid steps")
    assert t["sp-naive"].change == pytest.approx(0.01)
    # a 0.4% tolerance fails sp-naive's loss too; 4% lets mup-naive's pass
    tight = analyze(load_sweep(loss_store, "gpt"), tolerance=0.004).transfers["sp-naive"]
    assert "val_loss at the optimum worsens by 0.01 (0.50%), more than 0.4%" in tight.reason
    loose = analyze(load_sweep(loss_store, "gpt"), tolerance=0.04).transfers["mup-naive"]
    assert loose.verdict == "holds"


def test_diverged_runs_at_inf(loss_store: str) -> None:
    a = analyze(load_sweep(loss_store, "gpt"))
    assert [a.unstable_runs(p) for p in PARS] == [(7, 96), (0, 96), (0, 96)]
    c = a.grids["mup2"].cell(128, LRS[0], RHOS[3])  # one seed of two diverged
    assert c is not None and c.unstable and c.values[1] == math.inf and c.mean == math.inf
    c = a.grids["mup2"].cell(64, LRS[3], RHOS[3])
    assert c is not None and c.unstable and c.unstable_runs == 2
    # a threshold above the loss: runs past it are unstable too
    a2 = analyze(load_sweep(loss_store, "gpt"), unstable_above=2.04)
    assert a2.threshold == 2.04 and a2.unstable_runs("mup2", 64)[0] > 2
    t = analyze(load_sweep(loss_store, "gpt"), unstable_above=1.95).transfers["mup2"]
    assert (t.verdict, t.reason) == ("n/a", "no stable cell at width 64")


def test_threshold_on_the_wrong_side(loss_store: str, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"minimizes val_loss: a run is unstable above"):
        analyze(load_sweep(loss_store, "gpt"), unstable_below=2.0)
    with pytest.raises(ReportError, match=r"give --unstable-above"):
        make_report(loss_store, "gpt", tmp_path / "out", unstable_below=2.0)
    assert not (tmp_path / "out").exists()


def test_report_files_named_after_the_metric(loss_store: str, tmp_path: Path) -> None:
    files = make_report(loss_store, "gpt", tmp_path / "out")
    assert files.curves == tmp_path / "out" / "curves.png"
    for p in files.paths:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    with files.trials_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == (
        *("number", "state", "parametrization", "width", "lr", "rho", "seed", "status"),
        *("val_loss", "val_accuracy", "train_loss", "seconds"),
    )
    bad = [r for r in rows if r["status"] == "unstable"]
    assert len(bad) == 7 and {r["val_loss"] for r in bad} == {"inf"}
    with files.optima_csv.open() as f:
        reader = csv.DictReader(f)
        opt = {(r["parametrization"], r["width"]): r for r in reader}
    assert tuple(reader.fieldnames or ()) == optima_columns(load_sweep(loss_store, "gpt").metric)
    row = opt["mup2", "256"]
    assert float(row["val_loss"]) == pytest.approx(1.8)
    assert float(row["base_val_loss"]) == pytest.approx(1.83)
    assert float(row["best_base_val_loss"]) == pytest.approx(1.83)
    assert float(row["gain"]) == pytest.approx(-0.03)  # SAM − best base: lower is better
    md = files.summary.read_text()
    assert "Objective `examples.gpt:objective` (version `v3`): minimizes `val_loss`." in md
    assert "`val_loss` is the sweep's objective metric (lower is better)" in md
    assert (
        "| mup2 | 64, 128, 256 | 0 steps | 0 steps | -0.2 (-10.00%) | +0 (+0.00%) | **holds** |"
        in md
    )
    assert (
        "| mup-naive | 64, 128, 256 | 0 steps | 0 steps | +0.06 (+3.00%) | +0 (+0.00%) "
        "| **fails** |" in md
    )
    assert "is at most that of the smallest width plus 1% of its magnitude" in md
    # width 256: 1.80 ± 0.01414 (2 seeds); base 1.83; SAM − best base −0.03 ± 4.303 · 0.01414
    assert (
        "| 256 | 2^-5 | 2^-4 | 1.8 ± 0.01414 (2 seeds, ±1 sd) | – | 1.83 | 1.83 (2^-5) "
        "| -0.03 ± 0.06085 | 2/32 | 0 |"
    ) in md
    assert "- [`curves.png`](curves.png): val_loss against step" in md
    assert "accuracy" not in md.replace("val_accuracy", "")


def test_cli_on_a_user_store(loss_store: str, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["report", "--storage", loss_store, "--study", "gpt", "--out", str(tmp_path / "o")]
    res = runner.invoke(app, [*args, "--unstable-above", "2.5", "--no-curves"])
    assert res.exit_code == 0, res.output
    assert "mup2: transfer holds" in res.output and "mup-naive: transfer fails" in res.output
    assert not (tmp_path / "o" / "curves.png").exists()
    res = runner.invoke(app, [*args, "--unstable-below", "2.5"])
    assert res.exit_code == 2 and "give --unstable-above" in res.output


def test_maximized_score_that_is_not_an_accuracy(tmp_path: Path) -> None:
    """A reward in the tens: relative tolerances, -inf for a diverged run, a threshold below."""
    url = f"sqlite:///{tmp_path}/reward.db"
    study = optuna.create_study(study_name="rl", storage=url, direction="maximize")
    study.set_user_attr("sweep", user_config("reward", "maximize"))
    peak = {64: 100.0, 128: 99.5, 256: 98.0}  # -0.5% then -2%
    runs = []
    for w, top in peak.items():
        for i, lr in enumerate(LRS[:3]):
            for j, rho in enumerate(RHOS[:3]):
                v = top - 10.0 * abs(i - 1) - 0.5 * abs(j - 1)
                v = -math.inf if (i, j) == (2, 2) else v
                runs.append(user_trial("mup2", w, lr, rho, 0, {"reward": v}, "reward"))
    study.add_trials(runs)
    sweep = load_sweep(url, "rl")
    assert (sweep.metric.direction, sweep.metric.percent) == ("maximize", False)
    a = analyze(sweep)
    assert [a.optimum("mup2", w).value for w in peak] == list(peak.values())  # type: ignore[union-attr]
    t = a.transfers["mup2"]
    assert (t.verdict, t.reason) == (
        "fails",
        "reward at the optimum worsens by 2 (2.00%), more than 1%",
    )
    assert analyze(sweep, tolerance=0.025).transfers["mup2"].verdict == "holds"
    # within 1% of 100 (1.0): the optimum and its ρ neighbours (0.5 below)
    o = a.optimum("mup2", 64)
    assert o is not None and len(o.region) == 3
    c = a.grids["mup2"].cell(64, LRS[2], RHOS[2])
    assert c is not None and c.unstable and c.mean == -math.inf
    assert analyze(sweep, unstable_below=95.0).unstable_runs("mup2", 64) == (6, 9)
    with pytest.raises(ReportError, match="maximizes reward: a run is unstable below"):
        analyze(sweep, unstable_above=1.0)


def test_which_metric() -> None:
    user = user_config("val_accuracy", "maximize")
    assert sweep_metric({}, "MAXIMIZE", []) == TEST_ACCURACY  # no config: a built-in store
    assert sweep_metric({"train": {"epochs": 3}}, "MAXIMIZE", [0.5]) == TEST_ACCURACY
    assert sweep_metric({}, "MINIMIZE", []) == Metric("value", "minimize")
    m = sweep_metric(user, "MAXIMIZE", [0.2, 0.9, -math.inf])
    assert (m.name, m.percent, m.column, m.diverged) == ("val_accuracy", True, "val_accuracy", 0.0)
    assert optima_columns(m)[4] == "val_accuracy" and "best_base_val_accuracy" in optima_columns(m)
    assert not sweep_metric(user, "MAXIMIZE", [20.0, 90.0]).percent  # in percent already
    assert m.unstable_default is None and TEST_ACCURACY.unstable_default == 0.30
    with pytest.raises(ValueError, match="direction must be"):
        Metric("x", "up")  # type: ignore[arg-type]


def test_threshold_of_an_accuracy_is_a_fraction(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/acc.db"
    study = optuna.create_study(study_name="acc", storage=url, direction="maximize")
    study.set_user_attr("sweep", user_config("val_accuracy", "maximize"))
    study.add_trials(
        [
            user_trial("mup2", 64, lr, RHOS[1], 0, {"val_accuracy": 0.5 + 0.1 * i}, "val_accuracy")
            for i, lr in enumerate(LRS)
        ]
    )
    sweep = load_sweep(url, "acc")
    a = analyze(sweep)
    assert a.unstable_below is None and a.tolerance == 0.005  # absolute, as the built-in one
    assert a.optimum("mup2", 64).lr == LRS[3]  # type: ignore[union-attr]
    assert analyze(sweep, unstable_below=0.65).unstable_runs("mup2") == (2, 4)
    with pytest.raises(ReportError, match=r"unstable_below 30 is not in \[0, 1\]"):
        analyze(sweep, unstable_below=30)


@pytest.mark.slow
def test_report_of_a_real_user_sweep(tmp_path: Path) -> None:
    """``mup2.sweep.run`` on a user's function, then ``mup2 report`` on its store."""
    from mup2.sweep import run

    grid = {
        "widths": [32, 64],
        "lr": [0.025, 0.05, 0.1, 0.2],
        "rho": [0.0, 0.05, 0.1],
        "seeds": [0, 1],
        "parametrizations": ["mup2", "sp-naive"],
    }
    url = f"sqlite:///{tmp_path}/user.db"
    result = run(
        f"{Path(__file__).parent / 'user_objective.py'}:transfer",
        name="user-e2e",
        grid=grid,
        direction="minimize",
        metric="val_loss",
        version="1",
        storage=url,
        run_dir=tmp_path / "run",
        progress=False,
        say=None,
    )
    assert result.state.finished
    res = CliRunner().invoke(
        app, ["report", "--storage", url, "--study", "user-e2e", "--out", str(tmp_path / "r")]
    )
    assert res.exit_code == 0, res.output
    assert "mup2: transfer holds" in res.output and "sp-naive: transfer fails" in res.output
    a = analyze(load_sweep(url, "user-e2e"))
    assert (a.metric.name, a.metric.direction) == ("val_loss", "minimize")
    for w in (32, 64):
        o = a.optimum("mup2", w)
        assert o is not None and (o.lr, o.rho) == (0.1, 0.05)
        assert o.value == pytest.approx(2.0 - 0.1 * (w == 64) + 0.0005)  # mean over seeds 0, 1
    o = a.optimum("sp-naive", 64)
    assert o is not None and o.lr == 0.025
    assert a.transfers["sp-naive"].reason == "η* moves 2 grid steps"
    assert a.unstable_runs("sp-naive", 64) == (6, 24)  # η = 0.2: 3 ρ × 2 seeds, NaN → +inf
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "Objective `" in md and "user_objective.py:transfer` (version `1`)" in md
    with (tmp_path / "r" / "trials.csv").open() as f:
        header = next(csv.reader(f))
    assert header[7:] == ["status", "val_loss", "val_perplexity", "seconds"]
    assert (tmp_path / "r" / "curves.png").stat().st_size > 10_000


def test_a_width_where_every_run_diverged(tmp_path: Path) -> None:
    """Its optimum is an unstable cell at +inf: no verdict, no gain, the table says inf."""
    url = f"sqlite:///{tmp_path}/inf.db"
    study = optuna.create_study(study_name="inf", storage=url, direction="minimize")
    study.set_user_attr("sweep", user_config("val_loss", "minimize"))
    loss = {(w, i, j): math.inf if w == 128 else 1.0 + i + j for w in (64, 128)
            for i in range(2) for j in range(3)}  # fmt: skip
    study.add_trials(
        [
            user_trial("mup2", w, LRS[i], RHOS[j], 0, {"val_loss": v}, "val_loss")
            for (w, i, j), v in loss.items()
        ]
    )
    a = analyze(load_sweep(url, "inf"))
    t = a.transfers["mup2"]
    assert (t.verdict, t.reason) == ("n/a", "no stable cell at width 128")
    md = write_summary(a, tmp_path / "summary.md", [], []).read_text()
    row = "| 128 | 2^-6 | 2^-6 | inf (one seed) | lowest η, lowest ρ > 0 | inf | inf (2^-6) | – |"
    assert row in md
    assert "| mup2 | 64, 128 | – | – | – | – | n/a | no stable cell at width 128 |" in md
