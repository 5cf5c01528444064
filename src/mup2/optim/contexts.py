"""Context managers for SAM's two passes: the first without DDP gradient synchronization, the
second without touching normalization-layer running statistics; and gradient synchronization
switched off for the micro-batches before the last one (DDP and FSDP2)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule

__all__ = ["frozen_bn_stats", "gradient_sync", "no_sync"]


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


@contextmanager
def _fsdp_no_sync(model: FSDPModule) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def gradient_sync(model: nn.Module | None, enabled: bool) -> AbstractContextManager[None]:
    """A no-op when ``enabled``; otherwise no gradient reduction in the block: ``no_sync()`` of a
    DDP model, ``set_requires_gradient_sync(False)`` of an FSDP2 model (gradients then stay
    unsharded and accumulate until a synchronized backward)."""
    if enabled or model is None:
        return nullcontext()
    fsdp: Any = sys.modules.get("torch.distributed.fsdp")  # not imported here: it costs seconds
    if fsdp is not None and isinstance(model, fsdp.FSDPModule):
        return _fsdp_no_sync(model)
    return no_sync(model)
