"""What a sweep worker runs for its claimed grid points: the one interface of mup2's own training
(:class:`mup2.sweep.builtin.TrainObjective`) and of a user's function
(:class:`mup2.sweep.user.UserObjective`), so that both share the engine's claiming,
heartbeats, requeueing and stopping (:mod:`mup2.sweep.engine`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import optuna

from mup2.sweep.config import SweepConfig
from mup2.sweep.grid import GridPoint

__all__ = ["Objective", "Record"]


@dataclass(frozen=True)
class Record:
    """What one grid point's run leaves on its trial: the trial's ``value`` and its user
    attributes (``status`` ``ok`` or ``unstable``, ``metrics``, ``seconds``, ...)."""

    value: float
    attrs: Mapping[str, Any]


class Objective(Protocol):
    """Runs a sweep's grid points in a worker process (one object per worker)."""

    cfg: SweepConfig

    def check(self, batch: int | Literal["auto"]) -> None:
        """Raise a :class:`~mup2.errors.UserError` (or ``TypeError``) naming the problem when
        this process cannot run the sweep's points ``batch`` at a time (a missing device,
        dataset or entry point); called before any trial is claimed."""
        ...

    def run(
        self, trials: Sequence[optuna.Trial], points: Sequence[GridPoint], *, batched: bool
    ) -> list[Record]:
        """Run the claimed ``points`` (one, or a bundle when ``batched``), whose ``trials`` are
        running; one record per point, in order. It runs interruptibly
        (:func:`mup2.sweep.signals.interruptible`); an exception fails every trial."""
        ...
