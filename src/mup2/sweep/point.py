"""One grid point as a user's training function gets it: the hyperparameters and what mup2 builds
from them (the scheme, the perturbation scaling, a :class:`~mup2.Parametrization` and a
:class:`~mup2.SAM`)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mup2.errors import check_class, check_instance
from mup2.optim.families import get_family
from mup2.optim.sam import SAM
from mup2.parametrization.parametrize import Parametrization
from mup2.sweep.config import PARAMETRIZATIONS
from mup2.sweep.grid import GridPoint, scheme_for

__all__ = ["Point"]


@dataclass(frozen=True)
class Point:
    """A grid point of a user sweep: ``width``, ``lr`` (the base learning rate, at the base
    width), ``rho`` (the perturbation radius; 0 is the base optimizer), ``seed`` and
    ``parametrization`` (a key of :data:`mup2.sweep.config.PARAMETRIZATIONS`, e.g. ``mup2``),
    plus the sweep's ``settings`` (its config's free table) and ``optimizer`` (the base
    optimizer's family, which decides the μP scheme).

    Typical use inside an objective::

        model, base = MyNet(point.width), MyNet(64)  # the base on the meta device is fine
        p = point.parametrize(model, base)            # infers roles, draws the μP init
        opt = point.sam(model, p, momentum=0.9)       # SAM at point.lr, point.rho
    """

    parametrization: str
    width: int
    lr: float
    rho: float
    seed: int
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    optimizer: str = "sgd"

    @classmethod
    def of(
        cls, point: GridPoint, settings: Mapping[str, Any] | None = None, optimizer: str = "sgd"
    ) -> Point:
        """The user's view of a sweep's :class:`~mup2.sweep.grid.GridPoint`."""
        return cls(
            point.parametrization,
            point.width,
            point.lr,
            point.rho,
            point.seed,
            dict(settings or {}),
            optimizer,
        )

    @property
    def grid(self) -> GridPoint:
        """The grid point alone (hashable: the sweep's key of this run)."""
        return GridPoint(self.parametrization, self.width, self.lr, self.rho, self.seed)

    @property
    def scheme(self) -> str:
        """The scheme: ``sp``, or μP for the optimizer (``mup-sgd``, ``mup-adam``)."""
        return scheme_for(self.optimizer, self.parametrization)

    @property
    def scaling(self) -> str:
        """The perturbation scaling: ``naive``, ``global`` or ``mup2`` (layerwise)."""
        return PARAMETRIZATIONS[self.parametrization].scaling

    @property
    def rule(self) -> str:
        """The SAM rule: ``sam``, or ``sam-readout`` for the readout-only parametrizations."""
        return PARAMETRIZATIONS[self.parametrization].rule or "sam"

    def parametrize(
        self, model: nn.Module, base: Any, *, init: bool = True, **infer_kwargs: Any
    ) -> Parametrization:
        """The :class:`~mup2.Parametrization` of ``model`` (built at :attr:`width`) against
        ``base`` (the same architecture at the base width, where :attr:`lr` and :attr:`rho` are
        meant; build it on the ``meta`` device to spend no memory) under :attr:`scheme`;
        ``infer_kwargs`` go to :meth:`~mup2.Parametrization.infer` (``overrides``,
        ``wd_policy``). With ``init`` (default) the model's weights are drawn afresh under the
        scheme from :attr:`seed` (:meth:`~mup2.Parametrization.init_`), as μP needs."""
        check_instance("model", model, nn.Module, "the model built at point.width")
        p = Parametrization.infer(model, base, self.scheme, **infer_kwargs)
        if init:
            p.init_(model, seed=self.seed)
        return p

    def sam(
        self,
        model: nn.Module | Iterable[Any],
        parametrization: Parametrization | None = None,
        *,
        base_optimizer: type[torch.optim.Optimizer] | None = None,
        weight_decay: float | None = None,
        **kwargs: Any,
    ) -> SAM:
        """:class:`~mup2.SAM` at this point: ``lr`` = :attr:`lr`, ``rho`` = :attr:`rho`, the
        point's :attr:`rule` and :attr:`scaling`. ``model`` with its ``parametrization``
        (:meth:`parametrize`) gives μP param groups; or pass param groups (or tensors) you
        made yourself. ``base_optimizer``: default the sweep's ``optimizer`` family's class
        (``torch.optim.SGD`` for ``sgd``); ``weight_decay`` and ``kwargs`` (``momentum``,
        ``betas``, ...) go to it. ρ = 0 is exactly the base optimizer."""
        if base_optimizer is None:
            family = get_family(self.optimizer)
            base_optimizer, kwargs = family.optimizer, family.kwargs(**kwargs)
        check_class(
            "base_optimizer",
            base_optimizer,
            torch.optim.Optimizer,
            "a torch optimizer class",
            "pass the class, e.g. point.sam(model, p, base_optimizer=torch.optim.AdamW)",
        )
        if weight_decay is not None:
            kwargs["weight_decay"] = weight_decay
        if isinstance(model, nn.Module):
            if parametrization is None:
                raise TypeError(
                    "point.sam(model) needs the model's parametrization: "
                    "p = point.parametrize(model, base); point.sam(model, p)"
                )
            check_instance(
                "parametrization", parametrization, Parametrization, "point.parametrize(...)'s"
            )
            params: Any = parametrization.param_groups(model, lr=self.lr, weight_decay=weight_decay)
            owner: nn.Module | None = model
        else:
            params, owner = model, None
        return SAM(
            params,
            base_optimizer,
            rho=self.rho,
            rule=self.rule,
            scaling=self.scaling,
            model=owner,
            lr=self.lr,
            **kwargs,
        )

    def seed_everything(self) -> None:
        """Seed Python's, NumPy's and torch's (CPU and CUDA) random generators with :attr:`seed`
        (the sweep does so before it calls the objective)."""
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)
