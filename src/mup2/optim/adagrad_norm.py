"""AdaGrad-Norm: SGD with one adaptive step size ``lr / sqrt(v)`` shared by all tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import ParamsT

from mup2.errors import check_number
from mup2.optim.sam import check_params
from mup2.optim.shards import locals_, shard_reducer

__all__ = ["AdaGradNorm"]


class AdaGradNorm(torch.optim.Optimizer):
    """``v += sum_W k_W ||g_W||^2`` (starting at ``eps0**2``), then ``W -= lr * g_W / sqrt(v)``.

    ``k_W = m_out/m_in`` of the tensor's group when ``width_aware`` (groups from
    :meth:`mup2.Parametrization.param_groups` carry ``m_in``/``m_out``; plain params have
    ``k = 1``): under μP this makes ``v`` a sum of Θ(1) terms at every width (a plain sum is
    dominated by the readout's gradient, whose norm grows like ``sqrt(width)``), so the step size
    does not shrink with width. At base width both are AdaGrad-Norm. ``v`` is the sum of per-tensor
    accumulators (state ``"v"``), so it survives ``state_dict`` round trips. L2 weight decay is
    added to the gradient, as in ``torch.optim.SGD``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 0.1,
        eps0: float = 1e-8,
        weight_decay: float = 0.0,
        width_aware: bool = True,
    ) -> None:
        for name, value in (("lr", lr), ("eps0", eps0), ("weight_decay", weight_decay)):
            check_number(name, value)
        params = check_params(params)
        if not lr > 0.0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not eps0 > 0.0:
            raise ValueError(f"eps0 must be > 0, got {eps0}")
        super().__init__(params, {"lr": lr, "eps0": eps0, "weight_decay": weight_decay})
        self.width_aware = width_aware

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            for name in ("lr", "eps0", "weight_decay"):
                check_number(f"param group {len(self.param_groups) - 1}: {name}", group[name])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise
        if group["eps0"] != self.param_groups[0]["eps0"]:
            self.param_groups.pop()
            raise ValueError(
                f"eps0 = {group['eps0']} differs from the first group's "
                f"{self.param_groups[0]['eps0']}: the groups share one accumulator, which "
                "starts at eps0**2, so eps0 must be one number (pass it to AdaGradNorm)"
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        entries = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not entries:
            return loss
        owners = [p for _, p in entries]
        reduce = shard_reducer(owners)  # FSDP2: per-tensor norms of the shards, summed
        params = locals_(owners)
        grads = locals_([p.grad for p in owners])
        for i, ((group, _), p) in enumerate(zip(entries, params, strict=True)):
            if group["weight_decay"]:
                grads[i] = grads[i].add(p, alpha=group["weight_decay"])
        accs = []
        for p, shard in zip(owners, params, strict=True):
            state = self.state[p]
            if "v" not in state:
                dtype = torch.promote_types(p.dtype, torch.float32)
                state["v"] = torch.zeros((), device=shard.device, dtype=dtype)
            accs.append(state["v"])
        sq = torch.stack(torch._foreach_norm(grads)).to(accs[0].dtype) ** 2
        if reduce is not None:
            sq = reduce(sq)
        if self.width_aware:
            k = [g.get("m_out", 1.0) / g.get("m_in", 1.0) for g, _ in entries]
            sq = sq * torch.tensor(k, device=sq.device)
        torch._foreach_add_(accs, list(sq.unbind()))
        eps0 = self.param_groups[0]["eps0"]  # one for all groups (add_param_group)
        denom = torch.sqrt(torch.stack(accs).sum() + eps0**2)
        scales = [-group["lr"] / denom for group, _ in entries]
        torch._foreach_add_(params, torch._foreach_mul(grads, scales))
        return loss
