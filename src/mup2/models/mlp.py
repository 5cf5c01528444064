"""A width-parametrized multilayer perceptron (the μP² paper's 3-layer MLP by default)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["MLP"]

Activation = Literal["relu", "gelu", "tanh"]
Norm = Literal["none", "layer", "batch"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """``depth`` Linear layers: ``in_features -> width -> ... -> width -> out_features``.

    Inputs of any shape ``(batch, *)`` are flattened to ``(batch, in_features)``; the output is
    ``(batch, out_features)`` logits. ``norm`` inserts a LayerNorm or BatchNorm1d after every
    hidden Linear (before the activation). Base width for μP: :attr:`BASE_WIDTH`.
    """

    BASE_WIDTH = 64

    def __init__(
        self,
        width: int,
        depth: int = 3,
        in_features: int = 784,
        out_features: int = 10,
        activation: Activation = "relu",
        norm: Norm = "none",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2 (input and output layers), got {depth}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, not {activation!r}"
            )
        if norm not in ("none", "layer", "batch"):
            raise ValueError(f"norm must be 'none', 'layer' or 'batch', not {norm!r}")
        self.width, self.depth = width, depth
        layers: list[nn.Module] = []
        fan_in = in_features
        for _ in range(depth - 1):
            layers.append(nn.Linear(fan_in, width, bias=bias))
            if norm == "layer":
                layers.append(nn.LayerNorm(width))
            elif norm == "batch":
                layers.append(nn.BatchNorm1d(width))
            layers.append(_ACTIVATIONS[activation]())
            fan_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(torch.flatten(x, 1)))
        return out
