"""The one perturbation formula, computed with multi-tensor (``torch._foreach_*``) kernels.

For the perturbed tensors ``W`` (``docs/math.md`` §3-4)::

    eps_W = rho_W**2 * c_W * A_W**2 * g_W / sqrt(sum_V rho_V**2 * s_V * ||A_V * g_V||**2)

``A`` is the rule's factor (:class:`mup2.optim.rules.Factor`: 1 for SAM and SAM-ON,
``|W| + eta_W`` for elementwise ASAM, ``||W||_F + eta_W`` for layerwise ASAM); ``c``/``s`` are
the rule's width factors. MSAM (``Factor.MOMENTUM``) runs the same formula with the base
optimizer's momentum ``m`` in place of ``g`` and the sign flipped, ``eps = -rho**2 c m / ...``;
RWP's noise (``Factor.NOISE``, ``eps_W = rho_W c_W xi_W``) is drawn by :func:`gaussian`.

This is steepest ascent in the weighted norm
``sum_V ||eps_V||**2 / (rho_V**2 s_V A_V**2)`` when ``c = s``; with one ``rho`` it is
``rho * c * A**2 * g / ||sqrt(s) * A * g||``. A per-group ``rho`` thus sets that group's radius
in the joint norm (a group alone gets radius ``rho``), and tensors of different rules share one
norm. No host synchronization: the scale stays a device tensor; a zero or non-finite norm gives
no step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from mup2.optim.rules import Factor

__all__ = [
    "by_device_and_dtype",
    "gaussian",
    "norms",
    "per_tensor",
    "perturbation_direction",
    "safe_divide",
]


def by_device_and_dtype(tensors: Sequence[Tensor]) -> list[list[int]]:
    """The indices of ``tensors`` grouped by ``(device, dtype)``, in order of first appearance:
    the unit a multi-tensor kernel takes."""
    out: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        out.setdefault((t.device, t.dtype), []).append(i)
    return list(out.values())


def norms(
    tensors: Sequence[Tensor],
    like: Tensor,
    reduce: Callable[[Tensor], Tensor] | None = None,
    uniform: bool = False,
    configs: bool = False,
) -> Tensor:
    """The Frobenius norms of ``tensors`` as one 1-D tensor with ``like``'s device and dtype.

    ``reduce`` (FSDP, :func:`mup2.optim.shards.shard_reducer`) maps the squared norms of local
    shards to the global ones with one collective. ``uniform``: the caller knows that all
    tensors share one device and dtype (a plan's tensors, checked once), so they are not grouped
    on every call. ``configs``: each tensor is ``(K, *shape)`` and the result ``(K, n)``, the
    norms of each configuration's slices (no ``reduce``)."""
    tensors = list(tensors)
    if configs:
        if reduce is not None:
            raise ValueError("norms per configuration take no shard reduction")
        per = [torch.linalg.vector_norm(t.flatten(1), dim=1) for t in tensors]
        return torch.stack(per, dim=1).to(like)
    groups = None if uniform else by_device_and_dtype(tensors)
    if groups is None or len(groups) == 1:
        out = torch.stack(torch._foreach_norm(tensors)).to(like)
    else:
        out = torch.empty(len(tensors), device=like.device, dtype=like.dtype)
        for idx in groups:
            ns = torch._foreach_norm([tensors[i] for i in idx])
            out[torch.tensor(idx, device=like.device)] = torch.stack(ns).to(out)
    if reduce is not None:
        return torch.sqrt(reduce(out**2))
    return out


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where a non-finite quotient gives 0 (no step, no NaN): so does a zero,
    infinite or NaN denominator (``den`` is a norm, never negative); a gradient whose squared
    norm underflows to 0 must not give a huge perturbation. Two kernels: this runs every step."""
    return torch.nan_to_num(num / den, nan=0.0, posinf=0.0, neginf=0.0)


def _joint_norm(rho2s: Tensor, sq: Tensor) -> Tensor:
    """``sqrt(sum_V rho_V**2 s_V ||A_V g_V||**2)``: a 0-d tensor, or ``(K, 1)`` per configuration
    (``rho2s``/``sq`` of shape ``(K, n)``)."""
    if rho2s.ndim == 2:
        return torch.sqrt((rho2s * sq).sum(dim=1, keepdim=True))
    return torch.sqrt(torch.dot(rho2s, sq))


def per_tensor(values: Tensor, tensors: Sequence[Tensor]) -> list[Tensor]:
    """Column ``i`` of the ``(K, n)`` ``values`` shaped to broadcast against ``tensors[i]``
    (``(K, *shape)``)."""
    k = values.shape[0]
    return [values[:, i].reshape(k, *([1] * (t.ndim - 1))) for i, t in enumerate(tensors)]


def _ascent(
    factor: Factor,
    params: list[Tensor],
    grads: list[Tensor],
    rho2c: Tensor,
    eta: list[float] | Tensor,
    scratch: list[Tensor] | None,
    reduce: Callable[[Tensor], Tensor] | None,
    uniform: bool,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """``(d, ||A g||**2, num)`` for tensors of one factor: the direction ``d``, the terms of the
    joint norm, and the numerator of ``k = num / norm`` (``rho**2 c``, times ``A**2`` when ``A``
    is one number per tensor). With a configuration axis (``rho2c`` 2-D) ``eta`` is ``(K, n)``."""
    configs = rho2c.ndim == 2
    if factor is Factor.ONE:
        return grads, norms(grads, rho2c, reduce, uniform, configs) ** 2, rho2c
    if factor is Factor.MOMENTUM:  # g is the momentum m; the ascent goes along -m
        return grads, norms(grads, rho2c, reduce, uniform, configs) ** 2, -rho2c
    if factor is Factor.ELEMENTWISE:
        if scratch is None:
            a = list(torch._foreach_abs(params))
        else:
            a = scratch
            torch._foreach_copy_(a, params)
            torch._foreach_abs_(a)
        if isinstance(eta, Tensor):
            torch._foreach_add_(a, per_tensor(eta, a))
        else:
            torch._foreach_add_(a, eta)
        d = list(torch._foreach_mul(grads, a))  # A g
        sq = norms(d, rho2c, reduce, uniform, configs) ** 2
        torch._foreach_mul_(d, a)  # A^2 g
        return d, sq, rho2c
    if factor is Factor.LAYERWISE:
        offset = torch.as_tensor(eta, dtype=rho2c.dtype, device=rho2c.device)
        a2 = (norms(params, rho2c, reduce, uniform, configs) + offset) ** 2
        return grads, a2 * norms(grads, rho2c, reduce, uniform, configs) ** 2, rho2c * a2
    raise ValueError(
        f"factor {factor.value!r} has no closed-form ascent (LightSAM computes it; RWP draws "
        "its noise with gaussian())"
    )


def gaussian(
    tensors: Sequence[Tensor], generators: Mapping[torch.device, torch.Generator]
) -> list[Tensor]:
    """Standard normal noise ``xi`` shaped like each of ``tensors`` (RWP's direction), drawn in
    order from the generator of each tensor's device: the same seeds give the same noise on
    every process (DDP replicas draw identical perturbations)."""
    return [
        torch.randn(t.shape, generator=generators[t.device], device=t.device, dtype=t.dtype)
        for t in tensors
    ]


def perturbation_direction(
    factors: Sequence[Factor],
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    rho2c: Tensor,
    rho2s: Tensor,
    eta: Sequence[float] | Tensor,
    scratch: Sequence[Tensor] | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    uniform: bool = False,
) -> tuple[list[Tensor], Tensor]:
    """``(d, k)`` with ``eps_W = k_W * d_W``.

    ``factors``: the factor ``A`` of each tensor's rule. ``d_W`` is ``g_W`` itself (SAM, SAM-ON,
    layerwise ASAM: callers must not modify it) or a new tensor ``A**2 g`` (elementwise ASAM).
    ``rho2c``/``rho2s``: 1-D, ``rho_W**2 c_W`` and ``rho_W**2 s_W`` per tensor; ``eta``: the ASAM
    offset of each tensor; ``scratch``: tensors like ``params`` that elementwise ASAM may
    overwrite (saves a parameter-sized temporary). ``k`` has their device and dtype; for SAM,
    SAM-ON, MSAM and elementwise ASAM tensors it is proportional to ``rho2c``. ``reduce``: see
    :func:`norms` (the tensors are then local shards), as is ``uniform``.

    With a configuration axis (module docstring): tensors ``(K, *shape)``, ``rho2c``/``rho2s``
    and ``eta`` ``(K, n)``, ``k`` ``(K, n)``.
    """
    eta_all: list[float] | Tensor = eta if isinstance(eta, Tensor) else list(eta)
    if factors and all(f is factors[0] for f in factors):  # one rule: no indexing
        sc = None if scratch is None else list(scratch)
        d, sq, num = _ascent(
            factors[0], list(params), list(grads), rho2c, eta_all, sc, reduce, uniform
        )
        return list(d), safe_divide(num, _joint_norm(rho2s, sq))
    kinds: dict[Factor, list[int]] = {}
    for i, f in enumerate(factors):
        kinds.setdefault(f, []).append(i)
    d_all: list[Tensor] = list(grads)
    sq_all, num_all = torch.empty_like(rho2c), torch.empty_like(rho2c)
    for factor, idx in kinds.items():
        at = torch.tensor(idx, device=rho2c.device)
        sub = None if reduce is None else _subset_reduce(reduce, at, len(factors))
        d, sq, num = _ascent(
            factor,
            [params[i] for i in idx],
            [grads[i] for i in idx],
            rho2c[..., at],
            eta_all[:, at] if isinstance(eta_all, Tensor) else [eta_all[i] for i in idx],
            None if scratch is None else [scratch[i] for i in idx],
            sub,
            uniform,
        )
        for i, t in zip(idx, d, strict=True):
            d_all[i] = t
        sq_all[..., at], num_all[..., at] = sq, num
    return d_all, safe_divide(num_all, _joint_norm(rho2s, sq_all))


def _subset_reduce(
    reduce: Callable[[Tensor], Tensor], at: Tensor, n: int
) -> Callable[[Tensor], Tensor]:
    """``reduce`` (built for ``n`` tensors) for the subset ``at`` of them."""

    def sub(sq: Tensor) -> Tensor:
        full = torch.zeros(n, device=sq.device, dtype=sq.dtype)
        full[at.to(sq.device)] = sq
        return reduce(full)[at.to(sq.device)]

    return sub
