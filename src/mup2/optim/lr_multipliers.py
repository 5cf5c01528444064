"""Scheduler-safe learning-rate multipliers (and Adam ``eps`` multipliers).

A param group's ``lr`` holds the *base* learning rate, the one LR schedulers read and write; its
``lr_mult`` (from :class:`mup2.Parametrization`) is applied only for the duration of the wrapped
optimizer's ``step``. Schedulers that set absolute learning rates (``OneCycleLR``, ``CyclicLR``)
therefore cannot clobber the μP multipliers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["attach_lr_multipliers", "multiplied_lrs"]

_ATTACHED = "_mup2_lr_hooks"


_Saved = list[tuple[dict[str, Any], str, Any]]

#: Group keys multiplied at step time: ``lr`` by ``lr_mult`` and Adam's ``eps`` by ``eps_mult``
#: (depth-aware schemes, :class:`mup2.parametrization.schemes.DepthRule`).
_MULTIPLIED = (("lr", "lr_mult"), ("eps", "eps_mult"))


def _multiply(optimizer: torch.optim.Optimizer) -> _Saved:
    """Multiply each group's ``lr`` by its ``lr_mult`` (and ``eps`` by its ``eps_mult``); the
    base values to put back."""
    saved: _Saved = []
    for group in optimizer.param_groups:
        for key, mult_key in _MULTIPLIED:
            mult = group.get(mult_key, 1.0)
            if mult != 1.0 and key in group:
                saved.append((group, key, group[key]))
                group[key] = group[key] * mult
    return saved


def _put_back(saved: _Saved) -> None:
    while saved:
        group, key, value = saved.pop()
        group[key] = value


@contextmanager
def multiplied_lrs(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Within the block each group's ``lr`` is multiplied by its ``lr_mult``; restored exactly."""
    saved = _multiply(optimizer)
    try:
        yield
    finally:
        _put_back(saved)


def attach_lr_multipliers(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make ``optimizer.step()`` apply each group's ``lr_mult``; idempotent. Returns ``optimizer``.

    Needed when the param groups of :meth:`mup2.Parametrization.param_groups` go to a plain torch
    optimizer; :class:`mup2.SAM` attaches to its base optimizer itself. Works through
    ``GradScaler.step`` too, since it calls ``optimizer.step``. If the closure raises, the base
    LRs are restored before the exception propagates (the LR a checkpoint saves is the base).
    """
    if getattr(optimizer, _ATTACHED, None) is not None:
        return optimizer
    saved: _Saved = []  # the base LRs while a step runs (plain functions: this runs every step)

    def pre(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        _put_back(saved)  # a step that raised after the multipliers were applied: undo them
        saved.extend(_multiply(opt))
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0]: opt
        if closure is None:
            return None

        def guarded() -> Any:  # torch runs no post hook when step() raises: restore here
            try:
                return closure()
            except BaseException:
                _put_back(saved)
                raise

        if "closure" in kwargs:
            return args, {**kwargs, "closure": guarded}
        return (args[0], guarded, *args[2:]), kwargs

    def post(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        _put_back(saved)

    handles = (optimizer.register_step_pre_hook(pre), optimizer.register_step_post_hook(post))
    setattr(optimizer, _ATTACHED, handles)
    return optimizer
