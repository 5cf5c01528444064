"""SAM, ASAM and SAM-ON with naive, global and μP² perturbation scaling, wrapping any optimizer.

One step: ``g = ∇L(w)``, ``eps = perturbation(g, w)`` (:mod:`mup2.perturb`), ``w + eps``,
``g' = ∇L(w + eps)``, restore ``w``, then the base optimizer steps with ``g'``. Weight decay,
momentum and gradient clipping act only in the base step; the ascent uses the loss gradient alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mup2.errors import check_finite
from mup2.lr import attach_lr_multipliers
from mup2.passes import frozen_bn_stats, gradient_sync, no_sync
from mup2.perturb import perturbation_direction
from mup2.schemes import perturb_scaling
from mup2.shapes import Role
from mup2.shards import Reduce, locals_, shard_reducer

__all__ = ["SAM", "Restore"]

Restore = Literal["copy", "subtract"]

#: Group keys SAM reads, with their values for plain params (base width: μP² is plain SAM).
_GROUP_DEFAULTS: dict[str, Any] = {
    "rho_mult": 1.0,
    "role": Role.SCALAR.value,
    "m_in": 1.0,
    "m_out": 1.0,
    "width_mult": 1.0,
    "norm": False,
    "lr_mult": 1.0,
    "weight_scale": 1.0,
}


@dataclass(frozen=True)
class _Plan:
    """The perturbable tensors with their buffers and factors, aligned; 1-D tensors per tensor.

    ``buckets`` groups the indices of tensors with equal ``(rho, c)`` so that a scale
    proportional to ``rho**2 c`` is applied with one multi-tensor call per bucket. Under FSDP
    ``params``/``bufs`` are the local shards in :meth:`SAM.first_step`, ``owners`` the parameters
    (state keys) and ``reduce`` sums squared norms across the shards."""

    params: list[Tensor]
    bufs: list[Tensor]
    rho: Tensor
    c: Tensor
    s: Tensor
    rho2c: Tensor
    rho2s: Tensor
    eta: list[float]
    keys: list[tuple[float, float]]
    buckets: list[list[int]]
    owners: list[Tensor]
    reduce: Reduce | None

    def subset(self, keep: Sequence[int]) -> _Plan:
        keys = [self.keys[i] for i in keep]
        idx = torch.tensor(keep, device=self.rho.device)
        return _Plan(
            [self.params[i] for i in keep],
            [self.bufs[i] for i in keep],
            self.rho[idx],
            self.c[idx],
            self.s[idx],
            self.rho2c[idx],
            self.rho2s[idx],
            [self.eta[i] for i in keep],
            keys,
            _buckets(keys),
            [self.owners[i] for i in keep],
            shard_reducer([self.owners[i] for i in keep]),
        )

    def local(self) -> _Plan:
        """The plan over the local shards of sharded (FSDP) tensors; itself when none is."""
        if self.reduce is None:
            return self
        return replace(self, params=locals_(self.params), bufs=locals_(self.bufs))


def _buckets(keys: Sequence[tuple[float, float]]) -> list[list[int]]:
    out: dict[tuple[float, float], list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return list(out.values())


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimization around any torch optimizer.

    Args:
        params: tensors or param groups; groups from :meth:`mup2.Parametrization.param_groups`
            carry the width metadata that ``global``/``mup2`` scaling need (plain params count
            as base width, where μP² is plain SAM). Each group may set its own ``rho``.
        base_optimizer: the optimizer class for the descent (``torch.optim.SGD``, ``AdamW``, ...);
            it shares ``param_groups`` with SAM, so LR schedulers may wrap either.
        rho: perturbation radius. ``rho = 0`` is exactly the base optimizer.
        rule: ``"sam"``, ``"asam"`` (elementwise, ``|W| + eta``), ``"asam-layerwise"``
            (``||W||_F + eta``) or ``"sam-on"`` (only groups with ``norm=True`` are perturbed).
        scaling: ``"naive"``, ``"global"``, ``"mup2"`` (layerwise, balanced) or ``"mup2-coupled"``.
        eta: the ASAM offset ``η_A``. For elementwise ASAM under ``mup2`` scaling each tensor's
            offset is multiplied by its group's ``weight_scale`` (how its entries scale with
            width), so that ``|W| + eta`` keeps its meaning at every width.
        restore: how ``w`` is restored after the perturbed pass: ``"copy"`` (default) saves
            ``w`` in the buffer and copies it back, exactly; ``"subtract"`` keeps ``eps`` in the
            buffer and subtracts it (``w + eps - eps`` may differ from ``w`` by a rounding).
            Either way one parameter-sized buffer persists.
        model: optional; :meth:`step` then runs the first pass under DDP ``no_sync`` (unless
            ``sync_perturbation``) and the second with frozen BatchNorm statistics.
        sync_perturbation: under DDP, all-reduce the first-pass gradients (one shared
            perturbation) instead of perturbing each replica with its own gradient.
        **base_kwargs: passed to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay``, ...).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
        *,
        rho: float = 0.05,
        rule: str = "sam",
        scaling: str = "mup2",
        eta: float = 0.01,
        restore: Restore = "copy",
        model: nn.Module | None = None,
        sync_perturbation: bool = False,
        **base_kwargs: Any,
    ) -> None:
        for name, value in (("rho", rho), ("eta", eta), *base_kwargs.items()):
            check_finite(name, value)  # torch's optimizers take lr=nan and weight_decay=inf
        if not (rho >= 0.0):
            raise ValueError(f"rho must be >= 0, got {rho}")
        if not (eta >= 0.0):
            raise ValueError(f"eta must be >= 0, got {eta}")
        if restore not in ("copy", "subtract"):
            raise ValueError(f"restore must be 'copy' or 'subtract', not {restore!r}")
        self.scaling_table = perturb_scaling(rule, scaling)
        self.rule, self.scaling, self.eta = rule, scaling, eta
        self.model, self.sync_perturbation = model, sync_perturbation
        self._base: torch.optim.Optimizer | None = None
        super().__init__(params, {"rho": rho, **_GROUP_DEFAULTS})
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self._base = self.base_optimizer
        self.param_groups = self.base_optimizer.param_groups
        for i, group in enumerate(self.param_groups):
            for name, value in group.items():
                if name != "params":
                    check_finite(f"param group {i}: {name}", value)
        self.defaults.update(self.base_optimizer.defaults)
        attach_lr_multipliers(self.base_optimizer)
        if rule == "sam-on" and not any(g["norm"] for g in self.param_groups):
            raise ValueError(
                "rule 'sam-on' perturbs normalization parameters only, and no param group has "
                "norm=True: build the groups with "
                "mup2.Parametrization.infer(...).param_groups(model)"
            )
        self.restore: Restore = restore
        self._buffers: dict[Tensor, Tensor] = {}
        self._perturbed: tuple[list[Tensor], list[Tensor]] | None = None  # (params, buffers)
        self._plan_key: tuple[Any, ...] | None = None
        self._plan: _Plan | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if self._base is not None:  # after construction: keep the base optimizer in step
            self._base.add_param_group(self.param_groups.pop())
            self.param_groups = self._base.param_groups

    # -- the perturbation -----------------------------------------------------------------

    def _factors(self) -> _Plan:
        """The perturbable tensors, their buffers and factors; cached until a ``rho`` changes."""
        key = tuple((g["rho"], g["rho_mult"], len(g["params"])) for g in self.param_groups)
        if key != self._plan_key or self._plan is None:
            params: list[Tensor] = []
            rows: list[tuple[float, float, float]] = []
            eta: list[float] = []
            scaled_eta = self.rule == "asam" and self.scaling == "mup2"
            for g in self.param_groups:
                rho = g["rho"] * g["rho_mult"]
                if rho == 0.0 or (self.rule == "sam-on" and not g["norm"]):
                    continue
                role = Role(g["role"])
                args = (g["m_in"], g["m_out"], g["width_mult"])
                c, s = self.scaling_table.c[role](*args), self.scaling_table.s[role](*args)
                params += g["params"]
                rows += [(rho, c, s)] * len(g["params"])
                eta += [self.eta * (g["weight_scale"] if scaled_eta else 1.0)] * len(g["params"])
            dev = params[0].device if params else torch.device("cpu")
            dt = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
            table = torch.tensor(rows, device=dev, dtype=dt).reshape(-1, 3)
            rho_, c_, s_ = table.unbind(1)
            keys = [(r, c) for r, c, _ in rows]
            bufs = [self._buffer(p) for p in params]
            self._plan = _Plan(
                params,
                bufs,
                rho_,
                c_,
                s_,
                rho_ * rho_ * c_,
                rho_ * rho_ * s_,
                eta,
                keys,
                _buckets(keys),
                params,
                shard_reducer(params),
            )
            self._plan_key = key
        return self._plan

    def _perturbation(self, plan: _Plan, grads: list[Tensor]) -> tuple[list[Tensor], Tensor, bool]:
        """The ascent: ``(d, k, bucketed)`` with ``eps_W = k_W d_W`` (see
        :func:`mup2.perturb.perturbation_direction`); ``bucketed``: ``k`` is constant within
        each of ``plan.buckets``. LightSAM overrides it."""
        d, k = perturbation_direction(
            self.rule,
            plan.params,
            grads,
            plan.rho2c,
            plan.rho2s,
            plan.eta,
            scratch=plan.bufs,
            reduce=plan.reduce,
        )
        return d, k, self.rule != "asam-layerwise"

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to ``w + eps`` using the current gradients (tensors without one stay put)."""
        if self._perturbed is not None:
            raise RuntimeError("first_step() called twice without second_step() in between")
        plan = self._factors()
        grads = [p.grad for p in plan.params]
        if any(g is None for g in grads):
            plan = plan.subset([i for i, g in enumerate(grads) if g is not None])
            grads = [p.grad for p in plan.params]
        if plan.params:
            if plan.reduce is not None:  # FSDP: compute on the local shards
                plan, grads = plan.local(), locals_(grads)  # type: ignore[assignment, arg-type]
            d, k, bucketed = self._perturbation(plan, grads)  # type: ignore[arg-type]
            groups = (
                [(idx, k[idx[0]]) for idx in plan.buckets]
                if bucketed
                else [(list(range(len(d))), list(k.unbind()))]
            )
            if self.restore == "copy":
                torch._foreach_copy_(plan.bufs, plan.params)
                for idx, scale in groups:
                    scales = scale if isinstance(scale, list) else [scale] * len(idx)
                    torch._foreach_addcmul_(
                        [plan.params[i] for i in idx], [d[i] for i in idx], scales
                    )
            else:
                torch._foreach_copy_(plan.bufs, d)
                for idx, scale in groups:
                    torch._foreach_mul_([plan.bufs[i] for i in idx], scale)
                torch._foreach_add_(plan.params, plan.bufs)
            self._perturbed = (plan.params, plan.bufs)
        if zero_grad:
            self.zero_grad()

    def _buffer(self, p: Tensor) -> Tensor:
        buf = self._buffers.get(p)
        if buf is None:
            buf = self._buffers[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        return buf

    @torch.no_grad()
    def unperturb(self) -> None:
        """Restore exactly the tensors that :meth:`first_step` perturbed."""
        if self._perturbed is not None:
            params, bufs = self._perturbed
            if self.restore == "subtract":
                torch._foreach_sub_(params, bufs)
            else:
                torch._foreach_copy_(params, bufs)
            self._perturbed = None

    @torch.no_grad()
    def second_step(
        self, zero_grad: bool = False, scaler: torch.amp.GradScaler | None = None
    ) -> None:
        """Restore ``w`` and take the base optimizer's step with the current (perturbed) gradients.

        With an AMP ``scaler``, the step goes through ``scaler.step`` (which unscales once and
        skips non-finite steps); call ``scaler.update()`` afterwards as usual.
        """
        self.unperturb()
        if scaler is not None:
            scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()
        self._opt_called = True  # tells LR schedulers that the optimizer stepped
        if zero_grad:
            self.zero_grad()

    def _needs_second_pass(self) -> bool:
        return any(
            g["rho"] * g["rho_mult"] > 0 and (self.rule != "sam-on" or g["norm"])
            for g in self.param_groups
        )

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor | None:
        """With a closure (zeroes grads, computes the loss, calls backward, returns the loss): a
        whole SAM step, returning the loss at the unperturbed point (detached). Without one:
        :meth:`second_step` (restore, then the base step).

        ``scaler``: an fp16 :class:`torch.amp.GradScaler` whose scaled loss the closure
        backpropagates. The first pass's gradients are unscaled before the ascent (LightSAM's
        accumulators need true gradients); if they overflowed, the ascent and the second pass
        are skipped and ``scaler.step`` skips the step. Call ``scaler.update()`` afterwards."""
        if closure is None:
            self.second_step(scaler=scaler)
            return None
        needs_second = self._needs_second_pass()
        first: AbstractContextManager[Any] = nullcontext()
        second: AbstractContextManager[Any] = nullcontext()
        if self.model is not None:
            if needs_second and not self.sync_perturbation:  # ρ = 0: the step needs reduced grads
                first = no_sync(self.model)
            second = frozen_bn_stats(self.model)
        with torch.enable_grad(), first:
            loss = closure()
        if needs_second and (scaler is None or self._unscale_finite(scaler)):
            self.first_step()
            with torch.enable_grad(), second:
                closure()
        self.second_step(scaler=scaler)
        return loss.detach()

    def step_accumulate(
        self,
        loss_fn: Callable[[Any], Tensor],
        micro_batches: Sequence[Any],
        scaler: torch.amp.GradScaler | None = None,
    ) -> Tensor:
        """One SAM step with gradient accumulation; returns the mean loss at ``w`` (detached).

        ``loss_fn(batch)`` runs the forward pass and returns the mean loss of one micro-batch
        (no ``backward``, no ``zero_grad``). The first pass accumulates ``∇L/n`` over the ``n``
        micro-batches, the perturbation is taken once, the second pass accumulates likewise,
        then the base optimizer steps once: with equal-sized micro-batches this is the step on
        their union. With ``model=``, gradients are reduced only in the last micro-batch's
        backward of each pass (DDP ``no_sync``, FSDP2 ``set_requires_gradient_sync``); under DDP
        without ``sync_perturbation`` the first pass is not reduced at all (per-replica ascent).
        The second pass runs with frozen BatchNorm statistics; the first updates them once per
        micro-batch. ``scaler``: as in :meth:`step`."""
        n = len(micro_batches)
        if n == 0:
            raise ValueError("step_accumulate needs at least one micro-batch")
        second = self._needs_second_pass()
        ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        per_replica = ddp and second and not self.sync_perturbation

        def accumulate(sync_last: bool) -> Tensor:
            total = torch.zeros(())
            for i, batch in enumerate(micro_batches):
                with torch.enable_grad(), gradient_sync(self.model, sync_last and i == n - 1):
                    loss = loss_fn(batch)
                    scaled = loss / n
                    torch.autograd.backward(scaled if scaler is None else scaler.scale(scaled))
                total = total.to(loss.device) + loss.detach()
            return total / n

        self.zero_grad()
        loss = accumulate(sync_last=not per_replica)
        if second and (scaler is None or self._unscale_finite(scaler)):
            self.first_step(zero_grad=True)
            frozen = nullcontext() if self.model is None else frozen_bn_stats(self.model)
            with frozen:
                accumulate(sync_last=True)
        self.second_step(scaler=scaler)
        return loss

    @torch.no_grad()
    def _unscale_finite(self, scaler: torch.amp.GradScaler) -> bool:
        """Divide the current gradients by the scale; whether they are all finite."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return True
        torch._foreach_mul_(grads, 1.0 / scaler.get_scale())
        return bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """SAM's state and param groups plus the base optimizer's state (momenta, Adam moments)."""
        sd = super().state_dict()
        sd["base_optimizer"] = self.base_optimizer.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "base_optimizer" not in state_dict:
            raise ValueError("not a mup2.SAM state dict: it lacks 'base_optimizer'")
        base = state_dict.pop("base_optimizer")
        super().load_state_dict(state_dict)
        self.base_optimizer.load_state_dict(base)
        self.param_groups = self.base_optimizer.param_groups
        self._plan_key = None
