"""In-memory image classification data: one split is an image tensor and a label tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DataSplits", "ImageData", "channel_stats", "to_unit"]


@dataclass(frozen=True)
class ImageData:
    """One split in memory: ``images`` ``(N, C, H, W)``, uint8 in ``[0, 255]`` or float;
    ``labels`` ``(N,)`` int64 in ``[0, num_classes)``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {list(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be ({self.images.shape[0]},), got {list(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int | None) -> ImageData:
        """The first ``n`` examples (all for ``None``)."""
        if n is None or n >= len(self):
            return self
        return ImageData(self.images[:n], self.labels[:n])


@dataclass(frozen=True)
class DataSplits:
    """A dataset's train and test splits with the per-channel ``mean``/``std`` (of the training
    images, on the ``[0, 1]`` scale for uint8 images) used to normalize both."""

    name: str
    train: ImageData
    test: ImageData
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def head(self, train: int | None = None, test: int | None = None) -> DataSplits:
        """The first ``train``/``test`` examples of each split (statistics unchanged)."""
        return DataSplits(
            self.name,
            self.train.head(train),
            self.test.head(test),
            self.num_classes,
            self.mean,
            self.std,
        )


def to_unit(images: Tensor) -> Tensor:
    """Images in torch's default float dtype (float32 unless a caller, e.g. a float64 test,
    changed it), on the ``[0, 1]`` scale for uint8 input."""
    dtype = torch.get_default_dtype()
    if images.dtype == torch.uint8:
        return images.to(dtype).div_(255.0)
    return images.to(dtype)


def channel_stats(images: Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``(N, C, H, W)`` images (see :func:`to_unit`), in float64."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    sq = torch.zeros(c, dtype=torch.float64)
    for i in range(0, images.shape[0], chunk):
        x = to_unit(images[i : i + chunk]).to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        sq += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (sq / count - mean.square()).clamp_min(0.0).sqrt().clamp_min(1e-8)
    return tuple(mean.tolist()), tuple(std.tolist())
