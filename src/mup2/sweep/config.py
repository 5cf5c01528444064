"""The schema of a sweep (``mup2 sweep CONFIG``): a training config plus grids, validated.

A sweep config has the keys ``name`` (the study), ``storage`` (an Optuna database URL; default:
an SQLite file in the run directory), ``workers``, ``batch``, ``heartbeat_seconds``,
``max_retries``, the section ``train`` and the section ``grid``. ``train`` is either a full
:class:`mup2.config.TrainConfig` (mup2's own training: each grid point overrides its
``model.width``, ``optimizer.lr``, ``sam.rho``, ``seed``, scheme and perturbation scaling, see
:data:`PARAMETRIZATIONS`) or a :class:`UserTrain`, the user's own training function (a section
with an ``objective`` key), which gets each grid point as a :class:`mup2.sweep.point.Point`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from mup2.config import ConfigError, Section, TrainConfig, parse_config, read_config_file
from mup2.errors import check_instance
from mup2.optim.families import FAMILIES

__all__ = [
    "OPTIMIZERS",
    "PARAMETRIZATIONS",
    "BatchSize",
    "GridConfig",
    "ParametrizationSpec",
    "SubGrid",
    "SweepConfig",
    "UserTrain",
    "check_sweep_config",
    "load_sweep_config",
    "parse_batch",
    "parse_sweep_config",
]

_SQLITE = "sqlite:///"


class ParametrizationSpec(NamedTuple):
    """What a parametrization sets in a grid point's training config: the scheme ``family``
    (``mup`` is μP for the run's optimizer), ``sam.scaling``, and ``sam.rule`` (``None``: the
    rule of ``train``)."""

    family: Literal["sp", "mup"]
    scaling: str
    rule: str | None = None


#: name -> (scheme family, perturbation scaling, SAM rule). The readout-only controls perturb
#: the readout alone (``docs/sam.md``): ``sp-readout`` with SP-naive's scaling (what SP-naive
#: tends to as width grows), ``mup-readout`` with μP²'s (μP² with every other layer left out).
PARAMETRIZATIONS: dict[str, ParametrizationSpec] = {
    "sp-naive": ParametrizationSpec("sp", "naive"),
    "mup-naive": ParametrizationSpec("mup", "naive"),
    "mup-global": ParametrizationSpec("mup", "global"),
    "mup2": ParametrizationSpec("mup", "mup2"),
    "sp-lp": ParametrizationSpec("sp", "mup2"),
    "sp-readout": ParametrizationSpec("sp", "naive", "sam-readout"),
    "mup-readout": ParametrizationSpec("mup", "mup2", "sam-readout"),
}

Parametrization = Literal[
    "sp-naive", "mup-naive", "mup-global", "mup2", "sp-lp", "sp-readout", "mup-readout"
]
DEFAULT_PARAMETRIZATIONS: tuple[Parametrization, ...] = ("sp-naive", "mup-global", "mup2")


#: Grid points a worker trains at once: a number (1: one at a time, with :func:`mup2.train`;
#: more: bundles with :func:`mup2.batched.train_batched`) or ``"auto"`` (as many as fit).
BatchSize = PositiveInt | Literal["auto"]


def parse_batch(value: object) -> int | Literal["auto"]:
    """``value`` as a :data:`BatchSize`: ``"auto"`` or a whole number >= 1 (also as a string, as
    an option gives it); :class:`ValueError` naming the value otherwise."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(
        f"{value!r} is not a bundle size: give a whole number >= 1 (1 trains one run at a "
        "time) or 'auto' (as many as fit on the device)"
    )


def _increasing(values: list[Any], key: str) -> list[Any]:
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"grid.{key}: {values} must be strictly increasing")
    return values


class SubGrid(Section):
    """An extra block of the grid: the product of its lists, each defaulting to the main grid's
    (for more seeds on a slice, or a wider η range for one parametrization)."""

    widths: list[PositiveInt] | None = None
    lr: list[PositiveFloat] | None = None
    rho: list[NonNegativeFloat] | None = None
    seeds: list[NonNegativeInt] | None = None
    parametrizations: list[Parametrization] | None = None

    @field_validator("widths", "lr", "rho", "seeds", "parametrizations")
    @classmethod
    def _nonempty(cls, values: list[Any] | None, info: Any) -> list[Any] | None:
        if values is not None and not values:
            raise ValueError(f"grid.extra.{info.field_name}: give at least one value or omit it")
        return values


class GridConfig(Section):
    """The grid: every combination of the lists is one run (ρ = 0, the base optimizer, runs once
    per scheme and is shared by the parametrizations of that scheme), plus the runs of each
    ``extra`` block."""

    widths: Annotated[list[PositiveInt], Field(min_length=1)]
    lr: Annotated[list[PositiveFloat], Field(min_length=1)]
    rho: Annotated[list[NonNegativeFloat], Field(min_length=1)]
    seeds: list[NonNegativeInt] = Field(default_factory=lambda: [0], min_length=1)
    parametrizations: list[Parametrization] = Field(
        default_factory=lambda: list(DEFAULT_PARAMETRIZATIONS), min_length=1
    )
    extra: list[SubGrid] = Field(default_factory=list)

    @field_validator("widths", "lr", "rho", "seeds")
    @classmethod
    def _sorted(cls, values: list[Any], info: Any) -> list[Any]:
        return _increasing(values, info.field_name)

    @field_validator("parametrizations")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"grid.parametrizations: {values} lists a name twice")
        return values


#: The base optimizers a :class:`UserTrain` may name (:data:`mup2.optim.families.FAMILIES`):
#: SGD-like ones train under μP for SGD, Adam-like ones under μP for Adam.
OPTIMIZERS = tuple(FAMILIES)

#: ``module.path:function`` or ``path/to/file.py:function``.
_ENTRY_POINT = r"^[^:]+:[A-Za-z_][A-Za-z0-9_.]*$"


class UserTrain(Section):
    """The ``train`` section of a sweep of the user's own training function.

    ``objective``: the function, ``package.module:function`` (imported) or
    ``path/to/file.py:function`` (a relative path is found in ``root``, else in the current
    directory); it is called as ``objective(point, report)`` for every grid point
    (:mod:`mup2.sweep.user`). ``metric``: the name of the returned metric the sweep optimizes
    (a function returning one number returns it under this name) and ``direction`` whether
    higher (``maximize``, an accuracy) or lower (``minimize``, a loss) is better. ``version``:
    the user's fingerprint of everything the function does that the grid does not say (model,
    data, steps, code): mup2 cannot look inside the function, so a sweep resumed with another
    version, objective, metric, optimizer or settings is refused. ``optimizer``: the base
    optimizer's family (one of :data:`OPTIMIZERS`), which decides the μP scheme of the
    ``mup*`` parametrizations. ``settings``: a free table handed to the function as
    ``point.settings``. ``root``: the folder a relative ``objective`` file lies in (set by
    :func:`load_sweep_config` to the config file's folder and by :func:`mup2.sweep.run` to the
    script's); where the sweep runs, not what it computes, so it may differ on resume."""

    objective: Annotated[str, Field(pattern=_ENTRY_POINT)]
    metric: Annotated[str, Field(min_length=1)] = "value"
    direction: Literal["maximize", "minimize"]
    version: Annotated[str, Field(min_length=1)]
    optimizer: str = "sgd"
    settings: dict[str, Any] = Field(default_factory=dict)
    root: str | None = None

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, value: str) -> str:
        if value not in OPTIMIZERS:
            raise ValueError(f"{value!r} is not one of {', '.join(OPTIMIZERS)}")
        return value


class SweepConfig(Section):
    """A validated sweep. ``train`` is the run every grid point starts from: mup2's own
    (:class:`~mup2.config.TrainConfig`) or the user's function (:class:`UserTrain`, trained one
    point at a time: ``batch`` must be 1). ``storage``, ``workers`` and ``batch`` say where and
    how fast it runs, not what: they may change when a sweep is resumed."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)]
    storage: str | None = None
    workers: PositiveInt = 1
    batch: BatchSize = 1
    heartbeat_seconds: PositiveInt = 10
    max_retries: NonNegativeInt = 2
    unstable_below: Annotated[float, Field(ge=0.0, le=1.0)] = 0.30
    train: TrainConfig | UserTrain
    grid: GridConfig

    @field_validator("batch", mode="before")
    @classmethod
    def _batch(cls, value: Any) -> int | Literal["auto"]:
        try:
            return parse_batch(value)
        except ValueError as exc:
            raise ValueError(f"batch: {exc}") from None

    @model_validator(mode="after")
    def _one_at_a_time(self) -> SweepConfig:
        if isinstance(self.train, UserTrain) and self.batch != 1:
            raise ValueError(
                f"batch: {self.batch!r}, but a sweep of a user objective trains one grid point "
                "at a time (bundles are for mup2's own training); set batch = 1"
            )
        return self

    @property
    def user(self) -> UserTrain | None:
        """``train`` when it is the user's function, else ``None``."""
        return self.train if isinstance(self.train, UserTrain) else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy (``parse_sweep_config(c.to_dict()) == c``)."""
        return self.model_dump(mode="json")


def check_sweep_config(cfg: object) -> None:
    """Raise :class:`TypeError` unless ``cfg`` is a :class:`SweepConfig` (a dict or a path is
    not one yet)."""
    check_instance(
        "cfg",
        cfg,
        SweepConfig,
        "a SweepConfig (parse_sweep_config(dict) or load_sweep_config(path))",
    )


def parse_sweep_config(data: Mapping[str, Any]) -> SweepConfig:
    """Validate a mapping; :class:`mup2.config.ConfigError` names every bad key (``train.`` keys
    with their full dotted path)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a sweep config must be a mapping of keys, not {type(data).__name__}")
    data = dict(data)
    problems: list[str] = []
    train: TrainConfig | UserTrain | None = None
    if "train" not in data:
        problems.append("train: required section is missing")
    elif isinstance(data["train"], Mapping) and "objective" in data["train"]:
        try:
            train = UserTrain.model_validate(dict(data.pop("train")))
        except ValidationError as exc:
            problems += [_problem(err, "train.") for err in exc.errors()]
    else:
        try:
            train = parse_config(data.pop("train"))
        except ConfigError as exc:
            problems += ["train." + line.strip() for line in str(exc).splitlines()[1:]]
    try:
        rest = SweepConfig.model_validate({**data, "train": train} if train else data)
    except ValidationError as exc:
        for err in exc.errors():
            if err["loc"] and err["loc"][0] == "train":
                continue  # reported above
            problems.append(_problem(err))
    if problems:
        raise ConfigError("invalid sweep config:\n  " + "\n  ".join(problems))
    return rest


def _problem(err: Any, prefix: str = "") -> str:
    """One pydantic error as ``dotted.key: message``."""
    key = prefix + ".".join(str(x) for x in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "string_pattern_mismatch" and key == "train.objective":
        msg = (
            f"{err['input']!r} is not an entry point; write 'package.module:function' or "
            "'<path>.py:function'"
        )
    return msg if not key or msg.startswith(f"{key}:") else f"{key}: {msg}"


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read and validate a ``.toml``, ``.yaml`` or ``.yml`` sweep config. A relative SQLite
    ``storage`` (``sqlite:///name.db``) is taken relative to the config file's folder, so that a
    sweep and its store can live together in a repository; so is a relative objective file of a
    :class:`UserTrain` (its ``root`` is the config file's folder)."""
    try:
        cfg = parse_sweep_config(read_config_file(path))
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None
    here = Path(path).resolve().parent
    if cfg.storage and cfg.storage.startswith(_SQLITE):
        file = Path(cfg.storage.removeprefix(_SQLITE))
        if not file.is_absolute() and str(file) != ":memory:":
            cfg = cfg.model_copy(update={"storage": f"{_SQLITE}{here / file}"})
    if cfg.user is not None and cfg.user.root is None:
        train = cfg.user.model_copy(update={"root": str(here)})
        cfg = cfg.model_copy(update={"train": train})
    return cfg
