"""``mup2 report`` on stored fixture sweeps built with the real Optuna API: optima, transfer
verdicts, unstable counts, the CSVs, the figures and the command."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial
from stores import distributions
from typer.testing import CliRunner

from mup2.cli import app
from mup2.report import (
    TRIAL_COLUMNS,
    Cell,
    ReportError,
    StudyNotFoundError,
    analyze,
    difference,
    load_sweep,
    make_report,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARS = ("sp-naive", "mup-naive", "mup2")
WIDTHS = (64, 128, 256)
LRS = (2.0**-4, 2.0**-3, 2.0**-2, 2.0**-1)
RHOS = (0.0, 2.0**-6, 2.0**-4, 2.0**-2)
DIST = distributions(PARS)


def optimum(p: str, k: int) -> tuple[int, int, float]:
    """(η index, ρ index into RHOS, peak accuracy) of parametrization ``p`` at width WIDTHS[k]:
    sp-naive's η* moves one step per doubling; mup-naive's stays but loses 1 point per doubling;
    mup2's stays and gains 1 point per doubling."""
    if p == "sp-naive":
        return 3 - k, 2, 0.80 + 0.005 * k
    if p == "mup-naive":
        return 1, 1, 0.80 - 0.01 * k
    return 2, 2, 0.80 + 0.01 * k


def surface(p: str, k: int, i: int, j: int) -> float:
    """Mean accuracy of cell (LRS[i], RHOS[j]); ρ = 0 is 1.5 points below the SAM optimum row."""
    ii, jj, peak = optimum(p, k)
    if j == 0:
        return peak - 0.015 - 0.03 * (i - ii) ** 2
    return peak - 0.03 * (i - ii) ** 2 - 0.004 * (j - jj) ** 2


def diverged(p: str, k: int, i: int, j: int, seed: int) -> bool:
    """mup2 (and mup-naive) diverge at the largest (η, ρ); mup2 also at width 128, smallest η,
    largest ρ, seed 1; sp-naive at the largest η at width 256."""
    if p == "sp-naive":
        return k == 2 and i == 3
    return (i, j) == (3, 3) or (p, k, i, j, seed) == ("mup2", 1, 0, 3, 1)


def trial(
    p: str, w: int, lr: float, rho: float, seed: int, acc: float, ok: bool = True
) -> FrozenTrial:
    attrs = {
        "status": "ok" if ok else "unstable",
        "test_accuracy": acc if ok else None,
        "test_loss": 1.0 - acc if ok else None,
        "seconds": 1.5,
        "metrics": [{"epoch": 1, "test_accuracy": acc}],
    }
    params = {"parametrization": p, "width": w, "lr": lr, "rho": rho, "seed": seed}
    return create_trial(
        params=params, distributions=DIST, value=acc if ok else 0.0, user_attrs=attrs
    )


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sweep')}/sweep.db"
    study = optuna.create_study(study_name="fixture", storage=url, direction="maximize")
    study.set_user_attr("sweep", {"name": "MLP fixture", "grid": {"parametrizations": PARS[::-1]}})
    # a diverged run, then a rerun of the same seed (below): the later one counts
    trials = [trial("mup2", 64, LRS[0], RHOS[0], 0, 0.0, ok=False)]
    trials += [
        trial(p, w, lr, rho, s, surface(p, k, i, j) + (0.002 if s else -0.002))
        if not diverged(p, k, i, j, s)
        else trial(p, w, lr, rho, s, 0.0, ok=False)
        for p in PARS
        for k, w in enumerate(WIDTHS)
        for i, lr in enumerate(LRS)
        for j, rho in enumerate(RHOS)
        for s in (0, 1)
    ]
    # sp-naive, width 128, largest η, ρ = 0, seed 0: 'ok' but below 30%
    sp = PARS.index("sp-naive") * 96 + 32 + 3 * 8 + 0 + 1
    trials[sp] = trial("sp-naive", 128, LRS[3], 0.0, 0, 0.25)
    study.add_trials(trials)
    failed = create_trial(
        params={"parametrization": "mup2", "width": 64, "lr": LRS[1], "rho": RHOS[1], "seed": 0},
        distributions=DIST,
        state=TrialState.FAIL,
    )
    study.add_trial(failed)
    study.add_trial(create_trial(params={"x": 1.0}, distributions={"x": DIST["rho"]}, value=0.5))
    return url


def test_optima_and_transfer(storage: str) -> None:
    sweep = load_sweep(storage, "fixture")
    assert sweep.parametrizations == ("mup2", "mup-naive", "sp-naive")  # the grid's order
    assert len(sweep.runs) == 3 * 3 * 16 * 2 + 3 and len(sweep.done) == 289  # rerun, FAIL, x
    a = analyze(sweep)
    for p in PARS:
        for k, w in enumerate(WIDTHS):
            o = a.optimum(p, w)
            assert o is not None
            i, j, peak = optimum(p, k)
            assert (o.lr, o.rho) == (LRS[i], RHOS[j]), (p, w)
            assert o.value == pytest.approx(peak, abs=1e-12)
            assert o.cell.spread == pytest.approx(0.004 / math.sqrt(2), abs=1e-12)  # ±1 sd
            assert o.base is not None and o.base.mean == pytest.approx(peak - 0.015, abs=1e-12)
            # within 1 point: the optimum and its two ρ neighbours (0.4 points below)
            region = {(c.lr, c.rho) for c in o.region}
            assert region == {(LRS[i], r) for r in RHOS[1:] if abs(RHOS.index(r) - j) <= 1}
    t = a.transfers
    assert (t["mup2"].verdict, t["mup2"].lr_steps, t["mup2"].rho_steps) == ("holds", 0, 0)
    assert t["mup2"].change == pytest.approx(0.02)
    assert (t["sp-naive"].verdict, t["sp-naive"].lr_steps) == ("fails", 2)
    assert "η* moves 2 grid steps" in t["sp-naive"].reason
    assert (t["mup-naive"].verdict, t["mup-naive"].lr_steps) == ("fails", 0)
    assert "accuracy at the optimum drops 2.00 points" in t["mup-naive"].reason
    assert not any(x.provisional for x in t.values())
    # at an 80.5% threshold every cell of mup2 at width 64 (best 80.0%) is unstable
    t2 = analyze(sweep, unstable_below=0.805).transfers["mup2"]
    assert (t2.verdict, t2.reason) == ("n/a", "no stable cell at width 64")
    assert [a.unstable_runs(p) for p in PARS] == [(9, 96), (6, 96), (7, 96)]
    # one diverged seed of two makes the cell unstable; the failed trial is ignored
    c = a.grids["mup2"].cell(128, LRS[0], RHOS[3])
    assert c is not None and c.unstable and c.values[1] == 0.0
    c = a.grids["mup2"].cell(64, LRS[1], RHOS[1])
    assert c is not None and c.n == c.planned == 2 and not c.unstable


def test_make_report(storage: str, tmp_path: Path) -> None:
    files = make_report(storage, "fixture", tmp_path / "out")
    names = sorted(p.name for p in files.paths)
    assert names == sorted(
        ["figure1.png", "figure1-mup2.png", "figure1-mup-naive.png", "figure1-sp-naive.png",
         "rho-slice.png", "transfer.png", "trials.csv", "optima.csv", "summary.md"]
    )  # fmt: skip
    for p in files.paths:
        assert p.parent == tmp_path / "out" and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 20_000
    with files.trials_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == TRIAL_COLUMNS and len(rows) == 291
    assert [r["state"] for r in rows].count("FAIL") == 1
    assert sum(r["status"] == "unstable" for r in rows) == 8 + 6 + 7 + 1  # + the rerun one
    with files.optima_csv.open() as f:
        opt = {(r["parametrization"], r["width"]): r for r in csv.DictReader(f)}
    assert float(opt["sp-naive", "256"]["lr"]) == LRS[1] and opt["mup2", "64"]["seeds"] == "2"
    md = files.summary.read_text()
    assert (
        "| mup2 | 64, 128, 256 | 0 steps | 0 steps | +2.00 points | +0.00 points | **holds** |"
        in md
    )
    # width 64's (η*, ρ*) diverges at width 256: 0% against its optimum's 81%
    assert (
        "| sp-naive | 64, 128, 256 | 2 steps | 0 steps | +1.00 points | -81.00 points | **fails** |"
        in md
    )
    # SAM − best base: 2 seeds each, sd 0.28: Welch df = 2, 4.303 * sqrt(2 * 0.28² / 2) = 1.22
    assert (
        "| 256 | 2^-3 | 2^-4 | 81.00 ± 0.28 (2 seeds, ±1 sd) | – | 79.50 | 79.50 (2^-3) "
        "| +1.50 ± 1.22 | 8/32 | 0 |"
    ) in md
    assert "| 256 | 2^-3 | 2^-6 | 78.00 ± 0.28 (2 seeds, ±1 sd) | lowest ρ > 0 |" in md
    assert float(opt["sp-naive", "256"]["gain"]) == pytest.approx(0.015)
    assert float(opt["sp-naive", "256"]["gain_ci"]) == pytest.approx(
        4.303 * 0.002 * 2**0.5, rel=1e-3
    )
    for bad in (9, 6, 7):
        assert f"Unstable runs: {bad} of 96 finished." in md
    assert "1 failed" in md and "1 without the grid parameters (ignored)" in md
    assert all(f"]({p.name})" in md for p in files.paths if p.suffix == ".png")


def test_partial_sweep(tmp_path: Path) -> None:
    """Unfinished cells, a single width, no ρ = 0 runs: a report, with its gaps said."""
    url = f"sqlite:///{tmp_path}/partial.db"
    study = optuna.create_study(study_name="partial", storage=url, direction="maximize")
    for i, lr in enumerate(LRS[:3]):
        for j, rho in enumerate(RHOS[1:], 1):
            if (i, j) in ((0, 1), (2, 3)):  # enqueued, not started
                study.enqueue_trial({"parametrization": "mup2", "width": 64, "lr": lr,
                                     "rho": rho, "seed": 0})  # fmt: skip
            else:
                study.add_trial(trial("mup2", 64, lr, rho, 0, surface("mup2", 0, i, j)))
    files = make_report(url, "partial", tmp_path / "out")
    a = files.analysis
    o = a.optimum("mup2", 64)
    assert o is not None and (o.lr, o.rho, o.base) == (LRS[2], RHOS[2], None)
    assert o.cell.spread_kind == "one seed" and a.grids["mup2"].missing() == 2
    t = a.transfers["mup2"]
    assert (t.verdict, t.reason) == ("n/a", "one width")
    md = files.summary.read_text()
    assert "No ρ = 0 runs: no base-optimizer comparison and no dashed line." in md
    assert "Unfinished: 2 of 9 cells have no finished run yet" in md
    assert "2 pending (running or waiting)" in md and "A single width" in md
    assert all(p.stat().st_size > 10_000 for p in files.paths if p.suffix == ".png")


def test_provisional_only_while_an_optimum_may_move(tmp_path: Path) -> None:
    """A verdict is provisional while a cell that could be an optimum is unfinished: an
    unfinished ρ = 0 cell cannot once every width's optimum is over ρ > 0; a ρ > 0 one can."""
    url = f"sqlite:///{tmp_path}/prov.db"
    for name, waiting in (("base", (64, LRS[0], 0.0)), ("sam", (128, LRS[0], RHOS[1]))):
        study = optuna.create_study(study_name=name, storage=url, direction="maximize")
        for k, w in enumerate(WIDTHS[:2]):
            for i, lr in enumerate(LRS):
                for j, rho in enumerate(RHOS):
                    if (w, lr, rho) == waiting:
                        study.enqueue_trial({"parametrization": "mup2", "width": w, "lr": lr,
                                             "rho": rho, "seed": 0})  # fmt: skip
                    else:
                        study.add_trial(trial("mup2", w, lr, rho, 0, surface("mup2", k, i, j)))
        a = analyze(load_sweep(url, name))
        t = a.transfers["mup2"]
        assert a.grids["mup2"].missing() == 1 and t.verdict == "holds"
        assert t.provisional == (name == "sam"), name


def test_shared_base_runs(tmp_path: Path) -> None:
    """The sweep runs ρ = 0 once per scheme, under the scheme's first parametrization: the others
    of that scheme share them; a scheme without ρ = 0 runs gets no base."""
    url = f"sqlite:///{tmp_path}/shared.db"
    study = optuna.create_study(study_name="shared", storage=url, direction="maximize")
    schemes = {"sp-naive": "sp", "mup-naive": "mup-sgd", "mup2": "mup-sgd"}
    study.set_user_attr("parametrizations", {p: {"scheme": s} for p, s in schemes.items()})
    runs = [
        trial(p, 64, lr, rho, 0, 0.5 + 0.1 * i + 0.01 * j + 0.001 * k)
        for k, p in enumerate(PARS)
        for i, lr in enumerate(LRS[:2])
        for j, rho in enumerate(RHOS[:3])
        if rho > 0 or p == "mup-naive"
    ]
    study.add_trials(runs)
    a = make_report(url, "shared", tmp_path / "out").analysis
    assert [a.grids[p].base_from for p in PARS] == [(), (), ("mup-naive",)]
    o = a.optimum("mup2", 64)
    assert o is not None and (o.lr, o.rho) == (LRS[1], RHOS[2])
    assert o.base is not None and o.base.mean == pytest.approx(0.5 + 0.1 + 0.001)  # mup-naive's
    assert a.optimum("sp-naive", 64).base is None  # type: ignore[union-attr]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "ρ = 0 runs shared with mup-naive (same scheme, mup-sgd): counted here too." in md


def test_unknown_study_and_storage(storage: str, tmp_path: Path) -> None:
    with pytest.raises(StudyNotFoundError, match=r"no study 'nope' .*studies there: 'fixture'"):
        load_sweep(storage, "nope")
    missing = tmp_path / "absent.db"
    with pytest.raises(ReportError, match=r"no sweep store at .*absent\.db"):
        load_sweep(f"sqlite:///{missing}", "fixture")
    assert not missing.exists()
    url = f"sqlite:///{tmp_path}/empty.db"
    optuna.create_study(study_name="empty", storage=url)
    with pytest.raises(ReportError, match="no trial with the grid parameters"):
        make_report(url, "empty", tmp_path / "out")


def test_cli(storage: str, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["report", "--storage", storage, "--study", "fixture", "--out", str(out)]
    res = runner.invoke(app, [*args, "--unstable-below", "0.55"])
    assert res.exit_code == 0, res.output
    assert str(out / "summary.md") in res.output and (out / "figure1.png").is_file()
    assert "mup2: transfer holds" in res.output and "sp-naive: transfer fails" in res.output
    # sp-naive's smallest η at width 64 (51.5-53.0%) is now unstable too: 9 + 8 runs
    assert "Unstable runs: 17 of 96 finished." in (out / "summary.md").read_text()
    res = runner.invoke(app, [*args[:3], "--study", "nope", "--out", str(out)])
    assert res.exit_code == 2
    assert "no study 'nope'" in res.output and "'fixture'" in res.output


def test_difference_is_welch() -> None:
    a = Cell(64, 0.1, 0.1, (0.80, 0.82, 0.84), 0, 3, False)
    b = Cell(64, 0.1, 0.0, (0.70, 0.75), 0, 2, False)
    diff, half = difference(a, b)
    va, vb = 0.02**2 / 3, (0.05 / 2**0.5) ** 2 / 2
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 1)  # 1.53: floored to 1
    assert diff == pytest.approx(0.82 - 0.725) and math.floor(df) == 1
    assert half == pytest.approx(12.706 * math.sqrt(va + vb))
    assert math.isnan(difference(a, Cell(64, 0.1, 0.0, (0.7,), 0, 1, False))[1])


def test_shared_base_runs_only_at_the_widths_a_parametrization_ran(tmp_path: Path) -> None:
    """A parametrization run on one width (as sp-lp on the ρ slice) shares the base runs of that
    width only: no optima, and no transfer verdict, at widths where it never ran."""
    url = f"sqlite:///{tmp_path}/slice.db"
    study = optuna.create_study(study_name="slice", storage=url, direction="maximize")
    schemes = {"mup-naive": "mup-sgd", "mup2": "mup-sgd"}
    study.set_user_attr("parametrizations", {p: {"scheme": s} for p, s in schemes.items()})
    runs = [
        trial("mup-naive", w, lr, rho, 0, 0.5 + 0.01 * i + 0.001 * j)
        for w in (64, 256)
        for i, lr in enumerate(LRS[:2])
        for j, rho in enumerate(RHOS[:3])
    ]
    runs += [trial("mup2", 256, LRS[1], rho, 0, 0.6) for rho in RHOS[1:3]]
    study.add_trials(runs)
    a = make_report(url, "slice", tmp_path / "out").analysis
    assert a.grids["mup2"].widths == (256,) and a.grids["mup2"].base_from == ("mup-naive",)
    assert a.optimum("mup2", 64) is None
    o = a.optimum("mup2", 256)
    assert o is not None and o.rho == RHOS[1] and o.base is not None
    assert a.transfers["mup2"].verdict == "n/a"


def test_another_scaling_axis(storage: str, tmp_path: Path) -> None:
    """A sweep whose ``width`` holds another scaling axis (a depth study's depths) is reported
    with that axis's name: the verdicts are the same, the summary says depth."""
    import dataclasses

    from mup2.report import plot_figure1, plot_transfer, write_summary

    sweep = dataclasses.replace(load_sweep(storage, "fixture"), axis="depth")
    a = analyze(sweep)
    assert a.transfers == analyze(load_sweep(storage, "fixture")).transfers
    figs = [plot_figure1(a, tmp_path / "figure1.png"), plot_transfer(a, tmp_path / "t.png")]
    md = write_summary(a, tmp_path / "summary.md", figs, []).read_text()
    assert "| parametrization | depths | η* moves | ρ* moves | accuracy, largest − smallest " \
        "depth |" in md  # fmt: skip
    assert (
        "| mup2 | 64, 128, 256 | 0 steps | 0 steps | +2.00 points | +0.00 points | **holds** |"
        in md
    )
    assert "## Optima per parametrization and depth" in md and "\n| depth | η* | ρ* |" in md
    assert "across all depths with a finished optimum" in md
    assert "width" not in md.replace("Figure 1", "")
    one = dataclasses.replace(sweep, runs=tuple(r for r in sweep.runs if r.width == 64))
    assert analyze(one).transfers["mup2"].reason == "one depth"
