"""Init rules as data: PyTorch's default init of each known module type (computed from a shape)
and the init a model actually has (observed from its freshly built tensors).

mup2 re-initializes from these rules (drawn afresh, so applying twice is applying once). μP
scales the model's own init at the *base* width: PyTorch's default rule at the base shape when
the tensor was drawn by it, otherwise the distribution observed in the model (:func:`observe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mup2.parametrization.shapes import is_norm

__all__ = ["InitRule", "Observed", "default_init", "draw_", "observe"]

InitKind = Literal["uniform", "normal", "constant", "keep"]


@dataclass(frozen=True)
class InitRule:
    """How to draw one tensor: ``uniform``/``normal`` with standard deviation ``value``,
    ``constant`` equal to ``value``, or ``keep`` (left as the model made it)."""

    kind: InitKind
    value: float = 0.0

    def scaled(self, mult: float) -> InitRule:
        """The same distribution with its std multiplied by ``mult`` (constants are unchanged)."""
        if self.kind in ("uniform", "normal"):
            return InitRule(self.kind, self.value * mult)
        return self

    def describe(self) -> str:
        if self.kind == "keep":
            return "keep"
        if self.kind == "constant":
            return f"={self.value:g}"
        return f"{'U' if self.kind == 'uniform' else 'N'}(std {self.value:.3g})"


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    return nn.init._calculate_fan_in_and_fan_out(torch.empty(shape, device="meta"))


def default_init(
    module: nn.Module, local: str, shape: tuple[int, ...], weight_shape: tuple[int, ...] | None
) -> InitRule:
    """The rule PyTorch's default init of ``module`` uses for its parameter ``local``.

    ``shape`` is the tensor's shape and ``weight_shape`` the shape of the module's ``weight``
    (biases of Linear/Conv layers are drawn with the weight's fan-in). Unknown parameters: ``keep``.
    """
    kaiming = (nn.Linear, nn.modules.conv._ConvNd)
    if is_norm(module) and local in ("weight", "bias"):
        return InitRule("constant", 1.0 if local == "weight" else 0.0)
    if isinstance(module, nn.Embedding | nn.EmbeddingBag) and local == "weight":
        return InitRule("normal", 1.0)
    if isinstance(module, kaiming) and local == "weight":
        # kaiming_uniform_(a=sqrt(5)): bound 1/sqrt(fan_in), std 1/sqrt(3 fan_in)
        return InitRule("uniform", 1.0 / math.sqrt(3.0 * _fans(shape)[0]))
    if isinstance(module, (*kaiming, nn.Bilinear)) and local == "bias" and weight_shape:
        fan_in = weight_shape[1] if isinstance(module, nn.Bilinear) else _fans(weight_shape)[0]
        return (
            InitRule("uniform", 1.0 / math.sqrt(3.0 * fan_in)) if fan_in > 0 else InitRule("keep")
        )
    if isinstance(module, nn.Bilinear) and local == "weight":
        return InitRule("uniform", 1.0 / math.sqrt(3.0 * shape[1]))
    if isinstance(module, nn.MultiheadAttention):
        if local.endswith("proj_weight"):  # xavier_uniform_
            fan_in, fan_out = _fans(shape)
            return InitRule("uniform", math.sqrt(2.0 / (fan_in + fan_out)))
        if local in ("bias_k", "bias_v"):  # xavier_normal_
            fan_in, fan_out = _fans(shape)
            return InitRule("normal", math.sqrt(2.0 / (fan_in + fan_out)))
        if local == "in_proj_bias":
            return InitRule("constant", 0.0)
    return InitRule("keep")


def draw_(p: torch.Tensor, rule: InitRule, generator: torch.Generator | None) -> None:
    """Fill ``p`` in place (its storage is kept). Draws on the CPU, so a seed gives the same values
    on every device."""
    if rule.kind == "keep":
        return
    with torch.no_grad():
        if rule.kind == "constant":
            p.fill_(rule.value)
            return
        tmp = torch.empty(p.shape, dtype=torch.float32)
        if rule.kind == "uniform":
            bound = math.sqrt(3.0) * rule.value
            tmp.uniform_(-bound, bound, generator=generator)
        else:
            tmp.normal_(0.0, rule.value, generator=generator)
        p.copy_(tmp)


@dataclass(frozen=True)
class Observed:
    """What a tensor's values say about its init: ``rule`` and where it comes from, ``source``:
    ``"default"`` (the values fit PyTorch's default rule for the module), ``"model"`` (another
    distribution, described by its kind and RMS) or ``"keep"`` (no rule describes it)."""

    rule: InitRule
    source: Literal["default", "model", "keep"]


def _fits_default(x: torch.Tensor, rule: InitRule, rms: float) -> bool:
    if rule.kind == "constant":
        return bool(torch.all(x == rule.value))
    if rule.kind not in ("uniform", "normal") or rule.value <= 0 or x.numel() < 2:
        return False
    # the sample RMS is within ~4 standard errors (0.45/sqrt(n) uniform, 0.71/sqrt(n) normal)
    close = abs(rms / rule.value - 1.0) <= max(0.2, 3.0 / math.sqrt(x.numel()))
    if rule.kind == "uniform":
        return close and float(x.abs().max()) <= math.sqrt(3.0) * rule.value * (1 + 1e-6)
    return close


def observe(values: torch.Tensor, default: InitRule) -> Observed:
    """Describe the init of ``values`` (a freshly built tensor), preferring ``default`` (the
    module type's PyTorch rule at this shape) when the values fit it.

    Otherwise: equal values give a ``constant``; a zero-mean tensor a ``normal`` (or, when it has
    at least 32 entries all within ``1.8`` RMS, ``uniform``) rule with its RMS as the std.
    Meta tensors fall back to ``default``; anything else (non-finite values, a nonzero mean) is
    ``keep``.
    """
    if values.is_meta:
        return Observed(default, "keep" if default.kind == "keep" else "default")
    x = values.detach().reshape(-1).to("cpu", torch.float64)
    if x.numel() == 0 or not bool(torch.isfinite(x).all()):
        return Observed(InitRule("keep"), "keep")
    rms = float(x.pow(2).mean().sqrt())
    if _fits_default(x, default, rms):
        return Observed(default, "default")
    if bool(torch.all(x == x[0])):
        return Observed(InitRule("constant", float(x[0])), "model")
    mean = float(x.mean())
    if abs(mean) > 0.1 * rms + 4.0 * rms / math.sqrt(x.numel()):
        return Observed(InitRule("keep"), "keep")
    uniform = x.numel() >= 32 and float(x.abs().max()) <= 1.8 * rms
    return Observed(InitRule("uniform" if uniform else "normal", rms), "model")
