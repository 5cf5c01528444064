"""ρ schedules: the perturbation radius as a param-group hyperparameter set every step, as
``torch.optim.lr_scheduler`` sets ``lr``.

A :class:`RhoScheduler` remembers each group's ``rho`` when it is built (its base radius) and, at
each :meth:`~RhoScheduler.step`, sets ``group["rho"] = base_rho * factor(t)`` for the optimizer's
``t``-th step (0-based, counted by the scheduler). Call ``step()`` once after every optimizer
step, as for an LR scheduler. It works with :class:`mup2.SAM`, :class:`mup2.LightSAM` and any
variant: they read ``rho`` from the groups, and a step whose ``rho`` is 0 in every group takes
one forward/backward pass, the base optimizer's step on the plain gradient
(:meth:`mup2.SAM.step`). ``state_dict``/``load_state_dict`` save the step count and the base
radii, so a resumed run continues the schedule exactly. SAM caches its perturbation plan
until a radius changes: a schedule whose radius changes on every step (:class:`LambdaRho` with
a smooth function) rebuilds it on every step, a few small host-to-device copies.

- :class:`LambdaRho`: ``factor(t)`` given as a function;
- :class:`LatePhase`: late-phase SAM (Zhou et al., ICLR 2025, arXiv 2410.10373): ``rho = 0``
  (the base optimizer alone) for the first ``round((1 - fraction) * total_steps)`` steps, then
  the base radius to the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from mup2.errors import check_instance, check_integer, check_number

__all__ = ["LambdaRho", "LatePhase", "RhoScheduler", "parse_rho_schedule"]


class RhoScheduler:
    """Base class: sets each param group's ``rho`` to its base radius times :meth:`factor`.

    Args:
        optimizer: a :class:`mup2.SAM` (or any optimizer whose groups hold ``rho``).
        last_step: the index of the last step taken (``-1``: none; the constructor then sets
            the radius of step 0, as torch's LR schedulers set the first LR).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, last_step: int = -1) -> None:
        check_instance("optimizer", optimizer, torch.optim.Optimizer, "a mup2.SAM optimizer")
        if any("rho" not in g for g in optimizer.param_groups):
            raise TypeError(
                f"optimizer must hold a 'rho' in each param group (mup2.SAM, LightSAM), got "
                f"{type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.base_rhos = [float(g["rho"]) for g in optimizer.param_groups]
        self.last_step = last_step
        self.step()

    def factor(self, step: int) -> float:
        """The multiplier of the base radii at 0-based step ``step``."""
        raise NotImplementedError

    def get_rho(self) -> list[float]:
        """Each group's radius at the current step."""
        f = self.factor(self.last_step)
        return [rho * f for rho in self.base_rhos]

    def step(self) -> None:
        """Advance to the next optimizer step and set its radii (call after ``optimizer.step``)."""
        self.last_step += 1
        for group, rho in zip(self.optimizer.param_groups, self.get_rho(), strict=True):
            group["rho"] = rho

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer (and functions, which are not saved)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer" and not callable(v)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned and set the radii of the step it reached."""
        self.__dict__.update(state_dict)
        for group, rho in zip(self.optimizer.param_groups, self.get_rho(), strict=True):
            group["rho"] = rho


class LambdaRho(RhoScheduler):
    """``rho = base_rho * rho_lambda(step)``; ``rho_lambda`` is not saved with the state."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        rho_lambda: Callable[[int], float],
        last_step: int = -1,
    ) -> None:
        if not callable(rho_lambda):
            raise TypeError(f"rho_lambda must be a function of the step, got {rho_lambda!r}")
        self.rho_lambda = rho_lambda
        super().__init__(optimizer, last_step)

    def factor(self, step: int) -> float:
        return float(self.rho_lambda(step))


class LatePhase(RhoScheduler):
    """Late-phase SAM: ``rho = 0`` for the first ``round((1 - fraction) * total_steps)`` steps,
    then each group's base radius (``fraction = 1``: every step; after ``total_steps`` the radius
    stays on)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        fraction: float,
        last_step: int = -1,
    ) -> None:
        check_integer("total_steps", total_steps)
        check_number("fraction", fraction)
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.total_steps, self.fraction = total_steps, float(fraction)
        self.start = round((1.0 - self.fraction) * total_steps)
        super().__init__(optimizer, last_step)

    def factor(self, step: int) -> float:
        return 0.0 if step < self.start else 1.0


def parse_rho_schedule(schedule: str) -> float | None:
    """The SAM fraction of ``"late:F"`` (``0 < F <= 1``); ``None`` for ``"constant"``;
    :class:`ValueError` naming the value otherwise."""
    if schedule == "constant":
        return None
    head, _, tail = schedule.partition(":")
    try:
        fraction = float(tail) if head == "late" else math.nan
    except ValueError:
        fraction = math.nan
    if not 0.0 < fraction <= 1.0:  # nan too
        raise ValueError(
            f"{schedule!r} is not a ρ schedule: use 'constant' or 'late:F' with F in (0, 1], "
            "the fraction of the steps that run SAM (e.g. 'late:0.2': SAM in the last 20%)"
        )
    return fraction
