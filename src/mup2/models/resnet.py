"""A CIFAR-style ResNet-18 whose width is the number of channels of its first stage."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet18"]


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with an identity or 1x1-conv shortcut (He et al., 2016)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images: a 3x3 stride-1 stem (no max-pool), four stages of two
    :class:`BasicBlock` each with ``width, 2 width, 4 width, 8 width`` channels (strides 1, 2,
    2, 2), global average pooling and a Linear head.

    ``width=64`` is the standard ResNet-18, so a *width multiplier* ``k`` is ``width=64 k``.
    Input ``(batch, in_channels, H, W)``: ``in_channels=3`` for 32x32 CIFAR images,
    ``in_channels=1`` for 28x28 MNIST-format images (feature maps 28, 14, 7, 4). Output
    ``(batch, num_classes)`` logits. Base width for μP: :attr:`BASE_WIDTH` (the standard
    ResNet-18, whose SP hyperparameters are well known, is then also its μP model).

    Roles (inferred): the stem is input-like; every other conv, shortcuts included, is
    hidden-like; BatchNorm parameters are input-like norm parameters; ``fc.weight`` is
    output-like and ``fc.bias`` (fixed size) scalar-like.
    """

    BASE_WIDTH = 64

    def __init__(self, width: int = 64, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.width = width
        self.stem = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        stages: list[nn.Sequential] = []
        channels = width
        for i, stride in enumerate((1, 2, 2, 2)):
            out = width * 2**i
            stages.append(nn.Sequential(BasicBlock(channels, out, stride), BasicBlock(out, out)))
            channels = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.stem_bn(self.stem(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        logits: Tensor = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))
        return logits
