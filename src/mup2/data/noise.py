"""Symmetric label noise on a training split (the regime where SAM's benefit shows)."""

from __future__ import annotations

import dataclasses

import torch

from mup2.data.dataset import DataSplits, ImageData
from mup2.data.loader import derive_seed

__all__ = ["with_label_noise"]


def with_label_noise(splits: DataSplits, rate: float, seed: int) -> DataSplits:
    """``splits`` with ``round(rate * N)`` of its ``N`` training labels replaced by a class drawn
    uniformly from the *other* ``num_classes - 1`` (so exactly that fraction is wrong).

    Which examples and which wrong classes depend only on ``(N, num_classes, rate, seed)``: every
    model, parametrization and trial seed trained on the same split sees the same labels. The
    test split is left clean. ``rate = 0`` returns ``splits`` itself.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return splits
    labels = splits.train.labels
    n, k = len(labels), splits.num_classes
    gen = torch.Generator().manual_seed(derive_seed(seed, n, k, 7))
    flip = torch.randperm(n, generator=gen)[: round(rate * n)]
    shift = torch.randint(1, k, (len(flip),), generator=gen)  # never the true class
    noisy = labels.clone()
    noisy[flip] = (labels[flip].cpu() + shift).remainder(k).to(labels.device, labels.dtype)
    return dataclasses.replace(splits, train=ImageData(splits.train.images, noisy))
