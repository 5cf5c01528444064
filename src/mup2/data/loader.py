"""Deterministic batches from an in-memory split: epoch ``e`` of seed ``s`` is always the same."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from mup2.data.augment import Augment, normalize
from mup2.data.dataset import ImageData, to_unit

__all__ = ["Loader", "derive_seed"]


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. ``(seed, epoch, stream)``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


class Loader:
    """Batches ``(x, y)`` of ``data``: ``x`` float32 ``(B, C, H, W)`` on ``device``, scaled to
    ``[0, 1]`` (uint8 data), augmented, then normalized with ``mean``/``std``; ``y`` int64 ``(B,)``.

    The whole split is moved to ``device`` once. With ``shuffle``, the order and the augmentation
    of epoch ``e`` depend only on ``(seed, e)``, so a run resumed at an epoch boundary sees the
    same batches as an uninterrupted one. ``drop_last`` drops the final incomplete batch.
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and len(data) < batch_size:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {len(data)} examples; no full batch"
            )
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment if augment is not None and augment.active else None
        self.seed = seed

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_examples(self) -> int:
        """Examples per epoch (after ``drop_last``)."""
        n = len(self.labels)
        return len(self) * self.batch_size if self.drop_last else n

    def order(self, epoch: int = 0) -> Tensor | None:
        """The permutation of the examples in epoch ``epoch`` (CPU, int64), ``None`` unshuffled.
        Batch ``b`` holds ``order[b * batch_size : (b + 1) * batch_size]``."""
        if not self.shuffle:
            return None
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0))
        return torch.randperm(len(self.labels), generator=gen)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of epoch ``epoch``."""
        n = len(self.labels)
        aug_gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 1))
        order = self.order(epoch)
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                images, labels = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi].to(self.device)
                images, labels = self.images[idx], self.labels[idx]
            x = to_unit(images)
            if self.augment is not None:
                x = self.augment(x, aug_gen)
            yield normalize(x, self.mean, self.std), labels
