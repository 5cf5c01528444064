"""The one perturbation formula, computed with multi-tensor (``torch._foreach_*``) kernels.

For the perturbed tensors ``W`` (math note, sections 3 and 4)::

    eps_W = rho_W**2 * c_W * A_W**2 * g_W / sqrt(sum_V rho_V**2 * s_V * ||A_V * g_V||**2)

``A`` is the rule's factor (1 for SAM and SAM-ON, ``|W| + eta_W`` for elementwise ASAM,
``||W||_F + eta_W`` for layerwise ASAM); ``c``/``s`` come from :func:`mup2.schemes.perturb_scaling`.
This is steepest ascent in the weighted norm ``sum_V ||eps_V||**2 / (rho_V**2 s_V A_V**2)`` when
``c = s``; with one ``rho`` it is ``rho * c * A**2 * g / ||sqrt(s) * A * g||``. A per-group
``rho`` thus sets that group's radius in the joint norm (a group alone gets radius ``rho``).
No host synchronization: the scale stays a device tensor; a zero or non-finite norm gives no step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["norms", "perturbation_direction", "safe_divide"]


def norms(
    tensors: Sequence[Tensor], like: Tensor, reduce: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """The Frobenius norms of ``tensors`` as one 1-D tensor with ``like``'s device and dtype.

    ``reduce`` (FSDP, :func:`mup2.shards.shard_reducer`) maps the squared norms of local shards
    to the global ones with one collective."""
    ns = torch._foreach_norm(list(tensors))
    if reduce is not None:
        return torch.sqrt(reduce(torch.stack(ns).to(device=like.device, dtype=like.dtype) ** 2))
    try:  # one device: stack (promoting mixed dtypes) and convert once
        return torch.stack(ns).to(device=like.device, dtype=like.dtype)
    except RuntimeError:  # several devices
        return torch.stack([n.to(device=like.device, dtype=like.dtype) for n in ns])


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where a zero, non-finite or NaN denominator gives 0 (no step, no NaN)."""
    out = num / den.clamp_min(torch.finfo(den.dtype).tiny)
    return torch.nan_to_num_(out, nan=0.0, posinf=0.0, neginf=0.0)


def perturbation_direction(
    rule: str,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    rho2c: Tensor,
    rho2s: Tensor,
    eta: Sequence[float],
    scratch: Sequence[Tensor] | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[list[Tensor], Tensor]:
    """``(d, k)`` with ``eps_W = k_W * d_W``.

    ``d`` is ``grads`` itself (SAM, SAM-ON, layerwise ASAM: callers must not modify it) or a new
    list ``A**2 g`` (elementwise ASAM). ``rho2c``/``rho2s``: 1-D, ``rho_W**2 c_W`` and
    ``rho_W**2 s_W`` per tensor; ``eta``: the ASAM offset of each tensor; ``scratch``: tensors
    like ``params`` that elementwise ASAM may overwrite (saves a parameter-sized temporary).
    ``k`` has their device and dtype; under SAM, SAM-ON and elementwise ASAM it is proportional
    to ``rho2c``. ``reduce``: see :func:`norms` (the tensors are then local shards).
    """
    if rule in ("sam", "sam-on"):
        sq = norms(grads, rho2c, reduce) ** 2
        return list(grads), safe_divide(rho2c, torch.sqrt(torch.sum(rho2s * sq)))
    if rule == "asam":
        if scratch is None:
            a = list(torch._foreach_abs(list(params)))
        else:
            a = list(scratch)
            torch._foreach_copy_(a, list(params))
            torch._foreach_abs_(a)
        torch._foreach_add_(a, list(eta))
        d = list(torch._foreach_mul(list(grads), a))  # A g
        sq = norms(d, rho2c, reduce) ** 2
        torch._foreach_mul_(d, a)  # A^2 g
        return d, safe_divide(rho2c, torch.sqrt(torch.sum(rho2s * sq)))
    if rule == "asam-layerwise":
        offset = torch.tensor(eta, dtype=rho2c.dtype, device=rho2c.device)
        a2 = (norms(params, rho2c, reduce) + offset) ** 2
        sq = a2 * norms(grads, rho2c, reduce) ** 2
        return list(grads), safe_divide(rho2c * a2, torch.sqrt(torch.sum(rho2s * sq)))
    raise ValueError(f"unknown SAM rule {rule!r}")
