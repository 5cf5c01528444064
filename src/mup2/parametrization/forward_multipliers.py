"""Forward multipliers that mup2 installs on a model: ``module(x) -> mult * module(x)``.

A forward hook (an :class:`OutputMultiplier`) on the module, so the model's code is not edited,
its ``state_dict`` keys and values are unchanged, and it runs under DDP, ``torch.compile`` and
``copy.deepcopy``. Setting a multiplier again replaces the old one (idempotent); the hook is not
saved in a ``state_dict``: re-apply the parametrization after loading into a fresh model
(:meth:`mup2.Parametrization.init_` and :meth:`~mup2.Parametrization.param_groups` do).
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["OutputMultiplier", "output_multiplier", "set_output_multiplier"]


class OutputMultiplier:
    """A forward hook multiplying a module's tensor output by ``mult``."""

    def __init__(self, mult: float) -> None:
        self.mult = float(mult)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        return output * self.mult

    def __repr__(self) -> str:
        return f"OutputMultiplier({self.mult:g})"


def _hooks(module: nn.Module) -> list[OutputMultiplier]:
    return [h for h in module._forward_hooks.values() if isinstance(h, OutputMultiplier)]


def output_multiplier(module: nn.Module) -> float | None:
    """The multiplier mup2 installed on ``module``, or ``None``."""
    found = _hooks(module)
    return found[0].mult if found else None


def set_output_multiplier(module: nn.Module, mult: float) -> None:
    """Install (or update) the forward multiplier of ``module``."""
    found = _hooks(module)
    if found:
        found[0].mult = float(mult)
    else:
        module.register_forward_hook(OutputMultiplier(mult))
