"""The two types every layer shares: a tensor's :class:`Role` and a width :class:`Power`.

A tensor's fans grow with width by ``m_in`` and ``m_out`` (ratios to the base model,
``docs/math.md`` §1); its role says which of them grow. Every multiplier of a parametrization
or a perturbation scaling is a :class:`Power` of ``m_out``, ``m_in`` and the model's width
multiplier ``M``, equal to 1 at base width.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Power", "Role"]


class Role(StrEnum):
    """How a tensor's dimensions grow with width (``docs/math.md`` §1)."""

    INPUT = "input"  # fan_out grows: first layer, embeddings, every bias and norm parameter
    HIDDEN = "hidden"  # both grow
    OUTPUT = "output"  # fan_in grows: the readout
    SCALAR = "scalar"  # neither grows


@dataclass(frozen=True)
class Power:
    """The multiplier ``m_out**out * m_in**in_ * M**width * D**(depth + alpha * a)``.

    ``M``: the model's width multiplier; ``D = L/L0``: the depth multiplier of the tensor's
    block stack (1 outside the blocks); ``a``: the residual-branch exponent (the branches are
    multiplied by ``D**-a``; CompleteP: ``a = 1``), so a depth rule written for every ``a`` is
    one :class:`Power` (``docs/math.md``, depth)."""

    out: float = 0.0
    in_: float = 0.0
    width: float = 0.0
    depth: float = 0.0
    alpha: float = 0.0

    def __call__(
        self,
        m_in: float,
        m_out: float,
        width: float = 1.0,
        depth: float = 1.0,
        alpha: float = 1.0,
    ) -> float:
        d = depth ** (self.depth + self.alpha * alpha) if depth != 1.0 else 1.0
        return float(m_out**self.out * m_in**self.in_ * width**self.width * d)
