"""Shared by the report tests: the Optuna distributions of a fixture store's grid points."""

from __future__ import annotations

from collections.abc import Sequence

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

__all__ = ["distributions"]


def distributions(pars: Sequence[str]) -> dict[str, BaseDistribution]:
    """The distributions of a stored trial's params (parametrization among ``pars``, in that
    order; width, lr, rho, seed over ranges wide enough for any fixture grid)."""
    return {
        "parametrization": CategoricalDistribution(pars),
        "width": IntDistribution(1, 1 << 20),
        "lr": FloatDistribution(1e-8, 1e3, log=True),
        "rho": FloatDistribution(0.0, 1e3),
        "seed": IntDistribution(0, 1000),
    }
