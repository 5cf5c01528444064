"""Read a sweep's trials from its Optuna storage into a small typed table.

The trials come from Optuna's public API (``optuna.get_all_study_names``, ``optuna.load_study``,
``Study.get_trials``), with one exception: a trial that was enqueued but has not started
(WAITING) has no ``params`` yet, so to count it as a planned, unfinished cell its grid point is
read from ``FrozenTrial.system_attrs["fixed_params"]``, where ``Study.enqueue_trial`` keeps the
parameters it was given. That key is an Optuna implementation detail, not documented API; if it is
missing, the user attribute ``grid`` that the sweep sets on every trial it enqueues is used
instead. Every trial is kept, whatever its state, so that the summary can count failed and
pending ones; the analysis uses the finished grid trials (:attr:`Run.done`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from mup2.errors import UserError
from mup2.sweep.grid import GRID_KEYS, GridPoint
from mup2.sweep.store import redact

__all__ = [
    "GRID_KEYS",
    "ReportError",
    "Run",
    "StudyNotFoundError",
    "Sweep",
    "load_sweep",
    "redact",
]

_GRID_TYPES: dict[str, Any] = get_type_hints(GridPoint)  # key -> str, int or float


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
    """The trial's objective: the final test accuracy (0.0 when it diverged)."""
    test_accuracy: float | None
    test_loss: float | None
    seconds: float | None

    @property
    def grid(self) -> bool:
        """Whether the trial carries all of :data:`GRID_KEYS`."""
        return all(getattr(self, k) is not None for k in GRID_KEYS)

    @property
    def done(self) -> bool:
        """A finished grid trial with a value."""
        return self.grid and self.state == "COMPLETE" and self.value is not None

    @property
    def accuracy(self) -> float:
        """The value as an accuracy; a missing or non-finite value counts as 0 (diverged)."""
        v = self.value
        return v if v is not None and math.isfinite(v) else 0.0

    def unstable(self, below: float) -> bool:
        """Diverged, or an accuracy under ``below``."""
        return self.status == "unstable" or self.accuracy < below


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


def _run(t: Any) -> Run:
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
        test_accuracy=_num(attrs.get("test_accuracy"), float),
        test_loss=_num(attrs.get("test_loss"), float),
        seconds=_num(attrs.get("seconds"), float),
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
    runs = tuple(_run(t) for t in s.get_trials(deepcopy=False))
    config = s.user_attrs.get("sweep")
    config = config if isinstance(config, Mapping) else {}
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
    )
