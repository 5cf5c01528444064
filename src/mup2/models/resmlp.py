"""A width- and depth-parametrized pre-LayerNorm residual MLP (the depth study's model)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["ResMLP", "ResidualBlock"]

Activation = Literal["relu", "gelu"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


class ResidualBlock(nn.Module):
    """``x + fc2(act(fc1(ln(x))))``: a pre-LN MLP branch of hidden size ``mlp_ratio * width``;
    its branch output is ``fc2``."""

    def __init__(self, width: int, mlp_ratio: int, activation: Activation, bias: bool) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width, bias=bias)
        self.act = _ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(mlp_ratio * width, width, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.fc2(self.act(self.fc1(self.ln(x))))
        return out


class ResMLP(nn.Module):
    """``embed`` (Linear ``in_features -> width``), ``depth`` pre-LN :class:`ResidualBlock` s in
    ``blocks`` (an ``nn.ModuleList``), a final LayerNorm and the Linear ``head``.

    Inputs of any shape ``(batch, *)`` are flattened to ``(batch, in_features)``; the output is
    ``(batch, out_features)`` logits. Base width for μP: :attr:`BASE_WIDTH`. Against a base of
    fewer blocks, :meth:`mup2.Parametrization.infer` matches ``blocks.N`` and multiplies each
    block's branch (``fc2``, :attr:`mup2_branches`) by ``(L/L0)**-alpha``.

    Roles (inferred): ``embed.weight`` input-like, ``fc1``/``fc2`` hidden-like, biases and
    LayerNorm parameters input-like, ``head.weight`` output-like.
    """

    BASE_WIDTH = 64
    #: The block-relative names of each block's residual branch output.
    mup2_branches = ("fc2",)

    def __init__(
        self,
        width: int,
        depth: int = 4,
        in_features: int = 784,
        out_features: int = 10,
        mlp_ratio: int = 1,
        activation: Activation = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1 (residual blocks), got {depth}")
        if width < 1 or mlp_ratio < 1:
            raise ValueError(f"width and mlp_ratio must be >= 1, got {width} and {mlp_ratio}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, not {activation!r}"
            )
        self.width, self.depth = width, depth
        self.embed = nn.Linear(in_features, width, bias=bias)
        self.blocks = nn.ModuleList(
            ResidualBlock(width, mlp_ratio, activation, bias) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(torch.flatten(x, 1))
        for block in self.blocks:
            h = block(h)
        out: Tensor = self.head(self.norm(h))
        return out
