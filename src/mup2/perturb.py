"""The one perturbation formula, computed with multi-tensor (``torch._foreach_*``) kernels.

For the perturbed tensors ``W`` (math note, sections 3 and 4)::

    eps_W = rho_W**2 * c_W * A_W**2 * g_W / sqrt(sum_V rho_V**2 * s_V * ||A_V * g_V||**2)

``A`` is the rule's factor (1 for SAM and SAM-ON, ``|W| + eta`` for elementwise ASAM,
``||W||_F + eta`` for layerwise ASAM); ``c``/``s`` come from :func:`mup2.schemes.perturb_scaling`.
This is steepest ascent in the weighted norm ``sum_V ||eps_V||**2 / (rho_V**2 s_V A_V**2)`` when
``c = s``; with one ``rho`` it is ``rho * c * A**2 * g / ||sqrt(s) * A * g||``. A per-group
``rho`` thus sets that group's radius in the joint norm (a group alone gets radius ``rho``).
No host synchronization: the scale stays a device tensor; a zero or non-finite norm gives no step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["compute_perturbation"]


def _stack(xs: Sequence[Tensor], device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.stack([x.to(device=device, dtype=dtype) for x in xs])


def compute_perturbation(
    rule: str,
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    rho2c: Tensor,
    rho2s: Tensor,
    out: Sequence[Tensor],
    eta: float = 0.01,
) -> None:
    """Write ``eps_W`` for each tensor into ``out`` (same shapes as ``params``).

    ``rho2c``/``rho2s``: 1-D tensors of ``rho_W**2 c_W`` and ``rho_W**2 s_W``, one entry per
    tensor, on the device where the scale is computed (that of ``params[0]``).
    """
    device, dtype = rho2c.device, rho2c.dtype
    torch._foreach_copy_(list(out), list(grads))
    if rule == "asam":
        a = torch._foreach_abs(list(params))
        torch._foreach_add_(a, eta)
        torch._foreach_mul_(list(out), a)  # A g
        sq = _stack(torch._foreach_norm(list(out)), device, dtype) ** 2
        torch._foreach_mul_(list(out), a)  # A^2 g
        num = rho2c
    elif rule == "asam-layerwise":
        a2 = (_stack(torch._foreach_norm(list(params)), device, dtype) + eta) ** 2
        sq = a2 * _stack(torch._foreach_norm(list(grads)), device, dtype) ** 2
        num = rho2c * a2
    elif rule in ("sam", "sam-on"):
        sq = _stack(torch._foreach_norm(list(grads)), device, dtype) ** 2
        num = rho2c
    else:
        raise ValueError(f"unknown SAM rule {rule!r}")
    norm = torch.sqrt(torch.sum(rho2s * sq))
    scale = num / norm.clamp_min(torch.finfo(dtype).tiny)
    scale = torch.where(torch.isfinite(norm), scale, torch.zeros_like(scale))
    scales = list(scale.unbind())
    if any(o.device != device for o in out):
        scales = [s.to(o.device) for s, o in zip(scales, out, strict=True)]
    torch._foreach_mul_(list(out), scales)
