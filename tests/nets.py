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


class Scaled(nn.Module):
    """An attention layer the HF way: a ``scaling`` attribute read by its forward."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.head_dim = width // heads
        self.scaling = self.head_dim**-0.5
        self.qkv = nn.Linear(width, 3 * width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = (
            t.view(b, n, -1, self.head_dim).transpose(1, 2) for t in self.qkv(x).chunk(3, -1)
        )
        out = nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scaling)
        return out.transpose(1, 2).reshape(b, n, d)


class TiedLM(nn.Module):
    """Embedding -> Linear -> readout tied to the embedding; ``head_first`` declares the readout
    before the embedding (and owns the Parameter)."""

    def __init__(self, width: int, vocab: int = 40, head_first: bool = False) -> None:
        super().__init__()
        if head_first:
            self.head = nn.Linear(width, vocab, bias=False)
            self.embed = nn.Embedding(vocab, width)
            self.embed.weight = self.head.weight
        else:
            self.embed = nn.Embedding(vocab, width)
            self.head = nn.Linear(width, vocab, bias=False)
            self.head.weight = self.embed.weight
        self.mid = nn.Linear(width, width)
        nn.init.normal_(self.embed.weight, std=0.05)  # the same init whichever owns the tensor

    def forward(self, tokens: Tensor) -> Tensor:
        out: Tensor = self.head(torch.relu(self.mid(self.embed(tokens))))
        return out


class _Residual(nn.Module):
    """``x + proj(relu(fc(x)))``: a residual block whose branch output, ``proj``, is no name
    mup2 knows (:data:`mup2.parametrization.depth.BRANCH_OUTPUTS`)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.proj(torch.relu(self.fc(x)))
        return out


class ListBlocks(nn.Module):
    """Linear -> ``depth`` residual blocks in an ``nn.ModuleList`` (``layers.N``) -> Linear."""

    def __init__(self, width: int, depth: int = 2, d_in: int = 12, classes: int = 5) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.layers: nn.Module = nn.ModuleList(_Residual(width) for _ in range(depth))
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.layers.children():
            h = block(h)
        out: Tensor = self.head(h)
        return out


class DictBlocks(ListBlocks):
    """:class:`ListBlocks` with its blocks in an ``nn.ModuleDict``: no stack mup2 matches
    across depths."""

    def __init__(self, width: int, depth: int = 2, d_in: int = 12, classes: int = 5) -> None:
        super().__init__(width, depth, d_in, classes)
        self.layers = nn.ModuleDict({str(i): _Residual(width) for i in range(depth)})
