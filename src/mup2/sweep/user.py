"""A user's own training function as a sweep objective.

The function is named by an entry point, ``package.module:function`` or
``path/to/file.py:function`` (:class:`~mup2.sweep.config.UserTrain`), so that any worker on any
machine imports the same one. It is called once per grid point as ``objective(point, report)``:

- ``point``: a :class:`~mup2.sweep.point.Point` (width, lr, rho, seed, parametrization,
  settings, and helpers that build the :class:`~mup2.Parametrization` and :class:`~mup2.SAM`);
  every random generator is seeded with ``point.seed`` before the call;
- ``report``: a :class:`Reporter`; ``report(value, step)`` records the objective metric on the
  way (Optuna's intermediate values), ``report.log(step=..., **metrics)`` any other metric;
- it returns the metric (a number) or a dict of metrics holding the sweep's ``metric``.

A run is *unstable* (recorded, not failed: the sweep goes on) when the function raises
:class:`Diverged`, reports a non-finite value, or returns a non-finite metric. Its trial is
complete with the worst value (``-inf`` when maximizing, ``+inf`` when minimizing) and
``status`` ``unstable``. Any other exception fails the trial with the message in its ``error``
attribute; running the sweep again retries it.

Trial record: ``value`` = the metric; user attributes ``status`` (``ok``/``unstable``),
``final`` (every returned metric), ``metrics`` (one dict per ``report``/``log`` call, each with
``step``), ``seconds``, ``worker`` and, for an unstable run, ``diverged`` (why).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import optuna

from mup2.config import ConfigError
from mup2.sweep.config import SweepConfig, UserTrain
from mup2.sweep.grid import GridPoint
from mup2.sweep.objective import Record
from mup2.sweep.point import Point
from mup2.sweep.signals import uninterruptible

__all__ = [
    "Diverged",
    "EntryPointError",
    "ObjectiveFunction",
    "Reporter",
    "UserObjective",
    "final_metrics",
    "importing_objective",
    "load_objective",
]

#: ``objective(point, report) -> float | dict[str, float]``.
ObjectiveFunction = Callable[[Point, "Reporter"], Any]


class Diverged(Exception):
    """Raise it inside an objective to record the run as diverged: the trial is stored as
    ``unstable`` (with the worst value) and the sweep goes on."""


class EntryPointError(ConfigError):
    """An objective that cannot be imported, is missing, or cannot be called as
    ``objective(point, report)``."""


_IMPORTING: list[str] = []  # the entry points being imported now (for importing_objective)


def importing_objective() -> str | None:
    """The entry point whose module is being imported right now (``None``: none): a sweep
    started from that module's top level would start again in every worker."""
    return _IMPORTING[-1] if _IMPORTING else None


@contextlib.contextmanager
def _importing(spec: str) -> Iterator[None]:
    _IMPORTING.append(spec)
    try:
        yield
    finally:
        _IMPORTING.pop()


def _on_path(folder: Path, *, first: bool = False) -> None:
    entry = str(folder)
    if entry not in sys.path:
        sys.path.insert(0, entry) if first else sys.path.append(entry)


def _import_module(spec: str, name: str, root: str | None) -> ModuleType:
    """``name`` imported, with the current directory and ``root`` on the import path."""
    for folder in (Path.cwd(), *([Path(root)] if root else [])):
        _on_path(folder)
    try:
        with _importing(spec):
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if name == missing or name.startswith(missing + "."):
            raise EntryPointError(
                f"objective {spec!r}: no module named {missing!r}; install its package in this "
                "environment, run from the folder that holds it, or name the file: "
                "'<path>.py:function'"
            ) from exc
        raise EntryPointError(
            f"objective {spec!r}: importing {name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise EntryPointError(
            f"objective {spec!r}: importing {name} failed: {type(exc).__name__}: {exc}"
        ) from exc


def _import_file(spec: str, file: str, root: str | None) -> ModuleType:
    """The module of ``file`` (relative: in ``root``, else in the current directory), imported
    once per process: a module already loaded from that file (the driver's ``__main__``) is
    reused. Its folder goes first on the import path, as when it runs as a script."""
    path = Path(file)
    places = [path] if path.is_absolute() else [Path(d) / path for d in (root, Path.cwd()) if d]
    found = next((p.resolve() for p in places if p.is_file()), None)
    if found is None:
        looked = " or ".join(str(p) for p in dict.fromkeys(places))
        raise EntryPointError(
            f"objective {spec!r}: no file {looked}; check the path (a relative one is taken "
            "from the sweep config's folder, else from the current directory)"
        )
    for module in list(sys.modules.values()):
        known = getattr(module, "__file__", None)
        if known and Path(known).resolve() == found:
            return module
    name = found.stem if found.stem.isidentifier() else "objective"
    if name in sys.modules:
        name = f"mup2_objective_{name}_{hashlib.sha1(str(found).encode()).hexdigest()[:8]}"
    loader = importlib.util.spec_from_file_location(name, found)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    _on_path(found.parent, first=True)
    sys.modules[name] = module
    try:
        with _importing(spec):
            loader.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise EntryPointError(
            f"objective {spec!r}: importing {found} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def load_objective(spec: str, root: str | None = None) -> ObjectiveFunction:
    """The function of the entry point ``spec`` (``package.module:function`` or
    ``path/to/file.py:function``, a relative file found in ``root``, else in the current
    directory), checked: :class:`EntryPointError` names a missing module, file or function, an
    import that fails, or a function that cannot be called as ``objective(point, report)``."""
    target, _, qualname = spec.rpartition(":")
    if not target or not qualname:
        raise EntryPointError(
            f"objective {spec!r} is not an entry point; write 'package.module:function' or "
            "'<path>.py:function'"
        )
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    module = _import_file(spec, target, root) if is_file else _import_module(spec, target, root)
    obj: Any = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]!r}" if close else ""
            raise EntryPointError(
                f"objective {spec!r}: {target} has no {qualname!r}{hint}; define "
                f"def {qualname.rsplit('.', 1)[-1]}(point, report) there, or fix the name"
            )
        obj = getattr(obj, part)
    check_signature(spec, obj)
    return obj  # type: ignore[no-any-return]


def check_signature(spec: str, fn: object) -> None:
    """Raise :class:`EntryPointError` unless ``fn`` is a plain function that can be called as
    ``fn(point, report)``."""
    if not callable(fn) or isinstance(fn, type):
        what = f"the class {fn.__name__}" if isinstance(fn, type) else type(fn).__name__
        raise EntryPointError(
            f"objective {spec!r} is {what}, not a function; point it at "
            "def objective(point, report) -> float | dict"
        )
    if inspect.iscoroutinefunction(fn):
        raise EntryPointError(f"objective {spec!r} is async; make it a plain function")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or extension: it cannot tell; the call will
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise EntryPointError(
            f"objective {spec!r} takes {signature}, but a sweep calls it as "
            "objective(point, report); define it as def objective(point, report)"
        ) from None


def _number(name: str, value: object) -> float:
    if isinstance(value, bool | str | bytes) or value is None:
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None


def _step(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or int(step) < 0:
        raise TypeError(f"step must be an integer >= 0, got {step!r}")
    return int(step)


class Reporter:
    """What an objective reports while it trains (for the report's curves and for stopping a
    run that diverged). ``report(value, step)`` records the sweep's metric at ``step`` (an
    Optuna intermediate value too); a non-finite value raises :class:`Diverged`, ending the
    run as unstable. ``report.log(step=..., **metrics)`` records any other metrics.
    :attr:`metrics` holds one dict per call, each with ``step``. Made by the sweep; build one
    yourself (``Reporter("loss")``) to call an objective by hand."""

    def __init__(self, metric: str = "value", trial: optuna.Trial | None = None) -> None:
        self.metric = metric
        self.metrics: list[dict[str, Any]] = []
        self._trial = trial

    def __call__(self, value: float, step: int) -> None:
        """The same as :meth:`report`."""
        self.report(value, step)

    def report(self, value: float, step: int) -> None:
        """Record the sweep's metric ``value`` at ``step`` (an integer >= 0: an epoch, a
        step); raise :class:`Diverged` when it is not finite."""
        v, s = _number(self.metric, value), _step(step)
        self.metrics.append({"step": s, self.metric: v})
        if self._trial is not None:
            with uninterruptible():  # a store write: a stop request waits until it is done
                self._trial.report(v, s)
        if not math.isfinite(v):
            raise Diverged(f"{self.metric} = {v} at step {s}")

    def log(self, step: int, **metrics: float) -> None:
        """Record other metrics at ``step`` (``report.log(step=3, train_loss=0.4)``)."""
        s = _step(step)
        self.metrics.append({"step": s, **{k: _number(k, v) for k, v in metrics.items()}})


def final_metrics(out: object, metric: str) -> dict[str, float]:
    """What an objective returned, as ``{name: value}``: a number is ``{metric: number}``; a
    mapping must hold ``metric``. :class:`TypeError` or :class:`ValueError` says what is
    wrong."""
    if isinstance(out, Mapping):
        final = {str(k): _number(f"metric {k!r}", v) for k, v in out.items()}
        if metric not in final:
            raise ValueError(
                f"the objective returned the metrics {sorted(final)}, without the sweep's "
                f"metric {metric!r}; return it too, or set train.metric to one of them"
            )
        return final
    if out is None:
        raise TypeError(
            f"the objective returned None; return the metric {metric!r} (a number) or a dict "
            "of metrics holding it"
        )
    return {metric: _number("the objective's return value", out)}


class UserObjective:
    """Runs a user sweep's grid points: imports the function once per worker, calls it once per
    point (see the module docstring) and records what it returns."""

    def __init__(self, cfg: SweepConfig, function: ObjectiveFunction | None = None) -> None:
        if not isinstance(cfg.train, UserTrain):
            raise TypeError(f"sweep {cfg.name!r} runs mup2's training, not a user objective")
        self.cfg = cfg
        self.train: UserTrain = cfg.train
        self._function = function

    @property
    def function(self) -> ObjectiveFunction:
        """The user's function (imported on first use)."""
        if self._function is None:
            self._function = load_objective(self.train.objective, self.train.root)
        return self._function

    def check(self, batch: int | Literal["auto"]) -> None:
        """The entry point imports and takes ``(point, report)``; ``batch`` is 1."""
        if batch != 1:
            raise ConfigError(
                f"sweep {self.cfg.name!r} runs a user objective ({self.train.objective}), which "
                f"trains one grid point at a time: batch = {batch!r} is for mup2's own "
                "training; use batch = 1"
            )
        _ = self.function

    def run(
        self, trials: Sequence[optuna.Trial], points: Sequence[GridPoint], *, batched: bool
    ) -> list[Record]:
        """Call the function for the one point; its record."""
        (trial,), (grid,) = trials, points
        t = self.train
        point = Point.of(grid, t.settings, t.optimizer)
        report = Reporter(t.metric, trial)
        point.seed_everything()
        start = time.perf_counter()
        final: dict[str, float] = {}
        why = None
        try:
            out = self.function(point, report)
        except Diverged as exc:
            why = str(exc) or "the objective raised Diverged"
        else:
            final = final_metrics(out, t.metric)
            if not math.isfinite(final[t.metric]):
                why = f"returned {t.metric} = {final[t.metric]}"
        attrs: dict[str, Any] = {
            "status": "ok" if why is None else "unstable",
            "final": final,
            "metrics": report.metrics,
            "seconds": time.perf_counter() - start,
        }
        if why is not None:
            attrs["diverged"] = why
            value = -math.inf if t.direction == "maximize" else math.inf
        else:
            value = final[t.metric]
        return [Record(value, attrs)]
