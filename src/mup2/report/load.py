"""Read a sweep's trials from its Optuna storage into a small typed table.

The trials come from Optuna's public API (``optuna.get_all_study_names``, ``optuna.load_study``,
``Study.get_trials``), with one exception: a trial that was enqueued but has not started
(WAITING) has no ``params`` yet, so to count it as a planned, unfinished cell its grid point is
read from ``FrozenTrial.system_attrs["fixed_params"]``, where ``Study.enqueue_trial`` keeps the
parameters it was given. That key is an Optuna implementation detail, not documented API; if it is
missing, the user attribute ``grid`` that the sweep sets on every trial it enqueues is used
instead. Every trial is kept, whatever its state, so that the summary can count failed and
pending ones; the analysis uses the finished grid trials (:attr:`Run.done`).

The objective metric and its direction come from the study
(:func:`~mup2.report.metric.sweep_metric`): a built-in sweep's value is the final test accuracy;
a sweep around a user's function records its metric's name and direction in its config, each
trial's returned metrics in the user attribute ``final`` and its reports in ``metrics`` (dicts
with ``step`` or ``epoch`` and the metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from mup2.errors import UserError
from mup2.report.metric import TEST_ACCURACY, Metric, sweep_metric
from mup2.sweep.grid import GRID_KEYS, GridPoint
from mup2.sweep.store import redact

__all__ = [
    "BUILTIN_METRICS",
    "GRID_KEYS",
    "ReportError",
    "Run",
    "StudyNotFoundError",
    "Sweep",
    "load_sweep",
    "redact",
]

_GRID_TYPES: dict[str, Any] = get_type_hints(GridPoint)  # key -> str, int or float
BUILTIN_METRICS = ("test_accuracy", "test_loss")
"""The final metrics a built-in sweep records on each trial (user attributes of those names)."""


class ReportError(UserError):
    """The storage or the study cannot be reported on."""


class StudyNotFoundError(ReportError, LookupError):
    """The storage holds no study of that name."""


@dataclass(frozen=True)
class Run:
    """One trial of the sweep. The grid fields (:data:`GRID_KEYS`) are ``None`` for trials
    without the grid parameters."""

    number: int
    state: str
    """Optuna's state name: COMPLETE, FAIL, RUNNING, WAITING or PRUNED."""
    parametrization: str | None
    width: int | None
    lr: float | None
    rho: float | None
    seed: int | None
    status: str | None
    """'ok' or 'unstable' (diverged), as the sweep recorded it."""
    value: float | None
    """The trial's objective: the sweep's metric (a built-in sweep's final test accuracy, 0.0
    when it diverged; a user sweep's metric, ``-inf``/``+inf`` when it diverged)."""
    seconds: float | None
    final: Mapping[str, float | None] = field(default_factory=dict)
    """The final metrics by name (:data:`BUILTIN_METRICS` for a built-in sweep, the user
    attribute ``final`` for a user sweep); ``None`` where one is missing or not a number."""
    curve: tuple[tuple[float, float], ...] = ()
    """``(step, objective metric)`` of each report that has both, in order."""

    @property
    def grid(self) -> bool:
        """Whether the trial carries all of :data:`GRID_KEYS`."""
        return all(getattr(self, k) is not None for k in GRID_KEYS)

    @property
    def done(self) -> bool:
        """A finished grid trial with a value."""
        return self.grid and self.state == "COMPLETE" and self.value is not None

    @property
    def test_accuracy(self) -> float | None:
        return self.final.get("test_accuracy")

    @property
    def test_loss(self) -> float | None:
        return self.final.get("test_loss")


@dataclass(frozen=True)
class Sweep:
    """The trials of one study and the parametrizations in display order."""

    study: str
    storage: str
    """The storage URL with any password removed."""
    runs: tuple[Run, ...]
    parametrizations: tuple[str, ...]
    name: str | None = None
    """``study.user_attrs['sweep']['name']`` when the sweep recorded one."""
    schemes: Mapping[str, str] = field(default_factory=dict)
    """Parametrization -> scheme, from ``study.user_attrs['parametrizations']``: the
    parametrizations of one scheme share their ρ = 0 (base optimizer) runs."""
    metric: Metric = TEST_ACCURACY
    """The objective metric and its direction."""
    final_metrics: tuple[str, ...] = BUILTIN_METRICS
    """The names in the runs' :attr:`Run.final`: the objective metric first, then the others in
    the order first seen."""
    curve_axis: str = "epoch"
    """What the curves' x is: ``step`` when the reports carry one, else ``epoch``."""
    objective: str | None = None
    """A user sweep's objective (``sweep["train"]["objective"]``, its entry point); ``None`` for
    a built-in sweep."""
    version: str | None = None
    """A user sweep's declared version of its training setup (``sweep["train"]["version"]``)."""
    axis: str = "width"
    """What the runs' :attr:`Run.width` counts, as the figures and the summary name it: the
    width, or another scaling axis a caller put there (``"depth"``: a depth study's runs with
    their depth as ``width``, ``dataclasses.replace(sweep, runs=..., axis="depth")``)."""

    @property
    def done(self) -> tuple[Run, ...]:
        """The finished grid trials."""
        return tuple(r for r in self.runs if r.done)


def _num(x: Any, kind: type[int] | type[float]) -> Any:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return kind(x)


def _grid(params: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`GRID_KEYS` of a trial's parameters, each as its :class:`GridPoint` type
    (``None`` where missing, or not a number for a numeric key)."""
    out: dict[str, Any] = {}
    for k in GRID_KEYS:
        x, kind = params.get(k), _GRID_TYPES[k]
        out[k] = (str(x) if x is not None else None) if kind is str else _num(x, kind)
    return out


def _final(attrs: Mapping[str, Any], user: bool) -> dict[str, float | None]:
    """The final metrics of a trial: ``attrs['final']`` for a user sweep, the built-in
    metrics' own attributes otherwise."""
    if not user:
        return {k: _num(attrs.get(k), float) for k in BUILTIN_METRICS}
    final = attrs.get("final")
    items = final.items() if isinstance(final, Mapping) else ()
    return {str(k): _num(v, float) for k, v in items}


def _curve(attrs: Mapping[str, Any], metric: str) -> tuple[tuple[float, float], ...]:
    reports = attrs.get("metrics")
    if not isinstance(reports, Sequence) or isinstance(reports, str):
        return ()
    out = []
    for d in reports:
        if not isinstance(d, Mapping):
            continue
        x, v = _num(d.get("step", d.get("epoch")), float), _num(d.get(metric), float)
        if x is not None and v is not None:
            out.append((x, v))
    return tuple(out)


def _run(t: Any, metric: Metric = TEST_ACCURACY, user: bool = False) -> Run:
    """A trial as a :class:`Run`. Its grid parameters are Optuna's, and where those lack one
    (enqueued but not started: they wait in ``system_attrs``; or a parametrization outside
    :data:`mup2.sweep.grid.RECORDED_PARAMETRIZATIONS`, never an Optuna parameter) the enqueued
    point's, then the ``grid`` user attribute's."""
    attrs: Mapping[str, Any] = t.user_attrs
    params: dict[str, Any] = dict(t.params)
    for point in (t.system_attrs.get("fixed_params"), attrs.get("grid")):
        if isinstance(point, Mapping):
            for k, v in point.items():
                params.setdefault(str(k), v)
    status = attrs.get("status")
    return Run(
        number=int(t.number),
        state=str(t.state.name),
        **_grid(params),
        status=str(status) if status is not None else None,
        value=_num(t.value, float),
        seconds=_num(attrs.get("seconds"), float),
        final=_final(attrs, user),
        curve=_curve(attrs, metric.name),
    )


def _order(runs: tuple[Run, ...], config: Mapping[str, Any]) -> tuple[str, ...]:
    grid = config.get("grid")
    listed = grid.get("parametrizations") if isinstance(grid, Mapping) else None
    order = [str(p) for p in listed] if isinstance(listed, list | tuple) else []
    seen = {r.parametrization for r in runs if r.grid}
    order = [p for p in dict.fromkeys(order) if p in seen]
    for r in runs:
        if r.grid and r.parametrization not in order:
            order.append(r.parametrization)  # type: ignore[arg-type]
    return tuple(order)


def load_sweep(storage: str, study: str) -> Sweep:
    """Load every trial of ``study`` from ``storage`` (an SQLite or PostgreSQL URL).

    Raises :class:`StudyNotFoundError` (listing the studies that exist) for an unknown study and
    :class:`ReportError` for a store that cannot be opened (an SQLite file that does not exist
    is not created).
    """
    import optuna

    from mup2.sweep.store import StoreError, open_storage, store_errors

    try:
        store = open_storage(storage)
        with store_errors(storage):
            names = sorted(optuna.get_all_study_names(storage=store))
    except StoreError as exc:  # a bad URL, an unreachable server, a missing driver or file
        raise ReportError(str(exc)) from None
    if study not in names:
        listed = ", ".join(repr(n) for n in names) if names else "none"
        raise StudyNotFoundError(
            f"no study {study!r} in {redact(storage)}; studies there: {listed}"
        )
    s = optuna.load_study(study_name=study, storage=store)
    trials = s.get_trials(deepcopy=False)
    config = s.user_attrs.get("sweep")
    config = config if isinstance(config, Mapping) else {}
    train: Mapping[str, Any] = config.get("train") or {}
    train = train if isinstance(train, Mapping) else {}
    user = "objective" in train
    values = (_num(t.value, float) for t in trials if t.state.name == "COMPLETE")
    metric = sweep_metric(config, s.direction.name, values)
    runs = tuple(_run(t, metric, user) for t in trials)
    names = [metric.name] if user else list(BUILTIN_METRICS)
    reserved = {"number", "state", *GRID_KEYS, "status", "seconds"}
    for r in runs:
        names += [k for k in r.final if k not in names and k not in reserved]
    reports = (t.user_attrs.get("metrics") for t in trials)
    stepped = any(
        isinstance(m, list) and any(isinstance(d, Mapping) and "step" in d for d in m)
        for m in reports
    )
    name = config.get("name")
    pars = s.user_attrs.get("parametrizations")
    schemes = {
        str(p): str(v["scheme"])
        for p, v in (pars.items() if isinstance(pars, Mapping) else ())
        if isinstance(v, Mapping) and v.get("scheme") is not None
    }
    return Sweep(
        study=study,
        storage=redact(storage),
        runs=runs,
        parametrizations=_order(runs, config),
        name=str(name) if name is not None else None,
        schemes=schemes,
        metric=metric,
        final_metrics=tuple(names),
        curve_axis="step" if stepped else "epoch",
        objective=str(train["objective"]) if user else None,
        version=str(train["version"]) if user and train.get("version") is not None else None,
    )
