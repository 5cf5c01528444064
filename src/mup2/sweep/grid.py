"""Grid points of a sweep and the training config of each."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from mup2.config import ConfigError, TrainConfig, parse_config
from mup2.optim.families import get_family
from mup2.sweep.config import PARAMETRIZATIONS, GridConfig, SubGrid, SweepConfig, UserTrain

if TYPE_CHECKING:
    import optuna

__all__ = [
    "GRID_KEYS",
    "RECORDED_PARAMETRIZATIONS",
    "GridPoint",
    "expand",
    "scheme_for",
    "scheme_of",
    "suggest_parametrization",
    "trial_config",
]

#: The choices of the ``parametrization`` parameter Optuna records for a trial, frozen as the
#: first stores were made: Optuna refuses a categorical parameter whose choices change within a
#: study (``CategoricalDistribution does not support dynamic value space``), so a name added to
#: :data:`PARAMETRIZATIONS` since is not an Optuna parameter. Every trial carries its point,
#: name included, in its ``grid`` user attribute, which :func:`mup2.report.load_sweep` reads.
RECORDED_PARAMETRIZATIONS = ("sp-naive", "mup-naive", "mup-global", "mup2", "sp-lp")


@dataclass(frozen=True, order=True)
class GridPoint:
    """One run of a sweep; ``parametrization`` is a key of :data:`PARAMETRIZATIONS`."""

    parametrization: str
    width: int
    lr: float
    rho: float
    seed: int

    def params(self) -> dict[str, Any]:
        """The point as Optuna trial parameters."""
        return asdict(self)


GRID_KEYS: tuple[str, ...] = tuple(f.name for f in fields(GridPoint))
"""The parameters every grid trial carries: :class:`GridPoint`'s fields, in order."""


def scheme_for(optimizer: str, parametrization: str) -> str:
    """The scheme (``sp``, ``mup-sgd``, ``mup-adam``) a parametrization trains with under a
    base optimizer of the family ``optimizer`` (``sgd``, ``adamw``, ...)."""
    if PARAMETRIZATIONS[parametrization].family == "sp":
        return "sp"
    return get_family(optimizer).scheme


def scheme_of(cfg: SweepConfig, parametrization: str) -> str:
    """The scheme (``sp``, ``mup-sgd``, ``mup-adam``) a parametrization trains with in the
    sweep ``cfg`` (its training config's optimizer, or a user sweep's ``optimizer``)."""
    train = cfg.train
    optimizer = train.optimizer if isinstance(train, UserTrain) else train.optimizer.name
    return scheme_for(optimizer, parametrization)


def expand(cfg: SweepConfig) -> list[GridPoint]:
    """Every run of the grid and of its ``extra`` blocks, each exactly once, in grid order. At
    ρ = 0 the scaling does not matter, so the base-optimizer runs are made once per scheme,
    under the first parametrization of that scheme in ``grid.parametrizations`` (the report
    shares them)."""
    g = cfg.grid
    blocks: list[GridConfig | SubGrid] = [g, *g.extra]
    first: dict[str, str] = {}
    for block in blocks:
        for name in block.parametrizations or g.parametrizations:
            first.setdefault(scheme_of(cfg, name), name)
    points: dict[GridPoint, None] = {}  # ordered and without repeats
    for block in blocks:
        for name in block.parametrizations or g.parametrizations:
            owner = first[scheme_of(cfg, name)]
            for width, lr, rho, seed in itertools.product(
                block.widths or g.widths,
                block.lr or g.lr,
                g.rho if block.rho is None else block.rho,
                block.seeds or g.seeds,
            ):
                points.setdefault(GridPoint(name if rho > 0 else owner, width, lr, rho, seed))
    return list(points)


def suggest_parametrization(trial: optuna.Trial, name: str) -> str:
    """Record ``name`` as the trial's ``parametrization`` parameter when it is one of
    :data:`RECORDED_PARAMETRIZATIONS` (a categorical over exactly those, so that every store
    stays compatible), and return it; newer names are left to the ``grid`` user attribute."""
    if name in RECORDED_PARAMETRIZATIONS:
        return str(trial.suggest_categorical("parametrization", list(RECORDED_PARAMETRIZATIONS)))
    return name


def trial_config(cfg: SweepConfig, point: GridPoint) -> TrainConfig:
    """``cfg.train`` with the point's width, LR, ρ, seed, scheme, scaling and (for a
    parametrization that names one) SAM rule; no progress bar, no checkpoints: a trial that dies
    is rerun whole. Only for mup2's own training (:class:`~mup2.config.TrainConfig`)."""
    if not isinstance(cfg.train, TrainConfig):
        raise TypeError(f"sweep {cfg.name!r} runs a user objective, which has no training config")
    d = cfg.train.to_dict()
    d["model"]["width"] = point.width
    d["optimizer"]["lr"] = point.lr
    d["sam"]["rho"] = point.rho
    spec = PARAMETRIZATIONS[point.parametrization]
    d["sam"]["scaling"] = spec.scaling
    if spec.rule is not None:
        d["sam"]["rule"] = spec.rule
    d["scheme"] = scheme_of(cfg, point.parametrization)
    d.update(seed=point.seed, progress=False, checkpoint=False)
    try:
        return parse_config(d)
    except ConfigError as exc:
        raise ConfigError(f"grid point {point.params()}: {exc}") from None
