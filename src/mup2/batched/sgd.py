"""torch.optim.SGD's update with a learning rate and weight decay per configuration and tensor.

``torch.optim.SGD`` takes one number per param group; the stacked model needs one per
configuration. This is its documented algorithm (momentum buffer initialised to the first
gradient, dampening, nesterov, coupled weight decay), applied to ``(K, *shape)`` tensors, with
``lr``/``weight_decay`` broadcast from ``(K, 1, ...)`` views. The batched-vs-separate tests
compare it with ``torch.optim.SGD`` through whole runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["sgd_step_"]


@torch.no_grad()
def sgd_step_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: list[Tensor | None],
    lr: Sequence[Tensor],
    weight_decay: Sequence[Tensor] | None,
    *,
    momentum: float,
    dampening: float,
    nesterov: bool,
    lr_factor: float,
) -> None:
    """One SGD step in place. ``lr[i]``/``weight_decay[i]`` broadcast against ``params[i]``
    (``(K, 1, ...)``); the step uses ``lr[i] * lr_factor`` (the schedule's factor).
    ``momenta`` holds each tensor's buffer, ``None`` before the first step (filled here)."""
    steps = list(grads)
    if weight_decay is not None:
        steps = [g.addcmul(p, wd) for g, p, wd in zip(steps, params, weight_decay, strict=True)]
    if momentum != 0.0:
        for i, g in enumerate(steps):
            buf = momenta[i]
            if buf is None:
                buf = momenta[i] = g.clone()
            else:
                buf.mul_(momentum).add_(g, alpha=1.0 - dampening)
            steps[i] = g.add(buf, alpha=momentum) if nesterov else buf
    for p, g, r in zip(params, steps, lr, strict=True):
        p.addcmul_(g, r, value=-lr_factor)
