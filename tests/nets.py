"""Small width-parametrized networks built from plain ``torch.nn`` modules, shared by the tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvNet(nn.Module):
    """Conv stem -> conv+BN blocks -> global pool -> Linear head; width = channels."""

    def __init__(self, width: int, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(self.bn1(self.conv(h)))
        out: Tensor = self.head(h.mean(dim=(2, 3)))
        return out


class TinyTransformer(nn.Module):
    """Token embedding (tied with the readout) -> one TransformerEncoderLayer -> readout."""

    def __init__(self, width: int, vocab: int = 50, head_dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(1, 16, width))
        self.block = nn.TransformerEncoderLayer(
            width, width // head_dim, dim_feedforward=2 * width, batch_first=True, dropout=0.0
        )
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        out: Tensor = self.head(self.block(h))
        return out


def mlp(width: int, d_in: int = 12, classes: int = 5, norm: bool = False) -> nn.Sequential:
    """Linear -> ReLU -> Linear [-> LayerNorm] -> ReLU -> Linear."""
    mid: list[nn.Module] = [nn.Linear(width, width)]
    if norm:
        mid.append(nn.LayerNorm(width))
    return nn.Sequential(
        nn.Linear(d_in, width), nn.ReLU(), *mid, nn.ReLU(), nn.Linear(width, classes)
    )
