"""``mup2.sweep.run``: a sweep of the user's own training function, from Python.

::

    import mup2.sweep

    def objective(point, report):          # at the top level of a module or script
        model, base = Net(point.width), Net(64)
        p = point.parametrize(model, base)
        opt = point.sam(model, p, momentum=0.9)
        ...
        return {"loss": val_loss, "accuracy": acc}

    if __name__ == "__main__":              # the workers import this file
        mup2.sweep.run(objective, name="net", metric="loss", direction="minimize",
                       version="net-v1", grid={"widths": [64, 128, 256], "lr": [...],
                       "rho": [...]}, workers=2)

The function is stored as an entry point (``module:function``, or ``file.py:function`` for a
script), which every worker imports: the local ones this starts and any ``mup2 worker`` on
another machine. The rest is :func:`mup2.sweep.run_sweep`: the store, resuming, workers, Ctrl-C.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna

from mup2.sweep.config import GridConfig, SweepConfig, check_sweep_config, parse_sweep_config
from mup2.sweep.engine import SweepState
from mup2.sweep.local import run_sweep
from mup2.sweep.user import (
    EntryPointError,
    ObjectiveFunction,
    check_signature,
    importing_objective,
    load_objective,
)

__all__ = ["SweepResult", "entry_point", "run"]


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run` returns: the sweep's config, its store and its final state
    (``state.finished``: every grid point has a completed run)."""

    config: SweepConfig
    storage: str
    state: SweepState

    def study(self) -> optuna.Study:
        """The sweep's Optuna study (one trial per run; see :mod:`mup2.sweep.user`)."""
        return optuna.load_study(study_name=self.config.name, storage=self.storage)


def entry_point(function: Callable[..., Any]) -> tuple[str, str]:
    """``(entry point, root)`` of a function defined at the top level of a module
    (``package.module:function``, root: the current directory; also for a module run with
    ``python -m``) or of a script run as ``__main__`` (``file.py:function``, root: the
    script's folder). :class:`TypeError` for a
    lambda, a nested function or one typed into an interactive session, which no worker could
    import."""
    if not callable(function):
        raise TypeError(f"objective must be a function objective(point, report), got {function!r}")
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", "")
    if not module or not qualname or "<" in qualname:
        raise TypeError(
            "objective must be a function defined at the top level of a module or script, got "
            f"{qualname or repr(function)}: every worker imports it by name"
        )
    if module in ("__main__", "__mp_main__"):
        main = sys.modules.get(module)
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name not in ("__main__", "__mp_main__"):  # python -m pkg.x
            return f"{spec.name}:{qualname}", str(Path.cwd())
        file = getattr(main, "__file__", None)
        if file is None:
            raise TypeError(
                f"objective {qualname} is defined in an interactive session, which the workers "
                "cannot import; move it to a .py file (or a module) and import it from there"
            )
        path = Path(file).resolve()
        return f"{path.name}:{qualname}", str(path.parent)
    return f"{module}:{qualname}", str(Path.cwd())


def run(
    objective: ObjectiveFunction | str | None = None,
    *,
    config: SweepConfig | None = None,
    name: str | None = None,
    grid: GridConfig | Mapping[str, Any] | None = None,
    direction: Literal["maximize", "minimize"] | None = None,
    version: str | None = None,
    metric: str = "value",
    optimizer: str = "sgd",
    settings: Mapping[str, Any] | None = None,
    storage: str | None = None,
    heartbeat_seconds: int | None = None,
    max_retries: int | None = None,
    workers: int | None = None,
    run_dir: str | Path | None = None,
    threads: int = 1,
    progress: bool = True,
    mkdir: bool = False,
    say: Callable[[str], object] | None = print,
) -> SweepResult:
    """Run (or resume) a sweep of ``objective(point, report)`` over the grid, on ``workers``
    local processes (default 1), until every grid point has run; see :mod:`mup2.sweep.user`
    for what the function gets and returns.

    ``objective``: the function (defined at the top level of a module, or of the script that
    calls this under ``if __name__ == "__main__":``) or its entry point as a string
    (``"package.module:function"``, ``"path/to/file.py:function"``). The sweep is either
    ``config`` (a :class:`~mup2.sweep.config.SweepConfig` whose ``train`` is a
    :class:`~mup2.sweep.config.UserTrain`, e.g. from
    :func:`~mup2.sweep.config.load_sweep_config`; ``objective`` may then be omitted) or the
    keywords: ``name`` (the study), ``grid`` (``widths``, ``lr``, ``rho``, ``seeds``,
    ``parametrizations``, ``extra``, as in a config file), ``direction`` (``maximize`` or
    ``minimize`` ``metric``), ``version`` (your fingerprint of the training setup: a sweep
    resumed with another version, objective, metric, optimizer or settings is refused),
    ``optimizer`` (the base optimizer's family: the μP scheme), ``settings`` (passed as
    ``point.settings``), ``storage`` (an Optuna URL; default ``RUN_DIR/sweep.db``),
    ``heartbeat_seconds`` and ``max_retries``. Bad values raise
    :class:`~mup2.config.ConfigError` naming the keys; an objective that cannot be imported or
    called as ``objective(point, report)`` raises
    :class:`~mup2.sweep.user.EntryPointError`, before anything is written.

    ``run_dir`` (default ``runs/NAME``), ``threads``, ``progress``, ``mkdir`` and ``say`` (the
    store line; ``None``: silent) are those of :func:`mup2.sweep.run_sweep`. Ctrl-C stops the
    workers and raises :class:`KeyboardInterrupt`; calling it again resumes, as do ``mup2 sweep``
    and ``mup2 worker`` on the same store."""
    guard = importing_objective()
    if guard is not None:
        raise RuntimeError(
            f"mup2.sweep.run() was called while a worker imported the objective {guard!r}: "
            "it would start the sweep again in every worker; call it under "
            "`if __name__ == '__main__':`"
        )
    if config is not None:
        cfg = _given(config, objective, name, grid, direction, version, settings, storage)
    else:
        cfg = _built(
            objective,
            name=name,
            grid=grid,
            direction=direction,
            version=version,
            metric=metric,
            optimizer=optimizer,
            settings=settings,
            storage=storage,
            heartbeat_seconds=heartbeat_seconds,
            max_retries=max_retries,
        )
    out = Path(run_dir) if run_dir is not None else Path("runs") / cfg.name
    where, state = run_sweep(
        cfg, out, workers=workers, threads=threads, progress=progress, mkdir=mkdir, say=say
    )
    return SweepResult(cfg, where, state)


def _given(
    config: SweepConfig, objective: ObjectiveFunction | str | None, *others: object
) -> SweepConfig:
    """``config``, checked: a user sweep, no keyword that it already says, and ``objective``
    (if given) the function it names."""
    check_sweep_config(config)
    if config.user is None:
        raise TypeError(
            f"config {config.name!r} trains with mup2's own loop (its train section is a "
            "TrainConfig); mup2.sweep.run is for a user objective: use mup2.sweep.run_sweep"
        )
    if any(o is not None for o in others):
        raise TypeError(
            "give the sweep either as config or as keywords (name, grid, direction, version, "
            "settings, storage), not both"
        )
    if objective is not None:
        named = objective if isinstance(objective, str) else entry_point(objective)[0]
        if named != config.user.objective:
            raise ValueError(
                f"objective {named!r} is not the config's objective {config.user.objective!r}; "
                "omit it, or set train.objective"
            )
    return config


def _built(objective: ObjectiveFunction | str | None, **keys: Any) -> SweepConfig:
    """The sweep config of ``objective`` and the keywords of :func:`run`, validated, and the
    objective checked (it must be what its entry point imports)."""
    if objective is None:
        raise TypeError("run() needs the objective: run(objective, name=..., grid=..., ...)")
    if isinstance(objective, str):
        spec, root = objective, str(Path.cwd())
    else:
        spec, root = entry_point(objective)
        check_signature(spec, objective)
    train = {k: keys.pop(k) for k in ("direction", "version", "metric", "optimizer")}
    train.update(objective=spec, root=root, settings=dict(keys.pop("settings") or {}))
    if isinstance(keys["grid"], GridConfig):
        keys["grid"] = keys["grid"].model_dump(mode="json")
    given = {k: v for k, v in train.items() if v is not None}
    cfg = parse_sweep_config({k: v for k, v in keys.items() if v is not None} | {"train": given})
    found = load_objective(spec, root)
    if not isinstance(objective, str) and found is not objective:
        raise EntryPointError(
            f"objective {spec!r} imports another object than the function given (is it "
            "redefined, or wrapped by a decorator that hides it?); give the entry point itself"
        )
    return cfg
