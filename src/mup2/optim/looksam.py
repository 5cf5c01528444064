"""LookSAM's two formulas (Liu et al., CVPR 2022, arXiv 2203.02714), on multi-tensor kernels.

Every ``k`` steps a full SAM step, with ``g = ∇L(w)`` (first pass) and ``g_s = ∇L(w + eps)``
(second pass), stores the component of ``g_s`` orthogonal to ``g``::

    g_v = g_s - (<g, g_s> / ||g||**2) g                  (:func:`orthogonal_`)

and each step in between, with the one gradient ``g = ∇L(w)``, descends along::

    g + alpha * (||g|| / ||g_v||) * g_v                   (:func:`reuse_`)

The inner products and norms are global, over all the tensors (the paper's Algorithm 1), or per
tensor (``layerwise``). A zero or non-finite denominator gives no change (no NaN); so a ``g_v``
of zeros (before the first SAM step) leaves ``g`` as it is. ``reduce`` (FSDP,
:func:`mup2.optim.shards.shard_reducer`): the tensors are local shards and per-tensor sums are
summed across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mup2.optim.perturb import norms, safe_divide
from mup2.optim.shards import Reduce

__all__ = ["inner_products", "orthogonal_", "reuse_"]


def _like(tensors: Sequence[Tensor]) -> Tensor:
    t = tensors[0]
    return torch.zeros((), device=t.device, dtype=torch.promote_types(t.dtype, torch.float32))


def inner_products(
    a: Sequence[Tensor], b: Sequence[Tensor], like: Tensor, reduce: Reduce | None = None
) -> Tensor:
    """``<a_V, b_V>`` per tensor as one 1-D tensor with ``like``'s device and dtype."""
    out = torch.stack([torch.sum(x * y, dtype=like.dtype) for x, y in zip(a, b, strict=True)])
    out = out.to(like)
    return reduce(out) if reduce is not None else out


def _per_tensor(values: Tensor, n: int) -> list[Tensor]:
    """``values`` (1-D with ``n`` entries, or 0-d) as ``n`` 0-d tensors."""
    return list(values.expand(n).unbind()) if values.ndim == 0 else list(values.unbind())


@torch.no_grad()
def orthogonal_(
    g: list[Tensor], g_s: Sequence[Tensor], layerwise: bool = False, reduce: Reduce | None = None
) -> None:
    """Overwrite ``g`` (the first-pass gradients, in buffers the caller owns) with
    ``g_v = g_s - (<g, g_s> / ||g||**2) g``."""
    if not g:
        return
    like = _like(g)
    dot = inner_products(g, g_s, like, reduce)
    sq = norms(g, like, reduce) ** 2
    if not layerwise:
        dot, sq = dot.sum(), sq.sum()
    coef = safe_divide(dot, sq)
    torch._foreach_mul_(g, _per_tensor(-coef, len(g)))
    torch._foreach_add_(g, list(g_s))


@torch.no_grad()
def reuse_(
    grads: list[Tensor],
    g_v: Sequence[Tensor],
    alpha: float,
    layerwise: bool = False,
    reduce: Reduce | None = None,
) -> None:
    """``grads += alpha * (||grads|| / ||g_v||) * g_v``, in place."""
    if not grads:
        return
    like = _like(grads)
    ng, nv = norms(grads, like, reduce), norms(g_v, like, reduce)
    if not layerwise:
        ng, nv = torch.linalg.vector_norm(ng), torch.linalg.vector_norm(nv)
    scale = alpha * safe_divide(ng, nv)
    torch._foreach_addcmul_(grads, list(g_v), _per_tensor(scale, len(grads)))
