"""Context managers for SAM's two passes: the first without DDP gradient synchronization, the
second without touching normalization-layer running statistics."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from torch import nn

__all__ = ["frozen_bn_stats", "no_sync"]


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm-style layers in training mode normalize with batch statistics
    as usual but leave ``running_mean``, ``running_var`` and ``num_batches_tracked`` unchanged.

    Use it around SAM's second (perturbed) forward so the statistics come from the first pass
    only. No buffers are copied: ``track_running_stats`` is switched off for the block.
    """
    switched = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
    ]
    for m in switched:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True


def no_sync(model: nn.Module) -> AbstractContextManager[None]:
    """``model.no_sync()`` for a DDP model (gradients stay per replica), else a no-op context."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return nullcontext()
