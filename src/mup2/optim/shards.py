"""FSDP2 (DTensor) support for the perturbation: local shards and one global norm reduction.

Under ``torch.distributed.fsdp.fully_shard`` each parameter is a ``DTensor`` whose local tensor
is this rank's shard, and its first-pass gradient is the reduce-scattered (averaged) shard. SAM
computes on the local shards (buffers are ``empty_like`` the parameter, so sharded the same way)
and sums the squared norms of sharded tensors across ranks with one ``all_reduce`` of a vector
holding one entry per tensor; replicated and plain tensors enter the sum once.

``torch.distributed.tensor`` is not imported here (it costs seconds): a DTensor can only exist
once its module has been imported, so it is looked up in ``sys.modules``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeGuard

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

__all__ = ["Reduce", "is_dtensor", "local", "locals_", "shard_reducer"]

#: Maps the 1-D vector of per-tensor squared norms of the local shards to the global ones.
Reduce = Callable[[Tensor], Tensor]


def is_dtensor(t: Tensor) -> TypeGuard[DTensor]:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (without importing it)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def local(t: Tensor) -> Tensor:
    """This rank's shard of ``t`` (a view sharing its storage), or ``t`` if it is not a DTensor."""
    return t.to_local() if is_dtensor(t) else t


def locals_(tensors: Sequence[Tensor]) -> list[Tensor]:
    """:func:`local` of each tensor."""
    return [local(t) for t in tensors]


def shard_reducer(tensors: Sequence[Tensor]) -> Reduce | None:
    """The reduction of per-tensor squared norms for ``tensors``; ``None`` if none is sharded.

    All sharded DTensors must share one device mesh and placements (as under ``fully_shard``);
    the sum runs over the process groups of the mesh dimensions they are sharded on.
    """
    if "torch.distributed.tensor" not in sys.modules:
        return None
    sharded = [is_dtensor(t) and any(p.is_shard() for p in t.placements) for t in tensors]
    if not any(sharded):
        return None
    dts = [t for t, s in zip(tensors, sharded, strict=True) if s and is_dtensor(t)]
    specs = {(t.device_mesh, t.placements) for t in dts}
    if len(specs) > 1:
        raise ValueError(
            "mup2.SAM under FSDP needs every sharded parameter on one device mesh with the same "
            f"placements, got {len(specs)} different ones: shard the model with one mesh"
        )
    mesh, placements = next(iter(specs))
    groups = [mesh.get_group(d) for d, p in enumerate(placements) if p.is_shard()]
    device = local(tensors[0]).device
    mask = torch.tensor(sharded, device=device)

    def reduce(sq: Tensor) -> Tensor:
        part = torch.where(mask.to(sq.device), sq, torch.zeros_like(sq))
        for group in groups:
            dist.all_reduce(part, group=group)
        return torch.where(mask.to(sq.device), part, sq)

    return reduce
