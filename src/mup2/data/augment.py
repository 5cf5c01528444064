"""Batched, seeded augmentation and normalization of ``(N, C, H, W)`` float image tensors.

Random numbers come from a CPU :class:`torch.Generator`, so a seed gives the same augmentation
on every device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Augment", "normalize", "random_crop", "random_hflip"]


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad each side by ``padding`` and crop every image back to ``H x W`` at an offset
    drawn uniformly from ``[0, 2 padding]`` per image (torchvision's ``RandomCrop(H, padding)``)."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    wp = w + 2 * padding
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n, 1, 1), generator=generator).to(x.device)
    rows = dy + torch.arange(h, device=x.device)[:, None]  # (n, h, 1)
    flat = rows * wp + dx + torch.arange(w, device=x.device)  # (n, h, w) into the padded image
    index = flat.view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, index).view(n, c, h, w)


def random_hflip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - m) / s


@dataclass(frozen=True)
class Augment:
    """Random crop with ``crop_padding`` (0: none), then a random horizontal flip if ``hflip``."""

    crop_padding: int = 0
    hflip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        x = random_crop(x, self.crop_padding, generator)
        return random_hflip(x, generator) if self.hflip else x
