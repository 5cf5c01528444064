"""The controls of issue 26 in sweeps: the readout-only parametrizations and ``loss = "mse"``
validate, expand, run on a real store and are reported; stores made before the readout names
existed stay compatible with them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, get_args

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from mup2.report import load_sweep, make_report
from mup2.sweep import expand, parse_sweep_config, prepare, run_worker, trial_config
from mup2.sweep.config import PARAMETRIZATIONS, Parametrization
from mup2.sweep.grid import RECORDED_PARAMETRIZATIONS, GridPoint, suggest_parametrization

optuna.logging.set_verbosity(optuna.logging.WARNING)

TRAIN: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 32,
    "progress": False,
    "model": {"name": "mlp", "width": 16, "base_width": 16},
    "data": {"name": "synthetic", "train_size": 128, "test_size": 64},
    "optimizer": {"name": "sgd", "lr": 0.1},
}
CONTROLS = ["sp-naive", "sp-readout", "mup2", "mup-readout"]
GRID: dict[str, Any] = {
    "widths": [16, 32],
    "lr": [0.1],
    "rho": [0.0, 0.05],
    "parametrizations": CONTROLS,
}


def _config(name: str, **train: Any) -> Any:
    return parse_sweep_config(
        {"name": name, "heartbeat_seconds": 1, "train": TRAIN | train, "grid": GRID}
    )


def test_the_names_and_what_they_set() -> None:
    assert tuple(PARAMETRIZATIONS) == get_args(Parametrization)
    assert PARAMETRIZATIONS["sp-readout"] == ("sp", "naive", "sam-readout")
    assert PARAMETRIZATIONS["mup-readout"] == ("mup", "mup2", "sam-readout")
    assert all(spec.rule is None for n, spec in PARAMETRIZATIONS.items() if "readout" not in n)
    # the names Optuna records are frozen: every name since is left to the grid attribute
    assert RECORDED_PARAMETRIZATIONS == ("sp-naive", "mup-naive", "mup-global", "mup2", "sp-lp")
    assert set(RECORDED_PARAMETRIZATIONS) <= set(PARAMETRIZATIONS)


def test_readout_controls_expand_with_the_base_runs_of_their_scheme() -> None:
    cfg = _config("controls")
    points = expand(cfg)
    assert len(points) == 4 * 2 + 2 * 2  # ρ > 0 per name and width; ρ = 0 once per scheme
    assert {p.parametrization for p in points if p.rho == 0} == {"sp-naive", "mup2"}
    for name, scheme, scaling, rule in (
        ("sp-readout", "sp", "naive", "sam-readout"),
        ("mup-readout", "mup-sgd", "mup2", "sam-readout"),
        ("mup2", "mup-sgd", "mup2", "sam"),
    ):
        t = trial_config(cfg, GridPoint(name, 32, 0.1, 0.05, 0))
        assert (t.scheme, t.sam.scaling, t.sam.rule, t.loss) == (
            scheme,
            scaling,
            rule,
            "cross-entropy",
        )
    mse = trial_config(_config("mse", loss="mse"), GridPoint("sp-readout", 16, 0.1, 0.05, 0))
    assert (mse.loss, mse.sam.rule) == ("mse", "sam-readout")


@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
def test_a_sweep_with_the_controls_runs_and_is_reported(loss: str, tmp_path: Path) -> None:
    """Every point of the four parametrizations runs once on SQLite (the readout controls at the
    base width too, 16) and the report shows the new names, each in its own colour."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    cfg = _config("controls", loss=loss)
    study, points = prepare(cfg, url)
    assert run_worker(url, "controls") == len(points)
    trials = study.get_trials()
    assert len(trials) == len(points)
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["status"] == "ok" for t in trials)
    assert {GridPoint(**t.user_attrs["grid"]) for t in trials} == set(points)
    sweep = load_sweep(url, "controls")
    assert sweep.parametrizations == tuple(CONTROLS)
    files = make_report(url, "controls", tmp_path / "report")
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in (files.figure1, *files.figure1_each))
    assert [p.name for p in files.figure1_each] == [f"figure1-{n}.png" for n in CONTROLS]
    grids = files.analysis.grids
    assert grids["sp-readout"].base_from == ("sp-naive",)
    assert grids["mup-readout"].base_from == ("mup2",)
    with (tmp_path / "report" / "optima.csv").open() as f:
        assert {row["parametrization"] for row in csv.DictReader(f)} == set(CONTROLS)
    summary = files.summary.read_text()
    assert "### sp-readout" in summary and "### mup-readout" in summary


def _legacy_study(url: str, name: str) -> optuna.Study:
    """A store as made before the readout names: one finished trial whose ``parametrization``
    is a categorical over the five names of then."""
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    point = {"parametrization": "mup2", "width": 16, "lr": 0.1, "rho": 0.05, "seed": 0}
    study.add_trial(
        create_trial(
            params=point,
            distributions={
                "parametrization": CategoricalDistribution(list(RECORDED_PARAMETRIZATIONS)),
                "width": IntDistribution(16, 16),
                "lr": FloatDistribution(0.1, 0.1),
                "rho": FloatDistribution(0.05, 0.05),
                "seed": IntDistribution(0, 0),
            },
            value=0.5,
            user_attrs={"grid": point, "status": "ok"},
        )
    )
    return study


def test_suggest_parametrization_keeps_an_old_store_compatible(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    study = _legacy_study(url, "old")
    for name in ("mup2", "sp-readout", "sp-lp", "mup-readout"):
        study.enqueue_trial({"parametrization": name})  # as mup2.sweep.prepare enqueues points
        trial = study.ask()
        assert suggest_parametrization(trial, name) == name
        recorded = name in RECORDED_PARAMETRIZATIONS
        assert ("parametrization" in trial.params) is recorded
        study.tell(trial, 0.5)
    with pytest.raises(ValueError, match="does not support dynamic value space"):
        study.ask().suggest_categorical("parametrization", list(PARAMETRIZATIONS))


def test_an_old_store_grows_with_the_readout_controls(tmp_path: Path) -> None:
    """The committed stores (experiments/figure1/mlp.db) take the readout controls as extra
    blocks: their trials run and are reported beside the old ones."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    _legacy_study(url, "controls")
    cfg = _config("controls")
    study, points = prepare(cfg, url)
    run_worker(url, "controls")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) >= len(points)
    names = {r.parametrization for r in load_sweep(url, "controls").done}
    assert {"sp-readout", "mup-readout"} <= names
